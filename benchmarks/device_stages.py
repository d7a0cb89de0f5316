"""The stages before training on the device vs on the host, same fits: ARI over seeds (labels only score).

On an accelerator, ``scllm_jax`` runs the scaling moments, the PCA projection,
(above ``exact_knn_max_cells``) the kNN graph and (from
``partition.DEVICE_KMEANS_MIN_CELLS``) k-means on the device
(``parallel.on_accelerator()``). This script runs both paths on whatever JAX
device there is (a CPU too) by setting that switch in the three modules that
read it, fits a synthetic atlas with each for several seeds, and appends one
row per fit to ``results/device_stages.tsv``.

Examples
--------
::

    python benchmarks/device_stages.py --cells 60000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tsv_rows import append_row

COLUMNS = ["n_cells", "stages", "seed", "pretrain_epochs", "cluster_epochs", "ari", "preprocess_s", "graph_s",
           "total_s", "commit"]


def _commit() -> str:
    """The checkout's short commit, ``+`` when it has uncommitted changes."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout

    return git("rev-parse", "--short", "HEAD").strip() + ("+" if git("status", "--porcelain", "--", "..").strip()
                                                          else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=60_000, help="above exact_knn_max_cells (50,000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs=2, default=[3, 3], metavar=("PRETRAIN", "CLUSTER"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "device_stages.tsv"))
    args = parser.parse_args()

    from sklearn.metrics import adjusted_rand_score

    import scllm_jax.graph as graph
    import scllm_jax.partition as partition
    import scllm_jax.preprocess as preprocess
    from scllm_jax.config import ScllmConfig
    from scllm_jax.model import ScllmModel
    from scllm_jax.synthetic import synthetic_atlas

    adata = synthetic_atlas(args.cells, 2000, 20, seed=0)
    truth = adata.obs["cell_type"].cat.codes.to_numpy()
    for stages in ("host", "device"):
        on_device = stages == "device"
        switch = lambda on_device=on_device: on_device  # noqa: E731
        graph.on_accelerator = preprocess.on_accelerator = partition.on_accelerator = switch
        for seed in args.seeds:
            config = ScllmConfig(seed=seed, pretrain_epochs=args.epochs[0],
                                 cluster_epochs=args.epochs[1], kmeans_n_init=4)
            start = time.perf_counter()
            model = ScllmModel(config).fit(adata, 20, progress=False)
            append_row(Path(args.out), COLUMNS, {
                "n_cells": args.cells, "stages": stages, "seed": seed, "pretrain_epochs": args.epochs[0],
                "cluster_epochs": args.epochs[1], "ari": round(adjusted_rand_score(truth, model.labels_), 4),
                "preprocess_s": round(model.timings["preprocess"], 1), "graph_s": round(model.timings["graph"], 1),
                "total_s": round(time.perf_counter() - start, 1), "commit": _commit()})


if __name__ == "__main__":
    main()
