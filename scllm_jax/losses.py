"""Pure loss functions of arrays (no parameters, no state)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reconstruction_loss(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error between the decoder output and the expression it reconstructs."""
    return jnp.mean(jnp.square(reconstruction - target))


def ncut_loss(latent: jax.Array, edges: jax.Array, senders: jax.Array, receivers: jax.Array,
              eta: float) -> jax.Array:
    """Sparse normalised-cut regulariser on the cell graph.

    With ``U`` the row-normalised latent (unit vectors), returns
    ``-tr(U^T A U) / N + eta * mean((d U^T U / N - I)^2)``, ``A`` the normalised
    adjacency. ``tr(U^T A U) = sum_edges w_ij cos(z_i, z_j)`` (an O(N k) edge
    sum, never N x N); since ``tr(U^T L U) = N - tr(U^T A U)`` for ``L = I - A``,
    raising it lowers the Laplacian form, and the second term keeps the
    directions spread over the ``d`` dimensions (the relaxed cut's
    orthogonality constraint) so the minimum is not one collapsed point.
    Working on directions leaves the scale of ``Z`` to the reconstruction
    (whitening ``Z`` itself would blow up its noise dimensions).

    Parameters
    ----------
    latent
        ``(N, d)`` cell latent ``Z``.
    edges, senders, receivers
        Normalised edge weights and endpoints.
    eta
        Weight of the orthogonality term.
    """
    unit = unit_rows(latent)
    smoothness = jnp.sum(edges * jnp.sum(unit[senders] * unit[receivers], axis=1)) / latent.shape[0]
    return -smoothness + eta * direction_orthogonality(unit)


def unit_rows(latent: jax.Array) -> jax.Array:
    """Each row scaled to unit length (its direction)."""
    return latent / jnp.sqrt(jnp.sum(latent * latent, axis=1, keepdims=True) + 1e-8)


def direction_orthogonality(unit: jax.Array) -> jax.Array:
    """``mean((d U^T U / N - I)^2)`` of unit rows ``U`` (N x d): the ncut's spread-out constraint."""
    n_cells, width = unit.shape
    gram = width * (unit.T @ unit) / n_cells
    return jnp.mean(jnp.square(gram - jnp.eye(width, dtype=unit.dtype)))


def infonce_loss(text: jax.Array, feature: jax.Array, temperature: float) -> jax.Array:
    """Bidirectional InfoNCE between two L2-normalised views of the same cells.

    ``S = text @ feature.T / tau``; the positive pair of row ``i`` is column
    ``i``. Returns ``-(1/2N) sum_i [log softmax_row(S)_ii + log softmax_col(S)_ii]``.
    """
    logits = text @ feature.T / temperature
    diagonal = jnp.diagonal(logits)
    row = diagonal - jax.nn.logsumexp(logits, axis=1)
    column = diagonal - jax.nn.logsumexp(logits, axis=0)
    return -0.5 * (jnp.mean(row) + jnp.mean(column))


def multi_positive_infonce_loss(text: jax.Array, feature: jax.Array, positives: jax.Array,
                                temperature: float) -> jax.Array:
    """InfoNCE in which row ``i`` has every column ``j`` with ``positives[i, j]`` as a positive.

    ``S = text @ feature.T / tau``; each row's target spreads evenly over its
    positives (the supervised-contrastive form, Khosla et al. 2020), and the
    same for each column. With ``positives = I`` it is :func:`infonce_loss`.

    Parameters
    ----------
    text, feature
        ``(B, d)`` L2-normalised views of the same cells.
    positives
        ``(B, B)`` 0/1: which pairs count as the same; the diagonal must be 1.
    temperature
        ``tau``.
    """
    logits = text @ feature.T / temperature
    row_target = positives / jnp.sum(positives, axis=1, keepdims=True)
    column_target = positives / jnp.sum(positives, axis=0, keepdims=True)
    row = jnp.sum(row_target * jax.nn.log_softmax(logits, axis=1), axis=1)
    column = jnp.sum(column_target * jax.nn.log_softmax(logits, axis=0), axis=0)
    return -0.5 * (jnp.mean(row) + jnp.mean(column))


def variance_loss(embedding: jax.Array, eps: float = 1e-4) -> jax.Array:
    """Anti-collapse hinge: ``mean_k relu(1 - sqrt(var_k + eps))`` over the embedding's dimensions."""
    std = jnp.sqrt(jnp.var(embedding, axis=0) + eps)
    return jnp.mean(jax.nn.relu(1.0 - std))


def alignment_loss(text: jax.Array, feature: jax.Array, temperature: float, variance_weight: float,
                   positives: jax.Array | None = None) -> jax.Array:
    """``L_cl + lambda * (L_var(text) + L_var(feature))`` of METHOD.md step 9.

    ``positives=None``: ``L_cl`` is the paper's instance InfoNCE; otherwise
    :func:`multi_positive_infonce_loss` with those positive pairs.
    """
    regulariser = variance_loss(text) + variance_loss(feature)
    if positives is None:
        contrast = infonce_loss(text, feature, temperature)
    else:
        contrast = multi_positive_infonce_loss(text, feature, positives, temperature)
    return contrast + variance_weight * regulariser


def kl_clustering_loss(target: jax.Array, assignment: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``KL(P || Q)`` averaged over cells; ``target`` P is treated as a constant.

    Takes probabilities (not logs) for both and applies the logarithm here,
    so ``Q`` enters as ``log q`` (the authors' code passed ``q``).
    """
    target = jax.lax.stop_gradient(target)
    kl = jnp.sum(target * (jnp.log(target + eps) - jnp.log(assignment + eps)), axis=1)
    return jnp.mean(kl)
