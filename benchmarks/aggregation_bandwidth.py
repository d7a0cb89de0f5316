"""Achieved memory bandwidth of the graph aggregation ``A X`` (the GCN's message passing).

Builds a kNN-shaped graph of ``N`` cells (``k`` random neighbours plus a self
loop, edges sorted by receiver as :func:`scllm_jax.graph.knn_graph` makes
them), times the jitted :func:`scllm_jax.graph.propagate` (gather the
senders' rows, weight them, ``segment_sum`` into the receivers) as the median
of repeats, and turns the time into bandwidth from the bytes the operation
must move at the least::

    gathered rows   E * F * 4     (each edge reads its sender's row)
    edge arrays     E * 12        (weight, sender, receiver)
    output          N * F * 4

where ``E = N (k + 1)``. With ``--peak-gbs`` (or a known device name) it
reports the fraction of the card's peak bandwidth. Runs unchanged on CPU and GPU.

Example
-------
::

    python benchmarks/aggregation_bandwidth.py --cells 1000000 --features 256 --out benchmarks/results/aggregation_gpu.tsv
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from tsv_rows import append_row

#: Peak memory bandwidth (GB/s) of cards we know, by a fragment of ``device_kind``.
KNOWN_PEAK_GBS = {"H200": 4800.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0,
                  "A100-SXM4-80GB": 2039.0, "A100": 1555.0}

COLUMNS = ["device", "n_cells", "neighbours", "features", "edges", "median_ms", "bytes_gb", "achieved_gbs",
           "peak_gbs", "fraction_of_peak"]


def peak_for(device_kind: str) -> float | None:
    """The peak bandwidth of a known card, else ``None``."""
    for fragment, peak in KNOWN_PEAK_GBS.items():
        if fragment.lower() in device_kind.lower():
            return peak
    return None


def measure(n_cells: int, neighbours: int, features: int, repeats: int, seed: int = 0) -> dict:
    """Time one aggregation; return the row of the TSV (without device fields)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scllm_jax.graph import propagate

    rng = np.random.default_rng(seed)
    receivers = np.repeat(np.arange(n_cells, dtype=np.int32), neighbours + 1)
    senders = rng.integers(0, n_cells, receivers.size, dtype=np.int32)
    senders[:: neighbours + 1] = np.arange(n_cells, dtype=np.int32)  # self loops
    edges = np.full(receivers.size, 1.0 / (neighbours + 1), np.float32)
    features_array = jax.random.normal(jax.random.key(seed), (n_cells, features), jnp.float32)
    edges, senders, receivers = map(jnp.asarray, (edges, senders, receivers))
    aggregate = jax.jit(propagate)
    aggregate(edges, senders, receivers, features_array).block_until_ready()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        aggregate(edges, senders, receivers, features_array).block_until_ready()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    n_edges = int(receivers.size)
    moved = n_edges * features * 4 + n_edges * 12 + n_cells * features * 4
    return {"n_cells": n_cells, "neighbours": neighbours, "features": features, "edges": n_edges,
            "median_ms": round(seconds * 1e3, 3), "bytes_gb": round(moved / 1e9, 3),
            "achieved_gbs": round(moved / seconds / 1e9, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--neighbours", type=int, default=15)
    parser.add_argument("--features", type=int, default=256, help="row width (the encoder's hidden layer)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak-gbs", type=float, default=None, help="the card's peak bandwidth, GB/s")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "aggregation.tsv"))
    args = parser.parse_args()

    import jax

    device = jax.devices()[0]
    kind = f"{device.platform}:{device.device_kind}"
    peak = args.peak_gbs if args.peak_gbs is not None else peak_for(device.device_kind)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n_cells in args.cells:
        row = measure(n_cells, args.neighbours, args.features, args.repeats)
        row.update(device=kind, peak_gbs=peak if peak is not None else "",
                   fraction_of_peak=round(row["achieved_gbs"] / peak, 3) if peak else "")
        append_row(out, COLUMNS, row)


if __name__ == "__main__":
    main()
