"""Flax NNX modules: parameters and forward passes only (no losses, no AnnData)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .graph import propagate
from .losses import unit_rows


#: Hidden GCN layers that row-wise (mini-batch) encoding supports: a batch's latent is exact from its cells'
#: 1-hop neighbourhoods only with one hidden layer over the precomputed ``A X``.
ROWWISE_MAX_HIDDEN_LAYERS = 1


class GCNEncoder(nnx.Module):
    """Graph convolutional encoder ``H_{l+1} = act(A H_l W_l + b_l)``, linear last layer.

    The first layer takes ``A X`` precomputed once (``A (X W) = (A X) W``): its
    input never changes during training.
    """

    def __init__(self, in_dim: int, hidden_dims: tuple[int, ...], latent_dim: int, *, rngs: nnx.Rngs):
        dims = (in_dim, *hidden_dims, latent_dim)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])

    def __call__(self, aggregated_input: jax.Array, edges: jax.Array, senders: jax.Array,
                 receivers: jax.Array) -> jax.Array:
        hidden = self.layers[0](aggregated_input)
        for layer in self.layers[1:]:
            hidden = jax.nn.elu(hidden)
            # Aggregate after the projection: cheaper when the layer narrows.
            hidden = propagate(edges, senders, receivers, hidden @ layer.kernel[...]) + layer.bias[...]
        return hidden

    def _check_rowwise(self) -> None:
        if len(self.layers) - 1 > ROWWISE_MAX_HIDDEN_LAYERS:
            raise NotImplementedError("Row-wise (mini-batch) encoding is exact from 1-hop neighbourhoods, so it "
                                      "supports at most one hidden layer (hidden_dims of length <= 1), got "
                                      f"{len(self.layers) - 1}.")

    def encode_rows(self, aggregated_input: jax.Array, cells: jax.Array, senders: jax.Array,
                    receivers: jax.Array, weights: jax.Array) -> jax.Array:
        """Exact latent of ``cells`` from their 1-hop edges (what a mini-batch needs).

        Parameters
        ----------
        aggregated_input
            ``A X`` of every cell.
        cells
            ``(B,)`` cell ids.
        senders, receivers, weights
            The edges of the cells' adjacency rows: neighbour ids, position
            in ``cells`` (sorted), normalised weights (0 on padding).
        """
        self._check_rowwise()
        if len(self.layers) == 1:
            return self.layers[0](aggregated_input[cells])
        hidden = jax.nn.elu(self.layers[0](aggregated_input[senders]))
        # Sum the neighbours' hidden rows, then project: (A H) W = A (H W), one matmul per cell, not per edge.
        summed = jax.ops.segment_sum(hidden * weights[:, None], receivers, num_segments=cells.shape[0],
                                     indices_are_sorted=True)
        return self.layers[1](summed)

    def project_all(self, aggregated_input: jax.Array) -> jax.Array:
        """Every cell's last-layer input projected, ``elu((A X) W1 + b1) W2`` (the input itself for one layer)."""
        self._check_rowwise()
        if len(self.layers) == 1:
            return self.layers[0](aggregated_input)
        return jax.nn.elu(self.layers[0](aggregated_input)) @ self.layers[1].kernel[...]

    def aggregate_projected(self, projections: jax.Array, cells: jax.Array, senders: jax.Array,
                            receivers: jax.Array, weights: jax.Array) -> jax.Array:
        """Latent of ``cells`` from :meth:`project_all`'s rows and the cells' edges (as :meth:`encode_rows`)."""
        if len(self.layers) == 1:
            return projections[cells]
        summed = jax.ops.segment_sum(projections[senders] * weights[:, None], receivers,
                                     num_segments=cells.shape[0], indices_are_sorted=True)
        return summed + self.layers[1].bias[...]


class MLP(nnx.Module):
    """Dense layers with ELU between them, linear output."""

    def __init__(self, dims: tuple[int, ...], *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.elu(x)
        return x


class ScllmNetwork(nnx.Module):
    """The whole network: structural encoder / decoder, two projectors, cluster centres.

    Parameters
    ----------
    n_inputs
        Width of the encoder input (principal components).
    n_genes
        Width of the reconstructed expression.
    text_dim
        Width of the cell text embedding ``Z_text``; ``None`` builds the
        graph-only network (no projectors).
    n_clusters
        Number of Student-t centres.
    hidden_dims, latent_dim, decoder_dims, projection_dim
        Layer widths (see :class:`~scllm_jax.config.ScllmConfig`).
    cluster_space
        ``"latent"``: clusters live in ``Z_feat`` (the alignment shapes it
        through the feature projector); ``"fused"``: in ``(Zt_hat + Zf_hat) / 2``.
    """

    def __init__(self, n_inputs: int, n_genes: int, text_dim: int | None, n_clusters: int, *,
                 hidden_dims: tuple[int, ...], latent_dim: int, decoder_dims: tuple[int, ...],
                 projection_dim: int, rngs: nnx.Rngs, cluster_space: str = "latent"):
        self.encoder = GCNEncoder(n_inputs, hidden_dims, latent_dim, rngs=rngs)
        self.decoder = MLP((latent_dim, *decoder_dims, n_genes), rngs=rngs)
        self.has_text = text_dim is not None
        if self.has_text:
            width = 4 * projection_dim
            self.text_projector = MLP((text_dim, width, projection_dim), rngs=rngs)
            self.feature_projector = MLP((latent_dim, width, projection_dim), rngs=rngs)
        self.fused = self.has_text and cluster_space == "fused"
        cluster_dim = projection_dim if self.fused else latent_dim
        self.centres = nnx.Param(jnp.zeros((n_clusters, cluster_dim)))

    def encode(self, aggregated_input, edges, senders, receivers) -> jax.Array:
        """Structural latent ``Z_feat``."""
        return self.encoder(aggregated_input, edges, senders, receivers)

    def project(self, latent: jax.Array, text: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
        """L2-normalised projections ``(Zt_hat, Zf_hat)``; ``(None, None)`` for the graph-only network."""
        if not self.has_text:
            return None, None
        return unit_rows(self.text_projector(text)), unit_rows(self.feature_projector(latent))

    def cluster_space(self, latent: jax.Array, text: jax.Array | None) -> jax.Array:
        """The embedding the clusters live in: ``Z_feat``, or ``(Zt_hat + Zf_hat) / 2`` when fused."""
        if not self.fused:
            return latent
        text_hat, feature_hat = self.project(latent, text)
        return 0.5 * (text_hat + feature_hat)
