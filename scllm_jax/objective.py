"""The loss terms that read the network's heads, shared by the full-graph and mini-batch steps.

Each engine computes the latent of its cells (all of them, or one batch) and
its own reconstruction and ncut estimates; the alignment and clustering terms
and their weighted sum are the same for both, so they live here once.
"""

from __future__ import annotations

import jax

from .assignment import student_t_assign
from .config import ScllmConfig
from .losses import alignment_loss, kl_clustering_loss
from .modules import ScllmNetwork


def alignment_term(network: ScllmNetwork, latent: jax.Array, text: jax.Array, config: ScllmConfig) -> jax.Array:
    """InfoNCE + variance alignment between the projections of ``Z_feat`` and ``Z_text`` of the same cells."""
    text_hat, feature_hat = network.project(latent, text)
    return alignment_loss(text_hat, feature_hat, config.temperature, config.variance_weight)


def clustering_term(network: ScllmNetwork, latent: jax.Array, text: jax.Array | None, target_p: jax.Array,
                    config: ScllmConfig) -> jax.Array:
    """``KL(P || Q)`` of the Student-t assignment of these cells in the cluster space."""
    embedding = network.cluster_space(latent, text)
    assignment = student_t_assign(embedding, network.centres[...], config.alpha)
    return kl_clustering_loss(target_p, assignment)


def total_loss(terms: dict[str, jax.Array], config: ScllmConfig) -> jax.Array:
    """``a L_align + b L_ncut + c L_rec + d L_kl`` over the terms present."""
    weights = {"align": config.weight_align, "ncut": config.weight_ncut,
               "rec": config.weight_rec, "kl": config.weight_kl}
    return sum(weights[name] * value for name, value in terms.items())
