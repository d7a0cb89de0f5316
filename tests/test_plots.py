"""Each plot of scllm_jax.pl writes a non-empty PNG from a real (tiny) clustering result."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from scllm_jax import pl, tl  # noqa: E402
from scllm_jax.config import ScllmConfig  # noqa: E402


@pytest.fixture(scope="module")
def clustered(baron):
    """200 bundled cells clustered graph-only with the tiny config (K=5)."""
    rng = np.random.default_rng(1)
    adata = baron[np.sort(rng.choice(baron.n_obs, 200, replace=False))].copy()
    tl.cluster(adata, n_clusters=5, config=ScllmConfig.tiny(use_semantic=False), progress=False)
    return adata


def _assert_png(path) -> None:
    assert path.exists() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_umap_writes_png_and_caches_coordinates(clustered, tmp_path):
    adata = clustered.copy()
    fig = pl.umap(adata, label_key="cell_type", path=tmp_path / "umap.png")
    _assert_png(tmp_path / "umap.png")
    assert adata.obsm["X_scllm_umap"].shape == (adata.n_obs, 2)
    assert len(fig.axes) == 2
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == sorted(adata.obs["scllm"].astype(str).unique(), key=int)


def test_training_curves_one_panel_per_loss_term(clustered, tmp_path):
    fig = pl.training_curves(clustered, path=tmp_path / "sub" / "curves.png")
    _assert_png(tmp_path / "sub" / "curves.png")
    history = clustered.uns["scllm"]["loss_history"]
    terms = set(history.get("pretrain", {})) | set(history.get("cluster", {}))
    assert sorted(ax.get_title() for ax in fig.axes) == sorted(terms)


def test_confusion_columns_in_numeric_order(clustered, tmp_path):
    fig = pl.confusion(clustered, label_key="cell_type", path=tmp_path / "confusion.png")
    _assert_png(tmp_path / "confusion.png")
    columns = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert columns == sorted(columns, key=int)
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert sorted(rows) == sorted(clustered.obs["cell_type"].astype(str).unique())


def test_confusion_orders_twelve_clusters_naturally(tmp_path):
    rng = np.random.default_rng(0)
    import anndata as ad

    adata = ad.AnnData(np.zeros((60, 1), dtype=np.float32))
    adata.obs["scllm"] = pd.Categorical(rng.integers(0, 12, 60).astype(str))
    adata.obs["cell_type"] = [f"type{i}" for i in rng.integers(0, 11, 60)]
    fig = pl.confusion(adata, label_key="cell_type", path=tmp_path / "c.png")
    columns = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert columns == [str(i) for i in sorted(set(adata.obs["scllm"].astype(int)))]
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows == sorted(rows, key=lambda s: int(s[4:]))


def _benchmark_table(clustered) -> pd.DataFrame:
    """Rows in the layout of benchmarks/results/benchmark.tsv; scllm rows scored on the real result."""
    from scllm_jax.metrics import cluster_metrics

    real = cluster_metrics(clustered.obs["cell_type"], clustered.obs["scllm"])
    rows = []
    for dataset, scale in (("baron_small", 1.0), ("other_set", 0.8)):
        for method in ("scllm_full", "scllm_graph_only", "kmeans"):
            for seed in (0, 1, 2):
                jitter = 0.02 * (seed - 1)
                rows.append({"dataset": dataset, "method": method, "seed": seed, "n_cells": 200, "n_genes": 300,
                             "K": 5, **{k: scale * v + jitter for k, v in real.items()}, "fit_seconds": 10.0 + seed,
                             "seconds_per_epoch": 0.1, "n_epochs": 60, "peak_memory_gb": 1.0,
                             "semantic_used": method == "scllm_full", "genes_matched_fraction": 0.8})
    return pd.DataFrame(rows)


def test_benchmark_bars_groups_and_error_bars(clustered, tmp_path):
    table = _benchmark_table(clustered)
    fig = pl.benchmark_bars(table, metric="ARI", path=tmp_path / "bars.png")
    _assert_png(tmp_path / "bars.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baron_small", "other_set"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scllm_full", "scllm_graph_only", "kmeans"]
    assert len(ax.patches) == 2 * 3
    heights = sorted(p.get_height() for p in ax.patches)
    means = sorted(table.groupby(["dataset", "method"])["ARI"].mean())
    np.testing.assert_allclose(heights, means, rtol=1e-6)
    from matplotlib.container import BarContainer

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 3  # one per method, each with its error bars
    assert all(c.errorbar is not None for c in bars)


def test_benchmark_bars_single_seed_and_missing_metric(clustered, tmp_path):
    table = _benchmark_table(clustered)
    one_seed = table[table["seed"] == 0]
    fig = pl.benchmark_bars(one_seed, metric="NMI", path=tmp_path / "one.png")
    _assert_png(tmp_path / "one.png")
    assert len(fig.axes[0].patches) == 6
    with pytest.raises(KeyError, match="silhouette"):
        pl.benchmark_bars(table, metric="silhouette")
