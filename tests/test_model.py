"""End-to-end: real data through tl.cluster, ScllmModel and the CLI."""

import h5py
import numpy as np
import pytest

import scllm_jax as sj
from scllm_jax.config import ScllmConfig
from scllm_jax.metrics import cluster_metrics
from scllm_jax.partition import cluster_means

from .conftest import shared_dataset

GRAPH_ONLY = ScllmConfig.tiny(use_semantic=False)


def test_cluster_writes_scanpy_style_fields(baron_small):
    adata = baron_small.copy()
    assert sj.tl.cluster(adata, 4, config=GRAPH_ONLY, progress=False) is None
    assert adata.obs["scllm"].dtype == "category"
    assert adata.obsm["X_scllm"].shape == (adata.n_obs, GRAPH_ONLY.network.latent_dim)
    np.testing.assert_allclose(adata.obsm["scllm_soft"].sum(axis=1), 1.0, rtol=1e-4)
    uns = adata.uns["scllm"]
    # Four well separated types: four clusters, none empty, and the count reported is the one found.
    assert uns["params"]["n_clusters"] == 4
    assert uns["n_clusters_found"] == adata.obs["scllm"].nunique() == 4
    assert len(uns["loss_history"]["pretrain"]["rec"]) == GRAPH_ONLY.train.pretrain_epochs
    assert np.all(np.isfinite(uns["loss_history"]["cluster"]["total"]))
    # Pre-training reduces the reconstruction error.
    rec = uns["loss_history"]["pretrain"]["rec"]
    assert rec[-1] < rec[0]


def test_quality_floor_on_bundled_pancreas(baron_small, tmp_path):
    """The trained head separates four common types; the reported partition (the head's, or Ward's clustering
    of the principal components where that agrees better with the neighbourhoods) stays near k-means."""
    adata, model = sj.tl.cluster(baron_small, 4, config=GRAPH_ONLY, copy=True, progress=False, return_model=True)
    head = cluster_metrics(adata.obs["cell_type"], adata.obsm["scllm_soft"].argmax(axis=1))
    assert head["ARI"] > 0.8, head
    # Never far below its own starting point: k-means on the same principal components, lowest inertia of
    # 100 restarts (on this subset that optimum cuts off 3 endothelial cells and merges delta into beta, ARI 0.77).
    from sklearn.cluster import KMeans

    optimum = KMeans(4, n_init=100, random_state=0).fit_predict(model.prepared_.pca)
    reported = cluster_metrics(adata.obs["cell_type"], adata.obs["scllm"])["ARI"]
    assert reported >= cluster_metrics(adata.obs["cell_type"], optimum)["ARI"] - 0.02
    # Here the reference clustering won the final selection, consolidated by Lloyd's iterations (which scored
    # higher than Ward's partition as built): a saved model assigns cells by their nearest training cells' clusters
    # on the PCA.
    selection = adata.uns["scllm"]["selection"]
    assert selection["chosen"] == "pca_ward_consolidated"
    assert selection["neighbourhood_agreement_pca_ward_consolidated"] > selection["neighbourhood_agreement_pca_ward"]
    model.save(tmp_path / "model")
    loaded = sj.ScllmModel.load(tmp_path / "model")
    assert loaded.selection_["chosen"] == "pca_ward_consolidated"
    # Training cells keep their clusters: each coincides with itself among the training cells.
    np.testing.assert_array_equal(loaded.predict(baron_small), model.labels_)
    # A model saved when the reference was k-means kept its centres instead of the training cells' clusters.
    (tmp_path / "model" / "reference_labels.npy").unlink()
    np.save(tmp_path / "model" / "pca_centres.npy", cluster_means(model.prepared_.pca, model.labels_, 4))
    old = sj.ScllmModel.load(tmp_path / "model")
    assert np.mean(old.predict(baron_small) == model.labels_) >= 0.9


