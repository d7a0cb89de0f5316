#!/usr/bin/env python
"""Other reference clusterings for the final check, against Ward on the principal components.

The final check reports the head's clusters or Ward's clustering of the principal
components, whichever agrees better with the cells' neighbourhoods; off the dev sets it
reports Ward almost everywhere (``selection_criteria.py``), so the reference is most of
what a user of unseen data gets. Each candidate here is scored on the same
preprocessing (``Preprocessor.fit`` of the default configuration, ``--seed``), true K,
labels only scoring:

- ``ward``, ``kmeans`` (10 restarts): on the 50 principal components, as today;
- ``ward_parallel_analysis``, ``kmeans_parallel_analysis``: on the leading components
  whose variance exceeds that of the same component with every gene's values permuted
  over the cells (Horn's parallel analysis; at least 2);
- ``spectral_kmeans``, ``spectral_ward``, ``spectral_njw``: on the top K eigenvectors of
  the normalised kNN adjacency (the cell graph's neighbour count), the last with rows
  scaled to unit length (Ng, Jordan and Weiss);
- ``consensus_dims``, ``consensus_dims_kmeans``, ``consensus_pca_seeds``,
  ``consensus_all``: Ward's clustering of the concatenated one-hot memberships of an
  ensemble (Ward on 10, 20, 30, 40 and 50 components; plus k-means on each; Ward on
  five randomised PCAs of different seeds; all of them): a co-association consensus;
- ``structured_ward_15``, ``structured_ward_30``: Ward whose merges must follow an edge of
  the kNN graph (scikit-learn's connectivity-constrained Ward);
- ``pearson_ward``, ``pearson_kmeans``: on 50 components of analytic Pearson residuals
  (scanpy's experimental ``pearson_residuals`` gene choice and normalisation; count data
  only, skipped otherwise);
- ``unit_ward``, ``unit_kmeans``: on the principal components scaled to unit length.

Rows go to ``benchmarks/results/reference_candidates.tsv`` (one per data set, seed and
candidate; a rerun skips the rows already there); ``--summary`` prints the mean ARI of
each candidate over the sets that have every candidate's row. Findings:
``docs/METHOD_NOTES.md`` (the final check).

Examples
--------
    python benchmarks/reference_candidates.py ../shared/data/*.h5ad benchmarks/stress_data/*.h5ad \\
        benchmarks/small_data/*.h5ad benchmarks/tiny_data/*.h5ad benchmarks/data/*.h5ad
    python benchmarks/reference_candidates.py --summary
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
COLUMNS = ["dataset", "seed", "n_cells", "K", "candidate", "ARI", "n_components"]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "reference_candidates.tsv"


class Inputs:
    """What the candidates share for one data set: the default preprocessing, K, and what several of them
    compute (the cell graph, the spectral embedding, ensemble members), each computed once when first asked."""

    def __init__(self, counts, n_clusters: int, seed: int):
        from scllm_jax.config import ScllmConfig
        from scllm_jax.preprocess import Preprocessor

        self.counts, self.n_clusters, self.seed = counts, n_clusters, seed
        self.preprocessor, prepared = Preprocessor.fit(counts.copy(), ScllmConfig(seed=seed, use_semantic=False))
        self.pca = np.asarray(prepared.pca, np.float64)
        self.scaled = np.asarray(prepared.expression, np.float32)
        self._kept: dict = {}

    def once(self, key, compute: Callable[[], object]):
        """``compute()``, run the first time ``key`` is asked for (every computation here is seeded)."""
        if key not in self._kept:
            self._kept[key] = compute()
        return self._kept[key]

    def graph(self, k: int):
        """The kNN graph of the principal components with ``k`` neighbours, capped as the cell graph is."""
        from scllm_jax.graph import knn_adjacency, knn_indices, neighbour_count

        neighbours = neighbour_count(self.pca.shape[0], k, self.n_clusters)
        return self.once(("graph", k), lambda: knn_adjacency(knn_indices(self.pca, neighbours, seed=self.seed)))


def ward(space: np.ndarray, inputs: Inputs) -> np.ndarray:
    from scllm_jax.partition import ward_labels

    return ward_labels(space, inputs.n_clusters, seed=inputs.seed)


def kmeans(space: np.ndarray, inputs: Inputs) -> np.ndarray:
    from scllm_jax.partition import kmeans_labels

    return kmeans_labels(space, inputs.n_clusters, seed=inputs.seed, n_init=10)


def component_variances(matrix: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """Variances of the leading principal components of ``matrix`` (randomised solver)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=n_components, svd_solver="randomized", random_state=seed).fit(matrix).explained_variance_


def parallel_analysis_count(inputs: Inputs) -> int:
    """Leading components above their permuted-data counterparts (Horn 1965), at least 2."""
    return inputs.once("parallel_analysis", lambda: _parallel_analysis_count(inputs))


