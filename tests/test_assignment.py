import jax.numpy as jnp
import numpy as np

from scllm_jax.assignment import dec_target, sinkhorn_target, student_t_assign


def test_student_t_hand_case():
    z = jnp.array([[0.0, 0.0]])
    centres = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    # alpha = 1: kernel (1 + d^2)^-1 -> [1, 0.5], normalised [2/3, 1/3].
    np.testing.assert_allclose(np.asarray(student_t_assign(z, centres, 1.0)), [[2 / 3, 1 / 3]], rtol=1e-6)
    # alpha = 2: (1 + d^2/2)^(-1.5) -> [1, 1.5^-1.5].
    k = 1.5 ** -1.5
    np.testing.assert_allclose(np.asarray(student_t_assign(z, centres, 2.0)), [[1 / (1 + k), k / (1 + k)]],
                               rtol=1e-5)


def test_dec_target_hand_case_and_sharpening():
    q = jnp.array([[0.6, 0.4], [0.5, 0.5]])
    f = np.array([1.1, 0.9])
    raw = np.asarray(q) ** 2 / f
    expected = raw / raw.sum(axis=1, keepdims=True)
    p = np.asarray(dec_target(q))
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    assert p[0, 0] > 0.6


def test_sinkhorn_balances_cluster_mass():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4)) + np.array([2.0, 0.0, 0.0, 0.0])
    q = jnp.asarray(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
    p = np.asarray(sinkhorn_target(q, n_iters=200, epsilon=1.0))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    mass = p.mean(axis=0)
    assert np.asarray(q).mean(axis=0)[0] > 0.4
    np.testing.assert_allclose(mass, 0.25, atol=0.03)


def test_sharpened_target_hand_case_has_no_size_division():
    from scllm_jax.assignment import sharpened_target

    q = jnp.array([[0.6, 0.4], [0.5, 0.5]])
    expected = np.array([[0.36 / 0.52, 0.16 / 0.52], [0.5, 0.5]])
    np.testing.assert_allclose(np.asarray(sharpened_target(q)), expected, rtol=1e-6)


def test_size_preserving_target_keeps_the_hard_cluster_sizes():
    from scllm_jax.assignment import size_preserving_target

    # Hand case: hard sizes (3, 1), +1 each -> masses (2/3, 1/3) of 4 cells = (8/3, 4/3).
    q = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]])
    p = np.asarray(size_preserving_target(q, n_iters=200))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p.sum(axis=0), [8 / 3, 4 / 3], rtol=1e-4)
    # Rows are q^2 rescaled per cluster: the ratio p_i0 / p_i1 over q_i0^2 / q_i1^2 is the same for every cell.
    ratio = (p[:, 0] / p[:, 1]) / (np.asarray(q)[:, 0] ** 2 / np.asarray(q)[:, 1] ** 2)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)


def test_dec_target_moves_mass_out_of_a_dominant_cluster_and_the_sized_target_does_not():
    from scllm_jax.assignment import size_preserving_target

    rng = np.random.default_rng(0)
    # 80% of the cells sit firmly in cluster 0.
    logits = np.where(np.arange(500)[:, None] < 400, [3.0, 0.0, 0.0], [0.0, 1.5, 1.5]) + rng.normal(size=(500, 3))
    q = jnp.asarray(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
    hard = np.bincount(np.asarray(q).argmax(axis=1), minlength=3)
    dec_mass = np.asarray(dec_target(q)).sum(axis=0)
    sized_mass = np.asarray(size_preserving_target(q)).sum(axis=0)
    assert dec_mass[0] < np.asarray(q).sum(axis=0)[0]
    # Column masses follow the hard sizes (each + 1 cell, rescaled to the 500 cells).
    np.testing.assert_allclose(sized_mass, (hard + 1) / (500 + 3) * 500, rtol=1e-3)
