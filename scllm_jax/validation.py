"""Checks on user input, each failing with one line that says what to do."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


class InputError(ValueError):
    """The input data cannot be clustered as given; the message says why and what to do."""


def _values(matrix) -> np.ndarray:
    """The stored values of a dense or sparse matrix, without densifying."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix).ravel()


def matrix_of(adata: ad.AnnData):
    """Return ``adata.X`` loaded in memory, refusing what cannot be clustered."""
    matrix = adata.X
    if matrix is None:
        raise InputError("The AnnData has no X matrix; put the cells x genes counts in adata.X.")
    if getattr(adata, "isbacked", False) or type(matrix).__name__ in ("Dataset", "CSRDataset", "CSCDataset"):
        matrix = matrix[:] if not sp.issparse(matrix) else matrix
        if hasattr(matrix, "to_memory"):
            matrix = matrix.to_memory()
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        matrix = np.asarray(matrix)
    return matrix


def check_counts(adata: ad.AnnData) -> bool:
    """Validate the expression matrix and tell whether it holds integer counts.

    Parameters
    ----------
    adata
        Cells x genes, raw counts expected in ``X``.

    Returns
    -------
    bool
        ``True`` if every value is a non-negative integer (raw counts).

    Raises
    ------
    InputError
        Empty data, a non-numeric matrix, NaN or infinite values, negative
        values, or cells without any count.
    """
    n_cells, n_genes = adata.shape
    if n_cells == 0 or n_genes == 0:
        raise InputError(f"The data has {n_cells} cells and {n_genes} genes; nothing to cluster.")
    _check_unique_names(adata)
    matrix = matrix_of(adata)
    _check_dtype(matrix.dtype)
    values = _values(matrix)
    _check_values(values)
    _check_totals(np.asarray(matrix.sum(axis=1)).ravel())
    is_counts = bool(np.all(values == np.round(values)))
    _warn_if_not_counts(is_counts, float(values.max()) if values.size else 0.0)
    return is_counts


def row_chunks(adata: ad.AnnData, size: int):
    """``(start, CSR float32 rows)`` of ``adata.X`` in consecutive chunks, read from disk when backed."""
    if adata.X is None:
        raise InputError("The AnnData has no X matrix; put the cells x genes counts in adata.X.")
    for start in range(0, adata.n_obs, size):
        chunk = adata.X[start:start + size]
        if hasattr(chunk, "to_memory"):
            chunk = chunk.to_memory()
        if not sp.issparse(chunk):
            chunk = np.asarray(chunk)
        _check_dtype(chunk.dtype)
        yield start, sp.csr_matrix(chunk, dtype=np.float32)


def check_counts_in_chunks(adata: ad.AnnData, size: int) -> tuple[bool, np.ndarray]:
    """:func:`check_counts` for data read chunk by chunk (backed ``.h5ad``): same checks, same errors.

    Returns
    -------
    (bool, numpy.ndarray)
        Whether the data holds raw counts, and the number of cells expressing
        each gene, counted in the same pass so the file is read once for both.
    """
    n_cells, n_genes = adata.shape
    if n_cells == 0 or n_genes == 0:
        raise InputError(f"The data has {n_cells} cells and {n_genes} genes; nothing to cluster.")
    _check_unique_names(adata)
    dtype = adata.X.dtype if hasattr(adata.X, "dtype") else None
    if dtype is not None:
        _check_dtype(dtype)
    is_counts, largest = True, 0.0
    cells_per_gene = np.zeros(n_genes, np.int64)
    for _, chunk in row_chunks(adata, size):
        _check_values(chunk.data)
        _check_totals(np.asarray(chunk.sum(axis=1)).ravel())
        is_counts = is_counts and bool(np.all(chunk.data == np.round(chunk.data)))
        largest = max(largest, float(chunk.data.max()) if chunk.nnz else 0.0)
        cells_per_gene += np.bincount(chunk.indices[chunk.data > 0], minlength=n_genes)
    _warn_if_not_counts(is_counts, largest)
    return is_counts, cells_per_gene


def _check_unique_names(adata: ad.AnnData) -> None:
    names = pd.Index(map(str, adata.var_names))
    if not names.is_unique:
        repeated = list(dict.fromkeys(names[names.duplicated()]))
        raise InputError(f"Gene names are not unique ({len(repeated)} repeated, e.g. {repeated[:3]}); "
                         "call adata.var_names_make_unique() first.")


def _check_dtype(dtype) -> None:
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"The expression matrix has dtype {dtype}, not numbers; "
                         "store raw counts as integers or floats in adata.X.")


def _check_values(values: np.ndarray) -> None:
    if values.dtype == np.bool_:
        values = values.astype(np.float32)
    if not np.all(np.isfinite(values)):
        n_nan = int(np.sum(np.isnan(values)))
        n_inf = int(np.sum(np.isinf(values)))
        raise InputError(f"The expression matrix has {n_nan} NaN and {n_inf} infinite values; "
                         "remove or impute them before clustering.")
    if values.size and values.min() < 0:
        raise InputError("The expression matrix has negative values (scaled or centred data?); "
                         "pass raw counts in adata.X (or adata.layers['counts']).")


def _check_totals(totals: np.ndarray) -> None:
    n_empty = int(np.sum(totals <= 0))
    if n_empty:
        which = "1 cell has" if n_empty == 1 else f"{n_empty} cells have"
        raise InputError(f"{which} no counts at all; drop them first, e.g. "
                         "sc.pp.filter_cells(adata, min_counts=1).")


def _warn_if_not_counts(is_counts: bool, largest: float) -> None:
    if is_counts:
        return
    if largest < 30:
        warnings.warn("adata.X holds non-integer values below 30: this looks like log-normalised "
                      "data, not counts. It is used as given (no further normalisation); pass raw "
                      "counts for the intended preprocessing.", UserWarning, stacklevel=3)
    else:
        warnings.warn("adata.X holds non-integer values; treating them as normalised expression "
                      "(pass raw counts for the intended preprocessing).", UserWarning, stacklevel=3)


def check_n_clusters(n_clusters: int | None, n_cells: int) -> None:
    """Refuse a number of clusters that cannot be fitted to ``n_cells`` cells."""
    if n_clusters is None:
        return
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise InputError(f"n_clusters must be an int, got {n_clusters!r} ({type(n_clusters).__name__}); "
                         "pass e.g. n_clusters=8, or None to estimate it.")
    if n_clusters < 2:
        raise InputError(f"n_clusters={n_clusters}: clustering needs at least 2 clusters; "
                         "pass n_clusters >= 2 or None to estimate it.")
    if n_clusters > n_cells:
        raise InputError(f"n_clusters={n_clusters} is larger than the number of cells ({n_cells}); "
                         "pass a smaller K or None to estimate it.")
