"""The device-resident engine: batches gathered on the device equal the host's CSR rows, one batch of every
cell gives the full graph's losses and gradients, the full embedding pass equals the full-graph encoder, and
the on-device stages before training (kNN, moments and projection of the scaled expression) equal the host's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from flax import nnx

from scllm_jax.config import ScllmConfig
from scllm_jax.device_rows import (csr_on_device, csr_row_slots, expression_on_device, largest_piece_share,
                                   piece_of_rows, scaled_rows)
from scllm_jax.graph import device_knn, graph_from_adjacency, knn_indices, normalized_adjacency, propagate
from scllm_jax.minibatch import embed_all, minibatch_data, plan_budgets, put_batches, with_table
from scllm_jax.modules import ScllmNetwork
from scllm_jax.parallel import data_mesh
from scllm_jax.preprocess import ScaledExpression, _DeviceBlocks
from scllm_jax.step import WholeGraph, gather_batch, loss_terms, make_embed, padded_edge_count, whole_graph_tables


def _cells(n_cells=160, n_pcs=8, n_genes=30, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, n_pcs)) * 3
    pca = (centres[rng.integers(0, 4, n_cells)] + rng.normal(size=(n_cells, n_pcs))).astype(np.float32)
    counts = sp.random(n_cells, n_genes, density=0.3, random_state=seed, format="csr", dtype=np.float32)
    counts.data = np.log1p(counts.data * 10).astype(np.float32)
    keep = (np.arange(n_cells) != 3).astype(np.float32)  # row 3 left empty
    return pca, sp.csr_matrix(sp.diags(keep) @ counts, dtype=np.float32), rng


def test_row_slots_are_the_csr_row_slices():
    _, matrix, rng = _cells()
    rows = rng.choice(matrix.shape[0], 40, replace=False)
    rows[5] = 3  # the empty row
    owner, position, valid = jax.jit(csr_row_slots, static_argnums=2)(
        csr_on_device(matrix).indptr, jnp.asarray(rows, jnp.int32), 600)
    owner, position, valid = map(np.asarray, (owner, position, valid))
    expected = np.concatenate([np.arange(matrix.indptr[r], matrix.indptr[r + 1]) for r in rows])
    np.testing.assert_array_equal(position[valid], expected)
    np.testing.assert_array_equal(owner[valid], np.repeat(np.arange(40), np.diff(matrix.indptr)[rows]))
    assert valid.sum() == expected.size and np.all(np.diff(owner) >= 0)


@pytest.mark.parametrize("max_piece_entries", [2 ** 31 - 1, 97])
def test_scaled_rows_equal_the_host_scaling(max_piece_entries):
    """Also with the CSR split into pieces (atlases past 2^31 stored entries): 97 entries make ~15 pieces."""
    _, matrix, rng = _cells()
    mean = np.asarray(matrix.mean(axis=0)).ravel().astype(np.float32)
    std = (np.asarray(matrix.power(2).mean(axis=0)).ravel() - mean ** 2).clip(1e-3) ** 0.5
    # A tiny std makes some values clip at +-10.
    std[0] = 1e-3
    host = ScaledExpression(matrix, mean, std.astype(np.float32))
    rows = rng.choice(matrix.shape[0], 50, replace=False)
    rows[:2] = [0, matrix.shape[0] - 1]  # the first and last rows
    on_device = expression_on_device(host, max_piece_entries=max_piece_entries)
    bounds = np.asarray(on_device.piece_rows)
    assert len(on_device.pieces) == bounds.size - 1 >= (1 if max_piece_entries > 1000 else 10)
    budget = int(largest_piece_share(np.diff(matrix.indptr), piece_of_rows(bounds, matrix.shape[0]), rows).max())
    got = jax.jit(scaled_rows, static_argnums=2)(on_device, jnp.asarray(rows, jnp.int32), budget)
    np.testing.assert_allclose(np.asarray(got), host[rows], rtol=1e-6, atol=1e-6)
    assert np.abs(host[rows]).max() == 10.0


def test_batches_gather_expression_rows_across_pieces():
    """The training batches' targets, planned and gathered as training does, from a CSR in pieces."""
    pca, matrix, rng = _cells()
    mean = np.asarray(matrix.mean(axis=0)).ravel().astype(np.float32)
    std = np.ones(matrix.shape[1], np.float32)
    host = ScaledExpression(matrix, mean, std)
    adjacency = normalized_adjacency(knn_indices(pca, 6))
    data = minibatch_data(pca, host, adjacency, None, ScllmConfig.tiny(minibatch_size=32), data_mesh(),
                          max_piece_entries=150)
    assert len(data.tables.expression.pieces) > 5
    batches = rng.permutation(matrix.shape[0])[:128].reshape(4, 32)
    budgets = plan_budgets(data, batches)
    placed = put_batches(data, batches)
    for i in range(4):
        batch = gather_batch(data.tables, placed[i], budgets)
        np.testing.assert_allclose(np.asarray(batch.target), host[batches[i]], rtol=1e-6, atol=1e-6)