def kmeans_ari(pca: np.ndarray, labels, n_clusters: int) -> float:
    """Mean ARI of k-means (true K, seeds 0, 1, 2) on the principal components: the floor to stand on."""
    from sklearn.cluster import KMeans

    return float(np.mean([cluster_metrics(labels, KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(pca))
                          ["ARI"] for seed in range(3)]))


@pytest.mark.slow
def test_quality_floor_relative_to_kmeans_on_the_whole_pancreas_set(baron):
    """All 822 bundled cells, 13 types, the default configuration (graph-only: no language model in the
    suite), one fit: scllm-jax must cluster at least as well as k-means on the same principal components,
    within 0.05 ARI."""
    adata, model = sj.tl.cluster(baron, 13, config=ScllmConfig(use_semantic=False), copy=True, progress=False,
                                 return_model=True)
    ours = cluster_metrics(adata.obs["cell_type"], adata.obs["scllm"])["ARI"]
    floor = kmeans_ari(model.prepared_.pca, adata.obs["cell_type"], 13)
    print(f"whole pancreas set: scllm ARI {ours:.3f}, k-means on PCA {floor:.3f}")
    assert ours >= floor - 0.05, f"scllm ARI {ours:.3f} < k-means on PCA {floor:.3f} - 0.05"


def test_quality_floor_on_cellbench():
    adata = shared_dataset("cellbench_5cl_p1")
    sj.tl.cluster(adata, 5, config=ScllmConfig.tiny(use_semantic=False, n_top_genes=1000), progress=False)
    assert cluster_metrics(adata.obs["cell_type"], adata.obs["scllm"])["ARI"] > 0.9


def test_full_method_with_language_model(baron_small, tmp_path, monkeypatch):
    monkeypatch.setenv("SCLLM_JAX_CACHE", str(tmp_path / "cache"))
    # Both text paths: path 2 runs the real language model over every cell's sentence.
    config = ScllmConfig.tiny(n_top_genes=150, sentence_genes=20, use_semantic=True, use_path2=True)
    adata, model = sj.tl.cluster(baron_small, 4, config=config, copy=True, progress=False, return_model=True)
    semantic = adata.uns["scllm"]["semantic"]
    assert semantic["used"] and semantic["fraction_matched"] > 0.6
    assert list(semantic["paths"]) == ["path1", "path2"]
    assert "align" in adata.uns["scllm"]["loss_history"]["pretrain"]
    assert adata.obsm["X_scllm"].shape[1] == config.network.projection_dim
    ours = cluster_metrics(adata.obs["cell_type"], adata.obs["scllm"])["ARI"]
    floor = kmeans_ari(model.prepared_.pca, adata.obs["cell_type"], 4)
    print(f"full method, 300 cells: scllm ARI {ours:.3f}, k-means on PCA {floor:.3f}")
    assert ours >= floor - 0.05, f"scllm ARI {ours:.3f} < k-means on PCA {floor:.3f} - 0.05"
    # Save, load and predict the training cells again: the clusters of the fit.
    model.save(tmp_path / "model")
    labels = sj.ScllmModel.load(tmp_path / "model").predict(baron_small)
    assert np.mean(labels == model.labels_) >= 0.95


def test_estimates_k_when_not_given(baron_small):
    from scllm_jax.n_clusters import estimate_n_clusters

    adata, model = sj.tl.cluster(baron_small, None, config=GRAPH_ONLY, copy=True, progress=False,
                                 return_model=True)
    assert 2 <= adata.uns["scllm"]["params"]["n_clusters"] <= 12
    assert adata.uns["scllm"]["params"]["n_clusters_given"] is False
    # K comes from Leiden on the principal components (before training), not from the trained latent.
    expected = estimate_n_clusters(model.prepared_.pca, n_neighbors=GRAPH_ONLY.graph.n_neighbors,
                                   resolution=GRAPH_ONLY.clustering.leiden_resolution, seed=GRAPH_ONLY.seed)
    assert adata.uns["scllm"]["params"]["n_clusters"] == expected


