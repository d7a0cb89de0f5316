"""Soft cluster assignment (Student-t) and the target distributions it is trained towards."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def student_t_assign(embedding: jax.Array, centres: jax.Array, alpha: float = 1.0) -> jax.Array:
    """Soft assignment ``q_ij`` of cells to centres under a Student-t kernel.

    ``q_ij ∝ (1 + |z_i - mu_j|^2 / alpha)^(-(alpha + 1) / 2)``, each row summing to 1.

    Parameters
    ----------
    embedding
        ``(N, d)`` cell embeddings.
    centres
        ``(K, d)`` cluster centres.
    alpha
        Degrees of freedom.
    """
    squared = (jnp.sum(embedding ** 2, axis=1, keepdims=True) - 2.0 * embedding @ centres.T
               + jnp.sum(centres ** 2, axis=1)[None, :])
    squared = jnp.maximum(squared, 0.0)
    log_kernel = -(alpha + 1.0) / 2.0 * jnp.log1p(squared / alpha)
    return jax.nn.softmax(log_kernel, axis=1)


def dec_target(assignment: jax.Array) -> jax.Array:
    """DEC's sharpened target ``p_ij ∝ q_ij^2 / f_j`` with ``f_j = sum_i q_ij``."""
    weight = assignment ** 2 / jnp.sum(assignment, axis=0, keepdims=True)
    return weight / jnp.sum(weight, axis=1, keepdims=True)


def sharpened_target(assignment: jax.Array) -> jax.Array:
    """``p_ij ∝ q_ij^2``: DEC's sharpening without its division by the cluster mass ``f_j``."""
    weight = assignment ** 2
    return weight / jnp.sum(weight, axis=1, keepdims=True)


def size_preserving_target(assignment: jax.Array, n_iters: int = 50) -> jax.Array:
    """``p_ij ∝ q_ij^2 v_j`` with ``v`` such that each cluster's mass equals its current hard size.

    DEC divides by the soft mass ``f_j`` (one step towards equal sizes), which
    moves cells out of large clusters. Here the sharpened ``q^2`` is instead
    rescaled by Sinkhorn so that the column sums equal the sizes of the
    current hard partition (``argmax_j q_ij``): sharpening without a pull
    towards balance, the sizes following the data as it is refreshed
    (in the spirit of the authors' code, which matched the k-means sizes).
    A cluster with no cell keeps a mass of one cell, so it can still grow.
    """
    n_clusters = assignment.shape[1]
    sizes = jnp.bincount(jnp.argmax(assignment, axis=1), length=n_clusters) + 1.0
    # cost -log q at temperature 1/2 gives the kernel q^2.
    return sinkhorn_target(assignment, n_iters, 0.5, cluster_sizes=sizes)


def sinkhorn_target(assignment: jax.Array, n_iters: int = 50, epsilon: float = 0.05,
                    cluster_sizes: jax.Array | None = None) -> jax.Array:
    """Optimal-transport target: ``q`` rebalanced to given cluster marginals.

    Solves the entropic transport between cells (uniform mass) and clusters
    (``cluster_sizes``, balanced if ``None``) with cost ``-log q`` by Sinkhorn
    iterations in log space; rows of the result sum to 1.
    """
    n_cells, n_clusters = assignment.shape
    log_kernel = jnp.log(assignment + 1e-12) / epsilon
    if cluster_sizes is None:
        cluster_sizes = jnp.full((n_clusters,), 1.0 / n_clusters)
    log_col = jnp.log(cluster_sizes / jnp.sum(cluster_sizes))
    log_row = jnp.full((n_cells,), -jnp.log(n_cells))

    def step(carry, _):
        u, v = carry
        u = log_row - jax.nn.logsumexp(log_kernel + v[None, :], axis=1)
        v = log_col - jax.nn.logsumexp(log_kernel + u[:, None], axis=0)
        return (u, v), None

    (u, v), _ = jax.lax.scan(step, (jnp.zeros(n_cells), jnp.zeros(n_clusters)), None, length=n_iters)
    plan = log_kernel + u[:, None] + v[None, :]
    return jax.nn.softmax(plan, axis=1)
