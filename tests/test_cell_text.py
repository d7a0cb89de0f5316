"""The cell semantic view: abundance-weighted gene embeddings, Cell2Sentence, fusion."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scllm_jax.knowledge.cell_text import (
    abundance_weighted_embedding,
    cell_sentences,
    fuse_views,
    sentence_embeddings,
)


def reference_path1(expression, genes, top_k, mask=None, normalize=True):
    """Straightforward per-cell NumPy version of path 1."""
    dense = np.asarray(expression.toarray() if sp.issparse(expression) else expression, float)
    genes = np.asarray(genes, float)
    mask = np.any(genes != 0, axis=1) if mask is None else mask
    out = np.zeros((dense.shape[0], genes.shape[1]))
    for i, row in enumerate(dense):
        candidates = np.flatnonzero((row > 0) & mask)
        chosen = candidates[np.argsort(-row[candidates], kind="stable")][:top_k]
        out[i] = row[chosen] @ genes[chosen]
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(7)
    n_cells, n_genes, d = 37, 120, 8
    dense = rng.integers(1, 5, size=(n_cells, n_genes)).astype(np.float32)  # many ties
    dense *= rng.random((n_cells, n_genes)) < 0.25
    dense[[0, 11, 36]] = 0.0  # cells with nothing expressed
    dense[5, :] = 0.0
    dense[5, :3] = [2.0, 1.0, 3.0]  # a cell with fewer expressed genes than any top_k below
    dense[20, :] = np.log1p(np.arange(n_genes, dtype=np.float32))  # everything expressed
    genes = rng.standard_normal((n_genes, d)).astype(np.float32)
    genes[[3, 17, 40]] = 0.0  # genes without an embedding
    return sp.csr_matrix(dense), genes


@pytest.mark.parametrize("top_k", [1, 4, 25, 2048])
@pytest.mark.parametrize("batch_size", [8, 4096])
def test_path1_matches_numpy_reference(small_data, top_k, batch_size):
    expression, genes = small_data
    result = abundance_weighted_embedding(expression, genes, top_k, batch_size=batch_size)
    expected = reference_path1(expression, genes, top_k)
    assert result.shape == (expression.shape[0], genes.shape[1]) and result.dtype == np.float32
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, expected, atol=1e-5)
    np.testing.assert_array_equal(result[[0, 11, 36]], 0.0)


def test_path1_dense_input_raw_sum_and_explicit_mask(small_data):
    expression, genes = small_data
    raw = abundance_weighted_embedding(expression.toarray(), genes, 10, normalize=False)
    np.testing.assert_allclose(raw, reference_path1(expression, genes, 10, normalize=False),
                               rtol=1e-5, atol=1e-4)
    mask = np.any(genes != 0, axis=1)
    mask[[1, 2]] = False  # genes with embeddings the caller wants ignored
    masked = abundance_weighted_embedding(expression, genes, 10, gene_mask=mask)
    np.testing.assert_allclose(masked, reference_path1(expression, genes, 10, mask), atol=1e-5)


def test_path1_top_genes_carry_the_direction():
    genes = np.eye(4, dtype=np.float32)
    expression = np.array([[0.5, 3.0, 2.0, 0.0]], dtype=np.float32)
    top2 = abundance_weighted_embedding(expression, genes, top_k=2)
    np.testing.assert_allclose(top2[0], np.array([0, 3, 2, 0]) / np.sqrt(13), atol=1e-6)


def test_path1_validates_shapes(small_data):
    expression, genes = small_data
    with pytest.raises(ValueError):
        abundance_weighted_embedding(expression, genes[:-1])
    with pytest.raises(ValueError):
        abundance_weighted_embedding(expression, genes, top_k=0)
    with pytest.raises(ValueError):
        abundance_weighted_embedding(expression, genes, gene_mask=np.ones(3, bool))
    with pytest.warns(RuntimeWarning, match="negative"):
        abundance_weighted_embedding(-expression.toarray(), genes)


def test_cell_sentences_exact_strings():
    symbols = ["Cd3e", "Cd8a", "Hbb-b1", "Actb", "Gapdh"]
    expression = np.array([
        [0.0, 2.0, 5.0, 2.0, 0.0],  # CD8A and ACTB tie: alphabetical
        [0.0, 0.0, 0.0, 0.0, 0.0],  # nothing expressed
        [1.0, 0.0, 0.0, 3.0, 1.0],
        [0.0, 0.0, 0.5, 0.0, 9.0],
    ], dtype=np.float32)
    expected = ["HBB-B1 ACTB CD8A", "", "ACTB CD3E GAPDH", "GAPDH HBB-B1"]
    assert cell_sentences(expression, symbols) == expected
    assert cell_sentences(sp.csr_matrix(expression), symbols) == expected
    assert cell_sentences(sp.csc_matrix(expression), symbols, n_genes=2) == [
        "HBB-B1 ACTB", "", "ACTB CD3E", "GAPDH HBB-B1"]
    # the sentence does not depend on the gene order of the matrix
    order = [4, 2, 0, 3, 1]
    assert cell_sentences(expression[:, order], [symbols[i] for i in order]) == expected
    with pytest.raises(ValueError):
        cell_sentences(expression, symbols[:-1])


def test_sentence_embeddings_cached_and_empty_rows_zero(tmp_path):
    from scllm_jax.knowledge.language_model import EmbeddingCache

    sentences = ["INS1 INS2 IAPP PCSK2", "", "GCG TTR PCSK2 CHGA", "INS1 INS2 PCSK2 IAPP MAFA"]
    cache = EmbeddingCache(tmp_path)
    first = sentence_embeddings(sentences, cache=cache, progress=False)
    assert cache.last_hit is False
    assert first.shape == (4, 384)
    np.testing.assert_array_equal(first[1], 0.0)
    np.testing.assert_allclose(np.linalg.norm(first[[0, 2, 3]], axis=1), 1.0, atol=1e-5)
    assert first[0] @ first[3] > first[0] @ first[2]  # beta-cell sentences closer together
    second = sentence_embeddings(sentences, cache=cache, progress=False)
    assert cache.last_hit is True
    np.testing.assert_array_equal(first, second)


def test_fuse_views():
    rng = np.random.default_rng(0)
    z1 = rng.standard_normal((6, 5)).astype(np.float32) * 4.0
    z2 = rng.standard_normal((6, 5)).astype(np.float32)
    z2[2] = 0.0
    unit1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    unit2 = z2 / np.maximum(np.linalg.norm(z2, axis=1, keepdims=True), 1e-12)
    fused = fuse_views(z1, z2, weight=0.3)
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, 0.3 * unit1 + 0.7 * unit2, atol=1e-6)
    np.testing.assert_allclose(fuse_views(z1, z2, 1.0), unit1, atol=1e-6)
    assert np.isfinite(fused).all()
    with pytest.raises(ValueError):
        fuse_views(z1, z2[:, :4])
    with pytest.raises(ValueError):
        fuse_views(z1[0], z2[0])
    with pytest.raises(ValueError):
        fuse_views(z1, z2, weight=1.5)


@pytest.fixture(scope="module")
def anisotropic_genes():
    """Gene vectors like a language model's: a large shared mean and a few dominant directions."""
    rng = np.random.default_rng(3)
    n_genes, d = 60, 200
    genes = rng.standard_normal((n_genes, d)) * 0.1 + 2.0 * rng.standard_normal(d)
    genes += rng.standard_normal((n_genes, 1)) * 3.0 * rng.standard_normal(d)  # a dominant direction
    genes[[4, 9]] = 0.0  # genes without an embedding
    return genes.astype(np.float32)


