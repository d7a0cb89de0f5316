"""Datasets bundled with the package (no network needed)."""

from __future__ import annotations

from importlib.resources import files

import anndata as ad


def baron_mouse_pancreas() -> ad.AnnData:
    """Baron et al. 2016 mouse pancreas (inDrop, GSM2230761): 822 cells, 14,878 genes, 13 types.

    Raw UMI counts in ``X``, gene symbols in ``var_names``, published labels
    in ``obs['cell_type']``, ``uns['species'] == 'mouse'``; provenance in
    ``uns['source']``.
    """
    path = files("scllm_jax") / "data" / "baron_mouse1.h5ad"
    return ad.read_h5ad(str(path))
