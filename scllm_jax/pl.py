"""Plots (matplotlib), each saved as PNG when a path is given."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def embedding_umap(adata: ad.AnnData, key: str = "scllm", *, seed: int = 0) -> np.ndarray:
    """2-D UMAP of ``obsm[f"X_{key}"]``, stored in ``obsm[f"X_{key}_umap"]`` and returned."""
    import umap

    if f"X_{key}_umap" not in adata.obsm:
        reducer = umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed, n_jobs=1)
        adata.obsm[f"X_{key}_umap"] = reducer.fit_transform(adata.obsm[f"X_{key}"]).astype(np.float32)
    return adata.obsm[f"X_{key}_umap"]


def _scatter(ax, coords: np.ndarray, labels, title: str) -> None:
    labels = np.asarray(labels).astype(str)
    names = sorted(set(labels), key=lambda s: (len(s), s))
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
    """Each loss term per epoch, pre-training then clustering (vertical line between).

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
    """Counts of cells per (label, cluster), rows normalised; labels only for display.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import pandas as pd

    table = pd.crosstab(adata.obs[label_key].astype(str), adata.obs[key].astype(str))
    fractions = table.div(table.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(0.45 * table.shape[1] + 3, 0.35 * table.shape[0] + 2))
    image = ax.imshow(fractions.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, fontsize=7)
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=7)
    ax.set_xlabel("cluster"), ax.set_ylabel(label_key)
    fig.colorbar(image, ax=ax, label="fraction of label")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