def test_postprocess_centre_abtt_and_whiten(anisotropic_genes):
    from scllm_jax.knowledge.cell_text import postprocess_gene_embeddings

    genes = anisotropic_genes
    mask = np.any(genes != 0, axis=1)
    np.testing.assert_array_equal(postprocess_gene_embeddings(genes, method="none"), genes)
    centred = postprocess_gene_embeddings(genes, method="centre")
    np.testing.assert_allclose(centred[mask].mean(axis=0), 0.0, atol=1e-5)
    # all-but-the-top removes ceil(d / 100) = 2 principal directions of the centred vectors
    _, _, directions = np.linalg.svd(centred[mask].astype(np.float64), full_matrices=False)
    abtt = postprocess_gene_embeddings(genes, mask, "abtt")
    np.testing.assert_allclose(abtt[mask] @ directions[:2].T, 0.0, atol=1e-4)
    np.testing.assert_allclose(abtt[mask] @ directions[2:10].T, centred[mask] @ directions[2:10].T, atol=1e-4)
    whitened = postprocess_gene_embeddings(genes, mask, "whiten")
    spread = np.linalg.svd(whitened[mask].astype(np.float64), compute_uv=False)
    kept = spread[spread > 1e-3]
    np.testing.assert_allclose(kept, kept[0], rtol=1e-4)  # every remaining direction has the same variance
    assert len(kept) == mask.sum() - 1 - 2
    for result in (centred, abtt, whitened):
        np.testing.assert_array_equal(result[~mask], 0.0)
    with pytest.raises(ValueError, match="method"):
        postprocess_gene_embeddings(genes, method="pca")


