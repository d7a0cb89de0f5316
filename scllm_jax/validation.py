"""Checks on user input, each failing with one line that says what to do, and warnings
where the data cannot support what was asked (the number of clusters)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """The input data cannot be clustered as given; the message says why and what to do."""


class EmptyCellsError(InputError):
    """Some cells have no counts at all; ``rows`` holds their positions (the command line leaves them out)."""

    def __init__(self, message: str, rows: np.ndarray):
        super().__init__(message)
        self.rows = rows


#: Largest value taken for log-scale expression. ``log1p`` of realistic normalised
#: expression stays below about 20 (``log1p(1e6)`` is 13.8) and ``log2(x + 1)`` of TPM
#: below about 25, while linear-scale TPM, RPKM, CPM or FPKM values of any real data set
#: reach hundreds or thousands.
LOG_SCALE_MAX = 30.0

#: The value types :func:`value_kind` tells apart: what each is taken for, and what
#: preprocessing does with it.
VALUE_KINDS = {
    "counts": ("raw counts", "normalised per cell to target_sum, then log1p"),
    "linear": ("linear-scale normalised values (TPM, RPKM, CPM, FPKM)",
               "normalised per cell to target_sum, then log1p, as counts are"),
    "log": ("log-scale values (e.g. log1p of normalised counts, log2(TPM + 1))",
            "brought back to linear scale (the base, e, 2 or 10, under which the values de-log to whole numbers, "
            "else under which the cells' totals agree, else e), then normalised per cell to target_sum and "
            "log1p, as counts are"),
}
#: Bases tried for log-scale values, natural first (the default when no base fits).
LOG_BASES = (float(np.e), 2.0, 10.0)
#: De-logged totals whose coefficient of variation over cells is below this count as equal (normalised data).
EQUAL_TOTALS_CV = 0.02
#: Log of counts: the base under which at least this share of the de-logged values are whole numbers.
WHOLE_NUMBER_SHARE = 0.99
#: Whole numbers are looked for among de-logged values up to this size: above it float32 logs no longer
#: tell a whole number from its neighbours (and every float64 beyond 2^53 is one).
WHOLE_NUMBER_MAX = 1000.0


def value_kind(is_integer: bool, largest: float) -> str:
    """The type of expression values, by the documented rule.

    Parameters
    ----------
    is_integer
        Whether every value is a whole number.
    largest
        The largest value.

    Returns
    -------
    str
        ``"counts"`` when every value is an integer; otherwise ``"linear"`` when
        the largest value is above :data:`LOG_SCALE_MAX`, ``"log"`` when it is not
        (see :data:`VALUE_KINDS`).
    """
    if is_integer:
        return "counts"
    return "linear" if largest > LOG_SCALE_MAX else "log"


def where(layer: str | None) -> str:
    """How a message names the matrix read: ``adata.X`` or ``adata.layers['name']``."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _source(adata: ad.AnnData, layer: str | None):
    matrix = adata.X if layer is None else adata.layers[layer]
    if matrix is None:
        layers = list(adata.layers.keys())
        held = f"its layers are {layers}" if layers else "it has no layers either"
        raise InputError(f"The AnnData has no X matrix ({held}); put the cells x genes counts in adata.X, "
                         "or name the layer that holds them (layer='name', --layer name).")
    return matrix


def matrix_of(adata: ad.AnnData, layer: str | None = None):
    """Return ``adata.X`` (or ``adata.layers[layer]``) loaded in memory, refusing what cannot be clustered."""
    matrix = _source(adata, layer)
    if getattr(adata, "isbacked", False) or type(matrix).__name__ in ("Dataset", "CSRDataset", "CSCDataset"):
        matrix = matrix[:] if not sp.issparse(matrix) else matrix
        if hasattr(matrix, "to_memory"):
            matrix = matrix.to_memory()
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        matrix = np.asarray(matrix)
    return matrix


