#!/usr/bin/env python
"""Does ``scllm-jax cluster`` finish, or end in one line, on every labelled file and its other value types?

For each ``.h5ad`` in ``--data-dir`` the counts are written again as a user's file might
hold them (``tests/conftest.value_version``: RPKM, TPM, ``log1p`` of CPM, ``log2(1 + TPM)``)
and as scaled data with the counts in ``layers['counts']``, as scanpy's tutorials leave a
file (scaled variable genes in ``X``, log expression in ``raw``), with repeated gene
names, and with every 100th cell emptied (no counts, as an empty droplet; those cells are
not scored); each file goes through the
command line in a fresh process, as a user would run it, with a short training budget
(``--epochs``: this checks inputs, not quality). A run passes when it exits 0 and writes
``obs['scllm']``, or exits non-zero with a one-line ``error:`` message; a traceback fails
it. Rows are written to ``benchmarks/results/real_inputs.tsv`` with the value type the
run reported and the ARI against the labels (labels only score).

Example
-------
    python benchmarks/real_inputs.py                    # ../shared/data
    python benchmarks/real_inputs.py --datasets baron_mouse1 --epochs 5
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VERSIONS = ("counts", "rpkm", "tpm", "log1p_cpm", "log2_tpm", "scaled_with_counts", "scanpy_processed",
            "repeated_names", "empty_cells")
COLUMNS = ("dataset", "version", "exit_code", "outcome", "values_reported", "ARI", "seconds", "message")


def write_version(counts, version: str, path: Path) -> None:
    """``counts`` as a file of ``version`` holds it, without its labels' influence (they stay in obs to score)."""
    import numpy as np
    import scanpy as sc

    from tests.conftest import value_version

    if version == "counts":
        adata = counts
    elif version == "scanpy_processed":  # scanpy's tutorials: log expression in raw, scaled variable genes in X
        adata = counts.copy()
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        adata.raw = adata
        sc.pp.highly_variable_genes(adata, n_top_genes=min(1000, adata.n_vars), subset=True)
        sc.pp.scale(adata, max_value=10)
    elif version == "repeated_names":  # every 50th gene takes the name before it (symbols from Ensembl ids)
        adata = counts.copy()
        names = adata.var_names.to_numpy().copy()
        names[50::50] = names[49:-1:50]
        adata.var_names = names
    elif version == "empty_cells":  # every 100th cell without a single count (empty droplets)
        import scipy.sparse as sp

        adata = counts.copy()
        matrix = sp.csr_matrix(adata.X, dtype=np.float32)
        scale = np.ones(adata.n_obs, np.float32)
        scale[::100] = 0.0
        matrix = sp.diags(scale) @ matrix
        matrix.eliminate_zeros()
        adata.X = sp.csr_matrix(matrix)
    elif version == "scaled_with_counts":
        adata = counts.copy()
        adata.layers["counts"] = adata.X.copy()
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        sc.pp.scale(adata, max_value=10)  # dense, negative values: not clusterable as they are
        adata.X = np.asarray(adata.X, dtype=np.float32)
    else:
        adata = value_version(counts, version)
    adata.write_h5ad(path)


def run(path: Path, out: Path, config: Path, n_clusters: int) -> dict:
    command = [sys.executable, "-m", "scllm_jax.cli", "cluster", str(path), "--out", str(out), "--n-clusters",
               str(n_clusters), "--config", str(config), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    if done.returncode == 0:
        outcome = "clustered" if out.exists() else "exit 0 but no output"
    elif "Traceback" in done.stderr:
        outcome = "traceback"
    else:
        outcome = "one-line error" if len(errors) == 1 else "error without one line"
    said = errors or [line.split("UserWarning: ", 1)[1] for line in done.stderr.splitlines()
                      if "UserWarning: " in line and "scllm_jax" in line]
    message = (said[0] if said else "")[:300]
    return {"exit_code": done.returncode, "outcome": outcome, "seconds": round(seconds, 1), "message": message}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=None, help="file stems (default all)")
    parser.add_argument("--versions", nargs="+", default=list(VERSIONS), choices=VERSIONS)
    parser.add_argument("--epochs", type=int, default=10, help="pre-training and clustering epochs (default 10)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "real_inputs.tsv")
    args = parser.parse_args(argv)
    import anndata as ad

    from scllm_jax.metrics import cluster_metrics

    paths = [p for p in sorted(args.data_dir.glob("*.h5ad")) if args.datasets is None or p.stem in args.datasets]
    if not paths:
        parser.error(f"no .h5ad files to run in {args.data_dir}")
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config = folder / "config.json"
        config.write_text(json.dumps({"pretrain_epochs": args.epochs, "cluster_epochs": args.epochs}))
        for path in paths:
            counts = ad.read_h5ad(path)
            n_clusters = counts.obs["cell_type"].nunique()
            for version in args.versions:
                file, out = folder / f"{path.stem}_{version}.h5ad", folder / f"{path.stem}_{version}_out.h5ad"
                write_version(counts, version, file)
                row = {"dataset": path.stem, "version": version, **run(file, out, config, n_clusters)}
                if row["outcome"] == "clustered":
                    result = ad.read_h5ad(out)
                    row["values_reported"] = result.uns["scllm"]["input"]["values"]
                    clustered = result.obs["scllm"].notna().to_numpy()  # cells without counts get no cluster
                    row["ARI"] = round(cluster_metrics(result.obs["cell_type"][clustered],
                                                       result.obs["scllm"][clustered])["ARI"], 4)
                    out.unlink()
                failed += row["outcome"] not in ("clustered", "one-line error")
                file.unlink()
                rows.append(row)
                print("\t".join(str(row.get(c, "")) for c in COLUMNS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    n_run = len(rows)
    if args.out.exists():  # rows of (dataset, version) pairs not run now are kept
        with args.out.open() as handle:
            ran = {(row["dataset"], row["version"]) for row in rows}
            rows = [row for row in csv.DictReader(handle, delimiter="\t")
                    if (row["dataset"], row["version"]) not in ran] + rows
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in COLUMNS} for row in rows)
    print(f"{n_run - failed} of {n_run} runs clustered or ended in one line; written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
