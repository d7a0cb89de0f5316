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


def _placement(mesh: Mesh | None):
    return jax.devices()[0] if mesh is None else replicated(mesh)


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
    csr
        Log expression (:class:`CsrRows`) or ``None``; a row is densified
        to ``clip((x - mean) / std, -clip, clip)``.
    mean, std
        Per-gene scaling of ``csr``.
    """

    dense: jax.Array | None
    csr: CsrRows | None
    mean: jax.Array | None
    std: jax.Array | None


def csr_on_device(matrix: sp.csr_matrix, mesh: Mesh | None = None) -> CsrRows:
    """``matrix`` on the device, replicated over ``mesh`` (``None``: the default device)."""
    if matrix.nnz >= 2 ** 31:
        raise ValueError(f"{matrix.nnz} stored entries do not fit 32-bit indices; split the data or use fewer "
                         "genes (n_top_genes).")
    put = lambda values, dtype: jax.device_put(np.asarray(values, dtype=dtype), _placement(mesh))  # noqa: E731
    return CsrRows(put(matrix.indptr, np.int32), put(matrix.indices, np.int32), put(matrix.data, np.float32))


def expression_on_device(expression: Any, mesh: Mesh | None = None) -> ExpressionRows:
    """Dense rows for an array; the CSR and its scaling for a lazily scaled matrix (never densified whole)."""
    if hasattr(expression, "log_expression"):
        csr = sp.csr_matrix(expression.log_expression, dtype=np.float32)
        csr.sort_indices()
        put = lambda values: jax.device_put(np.asarray(values, np.float32), _placement(mesh))  # noqa: E731
        return ExpressionRows(None, csr_on_device(csr, mesh), put(expression.mean), put(expression.std))
    dense = np.asarray(expression, dtype=np.float32)
    return ExpressionRows(jax.device_put(dense) if mesh is None else put_global_rows(dense, mesh), None, None, None)


def csr_row_slots(indptr: jax.Array, rows: jax.Array, budget: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The entries of ``rows``, row after row, in ``budget`` padded slots.

    Returns
    -------
    (owner, position, valid)
        For each slot: the position in ``rows`` of its row (sorted), the
        entry's index in ``indices``/``values``, and whether it is a real
        entry (padding slots point at entry 0 of the last row).
    """
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
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
    """Dense decoder target of ``cells`` (exactly :class:`~scllm_jax.preprocess.ScaledExpression`'s rows)."""
    if expression.dense is not None:
        return expression.dense[cells]
    csr, mean, std = expression.csr, expression.mean, expression.std
    owner, position, valid = csr_row_slots(csr.indptr, cells, budget)
    genes = csr.indices[position]
    values = jnp.clip((csr.values[position] - mean[genes]) / std[genes], -SCALE_CLIP, SCALE_CLIP)
    zeros = jnp.clip(-mean / std, -SCALE_CLIP, SCALE_CLIP)
    dense = jnp.broadcast_to(zeros, (cells.shape[0], mean.shape[0]))
    # Padding slots are sent past the last gene and dropped.
    return dense.at[owner, jnp.where(valid, genes, mean.shape[0])].set(values, mode="drop")




__all__ = ["SCALE_CLIP", "CsrRows", "ExpressionRows", "csr_on_device", "csr_row_slots", "expression_on_device",
           "scaled_rows"]
