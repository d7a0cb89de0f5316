"""``benchmarks/embedding_throughput.py`` records path-2 (Cell2Sentence) throughput (real model, real cells)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_throughput_row_records_path2_cells_per_second(baron_small, tmp_path):
    pytest.importorskip("transformers")
    from scllm_jax.config import ScllmConfig

    sys.path.insert(0, str(BENCHMARKS))
    try:
        throughput = importlib.import_module("embedding_throughput")
    finally:
        sys.path.remove(str(BENCHMARKS))
    config = ScllmConfig.tiny(n_top_genes=200, sentence_genes=20, use_semantic=True, use_path2=True)
    row = throughput.measure(baron_small[:24].copy(), "pancreas_24", config, short_genes=5)
    assert set(row) == set(throughput.COLUMNS)
    assert row["n_cells"] == 24 and row["sentence_genes"] == 20 and row["path2_short_genes"] == 5
    assert row["path2_cells_per_s"] > 0 and row["path2_short_cells_per_s"] > 0
    assert row["genes_from_shipped_file"] == row["genes_embedded"] > 50  # no gene ran through the model
    out = tmp_path / "throughput.tsv"
    throughput.append_row(out, throughput.COLUMNS, row)
    header, values = out.read_text().splitlines()
    assert header.split("\t") == throughput.COLUMNS and values.split("\t")[1] == "pancreas_24"
