"""Plots (matplotlib): each function returns the figure and saves it as PNG when a path is given.

The module does not choose a matplotlib backend: in a notebook figures show
inline, on a machine without a display matplotlib falls back to Agg.
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _natural_key(name) -> tuple:
    """Sort key that orders ``"2"`` before ``"10"`` and ``"type2"`` before ``"type10"``."""
    parts = re.split(r"(\d+)", str(name))
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts if part)


def _natural_sorted(names) -> list[str]:
    return sorted({str(n) for n in names}, key=_natural_key)


def embedding_umap(adata: ad.AnnData, key: str = "scllm", *, seed: int = 0) -> np.ndarray:
    """2-D UMAP of the clustering embedding, computed once and cached.

    Parameters
    ----------
    adata
        Annotated data with ``obsm[f"X_{key}"]`` (written by :func:`scllm_jax.tl.cluster`).
    key
        The ``key_added`` of the clustering.
    seed
        Random state of UMAP.

    Returns
    -------
    numpy.ndarray
        Cells x 2 coordinates, also stored in ``obsm[f"X_{key}_umap"]``.
    """
    import umap

    if f"X_{key}_umap" not in adata.obsm:
        reducer = umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed, n_jobs=1)
        adata.obsm[f"X_{key}_umap"] = reducer.fit_transform(adata.obsm[f"X_{key}"]).astype(np.float32)
    return adata.obsm[f"X_{key}_umap"]


def _scatter(ax, coords: np.ndarray, labels, title: str) -> None:
    labels = np.asarray(labels).astype(str)
    names = _natural_sorted(labels)
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for i, name in enumerate(names):
        sel = labels == name
        ax.scatter(coords[sel, 0], coords[sel, 1], s=4, color=cmap(i % cmap.N), label=name, rasterized=True)
    ax.set_title(title)
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))


def umap(adata: ad.AnnData, key: str = "scllm", *, label_key: str | None = None,
         path: str | Path | None = None, seed: int = 0):
    """UMAP of the clustering embedding coloured by cluster (and by ``label_key`` if given).

    Parameters
    ----------
    adata
        Annotated data clustered by :func:`scllm_jax.tl.cluster`.
    key
        The ``key_added`` of the clustering (reads ``obs[key]`` and ``obsm[f"X_{key}"]``).
    label_key
        ``obs`` column of known labels for a second panel; only displayed.
    path
        Save the figure there as PNG (and close it).
    seed
        Random state of UMAP (see :func:`embedding_umap`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    coords = embedding_umap(adata, key, seed=seed)
    panels = [(adata.obs[key], f"scllm clusters (K={adata.obs[key].nunique()})")]
    if label_key is not None:
        panels.append((adata.obs[label_key], f"labels: {label_key}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, (labels, title) in zip(axes[0], panels):
        _scatter(ax, coords, labels, title)
    fig.tight_layout()
    return _save(fig, path)


def training_curves(adata: ad.AnnData, key: str = "scllm", *, path: str | Path | None = None):
    """Each loss term per epoch, pre-training then clustering (dashed line between).

    Parameters
    ----------
    adata
        Annotated data with ``uns[key]['loss_history']`` (``{phase: {term: values}}``).
    key
        The ``key_added`` of the clustering.
    path
        Save the figure there as PNG (and close it).

    Returns
    -------
    matplotlib.figure.Figure
    """
    history = adata.uns[key]["loss_history"]
    pre, clu = history.get("pretrain", {}), history.get("cluster", {})
    terms = sorted(set(pre) | set(clu))
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3), squeeze=False)
    n_pre = len(next(iter(pre.values()), []))
    for ax, term in zip(axes[0], terms):
        values = list(pre.get(term, [np.nan] * n_pre)) + list(clu.get(term, []))
        ax.plot(np.arange(len(values)), values, lw=1.2)
        ax.axvline(n_pre, color="grey", ls="--", lw=0.8)
        ax.set_title(term)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return _save(fig, path)


def confusion(adata: ad.AnnData, key: str = "scllm", *, label_key: str, path: str | Path | None = None):
    """Fraction of each label's cells in each cluster (rows sum to 1).

    Clusters (columns) and labels (rows) are in natural order: ``0, 1, 2, ..., 10``.
    Labels are only displayed, never used by the clustering.

    Parameters
    ----------
    adata
        Annotated data clustered by :func:`scllm_jax.tl.cluster`.
    key
        The ``key_added`` of the clustering (reads ``obs[key]``).
    label_key
        ``obs`` column of known labels.
    path
        Save the figure there as PNG (and close it).

    Returns
    -------
    matplotlib.figure.Figure
    """
    table = pd.crosstab(adata.obs[label_key].astype(str).to_numpy(), adata.obs[key].astype(str).to_numpy())
    table = table.loc[_natural_sorted(table.index), _natural_sorted(table.columns)]
    fractions = table.div(table.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(0.45 * table.shape[1] + 3, 0.35 * table.shape[0] + 2))
    image = ax.imshow(fractions.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, fontsize=7)
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=7)
    ax.set_xlabel("cluster"), ax.set_ylabel(label_key)
    fig.colorbar(image, ax=ax, label="fraction of label")
    fig.tight_layout()
    return _save(fig, path)


def benchmark_bars(table: pd.DataFrame, metric: str = "ARI", path: str | Path | None = None):
    """Grouped bars of a metric: one group per dataset, one bar per method, mean ± std over seeds.

    Parameters
    ----------
    table
        One row per fit, with columns ``dataset``, ``method``, ``seed`` and
        ``metric`` (the layout of ``benchmarks/results/benchmark.tsv``).
    metric
        Column to plot, e.g. ``"ARI"``, ``"NMI"``, ``"ACC"``, ``"F1"`` or
        ``"fit_seconds"``.
    path
        Save the figure there as PNG (and close it).

    Returns
    -------
    matplotlib.figure.Figure
        Datasets and methods appear in the order of their first row in
        ``table``; the error bar is the sample standard deviation over seeds
        (none where a dataset x method has a single seed).
    """
    missing = {"dataset", "method", metric} - set(table.columns)
    if missing:
        raise KeyError(f"benchmark table lacks column(s) {sorted(missing)}; columns are {list(table.columns)}.")
    datasets = list(dict.fromkeys(table["dataset"].astype(str)))
    methods = list(dict.fromkeys(table["method"].astype(str)))
    values = pd.to_numeric(table[metric], errors="coerce")
    stats = values.groupby([table["dataset"].astype(str), table["method"].astype(str)]).agg(["mean", "std"])
    means = stats["mean"].unstack().reindex(index=datasets, columns=methods)
    stds = stats["std"].unstack().reindex(index=datasets, columns=methods)

    width = 0.8 / len(methods)
    cmap = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(datasets) * len(methods) + 3), 4))
    x = np.arange(len(datasets))
    for i, method in enumerate(methods):
        ax.bar(x - 0.4 + (i + 0.5) * width, means[method].to_numpy(), width, yerr=stds[method].to_numpy(),
               label=method, color=cmap(i % cmap.N), capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(x, datasets, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean ± std over seeds")
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
