"""Controls of the knowledge view: permuted symbols (negative) and GO-programme atlases (positive)."""

from __future__ import annotations

import numpy as np

from scllm_jax.config import ScllmConfig
from scllm_jax.controls import permute_gene_symbols
from scllm_jax.preprocess import Preprocessor
from scllm_jax.semantic import build_semantic_view
from scllm_jax.synthetic import go_programmes, synthetic_atlas

#: Path 1 only: with the shipped gene vectors no language model runs.
PATH1 = ScllmConfig.tiny(use_semantic=True, use_path2=False, n_top_genes=300)


def test_permuted_symbols_keep_expression_and_scramble_knowledge(baron_small):
    permuted = permute_gene_symbols(baron_small, seed=1)
    assert (permuted.var_names != baron_small.var_names).all()  # no gene keeps its symbol
    assert sorted(permuted.var_names) == sorted(baron_small.var_names)
    assert (permuted.X != baron_small.X).nnz == 0 and permuted.uns["permuted_gene_symbols"] == 1
    _, prepared = Preprocessor.fit(permuted, PATH1)
    view = build_semantic_view(permuted, prepared, PATH1, progress=False)
    assert view.info["used"]  # the control runs: same fraction of names known, other knowledge
    column = baron_small.copy()
    column.var["symbol"] = column.var_names.to_numpy()
    moved = permute_gene_symbols(column, seed=1, gene_symbols_key="symbol")
    assert (moved.var_names == column.var_names).all()
    np.testing.assert_array_equal(moved.var["symbol"].to_numpy(), permuted.var_names.to_numpy())


def test_knowledge_view_finds_go_programmes_and_loses_them_when_symbols_are_permuted():
    """Positive and negative control together: types that differ by GO processes."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    # Programmes of 30 genes among 1,500: too weak for a random projection of the expression to
    # find, strong enough for pooling by knowledge (the expression PCA scores 0.85 here).
    atlas = synthetic_atlas(600, 1500, 6, seed=1, markers_per_type=30, programmes="go")
    labels = atlas.obs["cell_type"].to_numpy()
    config = ScllmConfig(use_semantic=True)  # the default path 1: denoised weights, whitened genes

    def text_ari(adata) -> float:
        _, prepared = Preprocessor.fit(adata, config)
        text = build_semantic_view(adata, prepared, config, progress=False).cell_embeddings
        return adjusted_rand_score(labels, KMeans(6, n_init=10, random_state=0).fit_predict(text))

    # With the symbols permuted the same expression pools into the wrong programmes.
    real, scrambled = text_ari(atlas), text_ari(permute_gene_symbols(atlas, seed=0))
    assert real > 0.85 and real > scrambled + 0.2, (real, scrambled)


def test_go_programme_atlas_types_up_regulate_one_process_each():
    atlas = synthetic_atlas(300, 500, 3, seed=1, markers_per_type=20, programmes="go")
    chosen = go_programmes(3, 20, 1)
    assert list(atlas.uns["programmes"].values()) == [term for term, _ in chosen]
    log = np.log1p(atlas.X.toarray())
    for k, (_, genes) in enumerate(chosen):
        inside = (atlas.obs["cell_type"] == f"type_{k:02d}").to_numpy()
        columns = atlas.var_names.get_indexer(list(genes))
        assert (columns >= 0).all()
        assert log[inside][:, columns].mean() > 2 * log[~inside][:, columns].mean()
    assert len({g for _, genes in chosen for g in genes}) == 60  # no gene in two programmes
