#!/usr/bin/env python
"""How far pre-training moves the cells away from their principal components.

For each labelled ``.h5ad`` and seed: pre-train the default network graph-only, then
report

- ``knn_overlap``: the mean fraction of each cell's 15 nearest neighbours in the
  pre-trained latent that are also among its 15 nearest on the principal components
  (label-free: 1 means the latent keeps the PCA's neighbourhoods);
- ``kmeans_ari_pca`` / ``kmeans_ari_latent``: k-means with the true K (20 restarts) on
  each, scored against the labels (labels only score).

Rows are appended to ``benchmarks/results/latent_diagnostic.tsv``; a rerun skips the
(dataset, seed) rows already there.

Examples
--------
    python benchmarks/latent_diagnostic.py                                  # ../shared/data, seeds 0 1 2
    python benchmarks/latent_diagnostic.py --data-dir benchmarks/stress_data --seeds 0
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
COLUMNS = ("dataset", "seed", "n_cells", "K", "largest_type_fraction", "knn_overlap", "kmeans_ari_pca",
           "kmeans_ari_latent")


def knn_overlap(first: np.ndarray, second: np.ndarray) -> float:
    """Mean fraction of shared neighbours between two ``(cells, k)`` neighbour tables."""
    return float(np.mean([np.intersect1d(a, b).size / a.size for a, b in zip(first, second)]))


def diagnose(path: Path, seed: int) -> dict:
    import anndata as ad

    from scllm_jax.config import ScllmConfig
    from scllm_jax.graph import graph_from_adjacency, knn_indices, normalized_adjacency
    from scllm_jax.metrics import cluster_metrics
    from scllm_jax.partition import kmeans_labels
    from scllm_jax.preprocess import Preprocessor
    from scllm_jax.step import make_embed, whole_graph_tables
    from scllm_jax.train import pretrain

    adata = ad.read_h5ad(path)
    truth = adata.obs.pop("cell_type").astype(str).to_numpy()  # labels leave the data: used only to score
    n_clusters = len(set(truth))
    config = ScllmConfig(seed=seed, use_semantic=False)
    _, prepared = Preprocessor.fit(adata, config)
    indices = knn_indices(prepared.pca, config.graph.n_neighbors, seed=seed)
    data = whole_graph_tables(prepared.pca, np.asarray(prepared.expression),
                              graph_from_adjacency(normalized_adjacency(indices), prepared.pca), None)
    graphdef, params, _, _ = pretrain(data, config, progress=False)
    latent = np.asarray(make_embed(graphdef)(params, data, None, None)[0])
    overlap = knn_overlap(knn_indices(latent, config.graph.n_neighbors, seed=seed), indices)
    score = {name: cluster_metrics(truth, kmeans_labels(space, n_clusters, seed=seed, n_init=20))["ARI"]
             for name, space in (("pca", prepared.pca), ("latent", latent))}
    counts = np.unique(truth, return_counts=True)[1]
    return {"dataset": path.stem, "seed": seed, "n_cells": adata.n_obs, "K": n_clusters,
            "largest_type_fraction": round(float(counts.max() / counts.sum()), 3),
            "knn_overlap": round(overlap, 4), "kmeans_ari_pca": round(score["pca"], 4),
            "kmeans_ari_latent": round(score["latent"], 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "latent_diagnostic.tsv")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    done = set()
    if args.out.exists():
        with args.out.open() as handle:
            done = {(r["dataset"], int(r["seed"])) for r in csv.DictReader(handle, delimiter="\t")}
    from tqdm import tqdm

    jobs = [(p, s) for p in sorted(args.data_dir.glob("*.h5ad")) for s in args.seeds if (p.stem, s) not in done]
    for path, seed in tqdm(jobs, desc="pre-training"):
        row = diagnose(path, seed)
        new = not args.out.exists()
        with args.out.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(row)
        tqdm.write("\t".join(str(row[c]) for c in COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
