"""Mini-batch, data-parallel training: the batches' plan and tables. Memory O(N k + N d), exact GCN.

With the first layer's aggregation precomputed (``A X``), the 2-layer
encoder's output for a batch ``b`` is exact from the batch's 1-hop
neighbourhood only::

    Z_b = (A[b, :] elu((A X)[nbrs] W1 + b1)) W2 + b2

so a batch reads the rows of ``A X`` of its cells' neighbours (one row per
edge of the batch's CSR row slices) and never the rest of the graph.
The losses, the run of steps and the embedding pass are those of the
full graph (:mod:`scllm_jax.step`); a batch's ncut reads its neighbours'
latents from a table refreshed once per epoch (historical embeddings; the
neighbours' own latents would need the 2-hop neighbourhood), and its KL
the target ``P`` (a cell-indexed table refreshed by a full pass).

The graph (CSR) and the decoder target (CSR of the log expression, scaled
as it is read, or dense rows) live on the device with the other cell
tables. The host only draws each epoch's order of cells; a batch's edges
and expression rows are gathered on the device, and a run of steps is one
jitted ``lax.scan`` (:func:`~scllm_jax.step.make_steps`), so the host launches a
few programs per epoch instead of building every batch.

Cell tables are sharded over the mesh's ``"data"`` axis, the graph and the
expression CSR are replicated, parameters are replicated: the same jitted
program runs on one device, on several, and on several hosts (see
:mod:`scllm_jax.parallel`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import scipy.sparse as sp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .config import ScllmConfig
from .device_rows import MAX_PIECE_ENTRIES, csr_on_device, expression_on_device, largest_piece_share, piece_of_rows
from .parallel import DATA_AXIS, agree_max, process_rows, put_global_rows, put_rows, to_host
from .step import Batch, Budgets, Tables, gather_batch

# Cells per block of the full embedding pass (its edges are gathered like a batch's).
EMBED_BLOCK_CELLS = 16_384
# Edge and entry budgets grow in steps of half a slot per batch cell: padding slots cost as much as real
# ones (the hidden layer is computed per edge), and a batch's edge count varies by about 1%.
_BUDGET_STEP_PER_CELL = 0.5
# Head room above the largest batch planned so far, so later epochs rarely need a larger shape (a compilation).
_BUDGET_MARGIN = 1.01


@dataclasses.dataclass
class MinibatchData:
    """The device tables plus what the host needs to plan batches, for one process.

    Attributes
    ----------
    tables
        Device tables (:class:`Tables`).
    degrees
        Entries per adjacency row (host; sizes the edge budgets).
    row_entries
        Stored entries per expression row (host), ``None`` for dense rows.
    row_piece
        The expression CSR piece of each row (host), ``None`` for dense rows.
    n_cells
        Number of (unpadded) cells.
    mesh
        The data mesh.
    batch_size
        Cells per global batch (a multiple of the mesh size).
    budgets
        The largest training :class:`Budgets` planned so far (they only grow: one compilation).
    embed_blocks
        The full embedding pass's blocks of cells on the device and their
        budgets (:func:`embed_plan`), made on first use.
    """

    tables: Tables
    degrees: np.ndarray
    row_entries: np.ndarray | None
    row_piece: np.ndarray | None
    n_cells: int
    mesh: Mesh
    batch_size: int
    budgets: Budgets | None = None
    embed_blocks: tuple | None = None

    @property
    def n_inputs(self) -> int:
        return self.tables.aggregated_input.shape[1]

    @property
    def n_genes(self) -> int:
        expression = self.tables.expression
        return (expression.dense if expression.dense is not None else expression.mean).shape[-1]

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
                   config: ScllmConfig, mesh: Mesh, *, max_piece_entries: int = MAX_PIECE_ENTRIES) -> MinibatchData:
    """Precompute ``A X`` on the host (sparse) and put the cell tables, graph and target on ``mesh``.

    ``features``, ``adjacency`` and ``text`` hold every cell here (one host);
    each process keeps only its own rows of the sharded tables.

    Parameters
    ----------
    features
        Encoder input ``X`` (cells x PCs).
    expression
        Decoder target: a dense array, or a lazily scaled CSR
        (:class:`~scllm_jax.preprocess.ScaledExpression`), which stays sparse on the device.
    adjacency
        Normalised adjacency (row = receiver).
    text
        ``Z_text`` or ``None``.
    config
        Settings (``minibatch_size``).
    mesh
        The data mesh.
    max_piece_entries
        Entries per piece of the expression CSR on the device (32-bit indices).
    """
    adjacency = sp.csr_matrix(adjacency, dtype=np.float32)
    adjacency.sort_indices()
    n_cells = adjacency.shape[0]
    # Sparse A @ X: O(N k F), never an (edges x F) message array.
    aggregated = np.asarray(adjacency @ np.asarray(features, dtype=np.float32), dtype=np.float32)
    tables = Tables(put_global_rows(aggregated, mesh), csr_on_device(adjacency, mesh),
                    expression_on_device(expression, mesh, max_piece_entries=max_piece_entries),
                    None if text is None else put_global_rows(np.asarray(text, dtype=np.float32), mesh),
                    None, None)
    row_entries = row_piece = None
    if tables.expression.pieces is not None:
        row_entries = np.diff(expression.log_expression.indptr)
        row_piece = piece_of_rows(np.asarray(tables.expression.piece_rows), n_cells)
    size = mesh.devices.size
    batch_size = -(-min(config.train.minibatch_size, n_cells) // size) * size
    return MinibatchData(tables, np.diff(adjacency.indptr), row_entries, row_piece, n_cells, mesh, batch_size)


# ----------------------------------------------------------------------------- planning (host)
def epoch_order(data: MinibatchData, seed: int, phase: int, epoch: int) -> np.ndarray:
    """This process's cells in the order of one epoch (deterministic: resumable mid-epoch)."""
    cells = data.local_cells
    rng = np.random.default_rng([seed, phase, epoch, jax.process_index()])
    order = cells[rng.permutation(cells.size)]
    need = data.steps_per_epoch * data.local_batch_size
    # Wrap around so every batch is full (static shapes, one compilation).
    return np.resize(order, need)