def test_standardised_embedding_matches_numpy_and_lazy_input(anisotropic_genes):
    from scllm_jax.knowledge.cell_text import standardised_embedding
    from scllm_jax.preprocess import ScaledExpression

    rng = np.random.default_rng(5)
    log = sp.csr_matrix(np.log1p(rng.poisson(0.7, (23, anisotropic_genes.shape[0]))).astype(np.float32))
    mean = np.asarray(log.mean(axis=0)).ravel()
    std = np.sqrt(np.asarray(log.multiply(log).mean(axis=0)).ravel() - mean ** 2) + 0.1
    lazy = ScaledExpression(log, mean, std)
    dense = np.asarray(lazy)
    mask = np.any(anisotropic_genes != 0, axis=1)
    genes = anisotropic_genes[mask].astype(np.float64)
    expected = dense[:, mask] @ genes / np.linalg.norm(genes)  # one scale for all cells, none per cell
    for source, batch in ((dense, 4096), (dense, 5), (lazy, 7)):
        result = standardised_embedding(source, anisotropic_genes, batch_size=batch)
        assert result.shape == expected.shape and result.dtype == np.float32
        np.testing.assert_allclose(result, expected, atol=1e-5)
    with pytest.raises(ValueError, match="genes"):
        standardised_embedding(dense[:, :-1], anisotropic_genes)


def test_denoised_embedding_pools_over_the_principal_components(anisotropic_genes):
    from scllm_jax.knowledge.cell_text import denoised_embedding, standardised_embedding

    rng = np.random.default_rng(8)
    n_genes = anisotropic_genes.shape[0]
    mask = np.any(anisotropic_genes != 0, axis=1)
    genes = anisotropic_genes[mask].astype(np.float64)
    scale = np.linalg.norm(genes)
    # Two cell groups apart along one gene axis, plus gene-by-gene noise.
    axis = rng.standard_normal(n_genes)
    axis /= np.linalg.norm(axis)
    scores = np.repeat([-2.0, 2.0], 15)[:, None]
    dense = (scores * axis + 0.3 * rng.standard_normal((30, n_genes))).astype(np.float32)
    mean = dense.mean(axis=0)
    _, _, vt = np.linalg.svd(dense - mean, full_matrices=False)
    # Every component kept: the reconstruction is the expression, so the pooling is the standardised one.
    full = denoised_embedding((dense - mean) @ vt.T, mean, vt, anisotropic_genes)
    np.testing.assert_allclose(full, standardised_embedding(dense, anisotropic_genes), atol=1e-4)
    # One component: each cell is its score times the axis's text vector, plus the mean's.
    one = vt[:1]
    pca = (dense - mean) @ one.T
    expected = (pca @ (one[:, mask] @ genes) + mean[mask] @ genes) / scale
    result = denoised_embedding(pca, mean, one, anisotropic_genes)
    assert result.dtype == np.float32 and result.shape == (30, genes.shape[1])
    np.testing.assert_allclose(result, expected, atol=1e-5)
    # The noise is gone: within a group the text vectors agree far better than the raw pooling's.
    raw = standardised_embedding(dense, anisotropic_genes)
    spread = [np.linalg.norm(z[:15] - z[:15].mean(axis=0), axis=1).mean() for z in (result, raw)]
    assert spread[0] < 0.2 * spread[1], spread
    with pytest.raises(ValueError, match="chain"):
        denoised_embedding(pca, mean, one[:, :-1], anisotropic_genes)
