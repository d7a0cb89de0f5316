"""Shared fixtures: real data from ../shared/data when present, else the bundled set."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> ad.AnnData:
    """A labelled dataset from ../shared/data; skips the test where the folder is absent."""
    path = SHARED_DATA / f"{name}.h5ad"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return ad.read_h5ad(path)


@pytest.fixture(scope="session")
def baron() -> ad.AnnData:
    """The bundled mouse pancreas data (always available)."""
    from scllm_jax.datasets import baron_mouse_pancreas

    return baron_mouse_pancreas()


@pytest.fixture(scope="session")
def baron_small(baron) -> ad.AnnData:
    """300 cells of the bundled data, the most common types, all genes."""
    rng = np.random.default_rng(0)
    keep = np.flatnonzero(baron.obs["cell_type"].isin(["beta", "ductal", "delta", "endothelial"]).to_numpy())
    return baron[np.sort(rng.choice(keep, 300, replace=False))].copy()
