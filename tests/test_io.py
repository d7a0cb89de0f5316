import h5py
import numpy as np

import scllm_jax as sj


def test_read_xy_h5_layout(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, size=(20, 7)).astype(np.float64)
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as handle:
        handle["X"] = counts
        handle["Y"] = np.repeat([1, 2], 10)
        handle["gene_names"] = np.array([f"G{i}".encode() for i in range(7)])
    adata = sj.read(path)
    assert adata.shape == (20, 7)
    np.testing.assert_array_equal(adata.X.toarray(), counts.astype(np.float32))
    assert list(adata.var_names[:2]) == ["G0", "G1"]
    assert list(adata.obs["cell_type"].cat.categories) == ["1", "2"]


def test_read_xy_h5_genes_by_cells_is_transposed(tmp_path):
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as handle:
        handle["X"] = np.ones((7, 20))
        handle["Y"] = np.zeros(20)
    import pytest

    with pytest.warns(UserWarning, match="transposing"):
        adata = sj.read(path)
    assert adata.shape == (20, 7)
    assert adata.uns["gene_symbols"] is False


def test_read_h5ad_roundtrip(tmp_path, baron_small):
    path = tmp_path / "x.h5ad"
    baron_small.write_h5ad(path)
    assert sj.read(path).shape == baron_small.shape


def test_write_h5ad_keeps_nullable_string_columns(tmp_path):
    """pandas 3 makes string indices and columns nullable strings, which anndata 0.12 writes only on request:
    the output is written (and reads back) rather than failing at the end of a long fit."""
    import anndata as ad
    import pandas as pd

    from scllm_jax.io import write_h5ad

    obs = pd.DataFrame({"scllm": pd.array(["0", "1", "0"], dtype="string")},
                       index=pd.Index(["a", "b", "c"], dtype="string"))
    adata = ad.AnnData(np.ones((3, 2), np.float32), obs=obs)
    path = write_h5ad(adata, tmp_path / "out.h5ad")
    back = ad.read_h5ad(path)
    assert list(back.obs_names) == ["a", "b", "c"] and list(back.obs["scllm"]) == ["0", "1", "0"]