def _network(text_dim=None):
    return ScllmNetwork(8, 30, text_dim, 3, hidden_dims=(16,), latent_dim=4, decoder_dims=(8,), projection_dim=4,
                        rngs=nnx.Rngs(0))


@pytest.mark.parametrize("with_text", [False, True])
def test_one_batch_of_every_cell_gives_the_full_graph_losses_and_gradients(with_text):
    pca, matrix, rng = _cells()
    n_cells = pca.shape[0]
    expression = matrix.toarray()
    text = rng.normal(size=(n_cells, 6)).astype(np.float32) if with_text else None
    adjacency = normalized_adjacency(knn_indices(pca, 6))
    config = ScllmConfig.tiny(minibatch_size=n_cells)
    network = _network(6 if with_text else None)
    network.centres[...] = rng.normal(size=network.centres[...].shape).astype(np.float32)
    graphdef, params = nnx.split(network, nnx.Param)
    target_p = rng.dirichlet(np.ones(3), n_cells).astype(np.float32)

    full = whole_graph_tables(pca, expression, graph_from_adjacency(adjacency), text)
    latent = network.encode(full.aggregated_input, *full.graph)
    data = minibatch_data(pca, expression, adjacency, text, config, data_mesh())
    # The ncut neighbours' table holds the current latent: the batch estimate is then the full-graph term.
    data = with_table(data, latent=np.asarray(latent), target_p=target_p)
    cells = np.arange(n_cells)[None, :]
    budgets = plan_budgets(data, cells)
    batch = gather_batch(data.tables, put_batches(data, cells)[0], budgets)

    def full_loss(params):
        tables = full._replace(target_p=jnp.asarray(target_p))
        terms = loss_terms(nnx.merge(graphdef, params), tables, gather_batch(tables, None, None), config,
                           jax.random.key(0))
        return sum(terms.values()), terms

    def batch_loss(params):
        terms = loss_terms(nnx.merge(graphdef, params), data.tables, batch, config, jax.random.key(1))
        return sum(terms.values()), terms

    (full_total, full_terms), full_grads = jax.value_and_grad(full_loss, has_aux=True)(params)
    (batch_total, batch_terms), batch_grads = jax.value_and_grad(batch_loss, has_aux=True)(params)
    assert set(full_terms) == set(batch_terms) == ({"rec", "ncut", "kl"} | ({"align"} if with_text else set()))
    for name in full_terms:
        np.testing.assert_allclose(float(batch_terms[name]), float(full_terms[name]), rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(batch_grads), jax.tree.leaves(full_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-6)
    assert float(jnp.abs(jax.tree.leaves(full_grads)[0]).max()) > 0


def test_edge_counts_round_up_so_that_seeds_share_compiled_programs():
    # worm_neuron's kNN graph with seeds 1 and 2 (the randomised PCA moves the edge count)
    assert padded_edge_count(108_938) == padded_edge_count(109_102) == 110_592
    for n_edges in (1, 16, 17, 1000, 12_345, 10**6):
        assert n_edges <= padded_edge_count(n_edges) <= n_edges * 1.0625


def test_padding_edges_change_no_loss_or_gradient():
    """The whole graph's edges padded (weight-0 self-loops of the last cell): the same A X, losses and
    gradients as the graph's own edges."""
    pca, matrix, rng = _cells()
    n_cells = pca.shape[0]
    graph = graph_from_adjacency(normalized_adjacency(knn_indices(pca, 6)))
    padded = whole_graph_tables(pca, matrix.toarray(), graph, None)
    assert padded.graph.weights.shape[0] > graph.edges.shape[0]  # this graph's count is not a bucket
    edges = WholeGraph(jnp.asarray(graph.edges), jnp.asarray(graph.senders), jnp.asarray(graph.receivers))
    plain = padded._replace(graph=edges, aggregated_input=propagate(*edges, jnp.asarray(pca)))
    np.testing.assert_array_equal(np.asarray(padded.aggregated_input), np.asarray(plain.aggregated_input))
    network = _network()
    network.centres[...] = rng.normal(size=network.centres[...].shape).astype(np.float32)
    graphdef, params = nnx.split(network, nnx.Param)
    target_p = jnp.asarray(rng.dirichlet(np.ones(3), n_cells).astype(np.float32))
    config = ScllmConfig.tiny()

    def loss(params, tables):
        tables = tables._replace(target_p=target_p)
        terms = loss_terms(nnx.merge(graphdef, params), tables, gather_batch(tables, None, None), config,
                           jax.random.key(0))
        return sum(terms.values()), terms

    (_, got), got_grads = jax.value_and_grad(loss, has_aux=True)(params, padded)
    (_, want), want_grads = jax.value_and_grad(loss, has_aux=True)(params, plain)
    for name in want:
        np.testing.assert_allclose(float(got[name]), float(want[name]), rtol=1e-6, atol=0)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_full_embedding_pass_equals_the_full_graph_encoder():
    pca, matrix, rng = _cells(n_cells=300)
    adjacency = normalized_adjacency(knn_indices(pca, 6))
    text = rng.normal(size=(300, 6)).astype(np.float32)
    network = _network(6)
    graphdef, params = nnx.split(network, nnx.Param)
    full = whole_graph_tables(pca, matrix.toarray(), graph_from_adjacency(adjacency), text)
    latent = network.encode(full.aggregated_input, *full.graph)
    # Batches of 64: the pass runs in several blocks, the last padded by repetition.
    data = minibatch_data(pca, matrix.toarray(), adjacency, text, ScllmConfig.tiny(minibatch_size=64), data_mesh())
    got_latent, got_space = embed_all(make_embed(graphdef), params, data)
    whole_latent, whole_space = make_embed(graphdef)(params, full, None, None)
    np.testing.assert_allclose(np.asarray(whole_latent), np.asarray(latent), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_latent, np.asarray(latent), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_space, np.asarray(network.cluster_space(latent, full.text)), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("n_cells, blocks", [(3000, dict(query_block=700, candidate_block=1100)),
                                             (3000, dict(precision=jax.lax.Precision.HIGH)),
                                             (40, dict(group=32))])
def test_device_knn_finds_the_exact_neighbours(n_cells, blocks):
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 30)) * 3
    features = (centres[rng.integers(0, 20, n_cells)] + rng.normal(size=(n_cells, 30))).astype(np.float32)
    # Blocks that do not divide the cells (padding queries and candidates); 40 cells: groups of 2, so that
    # 16 groups still hold real cells.
    found = device_knn(features, 16, **blocks)
    distances, exact = NearestNeighbors(n_neighbors=16).fit(features).kneighbors(features)
    recall = np.mean([len(set(a) & set(b)) / 16 for a, b in zip(found, exact)])
    assert recall >= 0.999
    np.testing.assert_array_equal(found[:, 0], np.arange(n_cells))
    assert found.max() < n_cells
    # Nearest first.
    found_distances = np.linalg.norm(features[found] - features[:, None, :], axis=2)
    assert np.all(np.diff(found_distances, axis=1) >= -1e-4)