def row_chunks(adata: ad.AnnData, size: int, layer: str | None = None):
    """``(start, CSR float32 rows)`` of ``adata.X`` (or a layer) in consecutive chunks, read from disk when backed."""
    matrix = _source(adata, layer)
    for start in range(0, adata.n_obs, size):
        chunk = matrix[start:start + size]
        if hasattr(chunk, "to_memory"):
            chunk = chunk.to_memory()
        if not sp.issparse(chunk):
            chunk = np.asarray(chunk)
        _check_dtype(chunk.dtype)
        yield start, sp.csr_matrix(chunk, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class CheckedExpression:
    """What :func:`check_expression` found in the expression matrix.

    Attributes
    ----------
    layer
        The layer read (``None``: ``adata.X``).
    kind
        ``"counts"``, ``"linear"`` or ``"log"`` (:func:`value_kind`).
    largest
        The largest value.
    cells_per_gene
        Number of cells expressing each gene.
    log_base
        For log-scale values, the base they are undone with (:func:`log_base`); ``None`` otherwise.
    digest
        BLAKE2 hash of the gene names and every value read: which data a
        training run saw (checkpoints compare it).
    """

    layer: str | None
    kind: str
    largest: float
    cells_per_gene: np.ndarray
    digest: str
    log_base: float | None = None


def log_base(delogged_totals: dict[float, np.ndarray], whole_shares: dict[float, float] | None = None) -> float:
    """The base of log-scale values: the one that undoes them into counts, or makes the cells' totals agree.

    ``log_b(1 + counts)`` undone with the right base gives whole numbers
    again (with a wrong one, ``(1 + c)^(ln b' / ln b) - 1``, almost never):
    the base under which at least :data:`WHOLE_NUMBER_SHARE` of the values
    de-log to whole numbers is taken first. Otherwise public log-scale data
    are mostly ``log_b(1 + x)`` of values normalised to a common total per
    cell (scanpy's ``normalize_total``, CPM, TPM), with ``b`` e or 2 (or 10).
    Undone with the right base, every cell's total is the same again; with a
    wrong one the totals scatter. Where no base gives equal totals
    (coefficient of variation below :data:`EQUAL_TOTALS_CV`), e.g. the log of
    unnormalised values or of a subset of genes, the natural log is assumed.

    Parameters
    ----------
    delogged_totals
        For each base ``b`` of :data:`LOG_BASES`, each cell's ``sum_g (b^v - 1)``.
    whole_shares
        For each base, the share of de-logged values ``b^v - 1`` from 1 to
        :data:`WHOLE_NUMBER_MAX` that are whole numbers
        (:func:`whole_numbers`); ``None``: not known.
    """
    if whole_shares:
        best = max(whole_shares, key=whole_shares.get)
        if whole_shares[best] >= WHOLE_NUMBER_SHARE:
            return best
    spread = {base: float(np.std(totals) / max(np.mean(totals), 1e-300)) for base, totals in delogged_totals.items()}
    best = min(spread, key=spread.get)
    return best if spread[best] < EQUAL_TOTALS_CV else LOG_BASES[0]


def whole_numbers(delogged: np.ndarray) -> tuple[int, int]:
    """How many de-logged values from 1 to :data:`WHOLE_NUMBER_MAX` are whole numbers, and how many there are.

    A log stored in float32 carries a relative error of about 6e-8, which
    de-logging turns into at most about ``1e-6 x`` in that range; a value
    counts as whole within ``1e-3 + 2e-6 x``.
    """
    considered = delogged[(delogged > 0.5) & (delogged <= WHOLE_NUMBER_MAX)]
    whole = np.abs(considered - np.round(considered)) <= 1e-3 + 2e-6 * considered
    return int(np.count_nonzero(whole)), int(considered.size)


def _log_base_of(adata: ad.AnnData, layer: str | None, chunk_cells: int) -> float:
    """:func:`log_base` of log-scale values, from one more pass over them (only log-scale data pays for it)."""
    delogged_totals: dict[float, list[np.ndarray]] = {base: [] for base in LOG_BASES}
    whole_counts = {base: np.zeros(2, np.int64) for base in LOG_BASES}  # whole, considered
    for _, chunk in row_chunks(adata, chunk_cells, layer):
        for base, totals in delogged_totals.items():
            delogged = sp.csr_matrix((np.power(base, chunk.data.astype(np.float64)) - 1.0, chunk.indices,
                                      chunk.indptr), shape=chunk.shape)
            totals.append(np.asarray(delogged.sum(axis=1)).ravel())
            whole_counts[base] += whole_numbers(delogged.data)
    return log_base({base: np.concatenate(totals) for base, totals in delogged_totals.items()},
                    {base: whole / max(considered, 1) for base, (whole, considered) in whole_counts.items()})


def check_expression(adata: ad.AnnData, layer: str | None = None, *, chunk_cells: int = 20_000,
                     warn: bool = True) -> CheckedExpression:
    """Validate the expression matrix, chunk by chunk, and tell which type of values it holds.

    Parameters
    ----------
    adata
        Cells x genes; read from disk in chunks when backed.
    layer
        Read ``adata.layers[layer]`` instead of ``adata.X``.
    chunk_cells
        Cells read at a time.
    warn
        Warn, naming the rule of :func:`value_kind` that fired, when the values
        are not raw counts.

    Returns
    -------
    CheckedExpression

    Raises
    ------
    InputError
        Empty data, repeated gene names, a non-numeric matrix, NaN or
        infinite values, negative values, or cells without any count.
    """
    n_cells, n_genes = adata.shape
    if n_cells == 0 or n_genes == 0:
        raise InputError(f"The data has {n_cells} cells and {n_genes} genes; nothing to cluster.")
    _check_unique_names(adata)
    dtype = getattr(_source(adata, layer), "dtype", None)
    if dtype is not None:
        _check_dtype(dtype)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{n_cells}x{n_genes}\n".encode())
    digest.update("\n".join(map(str, adata.var_names)).encode())
    is_integer, largest = True, 0.0
    cells_per_gene = np.zeros(n_genes, np.int64)
    empty_rows = []
    for start, chunk in row_chunks(adata, chunk_cells, layer):
        _check_values(chunk.data, layer)
        empty_rows.append(start + np.flatnonzero(np.asarray(chunk.sum(axis=1)).ravel() <= 0))
        is_integer = is_integer and bool(np.all(chunk.data == np.round(chunk.data)))
        largest = max(largest, float(chunk.data.max()) if chunk.nnz else 0.0)
        cells_per_gene += np.bincount(chunk.indices[chunk.data > 0], minlength=n_genes)
        for part in (chunk.indptr, chunk.indices, chunk.data):
            digest.update(np.ascontiguousarray(part).tobytes())
    _check_totals(np.concatenate(empty_rows), adata.obs_names)
    kind = value_kind(is_integer, largest)
    base = _log_base_of(adata, layer, chunk_cells) if kind == "log" else None
    if warn and kind != "counts":
        what, action = VALUE_KINDS[kind]
        side = "above" if kind == "linear" else "not above"
        chosen = f" Base found: {base:.4g}." if base is not None else ""
        warnings.warn(f"{where(layer)} holds non-integer values, the largest {largest:.4g} ({side} "
                      f"{LOG_SCALE_MAX:g}): taken as {what}, {action}.{chosen} Pass raw counts for the intended "
                      "preprocessing.", UserWarning, stacklevel=3)
    return CheckedExpression(layer, kind, largest, cells_per_gene, digest.hexdigest(), base)


def choose_layer(adata: ad.AnnData, layer: str | None = None, *, chunk_cells: int = 20_000) -> str | None:
    """The layer to cluster: the one named, else ``layers['counts']`` when ``X`` holds no counts but it does.

    Parameters
    ----------
    adata
        Cells x genes.
    layer
        A layer named by the user (scanpy's ``layer=``), or ``None``.

    Returns
    -------
    str or None
        ``layer`` when given; ``"counts"`` when ``layer`` is ``None``, ``adata.X``
        holds something other than raw counts (non-integer or negative values,
        e.g. scaled data) and ``adata.layers['counts']`` holds raw counts
        (said with a warning); otherwise ``None`` (``adata.X``).

    Raises
    ------
    InputError
        ``layer`` names no layer of ``adata``.
    """
    if layer is not None:
        if layer not in adata.layers:
            raise InputError(f"The data has no layer {layer!r}; its layers are {list(adata.layers.keys())}. "
                             "Name one of them, or none to use adata.X.")
        return layer
    if "counts" not in adata.layers or _holds_counts(adata, None, chunk_cells):
        return None
    if not _holds_counts(adata, "counts", chunk_cells):
        return None
    x_holds = "is empty" if adata.X is None else "does not hold raw counts (non-integer or negative values)"
    warnings.warn(f"adata.X {x_holds} but adata.layers['counts'] holds them: clustering adata.layers['counts'] "
                  "(pass layer='counts', --layer counts, to choose it yourself).", UserWarning, stacklevel=3)
    logger.info("clustering adata.layers['counts'] instead of adata.X")
    return "counts"


def _holds_counts(adata: ad.AnnData, layer: str | None, chunk_cells: int) -> bool:
    """Whether every value is a finite, non-negative integer (no errors raised)."""
    try:
        for _, chunk in row_chunks(adata, chunk_cells, layer):
            values = chunk.data
            if not (np.all(np.isfinite(values)) and np.all(values >= 0) and np.all(values == np.round(values))):
                return False
    except InputError:
        return False
    return True


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


def _check_values(values: np.ndarray, layer: str | None = None) -> None:
    if values.dtype == np.bool_:
        values = values.astype(np.float32)
    if not np.all(np.isfinite(values)):
        n_nan = int(np.sum(np.isnan(values)))
        n_inf = int(np.sum(np.isinf(values)))
        raise InputError(f"The expression matrix has {n_nan} NaN and {n_inf} infinite values; "
                         "remove or impute them before clustering.")
    if values.size and values.min() < 0:
        raise InputError(f"The expression matrix ({where(layer)}) has negative values (scaled or centred data?); "
                         "pass raw counts in adata.X, or name the layer that holds them "
                         "(layer='counts', --layer counts).")


def _check_totals(empty_rows: np.ndarray, cell_names) -> None:
    """Refuse cells without any count (values are non-negative by now), naming a few."""
    if empty_rows.size:
        which = "1 cell has" if empty_rows.size == 1 else f"{empty_rows.size} cells have"
        raise EmptyCellsError(f"{which} no counts at all (e.g. {list(map(str, cell_names[empty_rows[:3]]))}); "
                              "drop them first, e.g. sc.pp.filter_cells(adata, min_counts=1).", empty_rows)


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


def distinct_profiles(features: np.ndarray) -> int:
    """Number of cells that differ, counting near-identical ones once.

    Two cells count as one when every coordinate agrees to within 0.1% of the
    root mean square of ``features`` (e.g. their principal components).
    """
    features = np.asarray(features, dtype=np.float64)
    scale = float(np.sqrt(np.mean(features ** 2))) if features.size else 0.0
    if scale == 0.0 or not np.isfinite(scale):
        return 1
    return int(np.unique(np.round(features / (1e-3 * scale)), axis=0).shape[0])


def check_cluster_support(features: np.ndarray, n_clusters: int) -> None:
    """Warn when the cells have fewer distinct profiles than the ``n_clusters`` asked for."""
    n_distinct = distinct_profiles(features)
    if n_distinct < n_clusters:
        warnings.warn(f"The {len(features)} cells have only {n_distinct} distinct expression profile(s) "
                      f"(duplicate or near-identical cells) for n_clusters={n_clusters}: the data cannot support "
                      f"more than {n_distinct} cluster(s), and a split of identical cells is arbitrary. "
                      "Pass a smaller n_clusters.", UserWarning, stacklevel=3)


def count_clusters(labels: np.ndarray, n_clusters: int) -> int:
    """Number of non-empty clusters among the ``n_clusters`` asked for; warns when some are empty."""
    found = int(np.unique(np.asarray(labels)).size)
    if found < n_clusters:
        warnings.warn(f"{n_clusters - found} of the n_clusters={n_clusters} clusters are empty: the cells were "
                      f"split into {found}. The data do not support {n_clusters} clusters; pass a smaller "
                      "n_clusters, or None to estimate it.", UserWarning, stacklevel=3)
    return found
