"""One optimiser step's losses on a batch of cells, for both ways of training.

A batch is either the whole graph (every cell, the full-graph engine: one
step per epoch) or the rows of some cells gathered on the device (the
mini-batch engine, :mod:`scllm_jax.minibatch`). Both read the same
:class:`Tables`, go through the same :func:`loss_terms`, the same jitted
run of steps (:func:`make_steps`, a ``lax.scan``) and the same embedding
pass (:func:`make_embed`); only where a batch's latent and its ncut
neighbours come from differs:

- the whole graph encodes every cell with the full GCN (any depth) and
  takes the ncut over every edge, both ends moving;
- rows encode the batch's cells exactly from their 1-hop neighbourhoods
  (one hidden layer) and read their neighbours' latents from a table
  refreshed once per epoch.

On one batch of every cell the two give the same losses and gradients
(``tests/test_device_engine.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from .config import ScllmConfig
from .device_rows import CsrRows, ExpressionRows, csr_row_slots, scaled_rows
from .graph import propagate
from .losses import direction_orthogonality, ncut_loss, reconstruction_loss, unit_rows
from .objective import alignment_positives, alignment_term, clustering_term, total_loss

#: A batch of more cells estimates the reconstruction error on this many of them, drawn at random: the
#: decoder (cells x genes) is the costliest layer, and an unbiased estimate is enough.
RECONSTRUCTION_BATCH_CELLS = 1024
#: A batch of more cells estimates InfoNCE (O(B^2)) on this many of them, drawn at random.
INFONCE_BATCH_CELLS = 4096


class WholeGraph(NamedTuple):
    """The normalised cell graph as edge lists (the whole-graph batch's edges).

    Attributes
    ----------
    weights, senders, receivers
        Normalised edge weight, neighbour and receiving cell of each edge.
    """

    weights: jax.Array
    senders: jax.Array
    receivers: jax.Array


class Tables(NamedTuple):
    """Everything a step reads that is indexed by cell (a pytree of device arrays).

    Attributes
    ----------
    aggregated_input
        ``A X``: the encoder input after its first, fixed aggregation (rows
        sharded in mini-batch training).
    graph
        The normalised adjacency: :class:`WholeGraph` edge lists, or
        :class:`~scllm_jax.device_rows.CsrRows` (row = receiver) whose rows
        batches gather.
    expression
        The decoder target: a dense array (whole graph), or
        :class:`~scllm_jax.device_rows.ExpressionRows` that batches gather.
    text
        ``Z_text`` or ``None``.
    latent
        Rows: the latent of every cell from the last full pass (ncut
        neighbours); ``None`` otherwise.
    target_p
        Target distribution ``P`` (cells x K), ``None`` in pre-training.
    """

    aggregated_input: jax.Array
    graph: WholeGraph | CsrRows
    expression: jax.Array | ExpressionRows
    text: jax.Array | None
    latent: jax.Array | None
    target_p: jax.Array | None


class Batch(NamedTuple):
    """The cells one step trains on (device arrays).

    Attributes
    ----------
    cells
        ``(B,)`` global cell ids, or ``None``: every cell, in order (the whole graph).
    target
        ``(B, genes)`` decoder target of those cells (``(B, 0)`` when not needed).
    senders
        ``(E,)`` global ids of the neighbours (one per edge of the batch's rows).
    receivers
        ``(E,)`` the cell of each edge: its position in the batch (rows, sorted),
        or its global id (whole graph, where the two agree).
    weights
        ``(E,)`` normalised edge weights; 0 on padding edges.
    """

    cells: jax.Array | None
    target: jax.Array
    senders: jax.Array
    receivers: jax.Array
    weights: jax.Array


class Budgets(NamedTuple):
    """Static sizes of a batch's padded edge and expression-entry arrays (one compilation per value)."""

    edges: int
    entries: int


def padded_edge_count(n_edges: int) -> int:
    """``n_edges`` rounded up to one of 16 sizes per power of two (at most 6.25% more).

    The kNN graph's edge count moves with the seed (the randomised PCA), and
    every new count would compile the training programs again; rounded up,
    the seeds of one data set share them.
    """
    if n_edges <= 16:
        return max(n_edges, 1)
    step = 1 << (n_edges.bit_length() - 5)
    return -(-n_edges // step) * step


def _padded_edges(edges: WholeGraph, n_cells: int) -> WholeGraph:
    """``edges`` with weight-0 self-loops of the last cell appended up to :func:`padded_edge_count`.

    They add nothing to a convolution or to the ncut, and they keep the
    receivers sorted.
    """
    # On the host: a device concatenation would compile once per edge count, what this avoids.
    weights, senders, receivers = (np.asarray(column) for column in edges)
    n_pad = padded_edge_count(weights.size) - weights.size
    last = np.full(n_pad, n_cells - 1, dtype=receivers.dtype)
    return WholeGraph(jnp.asarray(np.concatenate([weights, np.zeros(n_pad, weights.dtype)])),
                      jnp.asarray(np.concatenate([senders, last])), jnp.asarray(np.concatenate([receivers, last])))


def whole_graph_tables(features: np.ndarray, target: np.ndarray, graph, text: np.ndarray | None) -> Tables:
    """The tables of full-graph training: put the arrays on the device and precompute ``A X``.

    Parameters
    ----------
    features
        Encoder input ``X`` (cells x PCs).
    target
        Decoder target, dense (cells x genes; ``(cells, 0)`` when only embedding).
    graph
        The normalised cell graph, a ``jraph.GraphsTuple`` (edge weights in ``edges``).
    text
        ``Z_text`` or ``None``.
    """
    edges = _padded_edges(WholeGraph(graph.edges, graph.senders, graph.receivers), features.shape[0])
    aggregated = jax.jit(propagate)(edges.weights, edges.senders, edges.receivers,
                                    jnp.asarray(features, dtype=jnp.float32))
    return Tables(aggregated, edges, jnp.asarray(target, dtype=jnp.float32),
                  None if text is None else jnp.asarray(text, dtype=jnp.float32), None, None)


def gather_batch(tables: Tables, cells: jax.Array | None, budgets: Budgets | None, *,
                 with_target: bool = True) -> Batch:
    """The batch of ``cells``: their edges and, with ``with_target``, their dense expression rows.

    ``cells=None`` is the whole graph (:class:`WholeGraph` tables): every
    edge and the dense target, nothing gathered.
    """
    graph = tables.graph
    if cells is None:
        return Batch(None, tables.expression, graph.senders, graph.receivers, graph.weights)
    owner, position, valid = csr_row_slots(graph.indptr, cells, budgets.edges)
    weights = jnp.where(valid, graph.values[position], 0.0)
    target = (scaled_rows(tables.expression, cells, budgets.entries) if with_target
              else jnp.zeros((cells.shape[0], 0), jnp.float32))
    return Batch(cells, target, graph.indices[position], owner, weights)


def _rows(table: jax.Array | None, cells: jax.Array | None) -> jax.Array | None:
    """A cell table's rows of the batch (all of it for the whole graph)."""
    return table if table is None or cells is None else table[cells]


def encode_batch(network, tables: Tables, batch: Batch, projections: jax.Array | None = None) -> jax.Array:
    """Exact latent of the batch's cells.

    The whole graph runs the full GCN. Rows are encoded from their 1-hop
    neighbourhoods; ``projections``: every cell's last-layer input already
    projected (:meth:`~scllm_jax.modules.GCNEncoder.project_all`), for
    passes that encode every cell; then a batch only sums its neighbours' rows.
    """
    if batch.cells is None:
        return network.encode(tables.aggregated_input, batch.weights, batch.senders, batch.receivers)
    encoder = network.encoder
    if projections is not None:
        return encoder.aggregate_projected(projections, batch.cells, batch.senders, batch.receivers,
                                           batch.weights)
    return encoder.encode_rows(tables.aggregated_input, batch.cells, batch.senders, batch.receivers,
                               batch.weights)


def ncut_term(latent: jax.Array, tables: Tables, batch: Batch, eta: float) -> jax.Array:
    """The ncut of :func:`~scllm_jax.losses.ncut_loss` on the batch.

    The whole graph: exact. Rows: the smoothness over the batch's edges,
    neighbours read (without gradient) from the latent table, the gradient
    doubled because on the full graph each edge moves both of its ends; the
    orthogonality on the batch's Gram matrix.
    """
    if batch.cells is None:
        return ncut_loss(latent, batch.weights, batch.senders, batch.receivers, eta)
    unit = unit_rows(latent)
    neighbours = jax.lax.stop_gradient(unit_rows(tables.latent[batch.senders]))
    estimate = jnp.sum(batch.weights * jnp.sum(unit[batch.receivers] * neighbours, axis=1)) / latent.shape[0]
    smoothness = 2.0 * estimate - jax.lax.stop_gradient(estimate)
    return -smoothness + eta * direction_orthogonality(unit)


def loss_terms(network, tables: Tables, batch: Batch, config: ScllmConfig, key: jax.Array) -> dict[str, jax.Array]:
    """Every active loss term of one batch (KL only when ``tables.target_p`` is set).

    ``key`` draws the cells the reconstruction and InfoNCE are estimated
    on when the batch is larger than :data:`RECONSTRUCTION_BATCH_CELLS` or
    :data:`INFONCE_BATCH_CELLS`.
    """
    latent = encode_batch(network, tables, batch)
    size = latent.shape[0]
    rec_key, align_key = jax.random.split(key)
    if size > RECONSTRUCTION_BATCH_CELLS:
        rows = jax.random.choice(rec_key, size, (RECONSTRUCTION_BATCH_CELLS,), replace=False)
        reconstruction = reconstruction_loss(network.decoder(latent[rows]), batch.target[rows])
    else:
        reconstruction = reconstruction_loss(network.decoder(latent), batch.target)
    terms = {"rec": reconstruction, "ncut": ncut_term(latent, tables, batch, config.train.ncut_eta)}
    text = _rows(tables.text, batch.cells)
    if network.has_text and config.train.use_infonce:
        whole = batch.cells is None
        cells = jnp.arange(size) if whole else batch.cells
        receivers = batch.receivers if whole else batch.cells[batch.receivers]
        n_cells = size if whole else tables.aggregated_input.shape[0]
        positions, latent_rows, text_rows = cells, latent, text
        if size > INFONCE_BATCH_CELLS:
            chosen = jax.random.permutation(align_key, size)[:INFONCE_BATCH_CELLS]
            positions, latent_rows, text_rows = cells[chosen], latent[chosen], text[chosen]
        positives = alignment_positives(config, positions, n_cells, batch.senders, receivers,
                                        None if whole else batch.weights > 0, tables.target_p)
        terms["align"] = alignment_term(network, latent_rows, text_rows, config, positives)
    if tables.target_p is not None:
        terms["kl"] = clustering_term(network, latent, text, _rows(tables.target_p, batch.cells), config)
    return terms


def step_keys(key: jax.Array, n_steps: int) -> jax.Array:
    """One key per step of a run: ``key`` itself for a run of one step."""
    return key[None] if n_steps == 1 else jax.random.split(key, n_steps)


def make_steps(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, config: ScllmConfig,
               mesh: Mesh | None = None):
    """A jitted ``run(params, opt_state, tables, batches, keys, budgets) -> (params, opt_state, terms)``.

    ``batches``: ``(steps, batch)`` cell ids (:func:`~scllm_jax.minibatch.put_batches`),
    or ``None`` for the whole graph; ``keys``: one per step (:func:`step_keys`).
    The steps run in one ``lax.scan``, each gathering its batch on the
    device; ``terms`` holds each loss term per step. With a ``mesh``,
    inputs arrive sharded (cells split, parameters replicated) and outputs
    are pinned replicated, so the compiler all-reduces the gradients.
    """

    def one_step(carry, step, tables, budgets):
        params, opt_state = carry
        cells, key = step
        batch = gather_batch(tables, cells, budgets)

        def objective(params):
            terms = loss_terms(nnx.merge(graphdef, params), tables, batch, config, key)
            return total_loss(terms, config), terms

        grads, terms = jax.grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), terms

    def run(params, opt_state, tables, batches, keys, budgets):
        (params, opt_state), terms = jax.lax.scan(lambda carry, step: one_step(carry, step, tables, budgets),
                                                  (params, opt_state), (batches, keys))
        return params, opt_state, terms

    from .parallel import replicated

    shardings = {} if mesh is None else {"out_shardings": replicated(mesh)}
    return jax.jit(run, static_argnums=5, donate_argnums=(0, 1), **shardings)


def make_embed(graphdef: nnx.GraphDef):
    """A jitted ``embed(params, tables, blocks, budgets) -> (latent, cluster_space)``.

    ``blocks=None``: every cell of whole-graph tables, by the full GCN.
    Otherwise ``(blocks, cells)`` ids: every cell's last-layer input is
    projected once (cells x latent), then each block of cells sums its
    neighbours' rows, so the per-edge hidden layer of a training batch is
    not recomputed for every edge.
    """

    def embed(params, tables, blocks, budgets):
        network = nnx.merge(graphdef, params)
        if blocks is None:
            latent = encode_batch(network, tables, gather_batch(tables, None, None))
            return latent, network.cluster_space(latent, tables.text)
        projections = network.encoder.project_all(tables.aggregated_input)

        def block(cells):
            batch = gather_batch(tables, cells, budgets, with_target=False)
            latent = encode_batch(network, tables, batch, projections)
            return latent, network.cluster_space(latent, _rows(tables.text, cells))

        latent, space = jax.lax.map(block, blocks)
        return latent.reshape(-1, latent.shape[-1]), space.reshape(-1, space.shape[-1])

    return jax.jit(embed, static_argnums=3)


__all__ = ["Batch", "Budgets", "INFONCE_BATCH_CELLS", "RECONSTRUCTION_BATCH_CELLS", "Tables", "WholeGraph",
           "encode_batch", "gather_batch", "loss_terms", "make_embed", "make_steps", "ncut_term", "step_keys",
           "padded_edge_count", "whole_graph_tables"]