def test_device_kmeans_matches_scikit_learn():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from scllm_jax.device_kmeans import device_kmeans, nearest_centres

    rng = np.random.default_rng(1)
    sizes = [1200, 500, 200, 60, 40]  # very unequal clusters
    truth = np.repeat(np.arange(5), sizes)
    points = (rng.normal(size=(5, 12)) * 4)[truth] + rng.normal(size=(truth.size, 12))
    centres, inertia = device_kmeans(points, 5, seed=0, n_init=8)
    labels = nearest_centres(points, centres, block=700)  # several blocks, the last padded
    reference = KMeans(5, n_init=8, random_state=0).fit(points)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert inertia == pytest.approx(reference.inertia_, rel=1e-4)
    distances = ((points[:, None, :] - centres[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels, np.argmin(distances, axis=1))
    # More clusters than the data holds: still K centres, the lowest inertia found no worse than scikit-learn's.
    _, inertia = device_kmeans(points, 12, seed=3, n_init=4)
    assert inertia <= 1.02 * KMeans(12, n_init=4, random_state=3).fit(points).inertia_


def test_kmeans_labels_on_an_accelerator_equal_the_host(monkeypatch):
    from sklearn.metrics import adjusted_rand_score

    import scllm_jax.partition as partition

    rng = np.random.default_rng(2)
    truth = rng.integers(0, 6, 3000)
    points = ((rng.normal(size=(6, 10)) * 4)[truth] + rng.normal(size=(3000, 10))).astype(np.float32)
    host = partition.kmeans_labels(points, 6, seed=0, n_init=4, max_cells=1000)
    monkeypatch.setattr(partition, "on_accelerator", lambda: True)
    monkeypatch.setattr(partition, "DEVICE_KMEANS_MIN_CELLS", 1000)
    import scllm_jax.device_kmeans as device_kmeans

    fitted_rows = []
    original = device_kmeans.device_kmeans
    monkeypatch.setattr(device_kmeans, "device_kmeans",
                        lambda rows, *args, **kwargs: fitted_rows.append(len(rows)) or original(rows, *args, **kwargs))
    device = partition.kmeans_labels(points, 6, seed=0, n_init=4, max_cells=1000)
    assert fitted_rows == [1000]  # the device path ran, on the seeded subset
    assert adjusted_rand_score(host, device) == 1.0
    assert adjusted_rand_score(truth, device) == 1.0


def test_device_moments_and_projection_equal_the_host_loop():
    _, matrix, _ = _cells(n_cells=500, n_genes=40)
    mean = np.asarray(matrix.mean(axis=0)).ravel().astype(np.float32)
    std = ((np.asarray(matrix.power(2).mean(axis=0)).ravel() - mean ** 2).clip(1e-6) ** 0.5).astype(np.float32)
    expression = ScaledExpression(matrix, mean, std)
    dense = expression[np.arange(500)].astype(np.float64)

    class Small(_DeviceBlocks):
        block = 128  # several blocks, the last padded

    blocks = Small(expression, max_piece_entries=700)  # blocks that straddle pieces
    assert len(blocks.rows.pieces) > 3
    total, gram = blocks.moments()
    np.testing.assert_allclose(total, dense.sum(axis=0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gram, dense.T @ dense, rtol=1e-4, atol=1e-2)
    components = np.linalg.qr(np.random.default_rng(0).normal(size=(40, 5)))[0].T.astype(np.float32)
    centre = dense.mean(axis=0).astype(np.float32)
    np.testing.assert_allclose(blocks.project(centre, components), (dense - centre) @ components.T, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("same_pieces", [True, False])
def test_training_takes_over_the_preprocessing_device_csr(same_pieces):
    """The atlas preprocessing's device copy of the CSR becomes the training target (once), not a second copy."""
    pca, matrix, _ = _cells()
    mean = np.asarray(matrix.mean(axis=0)).ravel().astype(np.float32)
    expression = ScaledExpression(matrix, mean, np.ones(matrix.shape[1], np.float32))
    blocks = _DeviceBlocks(expression, max_piece_entries=150)
    assert expression.device_copy is not None
    adjacency = normalized_adjacency(knn_indices(pca, 6))
    data = minibatch_data(pca, expression, adjacency, None, ScllmConfig.tiny(minibatch_size=32), data_mesh(),
                          max_piece_entries=150 if same_pieces else 200)
    assert expression.device_copy is None  # handed over (or dropped): the prepared data pins no device memory
    shared = [a.unsafe_buffer_pointer() == b.unsafe_buffer_pointer()
              for a, b in zip(jax.tree.leaves(blocks.rows.pieces), jax.tree.leaves(data.tables.expression.pieces))]
    assert all(shared) if same_pieces else not any(shared)
    batches = np.arange(64).reshape(2, 32)
    budgets = plan_budgets(data, batches)
    batch = gather_batch(data.tables, put_batches(data, batches)[1], budgets)
    np.testing.assert_allclose(np.asarray(batch.target), expression[batches[1]], rtol=1e-6, atol=1e-6)
    # A second build (another fit on the same prepared data) ships its own copy.
    again = minibatch_data(pca, expression, adjacency, None, ScllmConfig.tiny(minibatch_size=32), data_mesh(),
                           max_piece_entries=150)
    assert len(again.tables.expression.pieces) == len(blocks.rows.pieces)


def test_compilation_cache_folder_and_switch(monkeypatch, tmp_path):
    import scllm_jax.parallel as parallel

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv(parallel.COMPILATION_CACHE_ENV, "0")
    assert parallel.use_compilation_cache() is None  # turned off
    monkeypatch.setenv(parallel.COMPILATION_CACHE_ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        folder = parallel.use_compilation_cache()
        assert folder == str(tmp_path / "scllm-jax" / "xla")
        assert jax.config.jax_compilation_cache_dir == folder
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_a_whole_fit_with_every_accelerator_path_switched_on(monkeypatch):
    """The stages an accelerator moves to the device (moments and projection, exact kNN of both spaces, the
    k-means start, the network built on the host) run together in one fit here."""
    from sklearn.metrics import adjusted_rand_score

    import scllm_jax.device_kmeans as device_kmeans
    import scllm_jax.graph as graph
    import scllm_jax.parallel as parallel
    import scllm_jax.partition as partition
    import scllm_jax.preprocess as preprocess
    from scllm_jax.model import ScllmModel
    from scllm_jax.synthetic import synthetic_atlas

    for module in (graph, preprocess, partition, parallel):
        monkeypatch.setattr(module, "on_accelerator", lambda: True)
    monkeypatch.setattr(partition, "DEVICE_KMEANS_MIN_CELLS", 100)
    calls = {"knn": 0, "kmeans": 0}
    knn, kmeans = graph.device_knn, device_kmeans.device_kmeans
    monkeypatch.setattr(graph, "device_knn", lambda *a, **k: calls.__setitem__("knn", calls["knn"] + 1) or knn(*a, **k))
    monkeypatch.setattr(device_kmeans, "device_kmeans",
                        lambda *a, **k: calls.__setitem__("kmeans", calls["kmeans"] + 1) or kmeans(*a, **k))
    adata = synthetic_atlas(1200, 300, 4, seed=1)
    config = ScllmConfig.tiny(minibatch_min_cells=1, minibatch_size=256, exact_knn_max_cells=100,
                              pretrain_epochs=3, cluster_epochs=2, update_interval=1)
    model = ScllmModel(config).fit(adata, 4, progress=False)
    assert calls["knn"] == 2  # the principal components' graph and the final check's clustering space
    assert calls["kmeans"] == 1  # the start (Ward's reference is exact linkage at this size)
    truth = adata.obs["cell_type"].cat.codes.to_numpy()
    assert adjusted_rand_score(truth, model.labels_) > 0.9
