#!/usr/bin/env python
"""Imbalance stress sets: labelled dev sets subsampled so that one type dominates.

Methods that split a large cell type to fill K clusters (DEC's size-balancing
target, relaxed normalised cuts) look fine on balanced data and fail where one
type holds half the cells or more, as in many pancreas and blood sets. Each
stress set keeps every cell of a dataset's largest type, which then holds a
fraction ``f`` of the subsample (0.5, 0.6 or 0.7 by subsample seed): the other
types are drawn with geometrically falling shares, in a random order, so that
some are rare (at least ``MIN_CELLS`` cells each), and where small types cannot
fill their shares the dominant type is subsampled to keep ``f``. K of a stress set is the
number of types it contains.

The sets are derived data: they are written to a folder outside git
(default ``benchmarks/stress_data/``) and are rebuilt identically from the
same source files and seeds.

Examples
--------
    python benchmarks/stress_sets.py                        # all dev sets, subsample seeds 0 1
    python benchmarks/stress_sets.py --small 120            # uniform 120-cell subsamples, seed 0
    python benchmarks/stress_sets.py --balanced 150 --seeds 0 1   # equal types, to benchmarks/balanced_data
    python benchmarks/run_benchmark.py --data-dir benchmarks/stress_data --out-dir benchmarks/results/stress
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "stress_data"
DEFAULT_SMALL_OUT = REPO / "benchmarks" / "small_data"
DEFAULT_BALANCED_OUT = REPO / "benchmarks" / "balanced_data"
#: A balanced set keeps the types with at least this many cells.
BALANCED_MIN_CELLS = 40
LABEL_KEY = "cell_type"
#: Fraction of cells of the dominant type, by subsample seed (cycled).
DOMINANT_FRACTIONS = (0.5, 0.6, 0.7)
#: Each non-dominant type's share is this times the share of the one before it (in a random order).
SHARE_DECAY = 0.6
#: A type kept in a stress set has at least this many cells.
MIN_CELLS = 5


def stress_subsample(labels: np.ndarray, dominant_fraction: float, seed: int) -> np.ndarray:
    """Indices of a subsample in which the largest type holds ``dominant_fraction`` of the cells.

    Parameters
    ----------
    labels
        Cell-type label of each cell.
    dominant_fraction
        Share of the largest type in the subsample.
    seed
        Seed of the order of the other types and of the cells drawn.

    Returns
    -------
    numpy.ndarray
        Sorted indices into ``labels``.
    """
    if not 0.0 < dominant_fraction < 1.0:
        raise ValueError(f"dominant_fraction must lie in (0, 1), got {dominant_fraction}")
    rng = np.random.default_rng(seed)
    types, counts = np.unique(labels, return_counts=True)
    dominant = types[np.argmax(counts)]
    n_dominant = int(counts.max())
    others = rng.permutation(types[types != dominant])
    n_rest = int(round(n_dominant * (1.0 - dominant_fraction) / dominant_fraction))
    shares = SHARE_DECAY ** np.arange(len(others))
    wanted = np.maximum(MIN_CELLS, np.round(n_rest * shares / shares.sum())).astype(int)
    picked = []
    for kind, size in zip(others, wanted):
        members = np.flatnonzero(labels == kind)
        if members.size < MIN_CELLS:
            continue
        picked.append(rng.choice(members, min(size, members.size), replace=False))
    n_others = sum(part.size for part in picked)
    # Small types may not fill their shares: then fewer dominant cells keep the fraction.
    n_keep = min(n_dominant, int(round(n_others * dominant_fraction / (1.0 - dominant_fraction))))
    picked.append(rng.choice(np.flatnonzero(labels == dominant), n_keep, replace=False))
    return np.sort(np.concatenate(picked))


def small_subsample(labels: np.ndarray, n_cells: int, seed: int, min_cells: int = 3) -> np.ndarray:
    """Indices of a uniform random subsample of ``n_cells`` cells, without the types it holds fewer than ``min_cells`` of.

    The small sets stand for the few-dozen-to-few-hundred-cell data sets users
    bring (embryo stages, sorted populations); a type with one or two cells
    left cannot be told apart by any method and is dropped with its cells.
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(labels.size, min(n_cells, labels.size), replace=False))
    kinds, counts = np.unique(labels[rows], return_counts=True)
    return rows[np.isin(labels[rows], kinds[counts >= min_cells])]


def balanced_subsample(labels: np.ndarray, per_type: int, seed: int,
                       min_cells: int = BALANCED_MIN_CELLS) -> np.ndarray:
    """Indices of a subsample in which every kept type has the same number of cells.

    The mirror of the stress sets: methods that favour one large cluster (Ward
    builds a large type from its own merges) show it where no type dominates,
    as in cell-line mixtures, sorted populations and cell-cycle phases. Types
    with fewer than ``min_cells`` cells are dropped; each kept type gives
    ``min(per_type, its smallest kept type's size)`` random cells.
    """
    rng = np.random.default_rng(seed)
    kinds, counts = np.unique(labels, return_counts=True)
    kept = kinds[counts >= min_cells]
    if kept.size < 2:
        raise ValueError(f"fewer than two types with {min_cells} cells or more")
    size = min(per_type, int(counts[counts >= min_cells].min()))
    rows = [rng.choice(np.flatnonzero(labels == kind), size, replace=False) for kind in kept]
    return np.sort(np.concatenate(rows))


