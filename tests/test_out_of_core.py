"""Backed .h5ad input is preprocessed chunk by chunk from disk, never loaded whole."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scllm_jax.preprocess as preprocess
import scllm_jax.validation as validation
from scllm_jax import tl
from scllm_jax.config import ScllmConfig
from scllm_jax.preprocess import Preprocessor
from scllm_jax.validation import InputError

#: The atlas-scale (block) path for every size, so in-memory and backed fits are comparable.
BLOCKS = ScllmConfig.tiny(use_semantic=False, minibatch_min_cells=1, n_top_genes=300)


@pytest.fixture
def backed_file(baron_small, tmp_path):
    path = tmp_path / "cells.h5ad"
    baron_small.write_h5ad(path)
    return path


def refuse_whole_matrix(monkeypatch):
    """Fail if anything loads X whole, and read in chunks of 64 cells (several chunks)."""
    def refuse(adata):
        raise AssertionError("X was loaded whole")

    monkeypatch.setattr(preprocess, "matrix_of", refuse)
    monkeypatch.setattr(validation, "matrix_of", refuse)
    monkeypatch.setattr(preprocess, "_CHUNK_CELLS", 64)


@pytest.fixture
def no_whole_matrix(monkeypatch):
    refuse_whole_matrix(monkeypatch)


def test_backed_fit_equals_in_memory_fit(baron_small, backed_file, monkeypatch):
    reference_state, reference = Preprocessor.fit(baron_small, BLOCKS)
    refuse_whole_matrix(monkeypatch)
    state, prepared = Preprocessor.fit(ad.read_h5ad(backed_file, backed="r"), BLOCKS)
    assert list(state.hvg_names) == list(reference_state.hvg_names)
    assert (prepared.log_expression != reference.log_expression).nnz == 0
    np.testing.assert_allclose(prepared.pca, reference.pca, rtol=1e-5, atol=1e-4)


def test_backed_file_clusters_end_to_end(backed_file, no_whole_matrix):
    backed = ad.read_h5ad(backed_file, backed="r")
    tl.cluster(backed, 3, config=ScllmConfig.tiny(use_semantic=False), progress=False)
    assert backed.obs["scllm"].nunique() == 3
    assert backed.obsm["X_scllm"].shape[0] == backed.n_obs


def test_bad_values_in_a_backed_file_give_the_same_error(baron_small, tmp_path, no_whole_matrix):
    broken = baron_small.copy()
    broken.X = sp.csr_matrix(broken.X)
    broken.X.data[-1] = np.nan  # in the last chunk
    path = tmp_path / "broken.h5ad"
    broken.write_h5ad(path)
    with pytest.raises(InputError, match=r"1 NaN and 0 infinite values"):
        Preprocessor.fit(ad.read_h5ad(path, backed="r"), BLOCKS)