def _parallel_analysis_count(inputs: Inputs) -> int:
    n_components = inputs.pca.shape[1]
    rng = np.random.default_rng(inputs.seed)
    permuted = np.column_stack([rng.permutation(column) for column in inputs.scaled.T])
    real = component_variances(inputs.scaled.astype(np.float64), n_components, inputs.seed)
    null = component_variances(permuted.astype(np.float64), n_components, inputs.seed)
    below = np.flatnonzero(real <= null)
    return max(int(below[0]) if below.size else n_components, 2)


def spectral_embedding(inputs: Inputs) -> np.ndarray:
    """Top K eigenvectors of ``D^-1/2 A D^-1/2`` of the cell graph (no self loops)."""
    return inputs.once("spectral", lambda: _spectral_embedding(inputs))


def _spectral_embedding(inputs: Inputs) -> np.ndarray:
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    adjacency = sp.csr_matrix(inputs.graph(15), dtype=np.float64)
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    scale = 1.0 / np.sqrt(np.maximum(np.asarray(adjacency.sum(axis=1)).ravel(), 1e-12))
    normalised = sp.diags(scale) @ adjacency @ sp.diags(scale)
    n_cells, k = adjacency.shape[0], inputs.n_clusters
    if n_cells < 300:
        vectors = np.linalg.eigh(normalised.toarray())[1][:, ::-1][:, :k]
    else:  # shifted by I so that the largest eigenvalues are the largest in magnitude
        vectors = eigsh(normalised + sp.identity(n_cells), k=k, which="LA", tol=1e-6, v0=np.ones(n_cells))[1][:, ::-1]
    return vectors


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def consensus(partitions: list[np.ndarray], inputs: Inputs) -> np.ndarray:
    """Ward on the concatenated one-hot memberships: two cells' squared distance is twice the partitions
    that separate them (a co-association consensus)."""
    blocks = [np.eye(labels.max() + 1)[labels] for labels in partitions]
    return ward(np.hstack(blocks), inputs)


def ensemble(inputs: Inputs, members: str) -> list[np.ndarray]:
    n_components = inputs.pca.shape[1]
    dims = sorted({d for d in (10, 20, 30, 40, n_components) if d <= n_components})
    partitions = []
    if members in ("dims", "dims_kmeans", "all"):
        partitions += [inputs.once(("ward", d), lambda: ward(inputs.pca[:, :d], inputs)) for d in dims]
    if members in ("dims_kmeans", "all"):
        partitions += [inputs.once(("kmeans", d), lambda: kmeans(inputs.pca[:, :d], inputs)) for d in dims]
    if members in ("pca_seeds", "all"):
        if members == "pca_seeds":
            partitions.append(inputs.once(("ward", n_components), lambda: ward(inputs.pca, inputs)))
        partitions += [inputs.once(("ward_pca_seed", offset), lambda: ward(other_pca(inputs, offset), inputs))
                       for offset in range(1, 5)]
    return partitions


def other_pca(inputs: Inputs, offset: int) -> np.ndarray:
    """The principal components of the same scaled expression from another seed of the randomised solver."""
    from sklearn.decomposition import PCA

    return PCA(n_components=inputs.pca.shape[1], svd_solver="randomized",
               random_state=inputs.seed * 100 + offset).fit_transform(inputs.scaled)


def structured_ward(inputs: Inputs, k: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=inputs.n_clusters, linkage="ward",
                                   connectivity=inputs.graph(k)).fit_predict(inputs.pca)


def pearson_components(inputs: Inputs) -> np.ndarray | None:
    """50 principal components of analytic Pearson residuals of the variable genes; ``None`` unless counts."""
    return inputs.once("pearson", lambda: _pearson_components(inputs))