def _write_subset(adata, rows: np.ndarray, target: Path, source: str):
    """Write ``adata[rows]`` to ``target`` with its labels as a category and ``source`` recorded; returns the subset."""
    subset = adata[rows].copy()
    subset.obs[LABEL_KEY] = subset.obs[LABEL_KEY].astype(str).astype("category")
    subset.uns["source"] = f"{source} ({Path(__file__).name})"
    subset.write_h5ad(target)
    return subset


def write_stress_sets(data_dir: Path, out_dir: Path, seeds: list[int], datasets: list[str] | None = None) -> list[Path]:
    """Write one stress set per dataset and subsample seed; returns the paths written."""
    import anndata as ad

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in data_dir.glob("*.h5ad") if datasets is None or p.stem in datasets)
    if not paths:
        raise SystemExit(f"No .h5ad files in {data_dir}.")
    written = []
    for path in paths:
        adata = ad.read_h5ad(path)
        labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
        for seed in seeds:
            fraction = DOMINANT_FRACTIONS[seed % len(DOMINANT_FRACTIONS)]
            target = out_dir / f"{path.stem}_stress{seed}.h5ad"
            subset = _write_subset(adata, stress_subsample(labels, fraction, seed), target,
                                   f"{path.name}: stress subsample, seed {seed}, largest type {fraction:.0%} of cells")
            sizes = subset.obs[LABEL_KEY].value_counts().to_numpy()
            print(f"{target.name}: {subset.n_obs} cells, {len(sizes)} types, sizes {sizes.tolist()}")
            written.append(target)
    return written


def write_small_sets(data_dir: Path, out_dir: Path, n_cells: int, seed: int = 0,
                     datasets: list[str] | None = None) -> list[Path]:
    """Write one uniform subsample of ``n_cells`` cells per dataset (:func:`small_subsample`); returns the paths."""
    import anndata as ad

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(p for p in data_dir.glob("*.h5ad") if datasets is None or p.stem in datasets):
        adata = ad.read_h5ad(path)
        rows = small_subsample(adata.obs[LABEL_KEY].astype(str).to_numpy(), n_cells, seed)
        target = out_dir / f"{path.stem}_n{n_cells}.h5ad"
        subset = _write_subset(adata, rows, target, f"{path.name}: uniform subsample of {n_cells} cells, seed {seed}")
        print(f"{target.name}: {subset.n_obs} cells, {subset.obs[LABEL_KEY].nunique()} types")
        written.append(target)
    return written


def write_balanced_sets(data_dir: Path, out_dir: Path, per_type: int, seeds: list[int],
                        datasets: list[str] | None = None) -> list[Path]:
    """Write one balanced subsample (:func:`balanced_subsample`) per dataset and seed; returns the paths."""
    import anndata as ad

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(p for p in data_dir.glob("*.h5ad") if datasets is None or p.stem in datasets):
        adata = ad.read_h5ad(path)
        labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
        for seed in seeds:
            target = out_dir / f"{path.stem}_balanced{seed}.h5ad"
            subset = _write_subset(adata, balanced_subsample(labels, per_type, seed), target,
                                   f"{path.name}: balanced subsample, at most {per_type} cells of each type "
                                   f"with {BALANCED_MIN_CELLS} or more, seed {seed}")
            sizes = subset.obs[LABEL_KEY].value_counts().to_numpy()
            print(f"{target.name}: {subset.n_obs} cells, {len(sizes)} types of {sizes[0]} cells")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"source .h5ad folder ({DEFAULT_DATA})")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help=f"where the sets go ({DEFAULT_OUT})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="subsample seeds (default 0 1)")
    parser.add_argument("--datasets", nargs="+", default=None, help="dataset names (file stems); default all")
    parser.add_argument("--small", type=int, default=None, metavar="N",
                        help="instead, write uniform subsamples of N cells (seed: the first of --seeds), "
                             f"to {DEFAULT_SMALL_OUT} unless --out-dir is given")
    parser.add_argument("--balanced", type=int, default=None, metavar="N",
                        help="instead, write balanced subsamples, at most N cells of each type (one set per seed), "
                             f"to {DEFAULT_BALANCED_OUT} unless --out-dir is given")
    args = parser.parse_args(argv)
    if args.balanced is not None:
        out_dir = args.out_dir if args.out_dir != DEFAULT_OUT else DEFAULT_BALANCED_OUT
        write_balanced_sets(args.data_dir, out_dir, args.balanced, args.seeds, args.datasets)
        return 0
    if args.small is not None:
        out_dir = args.out_dir if args.out_dir != DEFAULT_OUT else DEFAULT_SMALL_OUT
        write_small_sets(args.data_dir, out_dir, args.small, args.seeds[0], args.datasets)
        return 0
    write_stress_sets(args.data_dir, args.out_dir, args.seeds, args.datasets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
