"""Atlas-scale pieces: synthetic atlas, block-wise preprocessing, the mini-batch switch."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scllm_jax.config import ScllmConfig
from scllm_jax.preprocess import Preprocessor, ScaledExpression
from scllm_jax.synthetic import synthetic_atlas
from scllm_jax.train import (FULL_GRAPH_MEMORY_SHARE, choose_engine, device_memory_bytes, full_graph_bytes,
                             use_minibatch)


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


def test_engine_from_the_device_memory():
    config = ScllmConfig(minibatch_min_cells=10 ** 9)  # the cell count never decides here
    assert device_memory_bytes() > 2 ** 30  # this CPU: the host's RAM
    need = full_graph_bytes(100_000, 2000, config)
    # The estimate grows with cells and genes, and is of the measured order (200k cells: 8.8 GB peak RSS).
    assert full_graph_bytes(200_000, 2000, config) == 2 * need > full_graph_bytes(200_000, 500, config)
    assert 8e9 < full_graph_bytes(200_000, 2000, config) < 1.5e10
    fits = choose_engine(100_000, 2000, config, n_devices=1, memory=int(need / FULL_GRAPH_MEMORY_SHARE) + 1)
    assert fits == (False, False, fits.reason) and "fits" in fits.reason
    small_device = choose_engine(100_000, 2000, config, n_devices=1, memory=int(need / FULL_GRAPH_MEMORY_SHARE) - 1)
    assert small_device.minibatch and small_device.large and "GiB" in small_device.reason
    # Several devices train data parallel, but the data is not large: the preprocessing stays dense.
    assert choose_engine(100, 2000, config, n_devices=4, memory=10 ** 12)[:2] == (True, False)
    many = choose_engine(5000, 2000, config.replace(minibatch_min_cells=5000), n_devices=1, memory=10 ** 15)
    assert many[:2] == (True, True) and "minibatch_min_cells=5000" in many.reason


def test_fit_decides_the_engine_once_and_the_preprocessing_follows(monkeypatch):
    """A device too small for the full graph: blocks of sparse preprocessing, then mini-batches."""
    import scllm_jax.train as train
    from scllm_jax.model import ScllmModel

    adata = synthetic_atlas(400, 200, 3, seed=3)
    config = ScllmConfig.tiny(n_top_genes=120, minibatch_size=128, pretrain_epochs=2, cluster_epochs=1,
                              update_interval=1)
    monkeypatch.setattr(train, "device_memory_bytes", lambda: full_graph_bytes(400, 120, config))
    model = ScllmModel(config).fit(adata, 3, progress=False)
    assert model.engine_.minibatch and model.engine_.large and "GiB" in model.engine_.reason
    assert isinstance(model.prepared_.expression, ScaledExpression)
    assert model.result.pretrain_epochs == 2 and len(model.labels_) == 400


def test_scaled_blocks_are_exactly_the_scaling_formula():
    """Blocks (row slices, scaled in place) and indexed rows equal clip((x - mean) / std) in float32, bit for bit."""
    adata = synthetic_atlas(700, 150, 4, seed=4)
    matrix = sp.csr_matrix(np.log1p(adata.X.toarray()).astype(np.float32))
    mean = np.asarray(matrix.mean(axis=0)).ravel().astype(np.float32)
    std = np.linspace(0.01, 2.0, matrix.shape[1]).astype(np.float32)  # some values clip at +-10
    expression = ScaledExpression(matrix, mean, std)
    formula = np.clip((matrix.toarray() - mean) / std, -10.0, 10.0).astype(np.float32)
    assert np.abs(formula).max() == 10.0
    blocks = list(expression.blocks(size=300))
    assert [start for start, _ in blocks] == [0, 300, 600]
    np.testing.assert_array_equal(np.vstack([block for _, block in blocks]), formula)
    rows = np.array([5, 699, 0, 5])
    np.testing.assert_array_equal(expression[rows], formula[rows])
    assert matrix.data.min() >= 0 and matrix.nnz > 0  # the input was not scaled in place
    np.testing.assert_array_equal(matrix.toarray(), np.log1p(adata.X.toarray()).astype(np.float32))
