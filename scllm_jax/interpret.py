"""What each cluster is: marker genes, and the gene knowledge nearest its semantic centroid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def cluster_markers(log_expression: sp.csr_matrix, gene_names: np.ndarray, labels: np.ndarray,
                    n_markers: int = 5) -> dict[int, list[str]]:
    """Top genes of each cluster by Welch's t statistic, cluster against the rest.

    Parameters
    ----------
    log_expression
        Cells x genes, log-normalised.
    gene_names
        Column names.
    labels
        Cluster of each cell.
    n_markers
        Genes per cluster.
    """
    matrix = sp.csr_matrix(log_expression)
    squares = matrix.multiply(matrix)
    n_total = matrix.shape[0]
    total_sum = np.asarray(matrix.sum(axis=0)).ravel()
    total_sq = np.asarray(squares.sum(axis=0)).ravel()
    clusters, codes = np.unique(labels, return_inverse=True)
    # Every cluster's sums in one pass over the matrix (a cluster x cell indicator times it), instead of
    # copying each cluster's rows out: seconds at a million cells.
    membership = sp.csr_matrix((np.ones(n_total, matrix.dtype), (codes, np.arange(n_total))),
                               shape=(clusters.size, n_total))
    sums, sums_sq = (membership @ matrix).toarray(), (membership @ squares).toarray()
    markers = {}
    for code, cluster in enumerate(clusters):
        inside = codes == code
        n_in, n_out = int(inside.sum()), n_total - int(inside.sum())
        if n_out == 0:
            markers[int(cluster)] = []
            continue
        sum_in, sq_in = sums[code], sums_sq[code]
        mean_in, mean_out = sum_in / n_in, (total_sum - sum_in) / n_out
        var_in = np.maximum(sq_in / n_in - mean_in ** 2, 0)
        var_out = np.maximum((total_sq - sq_in) / n_out - mean_out ** 2, 0)
        t = (mean_in - mean_out) / np.sqrt(var_in / n_in + var_out / n_out + 1e-9)
        markers[int(cluster)] = [str(gene_names[j]) for j in np.argsort(-t)[:n_markers]]
    return markers


def cluster_knowledge(labels: np.ndarray, log_expression: sp.csr_matrix, gene_names: np.ndarray, *,
                      cell_text: np.ndarray | None = None, gene_table: dict | None = None,
                      knowledge=None, species: str | None = None, n_markers: int = 5, n_nearest: int = 10,
                      n_terms: int = 3) -> pd.DataFrame:
    """One row per cluster: size, marker genes, and the knowledge nearest its semantic centroid.

    The semantic centroid is the cluster's mean cell text embedding minus the mean
    over all cells (what sets the cluster apart). The genes whose knowledge
    embeddings lie nearest to it (cosine) are listed, with the Gene Ontology
    process terms most frequent among them. Markers the knowledge base has no
    text for are named in ``knowledge_note``; for a non-human species it also
    says that genes are matched to the human knowledge by name only, since no
    orthology table ships offline (mouse ``Ins1``/``Ins2`` find no human ``INS``).

    Parameters
    ----------
    species
        The data's species (``uns['species']``); anything but human adds the
        orthology caveat to ``knowledge_note``.

    Returns
    -------
    pandas.DataFrame
        Columns ``cluster``, ``n_cells``, ``markers``, ``nearest_genes``,
        ``knowledge_terms``, ``knowledge_note`` (strings; the last three empty
        without a semantic view).
    """
    markers = cluster_markers(log_expression, gene_names, labels, n_markers)
    described = {}
    if gene_table is not None and "symbols" in gene_table:
        described = dict(zip(map(str, gene_table["gene_names"]), np.asarray(gene_table["mask"], dtype=bool)))
    usable = cell_text is not None and gene_table is not None and gene_table.get("embeddings") is not None
    if usable:
        embedded = np.flatnonzero(gene_table["mask"])
        genes = gene_table["embeddings"][embedded]
        genes = genes / np.maximum(np.linalg.norm(genes, axis=1, keepdims=True), 1e-8)
        overall = cell_text.mean(axis=0)
    rows = []
    for cluster in sorted(markers):
        nearest, terms = [], []
        if usable:
            centroid = cell_text[labels == cluster].mean(axis=0) - overall
            order = np.argsort(-(genes @ centroid))[:n_nearest]
            nearest = [str(gene_table["gene_names"][embedded[j]]) for j in order]
            terms = _frequent_terms(nearest, knowledge, n_terms) if knowledge is not None else []
        rows.append({"cluster": str(cluster), "n_cells": int(np.sum(labels == cluster)),
                     "markers": ", ".join(markers[cluster]), "nearest_genes": ", ".join(nearest),
                     "knowledge_terms": "; ".join(terms),
                     "knowledge_note": _knowledge_note(markers[cluster], described, species)})
    return pd.DataFrame(rows)


def _knowledge_note(markers: list[str], described: dict[str, bool], species: str | None) -> str:
    """Which markers have no knowledge text, and why that may be (name matching across species)."""
    if not described:
        return ""
    unknown = [gene for gene in markers if not described.get(gene, False)]
    if not unknown:
        return ""
    note = f"no knowledge for {', '.join(unknown)}"
    from .knowledge.gene_table import is_human_species

    if species and not is_human_species(species):
        note += f" ({species} genes match human knowledge by name only: no orthology table ships offline)"
    return note


def _frequent_terms(symbols: list[str], knowledge, n_terms: int) -> list[str]:
    from .knowledge.gene_table import map_gene_symbols

    mapping = map_gene_symbols(symbols, knowledge)
    counts: dict[str, int] = {}
    for key in mapping.matched:
        if key is None:
            continue
        for term in str(knowledge.table.loc[key].get("go_bp", "")).split("; "):
            if term:
                counts[term] = counts.get(term, 0) + 1
    return [term for term, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n_terms]]
