"""Sparse rows on the device: CSR matrices, gathering some of their rows, and the scaled decoder target.

Training batches and the atlas-scale preprocessing both read rows of a CSR
(the cell graph, the log expression) on the device: a batch's rows are laid
out in a static number of padded slots, so one compiled program serves every
batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.sharding import Mesh

from .parallel import put_global_rows, replicated

#: Scaled expression is clipped to +-SCALE_CLIP standard deviations (scanpy's ``max_value``).
SCALE_CLIP = 10.0


def _put(values, dtype, mesh: Mesh | None) -> jax.Array:
    """``values`` as ``dtype``, replicated over ``mesh`` (``None``: on the default device)."""
    return jax.device_put(np.asarray(values, dtype=dtype), jax.devices()[0] if mesh is None else replicated(mesh))


class CsrRows(NamedTuple):
    """A CSR matrix on the device (replicated): ``indptr`` (rows + 1), ``indices`` and ``values`` (entries)."""

    indptr: jax.Array
    indices: jax.Array
    values: jax.Array


class ExpressionRows(NamedTuple):
    """The decoder target on the device: dense scaled rows, or a CSR scaled as it is read.

    Attributes
    ----------
    dense
        ``(cells, genes)`` scaled expression, or ``None``.
    pieces
        Log expression as CSRs of consecutive row ranges (:class:`CsrRows`,
        each under 2^31 entries: 32-bit indices), or ``None``; a row is
        densified to ``clip((x - mean) / std, -clip, clip)``.
    piece_rows
        ``(pieces + 1,)`` first row of each piece, then the number of rows.
    mean, std
        Per-gene scaling of ``pieces``.
    """

    dense: jax.Array | None
    pieces: tuple[CsrRows, ...] | None
    piece_rows: jax.Array | None
    mean: jax.Array | None
    std: jax.Array | None


#: Stored entries per CSR piece: indices into a piece's arrays stay 32-bit (JAX's default integers).
MAX_PIECE_ENTRIES = 2 ** 31 - 1


def row_pieces(indptr: np.ndarray, max_entries: int = MAX_PIECE_ENTRIES) -> np.ndarray:
    """First row of each piece of a CSR split into consecutive row ranges of at most ``max_entries`` entries,
    then the number of rows."""
    n_rows = indptr.size - 1
    bounds = [0]
    while bounds[-1] < n_rows:
        start = bounds[-1]
        # The last row whose end stays within the piece's budget (at least one row per piece).
        stop = int(np.searchsorted(indptr, indptr[start] + max_entries, side="right")) - 1
        bounds.append(min(n_rows, max(stop, start + 1)))
    return np.asarray(bounds if n_rows else [0, 0], dtype=np.int64)


def piece_of_rows(bounds: np.ndarray, n_rows: int) -> np.ndarray:
    """The piece (of :func:`row_pieces`) of every row."""
    return np.searchsorted(bounds, np.arange(n_rows), side="right") - 1


def largest_piece_share(row_entries: np.ndarray, row_piece: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """For each batch (row of ``batches``), the most entries its rows hold in any one piece."""
    batches = np.atleast_2d(batches)
    n_pieces = int(row_piece.max()) + 1
    # One bin per (batch, piece).
    bins = (np.arange(batches.shape[0])[:, None] * n_pieces + row_piece[batches]).ravel()
    sums = np.bincount(bins, weights=row_entries[batches].ravel(), minlength=batches.shape[0] * n_pieces)
    return sums.reshape(batches.shape[0], n_pieces).max(axis=1)


def placement(mesh: Mesh | None) -> tuple[int, ...]:
    """Ids of the devices :func:`expression_on_device` puts arrays on for ``mesh``."""
    return (jax.devices()[0].id,) if mesh is None else tuple(int(device.id) for device in mesh.devices.flat)


def csr_on_device(matrix: sp.csr_matrix, mesh: Mesh | None = None) -> CsrRows:
    """``matrix`` on the device, replicated over ``mesh`` (``None``: the default device)."""
    if matrix.nnz >= 2 ** 31:
        raise ValueError(f"{matrix.nnz} stored entries do not fit 32-bit indices; split the data or use fewer "
                         "genes (n_top_genes).")
    return CsrRows(_put(matrix.indptr, np.int32, mesh), _put(matrix.indices, np.int32, mesh),
                   _put(matrix.data, np.float32, mesh))


def expression_on_device(expression: Any, mesh: Mesh | None = None, *,
                         max_piece_entries: int = MAX_PIECE_ENTRIES) -> ExpressionRows:
    """Dense rows for an array; the CSR (in pieces of under 2^31 entries) and its scaling for a lazily
    scaled matrix, never densified whole.

    A lazily scaled matrix may carry ``device_copy``, ``((device ids,
    max_piece_entries), ExpressionRows)`` left by the atlas preprocessing
    (:class:`~scllm_jax.preprocess.ScaledExpression`): on the same devices
    those arrays are returned instead of a second copy. The attribute is
    cleared either way, so the copy is handed over once and not kept alive
    by the prepared data after training.
    """
    if hasattr(expression, "log_expression"):
        key = (placement(mesh), max_piece_entries)
        kept, expression.device_copy = getattr(expression, "device_copy", None), None
        if kept is not None and kept[0] == key:
            # Handed over from the atlas preprocessing on the same device(s): the CSR crosses to the device once.
            return kept[1] if mesh is None else jax.device_put(kept[1], replicated(mesh))
        csr = sp.csr_matrix(expression.log_expression, dtype=np.float32)
        csr.sort_indices()
        bounds = row_pieces(csr.indptr, max_piece_entries)
        pieces = tuple(csr_on_device(csr[start:stop], mesh) for start, stop in zip(bounds[:-1], bounds[1:]))
        return ExpressionRows(None, pieces, _put(bounds, np.int32, mesh), _put(expression.mean, np.float32, mesh),
                              _put(expression.std, np.float32, mesh))
    dense = np.asarray(expression, dtype=np.float32)
    return ExpressionRows(jax.device_put(dense) if mesh is None else put_global_rows(dense, mesh), None, None, None,
                          None)


def csr_row_slots(indptr: jax.Array, rows: jax.Array, budget: int,
                  present: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The entries of ``rows``, row after row, in ``budget`` padded slots.

    ``present``: rows counted as empty where False (rows of another piece).

    Returns
    -------
    (owner, position, valid)
        For each slot: the position in ``rows`` of its row (sorted), the
        entry's index in ``indices``/``values``, and whether it is a real
        entry (padding slots point at entry 0 of the last row).
    """
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    if present is not None:
        counts = jnp.where(present, counts, 0)
    ends = jnp.cumsum(counts)
    offsets = ends - counts
    slots = jnp.arange(budget, dtype=jnp.int32)
    # A row owns the slots from its offset on: count the offsets at or before each slot (empty rows included).
    marks = jnp.zeros(budget, jnp.int32).at[offsets].add(1, mode="drop")
    owner = jnp.clip(jnp.cumsum(marks) - 1, 0, rows.shape[0] - 1)
    valid = slots < ends[-1]
    position = jnp.where(valid, starts[owner] + slots - offsets[owner], 0)
    return owner, position, valid


