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
