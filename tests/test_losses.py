import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scllm_jax.losses import (alignment_loss, infonce_loss, kl_clustering_loss, ncut_loss,
                              reconstruction_loss, variance_loss)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_infonce_matches_hand_computation_3x3():
    text = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    feature = _unit(np.array([[1.0, 0.2], [0.1, 1.0], [1.0, 0.8]]))
    tau = 0.5
    logits = text @ feature.T / tau
    row = [logits[i, i] - np.log(np.exp(logits[i]).sum()) for i in range(3)]
    col = [logits[i, i] - np.log(np.exp(logits[:, i]).sum()) for i in range(3)]
    expected = -(np.sum(row) + np.sum(col)) / (2 * 3)
    got = infonce_loss(jnp.asarray(text), jnp.asarray(feature), tau)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_infonce_is_symmetric_in_its_views():
    rng = np.random.default_rng(0)
    a, b = _unit(rng.normal(size=(6, 4))), _unit(rng.normal(size=(6, 4)))
    np.testing.assert_allclose(float(infonce_loss(a, b, 0.1)), float(infonce_loss(b, a, 0.1)), rtol=1e-5)


def test_infonce_lower_for_aligned_views():
    rng = np.random.default_rng(1)
    a = _unit(rng.normal(size=(8, 4)))
    assert float(infonce_loss(a, a, 0.1)) < float(infonce_loss(a, _unit(rng.normal(size=(8, 4))), 0.1))


def test_variance_loss_hand_cases():
    # Variance 1 in every dimension: sqrt(1 + 1e-4) > 1 so the hinge is 0.
    spread = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    assert float(variance_loss(spread)) == 0.0
    # All rows equal: std = sqrt(1e-4) = 0.01 -> hinge 0.99 per dimension.
    collapsed = jnp.ones((4, 3))
    np.testing.assert_allclose(float(variance_loss(collapsed)), 0.99, rtol=1e-6)


def test_alignment_adds_weighted_variance():
    rng = np.random.default_rng(2)
    a, b = _unit(rng.normal(size=(5, 3))), _unit(rng.normal(size=(5, 3)))
    expected = infonce_loss(a, b, 0.1) + 0.01 * (variance_loss(a) + variance_loss(b))
    np.testing.assert_allclose(float(alignment_loss(a, b, 0.1, 0.01)), float(expected), rtol=1e-6)


def test_kl_is_zero_for_equal_and_takes_log_q():
    p = jnp.array([[0.7, 0.3], [0.2, 0.8]])
    assert abs(float(kl_clustering_loss(p, p))) < 1e-6
    q = jnp.array([[0.5, 0.5], [0.5, 0.5]])
    expected = np.mean([0.7 * np.log(0.7 / 0.5) + 0.3 * np.log(0.3 / 0.5),
                        0.2 * np.log(0.2 / 0.5) + 0.8 * np.log(0.8 / 0.5)])
    np.testing.assert_allclose(float(kl_clustering_loss(p, q)), expected, rtol=1e-5)


def test_kl_gradient_flows_to_q_only():
    p = jnp.array([[0.9, 0.1]])
    q = jnp.array([[0.5, 0.5]])
    grad_p = jax.grad(lambda p_: kl_clustering_loss(p_, q))(p)
    grad_q = jax.grad(lambda q_: kl_clustering_loss(p, q_))(q)
    assert float(jnp.abs(grad_p).sum()) == 0.0
    np.testing.assert_allclose(np.asarray(grad_q), -np.asarray(p) / np.asarray(q), rtol=1e-5)


def test_reconstruction_is_mse():
    assert float(reconstruction_loss(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))) == pytest.approx(2.5)


