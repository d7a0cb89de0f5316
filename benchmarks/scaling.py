"""Scaling benchmark: graph build, time per epoch, fit time, peak memory and ARI vs number of cells.

Synthetic atlases (:func:`scllm_jax.synthetic.synthetic_atlas`: 2,000 genes,
K = 20 negative-binomial programmes over real gene symbols). Each size runs
in its own process so its peak RSS is its own. Appends one row per size to a
TSV. Runs unchanged on CPU and GPU; label the device with ``--device-label``.

Examples
--------
::

    python benchmarks/scaling.py --sizes 10000 100000 --device-label cpu-2core
    python benchmarks/scaling.py --sizes 1000000 --device-label h100 --out benchmarks/results/scaling_gpu.tsv
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

from tsv_rows import append_row

COLUMNS = ["n_cells", "n_genes", "n_clusters", "device", "jax_devices", "mode", "semantic", "generate_s",
           "preprocess_s", "graph_s", "semantic_s", "pretrain_epochs", "cluster_epochs", "steps_per_epoch",
           "s_per_epoch", "fit_s", "total_s", "peak_rss_gb", "ari", "nmi", "steady_epoch_s"]


class EpochTimes(logging.Handler):
    """Collects the seconds of each mini-batch epoch from the training log ("... epoch N: S steps in T s")."""

    def __init__(self):
        super().__init__()
        self.seconds: list[tuple[str, int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        import re

        found = re.match(r"(\w+) epoch (\d+): \d+ steps in ([\d.]+) s", record.getMessage())
        if found:
            self.seconds.append((found[1], int(found[2]), float(found[3])))

    def steady(self) -> float:
        """Median epoch time after each phase's first epoch (which compiles), NaN when there is none."""
        import numpy as np

        later = [t for _, epoch, t in self.seconds if epoch > 1]
        return float(np.median(later)) if later else float("nan")


def write_atlas(path: str, n_cells: int, n_genes: int, n_clusters: int, seed: int, n_jobs: int = 1) -> None:
    """Generate a synthetic atlas and write it to ``path`` (run in its own process)."""
    from scllm_jax.synthetic import synthetic_atlas

    from scllm_jax.io import write_h5ad

    write_h5ad(synthetic_atlas(n_cells, n_genes, n_clusters, seed=seed, n_jobs=n_jobs), path)


