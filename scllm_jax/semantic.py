"""The knowledge-driven semantic view of cells (METHOD.md section 1).

Genes -> knowledge text -> language-model embeddings (shipped for the default
model, else embedded and cached) -> per cell: path 1 (the cell's standardised,
or log, expression pooling its genes' post-processed embeddings) and path 2 (its
Cell2Sentence sentence embedded), fused as ``w Z1 + (1 - w) Z2``. This module
decides which paths run and hands that decision down.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import anndata as ad
import numpy as np

from .config import ScllmConfig
from .preprocess import PreparedData
from .validation import InputError

logger = logging.getLogger(__name__)

#: Below this fraction of genes found in the knowledge base the view is not built.
MIN_FRACTION_MATCHED = 0.05

#: Cell2Sentence sentences (100 genes) embedded per second by all-MiniLM-L6-v2 on 2 CPU
#: cores (benchmarks/results/embedding_throughput.tsv: 14.7 and 17.8); used to say how long
#: path 2 would take when it is skipped on a CPU.
CPU_SENTENCES_PER_SECOND = 15.0


@dataclasses.dataclass
class SemanticView:
    """The cell text embedding and what it was built from.

    Attributes
    ----------
    cell_embeddings
        ``Z_text`` (cells x d_llm), or ``None`` when the view could not be built.
    gene_embeddings
        The table of :func:`gene_embedding_table` over the kept genes, reused
        to embed new cells (path 1) and to name their genes (path 2); ``None``
        when the view is off.
    info
        What was used: match counts, paths, model, and why the view is off.
    """

    cell_embeddings: np.ndarray | None
    gene_embeddings: dict[str, np.ndarray] | None
    info: dict


def _off(reason: str) -> SemanticView:
    warnings.warn(f"Semantic view off, clustering graph-only: {reason}", UserWarning, stacklevel=3)
    return SemanticView(None, None, {"used": False, "reason": reason})


def gene_embedding_table(gene_names: np.ndarray, config: ScllmConfig, *, species: str | None = None,
                         progress: bool = True, knowledge=None, cache=None) -> tuple[dict[str, np.ndarray], object]:
    """Language-model embeddings of the knowledge text of each gene.

    Genes are matched to the knowledge base by symbol, alias or Ensembl id
    (:func:`~scllm_jax.knowledge.gene_table.map_gene_symbols`); those with
    functional knowledge (:attr:`~scllm_jax.knowledge.gene_table.GeneKnowledge.described`)
    get an embedding. For the default model the vectors come from the file
    shipped with the package wherever the gene's text is the one embedded
    there; only the rest (another model, other text, a gene outside the file)
    is embedded by the language model, through the cache.

    Parameters
    ----------
    gene_names
        The dataset's gene identifiers (symbols or Ensembl ids).
    config
        Uses ``language_model``.
    species
        Recorded in the mapping summary.
    progress
        Progress bar while embedding.
    knowledge, cache
        Knowledge base and embedding cache instead of the shipped table and the
        default cache.

    Returns
    -------
    (dict, SymbolMapping)
        ``{"gene_names", "symbols", "embeddings", "mask", "n_shipped"}``:
        ``symbols`` the matched knowledge symbol (``""`` when unmatched),
        ``mask`` True where a gene has an embedding, ``embeddings`` zero rows
        elsewhere (``None`` when no gene has one), ``n_shipped`` how many came
        from the shipped file; and the symbol mapping.
    """
    from .knowledge.gene_table import load_gene_knowledge, map_gene_symbols
    from .knowledge.gene_text import PROMPT_VERSION, gene_prompts
    from .knowledge.language_model import cached_embed_texts
    from .knowledge.shipped_embeddings import shipped_vectors

    knowledge = knowledge or load_gene_knowledge()
    mapping = map_gene_symbols(gene_names, knowledge, species=species)
    symbols = np.array(["" if m is None else m for m in mapping.matched], dtype=object)
    mask = np.array([m in knowledge.described for m in symbols])
    table = {"gene_names": np.asarray(gene_names).astype(str), "symbols": symbols.astype(str), "mask": mask,
             "embeddings": None, "n_shipped": 0}
    if mask.any():
        wanted = list(symbols[mask])
        prompts = gene_prompts(wanted, knowledge)
        vectors, found = shipped_vectors(config.semantic.language_model, wanted, prompts)
        if vectors is None:
            vectors = np.zeros((len(wanted), 0), dtype=np.float32)
        if not found.all():
            missing = np.flatnonzero(~found)
            fresh = cached_embed_texts([prompts[i] for i in missing], config.semantic.language_model,
                                       cache_key_extra=PROMPT_VERSION, cache=cache, progress=progress)
            if vectors.shape[1] == 0:
                vectors = np.zeros((len(wanted), fresh.shape[1]), dtype=np.float32)
            vectors[missing] = fresh
        logger.info("gene embeddings: %d from the shipped file, %d embedded by %s", int(found.sum()),
                    int((~found).sum()), config.semantic.language_model)
        embeddings = np.zeros((len(gene_names), vectors.shape[1]), dtype=np.float32)
        embeddings[mask] = vectors
        table["embeddings"], table["n_shipped"] = embeddings, int(found.sum())
    return table, mapping


def path1_embedding(prepared: PreparedData, gene_table: dict[str, np.ndarray], config: ScllmConfig) -> np.ndarray:
    """Path 1 of the cells in ``prepared``: their genes' post-processed embeddings, pooled.

    Parameters
    ----------
    prepared
        Preprocessed cells (``pca`` and its fitted projection for denoised
        weights, ``expression`` for standardised, ``log_expression`` for log).
    gene_table
        From :func:`gene_embedding_table`, aligned with ``prepared.gene_names``.
    config
        Uses ``gene_postprocess``, ``path1_weights`` and ``top_k_genes``.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, d)`` float32: on one scale for all cells with standardised
        weights, unit rows with log weights (zero rows for cells with no
        embedded gene).
    """
    from .knowledge.cell_text import (abundance_weighted_embedding, denoised_embedding,
                                      postprocess_gene_embeddings, standardised_embedding)

    if gene_table is None or gene_table["embeddings"] is None:
        raise ValueError("Path 1 needs gene embeddings; none were built for this model.")
    genes = postprocess_gene_embeddings(gene_table["embeddings"], gene_table["mask"], config.semantic.gene_postprocess)
    if config.semantic.path1_weights == "denoised":
        if prepared.pca_components is None:
            raise ValueError("path1_weights='denoised' needs the fitted PCA (PreparedData.pca_components); "
                             "prepare the cells with Preprocessor.fit or transform.")
        return denoised_embedding(prepared.pca, prepared.pca_mean, prepared.pca_components, genes,
                                  gene_mask=gene_table["mask"])
    if config.semantic.path1_weights == "standardised":
        return standardised_embedding(prepared.expression, genes, gene_mask=gene_table["mask"])
    return abundance_weighted_embedding(prepared.log_expression, genes, config.semantic.top_k_genes,
                                        gene_mask=gene_table["mask"])


def cell_view_from_gene_embeddings(adata: ad.AnnData, prepared: PreparedData,
                                   gene_table: dict[str, np.ndarray] | None, config: ScllmConfig, *,
                                   paths: tuple[str, ...] | list[str], progress: bool = True,
                                   cache=None) -> np.ndarray:
    """``Z_text`` of the cells in ``prepared`` from already embedded genes.

    Parameters
    ----------
    paths
        The paths decided by :func:`build_semantic_view` (its ``info["paths"]``):
        ``"path1"``, ``"path2"`` or both (fused).
    """
    from .knowledge.cell_text import cell_sentences, fuse_views, sentence_embeddings

    if not {"path1", "path2"} & set(paths):
        raise ValueError(f"paths must name path1, path2 or both, got {list(paths)}: set use_path1 or use_path2.")
    views = []
    if "path1" in paths:
        views.append(path1_embedding(prepared, gene_table, config))
    if "path2" in paths:
        symbols = list(prepared.gene_names.astype(str))
        if gene_table is not None:
            # Sentences name genes by their knowledge-base symbol, and only genes the knowledge
            # base knows: a symbol the language model has never seen as a gene adds tokens, not meaning.
            symbols = list(gene_table["symbols"]) if "symbols" in gene_table else \
                [s if known else "" for s, known in zip(symbols, gene_table["mask"])]
        sentences = cell_sentences(prepared.log_expression, symbols, config.semantic.sentence_genes)
        views.append(sentence_embeddings(sentences, config.semantic.language_model, cache=cache, progress=progress))
    if len(views) == 2:
        return fuse_views(views[0], views[1], config.semantic.fusion_weight)
    return views[0]


def gene_identifiers(adata: ad.AnnData, genes: np.ndarray, gene_symbols_key: str | None = None) -> np.ndarray:
    """The identifier to look each gene up by: its symbol from a var column, else its var name.

    Parameters
    ----------
    adata
        The data.
    genes
        ``var_names`` of the genes wanted (e.g. the highly variable ones).
    gene_symbols_key
        The ``var`` column holding gene symbols (scanpy's ``gene_symbols``);
        ``None`` uses ``var_names`` (symbols or Ensembl ids). A gene whose
        symbol is missing there keeps its var name.

    Returns
    -------
    numpy.ndarray
        One string per gene.

    Raises
    ------
    InputError
        ``gene_symbols_key`` is not a column of ``adata.var``.
    """
    names = np.asarray(genes).astype(str)
    if gene_symbols_key is None:
        return names
    if gene_symbols_key not in adata.var.columns:
        raise InputError(f"gene_symbols_key={gene_symbols_key!r} is not a column of adata.var (columns: "
                         f"{list(adata.var.columns)}); name the column that holds gene symbols, or omit it "
                         "to use var_names.")
    column = adata.var[gene_symbols_key].reindex(names).astype(object)
    symbols = column.where(column.notna(), "").astype(str).str.strip().to_numpy()
    return np.where((symbols == "") | (symbols == "nan"), names, symbols).astype(str)


def _ensembl_hint(names: np.ndarray, adata: ad.AnnData) -> str:
    """What to do when the gene names are Ensembl ids the human knowledge base cannot read."""
    sample = names[: min(len(names), 200)]
    foreign = np.mean([n.upper().startswith("ENS") and not n.upper().startswith("ENSG") for n in sample])
    if foreign < 0.5:
        return ""
    return (" The gene names are non-human Ensembl ids, and no orthology table ships offline: pass "
            f"gene_symbols_key naming the adata.var column of gene symbols (columns: {list(adata.var.columns)}).")


def decide_paths(config: ScllmConfig, n_cells: int) -> tuple[list[str], str | None]:
    """The paths to build, and why path 2 was dropped (``None`` if it was not).

    Path 2 runs the language model over every cell. Without a GPU, above
    ``config.semantic.path2_max_cpu_cells`` cells it is skipped (logged, with how long it
    would have taken) and path 1 is built instead.
    """
    paths = [p for p, on in (("path1", config.semantic.use_path1), ("path2", config.semantic.use_path2)) if on]
    if "path2" not in paths or n_cells <= config.semantic.path2_max_cpu_cells:
        return paths, None
    from .knowledge.language_model import default_device

    if default_device() != "cpu":
        return paths, None
    minutes = n_cells / CPU_SENTENCES_PER_SECOND / 60
    reason = (f"path 2 (Cell2Sentence) skipped: {n_cells} cells on CPU would take ~{minutes:.0f} min at "
              f"~{CPU_SENTENCES_PER_SECOND:.0f} cells/s (2 cores); using path 1. Set path2_max_cpu_cells >= "
              f"{n_cells} to run it anyway, or run on a GPU.")
    logger.warning(reason)
    return [p for p in paths if p != "path2"] or ["path1"], reason


def build_semantic_view(adata: ad.AnnData, prepared: PreparedData, config: ScllmConfig, *,
                        gene_symbols_key: str | None = None, progress: bool = True, knowledge=None,
                        cache=None) -> SemanticView:
    """Build ``Z_text`` for the cells of ``adata``, or explain why it cannot be built.

    Datasets without gene symbols (``uns['gene_symbols'] == False`` and no
    ``gene_symbols_key``) or whose genes are (almost) absent from the knowledge
    base get no semantic view: a warning says so and the model runs graph-only.
    Random vectors are never passed off as knowledge.

    Parameters
    ----------
    adata
        The data (``uns['species']`` and ``uns['gene_symbols']`` are read).
    prepared
        Its preprocessed arrays.
    config
        Uses ``language_model``, ``use_path1/2``, ``path2_max_cpu_cells``,
        ``path1_weights``, ``gene_postprocess``, ``top_k_genes``,
        ``sentence_genes``, ``fusion_weight``.
    gene_symbols_key
        The ``adata.var`` column of gene symbols; ``None``: ``var_names``
        (symbols or human Ensembl ids, with or without version suffix).
    knowledge, cache
        A :class:`~scllm_jax.knowledge.gene_table.GeneKnowledge` and an
        :class:`~scllm_jax.knowledge.language_model.EmbeddingCache` to use
        instead of the shipped table and the default cache.

    Returns
    -------
    SemanticView
        ``info`` holds ``used``, the match counts, ``genes_embedded``,
        ``gene_vectors_shipped``, ``paths`` (and ``path2_skipped`` with the
        reason when path 2 was dropped), or ``reason`` when the view is off.
    """
    if adata.uns.get("gene_symbols") is False and gene_symbols_key is None:
        return _off("the data has no gene symbols (uns['gene_symbols'] is False), "
                    "so no gene knowledge can be attached.")
    names = gene_identifiers(adata, prepared.gene_names, gene_symbols_key)
    table, mapping = gene_embedding_table(names, config, species=adata.uns.get("species"),
                                          progress=progress, knowledge=knowledge, cache=cache)
    paths, skipped = decide_paths(config, prepared.n_cells)
    info = {"used": True, "genes_matched": int(mapping.n_matched), "genes_total": len(prepared.gene_names),
            "fraction_matched": float(mapping.fraction_matched), "matched_via_alias": int(mapping.via_alias),
            "matched_via_ensembl": int(mapping.via_ensembl), "genes_embedded": int(table["mask"].sum()),
            "gene_vectors_shipped": int(table["n_shipped"]), "summary": mapping.summary(),
            "species": adata.uns.get("species"),
            "language_model": config.semantic.language_model, "paths": paths}
    if skipped:
        info["path2_skipped"] = skipped
    logger.info(mapping.summary())
    if mapping.fraction_matched < MIN_FRACTION_MATCHED or not table["mask"].any():
        view = _off(f"only {mapping.summary()}; below {MIN_FRACTION_MATCHED:.0%} the knowledge is too thin "
                    "to describe cells. Are the gene names symbols?" + _ensembl_hint(names, adata))
        view.info.update({k: v for k, v in info.items() if k != "used"})
        return view
    cells = cell_view_from_gene_embeddings(adata, prepared, table, config, paths=paths, progress=progress,
                                           cache=cache)
    return SemanticView(cells, table, info)