def test_ncut_hand_case_and_preference_for_smooth_latents():
    # Two cells joined by one edge each way (weight 0.5) plus self loops (0.5).
    senders, receivers = jnp.array([0, 1, 0, 1]), jnp.array([0, 0, 1, 1])
    edges = jnp.full((4,), 0.5)
    latent = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    # Unit rows, orthogonal: smoothness = (0.5 + 0.5 + 0 + 0) / 2 = 0.5; gram = 2 * I/2 = I.
    np.testing.assert_allclose(float(ncut_loss(latent, edges, senders, receivers, 0.32)), -0.5, atol=1e-6)
    same = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    smooth = float(ncut_loss(same, edges, senders, receivers, 0.0))
    assert smooth < float(ncut_loss(latent, edges, senders, receivers, 0.0))


def test_multi_positive_infonce_hand_case_and_identity():
    from scllm_jax.losses import multi_positive_infonce_loss

    rng = np.random.default_rng(3)
    text, feature = _unit(rng.normal(size=(4, 3))), _unit(rng.normal(size=(4, 3)))
    np.testing.assert_allclose(float(multi_positive_infonce_loss(text, feature, jnp.eye(4), 0.2)),
                               float(infonce_loss(text, feature, 0.2)), rtol=1e-5)
    # Cells 0 and 1 are positives of each other: rows 0 and 1 (and columns 0 and 1) average over both.
    positives = np.eye(4)
    positives[0, 1] = positives[1, 0] = 1.0
    logits = text @ feature.T / 0.2
    log_row = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    log_col = logits - np.log(np.exp(logits).sum(axis=0, keepdims=True))
    target = positives / positives.sum(axis=1, keepdims=True)
    expected = -0.5 * (np.mean((target * log_row).sum(axis=1)) + np.mean((target * log_col).sum(axis=0)))
    got = multi_positive_infonce_loss(jnp.asarray(text), jnp.asarray(feature), jnp.asarray(positives), 0.2)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_alignment_positives_from_graph_and_clusters():
    from scllm_jax.config import ScllmConfig
    from scllm_jax.objective import alignment_positives

    senders, receivers = jnp.array([0, 1, 2, 3, 4]), jnp.array([1, 0, 4, 4, 2])
    cells = jnp.array([4, 2, 0])  # a batch of 3 of 5 cells: positions 0, 1, 2
    neighbours = ScllmConfig(alignment="neighbours")
    assert alignment_positives(ScllmConfig(), cells, 5, senders, receivers, None, None) is None
    got = np.asarray(alignment_positives(neighbours, cells, 5, senders, receivers, None, None))
    # Edges 2->4 and 4->2 join batch positions 1 and 0; 0->1, 1->0 and 3->4 leave the batch.
    np.testing.assert_array_equal(got, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    padded = np.asarray(alignment_positives(neighbours, cells, 5, senders, receivers,
                                            jnp.array([True, True, False, True, False]), None))
    np.testing.assert_array_equal(padded, np.eye(3))
    target = jnp.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.3, 0.7]])
    clusters = ScllmConfig(alignment="clusters")
    by_cluster = np.asarray(alignment_positives(clusters, cells, 5, senders, receivers, None, target))
    np.testing.assert_array_equal(by_cluster, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])  # cells 4 | 2, 0
    before_clusters = np.asarray(alignment_positives(clusters, cells, 5, senders, receivers, None, None))
    np.testing.assert_array_equal(before_clusters, got)
    with pytest.raises(ValueError, match="alignment"):
        ScllmConfig(alignment="prototypes")


def test_cluster_optimizer_ramps_up_over_the_first_refresh():
    from scllm_jax.config import ScllmConfig
    from scllm_jax.train import cluster_optimizer

    params, grads = {"w": jnp.ones(3)}, {"w": jnp.ones(3)}
    for warmup, expected in ((True, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]), (False, [1.0] * 6)):
        optimizer = cluster_optimizer(ScllmConfig(learning_rate=0.01, cluster_warmup=warmup), 4)
        state, steps = optimizer.init(params), []
        for _ in range(6):
            updates, state = optimizer.update(grads, state, params)
            steps.append(-float(updates["w"][0]) / 0.01)
        np.testing.assert_allclose(steps, expected, atol=1e-4)