def run_one(args: argparse.Namespace) -> dict:
    """Generate, fit and score one size (in this process)."""
    import jax
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from scllm_jax.config import ScllmConfig
    from scllm_jax.model import ScllmModel
    from scllm_jax.synthetic import synthetic_atlas

    # Stage messages (the model's own log lines included) go to stderr as they happen, so a
    # run cut short by a time limit still shows how far it got.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    epoch_times = EpochTimes()
    logging.getLogger("scllm_jax.train").addHandler(epoch_times)
    n = args.single
    start = time.perf_counter()
    if args.backed:
        # Out-of-core input: another process writes the atlas to .h5ad, so this process's peak RSS
        # is the fit's from the file opened backed, never the whole matrix.
        import multiprocessing
        import tempfile

        import anndata as ad

        path = Path(tempfile.mkdtemp()) / "atlas.h5ad"
        writer = multiprocessing.get_context("spawn").Process(
            target=write_atlas, args=(str(path), n, args.n_genes, args.n_clusters, args.seed, args.generate_jobs))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise RuntimeError(f"writing the synthetic atlas failed (exit code {writer.exitcode})")
        adata = ad.read_h5ad(path, backed="r")
    else:
        adata = synthetic_atlas(n, args.n_genes, args.n_clusters, seed=args.seed, n_jobs=args.generate_jobs)
    generate_s = time.perf_counter() - start
    logging.info("generated %d cells in %.1f s%s", n, generate_s, " (written, opened backed)" if args.backed else "")
    changes = dict(seed=args.seed, pretrain_epochs=args.minibatch_epochs[0],
                   cluster_epochs=args.minibatch_epochs[1], kmeans_n_init=args.kmeans_n_init)
    if args.mode == "minibatch":
        changes["minibatch_min_cells"] = 1
    elif args.mode == "full":
        changes["minibatch_min_cells"] = 10 ** 12
    # Path 1 only at scale: path 2 runs the language model once per cell.
    changes.update(use_semantic=args.semantic, use_path2=False)
    config = ScllmConfig(**changes)
    model = ScllmModel(config).fit(adata, args.n_clusters, progress=False)
    result = model.result
    epochs = result.pretrain_epochs + result.cluster_epochs
    fit_s = result.seconds["pretrain"] + result.seconds["cluster"]
    minibatch = model.engine_.minibatch
    truth = adata.obs["cell_type"].cat.codes.to_numpy()
    return {"n_cells": n, "n_genes": args.n_genes, "n_clusters": args.n_clusters, "device": args.device_label,
            "jax_devices": f"{jax.device_count()}x{jax.devices()[0].platform}",
            "mode": ("minibatch" if minibatch else "full") + ("+backed" if args.backed else ""), "semantic": "path1" if args.semantic else "off",
            "generate_s": round(generate_s, 2), "preprocess_s": round(model.timings["preprocess"], 2),
            "graph_s": round(model.timings["graph"], 2), "semantic_s": round(model.timings.get("semantic", 0.0), 2),
            "pretrain_epochs": result.pretrain_epochs, "cluster_epochs": result.cluster_epochs,
            "steps_per_epoch": -(-n // config.train.minibatch_size) if minibatch else 1,
            "s_per_epoch": round(fit_s / max(epochs, 1), 4), "fit_s": round(fit_s, 2),
            "total_s": round(model.timings["total"], 2),
            # ru_maxrss is in KiB on Linux.
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
            "ari": round(adjusted_rand_score(truth, result.labels), 4),
            "nmi": round(normalized_mutual_info_score(truth, result.labels), 4),
            "steady_epoch_s": round(epoch_times.steady(), 4)}


def plot(results: Path, out: Path) -> None:
    """Seconds per epoch (steady state where measured) against cells, per device and engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for path in sorted(results.glob("scaling_*.tsv")):
        table = pd.read_csv(path, sep="\t")
        table = table[(table["mode"] == "minibatch") & (table["semantic"] == "off")]
        if "engine" not in table:
            table["engine"] = "host-built batches (before)"
        if "steady_epoch_s" not in table:
            table["steady_epoch_s"] = float("nan")
        for (device, engine), rows in table.groupby(["device", "engine"]):
            # Stable: within a size the file order holds, so the latest row is kept.
            rows = rows.sort_values("n_cells", kind="stable").drop_duplicates("n_cells", keep="last")
            seconds = rows["steady_epoch_s"].fillna(rows["s_per_epoch"])
            style = "-o" if engine == "device-resident" else "--s"
            ax.plot(rows["n_cells"], seconds, style, label=f"{device}, {engine}")
            for n, value in zip(rows["n_cells"], seconds):
                ax.annotate(f"{value:.2g} s", (n, value), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cells")
    ax.set_ylabel("seconds per epoch")
    ax.set_title("Mini-batch epoch, 2,000 genes, K = 20\n(device-resident: steady state; before: mean with compilation)",
                 fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--device-label", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scaling_cpu.tsv"))
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--n-clusters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=["auto", "minibatch", "full"], default="auto",
                        help="auto: the config's switch (minibatch_min_cells)")
    parser.add_argument("--minibatch-epochs", type=int, nargs=2, default=[5, 5], metavar=("PRETRAIN", "CLUSTER"))
    parser.add_argument("--kmeans-n-init", type=int, default=4)
    parser.add_argument("--semantic", action="store_true", help="semantic view, path 1 only")
    parser.add_argument("--backed", action="store_true",
                        help="fit from the atlas written to .h5ad and opened backed (out-of-core input)")
    parser.add_argument("--generate-jobs", type=int, default=1,
                        help="processes generating the atlas (the counts do not depend on it)")
    parser.add_argument("--write-atlas", metavar="PATH",
                        help="only write the atlas of the first size to PATH (.h5ad) and exit")
    parser.add_argument("--plot", action="store_true",
                        help="only draw results/scaling.png from the results/scaling_*.tsv files")
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plot:
        results = Path(__file__).parent / "results"
        plot(results, results / "scaling.png")
        return
    if args.write_atlas:
        write_atlas(args.write_atlas, args.sizes[0], args.n_genes, args.n_clusters, args.seed, args.generate_jobs)
        return
    if args.single is not None:
        print(json.dumps(run_one(args)))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        command = [sys.executable, __file__, "--single", str(n), "--device-label", args.device_label,
                   "--n-genes", str(args.n_genes), "--n-clusters", str(args.n_clusters), "--seed", str(args.seed),
                   "--mode", args.mode, "--minibatch-epochs", *map(str, args.minibatch_epochs),
                   "--kmeans-n-init", str(args.kmeans_n_init), "--generate-jobs", str(args.generate_jobs)] \
            + (["--semantic"] if args.semantic else []) \
            + (["--backed"] if args.backed else [])
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr: the child's progress
        if done.returncode != 0:
            print(f"n_cells={n} failed (exit status {done.returncode}); its log is above", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        append_row(out, COLUMNS, row)


if __name__ == "__main__":
    main()