def _pearson_components(inputs: Inputs) -> np.ndarray | None:
    import scanpy as sc
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    if inputs.preprocessor.values != "counts":
        return None
    cells = inputs.counts.copy()
    cells.X = sp.csr_matrix(cells.X, dtype=np.float32)
    sc.pp.filter_genes(cells, min_cells=min(3, cells.n_obs // 2))
    sc.experimental.pp.highly_variable_genes(cells, flavor="pearson_residuals", n_top_genes=min(2000, cells.n_vars))
    cells = cells[:, cells.var["highly_variable"]].copy()
    sc.experimental.pp.normalize_pearson_residuals(cells)
    residuals = cells.X.toarray() if sp.issparse(cells.X) else np.asarray(cells.X)
    n_components = min(50, residuals.shape[0] - 1, residuals.shape[1] - 1)
    return PCA(n_components=n_components, svd_solver="randomized", random_state=inputs.seed).fit_transform(residuals)


def _on_pearson(cluster: Callable) -> Callable:
    def run(inputs: Inputs):
        components = pearson_components(inputs)
        return None if components is None else cluster(components, inputs)

    return run


def _on_parallel_analysis(cluster: Callable) -> Callable:
    def run(inputs: Inputs):
        count = parallel_analysis_count(inputs)
        return cluster(inputs.pca[:, :count], inputs), count

    return run


#: Candidate name -> labels (or ``(labels, components used)``, or ``None`` when it does not apply) of one set.
CANDIDATES: dict[str, Callable[[Inputs], object]] = {
    "ward": lambda inputs: ward(inputs.pca, inputs),
    "kmeans": lambda inputs: kmeans(inputs.pca, inputs),
    "ward_parallel_analysis": _on_parallel_analysis(ward),
    "kmeans_parallel_analysis": _on_parallel_analysis(kmeans),
    "spectral_kmeans": lambda inputs: kmeans(spectral_embedding(inputs), inputs),
    "spectral_ward": lambda inputs: ward(spectral_embedding(inputs), inputs),
    "spectral_njw": lambda inputs: kmeans(unit_rows(spectral_embedding(inputs)), inputs),
    "consensus_dims": lambda inputs: consensus(ensemble(inputs, "dims"), inputs),
    "consensus_dims_kmeans": lambda inputs: consensus(ensemble(inputs, "dims_kmeans"), inputs),
    "consensus_pca_seeds": lambda inputs: consensus(ensemble(inputs, "pca_seeds"), inputs),
    "consensus_all": lambda inputs: consensus(ensemble(inputs, "all"), inputs),
    "structured_ward_15": lambda inputs: structured_ward(inputs, 15),
    "structured_ward_30": lambda inputs: structured_ward(inputs, 30),
    "pearson_ward": _on_pearson(ward),
    "pearson_kmeans": _on_pearson(kmeans),
    "unit_ward": lambda inputs: ward(unit_rows(inputs.pca), inputs),
    "unit_kmeans": lambda inputs: kmeans(unit_rows(inputs.pca), inputs),
}


def score(path: Path, seed: int, candidates: list[str], done: set) -> list[dict]:
    """The rows of ``candidates`` not yet ``done`` for one labelled ``.h5ad``."""
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    todo = [name for name in candidates if (path.stem, str(seed), name) not in done]
    if not todo:
        return []
    counts = ad.read_h5ad(path)
    truth = counts.obs.pop("cell_type").astype(str).to_numpy()  # labels leave the data: used only to score
    n_clusters = len(set(truth))
    inputs = Inputs(counts, n_clusters, seed)
    rows = []
    for name in todo:
        found = CANDIDATES[name](inputs)
        labels, n_components = found if isinstance(found, tuple) else (found, inputs.pca.shape[1])
        ari = "" if labels is None else round(float(adjusted_rand_score(truth, labels)), 4)
        rows.append({"dataset": path.stem, "seed": seed, "n_cells": counts.n_obs, "K": n_clusters,
                     "candidate": name, "ARI": ari, "n_components": "" if labels is None else n_components})
    return rows


def summary(out: Path) -> None:
    """Mean ARI of each candidate over the (dataset, seed) pairs where every candidate has a value."""
    import pandas as pd

    table = pd.read_csv(out, sep="\t")
    wide = table.pivot_table(index=["dataset", "seed"], columns="candidate", values="ARI")
    complete = wide.dropna(axis=1, how="all")
    shared = complete.dropna()
    print(f"{len(shared)} (dataset, seed) pairs with a value for every candidate (Pearson residuals: count data only)")
    means = shared.mean().sort_values(ascending=False)
    ward_ari = shared["ward"] if "ward" in shared else None
    for name, mean in means.items():
        if ward_ari is None:
            print(f"  {name:26s} {mean:.3f}")
            continue
        up = int((shared[name] > ward_ari + 0.02).sum())
        down = int((shared[name] < ward_ari - 0.02).sum())
        print(f"  {name:26s} {mean:.3f}   vs ward: {up} sets up, {down} down (by more than 0.02)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="labelled .h5ad files (obs['cell_type'])")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--summary", action="store_true", help="print the means of the rows in --out")
    args = parser.parse_args(argv)
    if args.summary:
        summary(args.out)
        return 0
    if not args.files:
        parser.error("name the labelled .h5ad files to score, or pass --summary")
    warnings.simplefilter("ignore")
    from tsv_rows import append_row

    done = set()
    if args.out.exists():
        with args.out.open() as handle:
            done = {(row["dataset"], row["seed"], row["candidate"]) for row in csv.DictReader(handle, delimiter="\t")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path in args.files:
        for row in score(path, args.seed, args.candidates, done):
            append_row(args.out, COLUMNS, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