def test_cli_clusters_an_xy_h5_file(baron_small, tmp_path, capsys):
    path = tmp_path / "pancreas.h5"
    with h5py.File(path, "w") as handle:
        handle["X"] = baron_small.X.toarray()
        handle["Y"] = baron_small.obs["cell_type"].astype(str).to_numpy().astype("S")
    config = tmp_path / "config.json"
    config.write_text('{"pretrain_epochs": 20, "cluster_epochs": 20, "n_top_genes": 300, "n_pcs": 20}')
    out = tmp_path / "out.h5ad"
    code = sj.cli.main(["cluster", str(path), "--out", str(out), "--n-clusters", "4", "--label-key",
                        "cell_type", "--config", str(config), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ARI=" in printed and "semantic view: off" in printed
    result = sj.read(out)
    assert result.uns["scllm"]["n_clusters_found"] == result.obs["scllm"].nunique() == 4
    assert "clusters: 4 " in printed


@pytest.mark.parametrize("target", ["dec", "sinkhorn"])
def test_both_targets_train(baron_small, target):
    adata = sj.tl.cluster(baron_small, 4, config=ScllmConfig.tiny(use_semantic=False, target=target),
                          copy=True, progress=False)
    assert cluster_metrics(adata.obs["cell_type"], adata.obs["scllm"])["ARI"] > 0.5


@pytest.mark.parametrize("space, width", [("latent", 8), ("fused", 4)])
def test_cluster_space_switch(space, width):
    import jax.numpy as jnp
    from flax import nnx

    from scllm_jax.modules import ScllmNetwork

    network = ScllmNetwork(6, 5, 3, 2, hidden_dims=(7,), latent_dim=8, decoder_dims=(), projection_dim=4,
                           rngs=nnx.Rngs(0), cluster_space=space)
    latent, text = jnp.ones((10, 8)), jnp.ones((10, 3))
    assert network.centres[...].shape == (2, width)
    embedding = network.cluster_space(latent, text)
    assert embedding.shape == (10, width)
    if space == "latent":
        assert bool(jnp.all(embedding == latent))
    with pytest.raises(ValueError, match="cluster_space"):
        ScllmConfig(cluster_space="projections")


@pytest.mark.parametrize("alignment, minibatch", [("neighbours", False), ("clusters", False), ("clusters", True)])
def test_alignment_variants_train(baron_small, alignment, minibatch):
    config = ScllmConfig.tiny(use_semantic=True, n_top_genes=150, alignment=alignment,
                              minibatch_min_cells=1 if minibatch else 50_000)
    adata, model = sj.tl.cluster(baron_small, 4, config=config, copy=True, progress=False, return_model=True)
    assert adata.uns["scllm"]["semantic"]["used"]
    align = np.asarray(model.result.history["cluster"]["align"])
    assert align.size > 0 and np.all(np.isfinite(align))
    assert cluster_metrics(adata.obs["cell_type"], adata.obs["scllm"])["ARI"] > 0.5


def test_tiny_data_gets_neighbourhoods_within_a_cluster(baron_small, tmp_path):
    """36 cells of 4 types: the cell graph, the final check and predict use 8 neighbours, not 15."""
    from scllm_jax.model import ScllmModel

    adata = baron_small[:36].copy()
    model = ScllmModel(GRAPH_ONLY).fit(adata, 4, progress=False)
    assert model.graph_neighbors_ == 36 // 4 - 1 == 8
    # Each cell's row of the symmetrised graph: itself, its 8 neighbours, and cells that chose it
    # (with 15 neighbours no row would have fewer than 16).
    degrees = np.diff(model._reference_adjacency.indptr)
    assert degrees.min() == 9 and np.median(degrees) < 16, degrees
    model.save(tmp_path / "tiny")
    again = ScllmModel.load(tmp_path / "tiny")
    assert again.graph_neighbors_ == 8
    np.testing.assert_array_equal(again.predict(adata), model.predict(adata))
    labelled = sj.tl.cluster(adata, 4, config=GRAPH_ONLY, copy=True, progress=False)
    assert labelled.uns["scllm"]["params"]["graph_neighbors"] == 8