def scaled_rows(expression: ExpressionRows, cells: jax.Array, budget: int) -> jax.Array:
    """Dense decoder target of ``cells`` (exactly :class:`~scllm_jax.preprocess.ScaledExpression`'s rows).

    ``budget``: padded slots per piece (:func:`largest_piece_share` of the batch, or more).
    """
    if expression.dense is not None:
        return expression.dense[cells]
    mean, std = expression.mean, expression.std
    dense = jnp.broadcast_to(jnp.clip(-mean / std, -SCALE_CLIP, SCALE_CLIP), (cells.shape[0], mean.shape[0]))
    for piece, csr in enumerate(expression.pieces):
        first, stop = expression.piece_rows[piece], expression.piece_rows[piece + 1]
        present = (cells >= first) & (cells < stop)
        local = jnp.where(present, cells - first, 0)
        owner, position, valid = csr_row_slots(csr.indptr, local, budget, present)
        genes = csr.indices[position]
        values = jnp.clip((csr.values[position] - mean[genes]) / std[genes], -SCALE_CLIP, SCALE_CLIP)
        # Padding slots are sent past the last gene and dropped.
        dense = dense.at[owner, jnp.where(valid, genes, mean.shape[0])].set(values, mode="drop")
    return dense


__all__ = ["MAX_PIECE_ENTRIES", "SCALE_CLIP", "CsrRows", "ExpressionRows", "csr_on_device", "csr_row_slots",
           "expression_on_device", "largest_piece_share", "piece_of_rows", "placement", "row_pieces",
           "scaled_rows"]