def plan_budgets(data: MinibatchData, local_batches: np.ndarray, current: Budgets | None = None, *,
                 with_target: bool = True) -> Budgets:
    """Budgets that hold every batch of ``local_batches`` (steps x local cells), never below ``current``.

    The largest batch plus 1% head room, rounded up to half a slot per cell:
    a random batch's count varies by about 1%, so one shape serves a whole
    run; ``with_target=False`` (embedding passes) plans no expression entries.
    """
    local_batches = np.atleast_2d(local_batches)
    cells = local_batches.shape[1] * jax.process_count()
    step = max(1, int(_BUDGET_STEP_PER_CELL * cells))

    def budget(local_need: int, floor: int) -> int:
        # The global batch holds every process's share: bound it by the largest share times their number.
        need = agree_max(local_need) * jax.process_count()
        if need <= floor:
            return floor
        return -(-int(_BUDGET_MARGIN * need + 1) // step) * step

    current = current or Budgets(0, 0)
    edges = budget(int(data.degrees[local_batches].sum(axis=1).max()), current.edges)
    if not with_target or data.row_entries is None:
        return Budgets(edges, current.entries)
    # Expression slots are per CSR piece: the most any one piece holds of a batch.
    share = int(largest_piece_share(data.row_entries, data.row_piece, local_batches).max())
    return Budgets(edges, budget(share, current.entries))


def put_batches(data: MinibatchData, local_batches: np.ndarray) -> jax.Array:
    """``(steps, batch)`` global cell ids on the device, each batch split over the ``"data"`` axis."""
    local_batches = np.atleast_2d(np.asarray(local_batches, dtype=np.int32))
    sharding = NamedSharding(data.mesh, PartitionSpec(None, DATA_AXIS))
    shape = (local_batches.shape[0], local_batches.shape[1] * jax.process_count())
    return jax.make_array_from_process_local_data(sharding, local_batches, shape)


# ----------------------------------------------------------------------------- batches (device)
def make_batch(data: MinibatchData, local_cells: np.ndarray, *, with_target: bool = True) -> Batch:
    """The batch of this process's ``local_cells`` (one step's cells), gathered on the device."""
    local_cells = np.asarray(local_cells)[None, :]
    budgets = plan_budgets(data, local_cells, with_target=with_target)
    cells = put_batches(data, local_cells)[0]
    return jax.jit(gather_batch, static_argnums=2, static_argnames="with_target")(
        data.tables, cells, budgets, with_target=with_target)


def embed_plan(data: MinibatchData) -> tuple[jax.Array, Budgets]:
    """Blocks of every cell for the full embedding pass, on the device, and their budgets (made once per data)."""
    if data.embed_blocks is None:
        cells = data.local_cells
        size = min(EMBED_BLOCK_CELLS, -(-max(cells.size, 1) // data.local_batch_size) * data.local_batch_size)
        size = -(-size // jax.local_device_count()) * jax.local_device_count()
        # Every process runs the same number of blocks (collectives), padding by repetition.
        n_blocks = agree_max(-(-max(cells.size, 1) // size))
        blocks = np.resize(cells, n_blocks * size).reshape(n_blocks, size)
        data.embed_blocks = (put_batches(data, blocks), plan_budgets(data, blocks, with_target=False))
    return data.embed_blocks


def embed_all(embed, params, data: MinibatchData) -> tuple[np.ndarray, np.ndarray]:
    """``(latent, cluster_space)`` of every cell (host arrays, on every process)."""
    placed, budgets = embed_plan(data)
    # Only the tables the pass reads: the refreshed latent and P would change the pytree and recompile it.
    latent, space = embed(params, data.tables._replace(latent=None, target_p=None), placed, budgets)
    ids, latent, space = to_host(placed).reshape(-1), to_host(latent), to_host(space)
    out_latent = np.zeros((data.n_cells, latent.shape[1]), np.float32)
    out_space = np.zeros((data.n_cells, space.shape[1]), np.float32)
    out_latent[ids], out_space[ids] = latent, space
    return out_latent, out_space


def with_table(data: MinibatchData, **tables: np.ndarray | None) -> MinibatchData:
    """``data`` with some cell tables replaced (host arrays of every cell, sharded here)."""
    placed = {name: None if value is None else put_global_rows(np.asarray(value, dtype=np.float32), data.mesh)
              for name, value in tables.items()}
    return dataclasses.replace(data, tables=data.tables._replace(**placed))


__all__ = ["MinibatchData", "embed_all", "embed_plan", "epoch_order", "make_batch", "minibatch_data",
           "plan_budgets", "put_batches", "put_rows", "with_table"]
