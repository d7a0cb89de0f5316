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
