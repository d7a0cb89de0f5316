"""Atlas-scale pieces: synthetic atlas, block-wise preprocessing, the mini-batch switch."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scllm_jax.config import ScllmConfig
from scllm_jax.preprocess import Preprocessor, ScaledExpression
from scllm_jax.synthetic import synthetic_atlas
from scllm_jax.train import use_minibatch


def test_synthetic_atlas_is_sparse_counts_over_real_symbols():
    adata = synthetic_atlas(600, 300, 5, seed=1, block_size=250)
    assert adata.shape == (600, 300)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert np.all(adata.X.data == np.round(adata.X.data)) and adata.X.data.min() > 0
    assert 0.01 < adata.X.nnz / np.prod(adata.shape) < 0.5
    assert adata.obs["cell_type"].nunique() == 5
    assert all(name.isupper() or any(c.isdigit() for c in name) for name in adata.var_names[:20])
    again = synthetic_atlas(600, 300, 5, seed=1, block_size=250)
    assert (adata.X != again.X).nnz == 0, "one seed, one atlas"


def test_block_preprocessing_matches_dense():
    adata = synthetic_atlas(500, 200, 4, seed=2)
    config = ScllmConfig.tiny(n_top_genes=120, n_pcs=10)
    dense_state, dense = Preprocessor.fit(adata, config)
    block_state, block = Preprocessor.fit(adata, config.replace(minibatch_min_cells=100))
    assert isinstance(block.expression, ScaledExpression)
    np.testing.assert_array_equal(block_state.hvg_names, dense_state.hvg_names)
    np.testing.assert_allclose(np.asarray(block.expression), dense.expression, atol=2e-4)
    # Same principal subspace (components agree up to sign).
    overlap = np.abs(block_state.pca_components @ dense_state.pca_components.T)
    np.testing.assert_allclose(np.diag(overlap)[:5], 1.0, atol=1e-2)


def test_minibatch_switch():
    config = ScllmConfig(minibatch_min_cells=1000)
    assert not use_minibatch(999, config, n_devices=1)
    assert use_minibatch(1000, config, n_devices=1)
    assert use_minibatch(10, config, n_devices=4)
