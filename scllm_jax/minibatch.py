"""Mini-batch, data-parallel training: memory O(N k) graph + O(N d), exact GCN.

With the first layer's aggregation precomputed (``A X``), the 2-layer
encoder's output for a batch ``b`` is exact from the batch's 1-hop
neighbourhood only::

    Z_b = A[b, :] (elu((A X)[nbrs] W1 + b1) W2) + b2

so a batch reads the rows of ``A X`` of its cells' neighbours (one row per
edge of the batch's CSR row slices) and never the rest of the graph.
Per-batch losses: reconstruction and InfoNCE on the batch, the ncut
smoothness on the batch's edges against a latent table refreshed once per
epoch (historical embeddings; the neighbours' own latents would need the
2-hop neighbourhood), the orthogonality on the batch, and KL against the
target ``P`` (a cell-indexed table refreshed by a streaming pass).

Every per-cell table and every batch array is sharded over the mesh's
``"data"`` axis, parameters are replicated: the same jitted step runs on
one device, on several, and on several hosts (see :mod:`scllm_jax.parallel`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp
from flax import nnx
from jax.sharding import Mesh

from .config import ScllmConfig
from .graph import row_edges
from .losses import direction_orthogonality, reconstruction_loss, unit_rows
from .objective import alignment_positives, alignment_term, clustering_term, total_loss
from .parallel import agree_max, process_rows, put_global_rows, put_rows, replicated, row_sharded, to_host


class Tables(NamedTuple):
    """Cell-indexed device tables a step reads (rows sharded over ``"data"``).

    Attributes
    ----------
    aggregated_input
        ``A X`` (padded cells x inputs).
    text
        ``Z_text`` or ``None``.
    latent
        Latent of every cell from the last streaming pass (ncut neighbours).
    target_p
        Target distribution ``P`` (padded cells x K) or ``None`` (pre-training).
    """

    aggregated_input: jax.Array
    text: jax.Array | None
    latent: jax.Array | None
    target_p: jax.Array | None


class Batch(NamedTuple):
    """One mini-batch (a pytree of row-sharded arrays).

    Attributes
    ----------
    cells
        ``(B,)`` global cell ids.
    target
        ``(B, genes)`` decoder target of those cells.
    senders
        ``(E,)`` global ids of the neighbours (one per edge of the batch's rows).
    receivers
        ``(E,)`` position in the batch of each edge's cell (sorted).
    weights
        ``(E,)`` normalised edge weights; 0 on padding edges.
    """

    cells: jax.Array
    target: jax.Array
    senders: jax.Array
    receivers: jax.Array
    weights: jax.Array


@dataclasses.dataclass
class MinibatchData:
    """Host-side graph and expression plus the device tables, for one process.

    Attributes
    ----------
    adjacency
        Normalised adjacency ``D^-1/2 (A + I) D^-1/2`` as CSR (row = receiver);
        only this process's rows are read.
    expression
        Decoder target: anything indexable by an array of rows giving dense
        float32 rows (an ``np.ndarray``, or a lazily scaled CSR such as
        :class:`~scllm_jax.preprocess.ScaledExpression`).
    tables
        Device tables (:class:`Tables`).
    n_cells
        Number of (unpadded) cells.
    mesh
        The data mesh.
    batch_size
        Cells per global batch (a multiple of the mesh size).
    """

    adjacency: sp.csr_matrix
    expression: Any
    tables: Tables
    n_cells: int
    mesh: Mesh
    batch_size: int

    @property
    def n_inputs(self) -> int:
        return self.tables.aggregated_input.shape[1]

    @property
    def n_genes(self) -> int:
        return self.expression.shape[1]

    @property
    def text_dim(self) -> int | None:
        return None if self.tables.text is None else self.tables.text.shape[1]

    @property
    def local_cells(self) -> np.ndarray:
        """Global ids of the (unpadded) cells this process trains on."""
        start, stop = process_rows(self.n_cells, self.mesh)
        return np.arange(start, min(stop, self.n_cells))

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // jax.process_count()

    @property
    def steps_per_epoch(self) -> int:
        # Same on every process: the smallest shard decides, the others wrap around.
        return max(1, -(-self.n_cells // self.batch_size))


def minibatch_data(features: np.ndarray, expression: Any, adjacency: sp.csr_matrix, text: np.ndarray | None,
                   config: ScllmConfig, mesh: Mesh) -> MinibatchData:
    """Precompute ``A X`` on the host (sparse) and shard the cell tables over ``mesh``.

    ``features``, ``adjacency`` and ``text`` hold every cell here (one host);
    each process keeps only its own rows on its devices.
    """
    adjacency = sp.csr_matrix(adjacency, dtype=np.float32)
    adjacency.sort_indices()
    n_cells = adjacency.shape[0]
    # Sparse A @ X: O(N k F), never an (edges x F) message array.
    aggregated = np.asarray(adjacency @ np.asarray(features, dtype=np.float32), dtype=np.float32)
    tables = Tables(put_global_rows(aggregated, mesh),
                    None if text is None else put_global_rows(np.asarray(text, dtype=np.float32), mesh),
                    None, None)
    size = mesh.devices.size
    batch_size = -(-min(config.minibatch_size, n_cells) // size) * size
    return MinibatchData(adjacency, expression, tables, n_cells, mesh, batch_size)


def epoch_order(data: MinibatchData, seed: int, phase: int, epoch: int) -> np.ndarray:
    """This process's cells in the order of one epoch (deterministic: resumable mid-epoch)."""
    cells = data.local_cells
    rng = np.random.default_rng([seed, phase, epoch, jax.process_index()])
    order = cells[rng.permutation(cells.size)]
    need = data.steps_per_epoch * data.local_batch_size
    # Wrap around so every batch is full (static shapes, one compilation).
    return np.resize(order, need)


def make_batch(data: MinibatchData, local_cells: np.ndarray, *, with_target: bool = True) -> Batch:
    """Gather the batch's expression rows and CSR row slices and shard them.

    Parameters
    ----------
    local_cells
        This process's share of the batch (``local_batch_size`` global ids).
    with_target
        Gather the decoder target; ``False`` (embedding passes) leaves it
        empty, ``(B, 0)``, which skips densifying the expression rows.
    """
    adjacency = data.adjacency
    edge_ids, counts = row_edges(adjacency, local_cells)
    offset = jax.process_index() * data.local_batch_size
    receivers = np.repeat(np.arange(local_cells.size, dtype=np.int32) + offset, counts)
    local_devices = jax.local_device_count()
    # One static edge budget for almost every batch (one compilation): 10% above the mean degree
    # (a batch's edge count varies by well under 1%); a rare larger batch rounds up to a bucket.
    mean_degree = adjacency.nnz / adjacency.shape[0]
    budget = -(-int(1.1 * mean_degree * local_cells.size) // local_devices) * local_devices
    if edge_ids.size > budget:
        bucket = max(local_devices, 4 * local_cells.size)
        budget = -(-edge_ids.size // bucket) * bucket
    budget = agree_max(budget)
    pad = budget - edge_ids.size
    senders = np.concatenate([adjacency.indices[edge_ids], np.zeros(pad, np.int64)]).astype(np.int32)
    receivers = np.concatenate([receivers, np.full(pad, offset + local_cells.size - 1, np.int32)])
    weights = np.concatenate([adjacency.data[edge_ids], np.zeros(pad, np.float32)]).astype(np.float32)
    target = (np.asarray(data.expression[local_cells], dtype=np.float32) if with_target
              else np.zeros((local_cells.size, 0), np.float32))
    sharding = row_sharded(data.mesh)

    def put(local: np.ndarray) -> jax.Array:
        shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        return jax.make_array_from_process_local_data(sharding, local, shape)

    return Batch(put(local_cells.astype(np.int32)), put(target), put(senders), put(receivers), put(weights))


def encode_batch(network, tables: Tables, batch: Batch) -> jax.Array:
    """Exact latent of the batch's cells from their 1-hop neighbourhood."""
    layers = network.encoder.layers
    n_batch = batch.cells.shape[0]
    if len(layers) == 1:
        return layers[0](tables.aggregated_input[batch.cells])
    if len(layers) != 2:
        raise NotImplementedError("Mini-batch training supports encoders with at most one hidden layer "
                                  f"(hidden_dims of length <= 1), got {len(layers) - 1}.")
    hidden = jax.nn.elu(layers[0](tables.aggregated_input[batch.senders]))
    messages = (hidden @ layers[1].kernel[...]) * batch.weights[:, None]
    return (jax.ops.segment_sum(messages, batch.receivers, num_segments=n_batch, indices_are_sorted=True)
            + layers[1].bias[...])


def batch_ncut_loss(latent: jax.Array, tables: Tables, batch: Batch, eta: float) -> jax.Array:
    """The ncut term of :func:`~scllm_jax.losses.ncut_loss` estimated on one batch.

    Smoothness over the batch's edges, neighbours read (without gradient)
    from the latent table; the gradient is doubled because on the full graph
    each edge moves both of its ends. Orthogonality on the batch's Gram matrix.
    """
    unit = unit_rows(latent)
    neighbours = jax.lax.stop_gradient(unit_rows(tables.latent[batch.senders]))
    estimate = jnp.sum(batch.weights * jnp.sum(unit[batch.receivers] * neighbours, axis=1)) / latent.shape[0]
    smoothness = 2.0 * estimate - jax.lax.stop_gradient(estimate)
    return -smoothness + eta * direction_orthogonality(unit)


def minibatch_loss_terms(network, tables: Tables, batch: Batch, config: ScllmConfig) -> dict[str, jax.Array]:
    """Every active loss term on one batch (KL only when ``tables.target_p`` is set)."""
    latent = encode_batch(network, tables, batch)
    terms = {"rec": reconstruction_loss(network.decoder(latent), batch.target),
             "ncut": batch_ncut_loss(latent, tables, batch, config.ncut_eta)}
    text = None if tables.text is None else tables.text[batch.cells]
    if network.has_text and config.use_infonce:
        positives = alignment_positives(config, batch.cells, tables.latent.shape[0], batch.senders,
                                        batch.cells[batch.receivers], batch.weights > 0, tables.target_p)
        terms["align"] = alignment_term(network, latent, text, config, positives)
    if tables.target_p is not None:
        terms["kl"] = clustering_term(network, latent, text, tables.target_p[batch.cells], config)
    return terms


def make_minibatch_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, config: ScllmConfig,
                        mesh: Mesh):
    """A jitted ``step(params, opt_state, tables, batch) -> (params, opt_state, terms)``.

    Inputs arrive sharded (batch and tables by cells, parameters replicated);
    the outputs are pinned replicated, so the compiler all-reduces the gradients.
    """

    def step(params, opt_state, tables, batch):
        def objective(params):
            terms = minibatch_loss_terms(nnx.merge(graphdef, params), tables, batch, config)
            return total_loss(terms, config), terms

        grads, terms = jax.grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, terms

    return jax.jit(step, donate_argnums=(0, 1), out_shardings=replicated(mesh))


def make_batch_embed(graphdef: nnx.GraphDef):
    """A jitted ``embed(params, tables, batch) -> (latent, cluster_space)`` of the batch's cells."""

    def embed(params, tables, batch):
        network = nnx.merge(graphdef, params)
        latent = encode_batch(network, tables, batch)
        text = None if tables.text is None else tables.text[batch.cells]
        return latent, network.cluster_space(latent, text)

    return jax.jit(embed)


def stream_embed(embed, params, data: MinibatchData) -> tuple[np.ndarray, np.ndarray]:
    """``(latent, cluster_space)`` of every cell, batch by batch (host arrays, all processes)."""
    cells = data.local_cells
    need = -(-max(cells.size, 1) // data.local_batch_size) * data.local_batch_size
    # Every process runs the same number of batches (collectives), padding by repetition.
    n_batches = agree_max(need // data.local_batch_size)
    order = np.resize(cells, n_batches * data.local_batch_size)
    latent = embedding = None
    for i in range(n_batches):
        rows = order[i * data.local_batch_size:(i + 1) * data.local_batch_size]
        batch = make_batch(data, rows, with_target=False)
        z, e = embed(params, data.tables, batch)
        ids, z, e = to_host(batch.cells), to_host(z), to_host(e)
        if latent is None:
            latent = np.zeros((data.n_cells, z.shape[1]), np.float32)
            embedding = np.zeros((data.n_cells, e.shape[1]), np.float32)
        latent[ids], embedding[ids] = z, e
    return latent, embedding


def with_table(data: MinibatchData, **tables: np.ndarray | None) -> MinibatchData:
    """``data`` with some cell tables replaced (host arrays of every cell, sharded here)."""
    placed = {name: None if value is None else put_global_rows(np.asarray(value, dtype=np.float32), data.mesh)
              for name, value in tables.items()}
    return dataclasses.replace(data, tables=data.tables._replace(**placed))


__all__ = ["Batch", "MinibatchData", "Tables", "batch_ncut_loss", "encode_batch", "epoch_order", "make_batch",
           "make_batch_embed", "make_minibatch_step", "minibatch_data", "minibatch_loss_terms", "put_rows",
           "stream_embed", "with_table"]
