import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from scllm_jax.graph import knn_graph, knn_indices, normalized_adjacency, propagate, to_scipy


def test_knn_indices_exact_on_a_line():
    points = np.arange(10, dtype=np.float32)[:, None]
    indices = knn_indices(points, 2)
    assert indices.shape == (10, 2)
    assert set(indices[5]) == {4, 6}
    assert not np.any(indices == np.arange(10)[:, None])


def test_normalized_adjacency_is_symmetric_with_self_loops():
    indices = np.array([[1], [2], [0], [0]])
    adjacency = normalized_adjacency(indices).toarray()
    np.testing.assert_allclose(adjacency, adjacency.T)
    assert np.all(np.diag(adjacency) > 0)
    # Hand-computed: node 0 links 1, 2, 3 and itself -> degree 4; node 3 links 0 and itself -> 2.
    np.testing.assert_allclose(adjacency[0, 3], 1 / np.sqrt(4 * 2), rtol=1e-6)
    np.testing.assert_allclose(adjacency[3, 3], 1 / 2, rtol=1e-6)


def test_knn_graph_is_a_graphstuple_matching_its_adjacency():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 5)).astype(np.float32)
    graph = knn_graph(features, 5)
    assert isinstance(graph, jraph.GraphsTuple)
    assert int(graph.n_node[0]) == 50 and int(graph.n_edge[0]) == graph.senders.shape[0]
    assert np.all(np.diff(np.asarray(graph.receivers)) >= 0)
    dense = to_scipy(graph).toarray()
    np.testing.assert_allclose(dense, dense.T, atol=1e-7)
    values = rng.normal(size=(50, 3)).astype(np.float32)
    out = jax.jit(propagate)(graph.edges, graph.senders, graph.receivers, jnp.asarray(values))
    np.testing.assert_allclose(np.asarray(out), dense @ values, rtol=1e-5, atol=1e-5)


def test_approximate_neighbours_agree_with_exact():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=5, size=(4, 8))
    features = (centres[rng.integers(0, 4, 600)] + rng.normal(size=(600, 8))).astype(np.float32)
    exact = knn_indices(features, 10)
    approximate = knn_indices(features, 10, exact_max_cells=100)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approximate)])
    assert recall > 0.9


def test_graph_refuses_too_few_cells():
    with pytest.raises(ValueError, match="at least 3 cells"):
        knn_indices(np.zeros((2, 3), dtype=np.float32), 15)


def test_neighbour_count_stays_within_a_mean_sized_cluster():
    from scllm_jax.graph import neighbour_count

    assert neighbour_count(822, 15, 13) == 15  # 63 cells per cluster: the configured count
    assert neighbour_count(240, 15, 15) == 15  # from 16 cells per cluster on, unchanged
    assert neighbour_count(30, 15, 5) == 5  # six cells per cluster: the five others
    assert neighbour_count(20, 15, 8) == 1  # never below one
    assert neighbour_count(30, 15, None) == neighbour_count(30, 15) == 14  # K not known yet: only half the cells
