"""The loss terms that read the network's heads, shared by the full-graph and mini-batch steps.

Each engine computes the latent of its cells (all of them, or one batch) and
its own reconstruction and ncut estimates; the alignment and clustering terms
and their weighted sum are the same for both, so they live here once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .assignment import student_t_assign
from .config import ScllmConfig
from .losses import alignment_loss, kl_clustering_loss
from .modules import ScllmNetwork


def alignment_term(network: ScllmNetwork, latent: jax.Array, text: jax.Array, config: ScllmConfig,
                   positives: jax.Array | None = None) -> jax.Array:
    """InfoNCE + variance alignment between the projections of ``Z_feat`` and ``Z_text`` of these cells.

    ``positives``: from :func:`alignment_positives` (``None``: each cell alone).
    """
    text_hat, feature_hat = network.project(latent, text)
    return alignment_loss(text_hat, feature_hat, config.train.temperature, config.train.variance_weight, positives)


def alignment_positives(config: ScllmConfig, cells: jax.Array, n_cells: int, senders: jax.Array,
                        receivers: jax.Array, edge_valid: jax.Array | None,
                        target_p: jax.Array | None) -> jax.Array | None:
    """Which pairs of the batch's cells the alignment treats as the same (``config.train.alignment``).

    ``"instance"``: none but each cell itself (``None``, the paper's InfoNCE).
    ``"neighbours"``: each cell and its cell-graph neighbours within the batch.
    ``"clusters"``: cells of the same current cluster (``argmax P``) in the
    clustering phase; the neighbours before there are clusters.

    Parameters
    ----------
    cells
        ``(B,)`` global ids of the batch's cells.
    n_cells
        Cells in the whole graph.
    senders, receivers
        Global ids of the graph edges' two ends (any superset of the batch's edges).
    edge_valid
        ``(E,)`` False on padding edges; ``None``: all are real.
    target_p
        ``(n_cells, K)`` clustering target of every cell, ``None`` in pre-training.
    """
    if config.train.alignment == "instance":
        return None
    batch_size = cells.shape[0]
    if config.train.alignment == "clusters" and target_p is not None:
        labels = jnp.argmax(target_p[cells], axis=1)
        return (labels[:, None] == labels[None, :]).astype(jnp.float32)
    # Position of each cell in the batch; batch_size (out of range, dropped) for cells outside it.
    position = jnp.full((n_cells,), batch_size, jnp.int32).at[cells].set(jnp.arange(batch_size, dtype=jnp.int32))
    rows, columns = position[senders], position[receivers]
    if edge_valid is not None:
        rows = jnp.where(edge_valid, rows, batch_size)
    positives = jnp.eye(batch_size, dtype=jnp.float32)
    return positives.at[rows, columns].set(1.0, mode="drop")


def clustering_term(network: ScllmNetwork, latent: jax.Array, text: jax.Array | None, target_p: jax.Array,
                    config: ScllmConfig) -> jax.Array:
    """``KL(P || Q)`` of the Student-t assignment of these cells in the cluster space."""
    embedding = network.cluster_space(latent, text)
    assignment = student_t_assign(embedding, network.centres[...], config.train.alpha)
    return kl_clustering_loss(target_p, assignment)


def total_loss(terms: dict[str, jax.Array], config: ScllmConfig) -> jax.Array:
    """``a L_align + b L_ncut + c L_rec + d L_kl`` over the terms present."""
    weights = {"align": config.train.weight_align, "ncut": config.train.weight_ncut,
               "rec": config.train.weight_rec, "kl": config.train.weight_kl}
    return sum(weights[name] * value for name, value in terms.items())
