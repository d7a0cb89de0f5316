"""The semantic view's gene identifiers, path decision and cluster notes (real data, shipped vectors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scllm_jax.config import ScllmConfig
from scllm_jax.knowledge.gene_table import load_gene_knowledge
from scllm_jax.preprocess import Preprocessor
from scllm_jax.semantic import build_semantic_view, decide_paths, gene_identifiers
from scllm_jax.synthetic import synthetic_atlas
from scllm_jax.validation import InputError

#: Path 1 only: with the shipped gene vectors no language model runs.
PATH1 = ScllmConfig.tiny(use_semantic=True, use_path2=False, n_top_genes=300)


@pytest.fixture(scope="module")
def ensembl_atlas():
    """A human atlas whose var_names are Ensembl ids (half with a version suffix), symbols in var['symbol']."""
    adata = synthetic_atlas(240, 400, 3, seed=4)
    knowledge = load_gene_knowledge()
    symbols = [s.upper() for s in adata.var_names]
    ids = knowledge.table.loc[symbols, "ensembl_id"].str.split("|").str[0].to_numpy()
    keep = np.array([knowledge.ensembl.get(i) == s for i, s in zip(ids, symbols)])  # ids naming one gene
    adata = adata[:, keep].copy()
    ids = [f"{gene}.{i % 20}" if i % 2 else gene for i, gene in enumerate(ids[keep])]
    adata.var["symbol"] = adata.var_names.to_numpy()
    adata.var_names = pd.Index(ids)
    return adata


def test_ensembl_ids_with_and_without_version_map_through_the_table(ensembl_atlas):
    _, prepared = Preprocessor.fit(ensembl_atlas, PATH1)
    assert gene_identifiers(ensembl_atlas, prepared.gene_names)[0].startswith("ENSG")
    view = build_semantic_view(ensembl_atlas, prepared, PATH1, progress=False)
    assert view.info["used"] and view.info["fraction_matched"] > 0.95
    assert view.info["matched_via_ensembl"] == view.info["genes_matched"]
    expected = ensembl_atlas.var.loc[prepared.gene_names, "symbol"].str.upper().to_numpy()
    np.testing.assert_array_equal(view.gene_embeddings["symbols"], expected)
    assert view.cell_embeddings.shape == (ensembl_atlas.n_obs, 384)


def test_gene_symbols_key_picks_the_symbol_column(ensembl_atlas):
    _, prepared = Preprocessor.fit(ensembl_atlas, PATH1)
    symbols = gene_identifiers(ensembl_atlas, prepared.gene_names, "symbol")
    np.testing.assert_array_equal(symbols, ensembl_atlas.var.loc[prepared.gene_names, "symbol"].to_numpy())
    flagged = ensembl_atlas.copy()
    flagged.uns["gene_symbols"] = False  # no symbols in var_names, but a symbol column is named
    by_key = build_semantic_view(flagged, prepared, PATH1, gene_symbols_key="symbol", progress=False)
    by_id = build_semantic_view(ensembl_atlas, prepared, PATH1, progress=False)
    assert by_key.info["used"] and by_key.info["matched_via_ensembl"] == 0
    np.testing.assert_allclose(by_key.cell_embeddings, by_id.cell_embeddings, atol=1e-6)
    with pytest.raises(InputError, match="not a column of adata.var"):
        gene_identifiers(ensembl_atlas, prepared.gene_names, "gene_name")


def test_mouse_ensembl_ids_turn_the_view_off_and_say_what_to_do(ensembl_atlas):
    mouse = ensembl_atlas.copy()
    mouse.var_names = pd.Index([f"ENSMUSG{i:011d}" for i in range(mouse.n_vars)])
    _, prepared = Preprocessor.fit(mouse, PATH1)
    with pytest.warns(UserWarning, match="orthology"):
        view = build_semantic_view(mouse, prepared, PATH1, progress=False)
    assert view.cell_embeddings is None and "gene_symbols_key" in view.info["reason"]


def test_path2_is_skipped_above_the_cpu_limit_and_says_how_long_it_would_take():
    from scllm_jax.knowledge.language_model import default_device

    if default_device() != "cpu":
        pytest.skip("a GPU is visible: path 2 is never skipped there")
    config = ScllmConfig(use_semantic=True, use_path2=True, path2_max_cpu_cells=100)
    assert decide_paths(config, 100) == (["path1", "path2"], None)
    paths, reason = decide_paths(config, 90_000)
    assert paths == ["path1"] and "100 min" in reason and "path2_max_cpu_cells" in reason
    assert decide_paths(config.replace(use_path1=False), 90_000)[0] == ["path1"]  # falls back, never empty
    assert decide_paths(config.replace(use_path2=False), 90_000) == (["path1"], None)


def test_cluster_knowledge_names_markers_without_knowledge_and_the_orthology_caveat():
    import scipy.sparse as sp

    from scllm_jax.interpret import cluster_knowledge

    genes = np.array(["Ins1", "Ins2", "Gcg", "Cd3e"])
    expression = sp.csr_matrix(np.array([[5, 5, 0, 0], [4, 6, 0, 0], [0, 0, 5, 1], [0, 0, 6, 0]], np.float32))
    table = {"gene_names": genes, "symbols": np.array(["", "", "GCG", "CD3E"]),
             "mask": np.array([False, False, True, True])}
    frame = cluster_knowledge(np.array([0, 0, 1, 1]), expression, genes, gene_table=table, species="mouse",
                              n_markers=2)
    first = frame.loc[frame["cluster"] == "0", "knowledge_note"].item()
    assert first.startswith("no knowledge for Ins") and "Ins1" in first and "Ins2" in first
    assert "no orthology table ships offline" in first
    assert frame.loc[frame["cluster"] == "1", "knowledge_note"].item() == ""
    human = cluster_knowledge(np.array([0, 0, 1, 1]), expression, genes, gene_table=table, species="human",
                              n_markers=2)
    assert "orthology" not in human.loc[human["cluster"] == "0", "knowledge_note"].item()
    assert "knowledge_note" in cluster_knowledge(np.array([0, 0, 1, 1]), expression, genes).columns


def test_model_saved_before_path1_settings_predicts_with_the_papers_pooling(baron_small, tmp_path):
    import json

    import scllm_jax as sj

    config = ScllmConfig.tiny(use_semantic=True, use_path2=False, path1_weights="log", gene_postprocess="none",
                              pretrain_epochs=5, cluster_epochs=5)
    model = sj.ScllmModel(config).fit(baron_small, 4, progress=False)
    model.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    # As an older version wrote it: flat, without the settings that came later.
    flat = {key: value for section in meta["config"].values() if isinstance(section, dict)
            for key, value in section.items()}
    meta["config"] = {"seed": meta["config"]["seed"], **flat}
    for field in ("path1_weights", "gene_postprocess", "path2_max_cpu_cells"):
        del meta["config"][field]
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    loaded = sj.ScllmModel.load(tmp_path / "model")
    assert (loaded.config.semantic.path1_weights, loaded.config.semantic.gene_postprocess) == ("log", "none")
    np.testing.assert_array_equal(loaded.predict(baron_small), model.labels_)
