"""Scanpy-style preprocessing as a fitted, reusable transform.

Counts -> filter genes -> normalise to ``target_sum`` -> ``log1p`` -> highly
variable genes -> scale (clip at 10) -> PCA. Linear-scale normalised values
(TPM, RPKM, CPM) take the same path; log-scale values are first brought back
to linear scale (:func:`~scllm_jax.validation.value_kind` and
:func:`~scllm_jax.validation.log_base` tell them apart). The
fitted state (value type, genes, scaling, PCA loadings) is kept so that new
cells can be mapped into the same space (:meth:`Preprocessor.transform`), which
a saved model needs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .config import ScllmConfig
from .device_rows import (MAX_PIECE_ENTRIES, expression_on_device, largest_piece_share, piece_of_rows, placement,
                          scaled_rows)
from .device_rows import SCALE_CLIP as _SCALE_CLIP
from .parallel import on_accelerator
from .validation import (VALUE_KINDS, CheckedExpression, InputError, check_expression, choose_layer, matrix_of,
                         row_chunks, where)

logger = logging.getLogger(__name__)

#: Cells read from a backed file at a time (memory: this many rows of the sparse matrix).
_CHUNK_CELLS = 20_000


@dataclasses.dataclass
class PreparedData:
    """Arrays derived from one AnnData, ready for the graph and the model.

    Attributes
    ----------
    log_expression
        Cells x highly variable genes, log-normalised, CSR float32 (the
        semantic view's input: the genes that tell cells apart).
    gene_names
        Names of the highly variable genes (columns of both matrices).
    expression
        Cells x highly variable genes, scaled and clipped, float32 (the
        decoder's reconstruction target); a lazy :class:`ScaledExpression`
        at atlas scale (:attr:`~scllm_jax.train.EngineChoice.large`).
    pca
        Cells x ``n_pcs`` principal components, float32 (graph and encoder input).
    pca_mean, pca_components
        The fitted projection, ``pca = (expression - pca_mean) @ pca_components.T``
        (``n_genes`` and ``n_pcs x n_genes``); path 1 of the semantic view pools
        gene embeddings over the expression it keeps, ``pca @ pca_components + pca_mean``.
    """

    log_expression: sp.csr_matrix
    gene_names: np.ndarray
    expression: "np.ndarray | ScaledExpression"
    pca: np.ndarray
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return self.pca.shape[0]


class ScaledExpression:
    """Scaled, clipped expression computed row block by row block from a CSR matrix.

    Stands in for the dense ``PreparedData.expression`` at atlas scale: 1M
    cells x 2,000 genes dense would be 8 GB, the CSR it is computed from a
    fraction of that. Indexing with rows gives dense float32 rows, exactly
    ``clip((x - mean) / std, -10, 10)``.

    Parameters
    ----------
    log_expression
        Cells x genes log-normalised CSR.
    mean, std
        Per-gene scaling.
    """

    def __init__(self, log_expression: sp.csr_matrix, mean: np.ndarray, std: np.ndarray):
        # float32 scaling: float64 statistics would upcast every densified block.
        self.log_expression = log_expression
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        #: Device arrays of this matrix left for training (:func:`~scllm_jax.device_rows.expression_on_device`).
        self.device_copy = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.log_expression.shape

    def __getitem__(self, rows) -> np.ndarray:
        return _scaled(self.log_expression[rows].toarray(), self.mean, self.std)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = _scaled(self.log_expression.toarray(), self.mean, self.std)
        return out if dtype is None else out.astype(dtype)

    def blocks(self, size: int = 20_000):
        """``(start, dense rows)`` in consecutive blocks of ``size`` cells."""
        for start in range(0, self.shape[0], size):
            # A slice, not an index array: scipy copies a row range without gathering rows one by one.
            yield start, _scaled(self.log_expression[start:start + size].toarray(), self.mean, self.std)


def _scaled(dense: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``clip((dense - mean) / std, -clip, clip)`` as float32; in place (``dense`` is a fresh array) when all are float32."""
    if not dense.dtype == mean.dtype == std.dtype == np.float32:
        return np.clip((dense - mean) / std, -_SCALE_CLIP, _SCALE_CLIP).astype(np.float32)
    # In place: the same float32 operations, without three temporaries the size of the matrix.
    np.subtract(dense, mean, out=dense)
    np.divide(dense, std, out=dense)
    return np.clip(dense, -_SCALE_CLIP, _SCALE_CLIP, out=dense)


class _DeviceBlocks:
    """The scaled expression's moments and projection computed on the device, block of cells by block.

    The same sums as the host loop of :meth:`Preprocessor._fit_in_blocks`,
    in float32 on the device (rows densified there from the CSR,
    :func:`~scllm_jax.device_rows.scaled_rows`).
    """

    block = 16_384

    def __init__(self, expression: ScaledExpression, *, max_piece_entries: int = MAX_PIECE_ENTRIES):
        n_cells = expression.shape[0]
        self.n_cells = n_cells
        self.rows = expression_on_device(expression, max_piece_entries=max_piece_entries)
        # Mini-batch training reads the same CSR: it takes this copy instead of shipping the matrix again.
        expression.device_copy = ((placement(None), max_piece_entries), self.rows)
        n_blocks = -(-n_cells // self.block)
        ids = np.minimum(np.arange(n_blocks * self.block), n_cells - 1).reshape(n_blocks, self.block)
        row_piece = piece_of_rows(np.asarray(self.rows.piece_rows), n_cells)
        entries = largest_piece_share(np.diff(expression.log_expression.indptr), row_piece, ids).max()
        step = 4 * self.block
        self.budget = int(-(-max(int(entries), 1) // step) * step)
        self.ids = jnp.asarray(ids, dtype=jnp.int32)
        # Padding rows (repeats of the last cell) count for nothing.
        self.weights = jnp.asarray((np.arange(n_blocks * self.block) < n_cells).reshape(n_blocks, self.block),
                                   dtype=jnp.float32)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Column sums and Gram matrix of the scaled expression (float64 on the host)."""
        @jax.jit
        def run(rows, ids, weights):
            def add(carry, block):
                cells, weight = block
                scaled = scaled_rows(rows, cells, self.budget) * weight[:, None]
                gram = jnp.matmul(scaled.T, scaled, precision=jax.lax.Precision.HIGHEST)
                return (carry[0] + scaled.sum(axis=0), carry[1] + gram), None

            genes = rows.mean.shape[0]
            start = (jnp.zeros(genes, jnp.float32), jnp.zeros((genes, genes), jnp.float32))
            return jax.lax.scan(add, start, (ids, weights))[0]

        total, gram = run(self.rows, self.ids, self.weights)
        return np.asarray(total, np.float64), np.asarray(gram, np.float64)

    def project(self, pca_mean: np.ndarray, components: np.ndarray) -> np.ndarray:
        """``(scaled - pca_mean) @ components.T`` of every cell (host float32)."""
        @jax.jit
        def run(rows, ids, centre, loadings):
            def one(cells):
                return jnp.matmul(scaled_rows(rows, cells, self.budget) - centre, loadings.T,
                                  precision=jax.lax.Precision.HIGHEST)

            return jax.lax.map(one, ids).reshape(-1, loadings.shape[0])

        out = run(self.rows, self.ids, jnp.asarray(pca_mean, jnp.float32), jnp.asarray(components, jnp.float32))
        return np.asarray(out[:self.n_cells], np.float32)


def _log_normalise(matrix, kind: str, target_sum: float, log_base: float | None = None) -> sp.csr_matrix:
    """Log expression of ``matrix`` by its value type: normalised per cell to ``target_sum``, then ``log1p``.

    Log-scale values are first brought back to linear scale with ``log_base``,
    so that every value type ends in the same space as counts do.
    """
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    if kind == "log":
        data = (np.power(log_base, csr.data.astype(np.float64)) - 1.0).astype(np.float32)
    else:
        data = csr.data
    totals = np.asarray(sp.csr_matrix((data, csr.indices, csr.indptr), shape=csr.shape).sum(axis=1)).ravel()
    scale = (target_sum / np.maximum(totals, 1e-12)).astype(np.float32)
    # Each stored value times its row's scale, in new arrays (csr may share the caller's), then log1p:
    # the float32 products of multiplying by a diagonal matrix, without building one more matrix.
    if csr.has_canonical_format:
        out = sp.csr_matrix((_scaled_log1p(data, csr.indptr, scale), csr.indices.copy(), csr.indptr.copy()),
                            shape=csr.shape)
    else:  # duplicates are summed after scaling, as the product by a diagonal matrix did
        out = sp.csr_matrix((data * np.repeat(scale, np.diff(csr.indptr)), csr.indices.copy(), csr.indptr.copy()),
                            shape=csr.shape)
        out.sum_duplicates()
        out.data = np.log1p(out.data)
    if np.count_nonzero(out.data) < out.nnz:
        out.eliminate_zeros()
    return out


def _scaled_log1p(data: np.ndarray, indptr: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``log1p(data * scale[row])`` of the stored values of a CSR matrix, rows split over threads.

    NumPy releases the GIL in these loops, so a many-core host normalises an
    atlas several times faster; every value gets the same two float32
    operations as in one thread.
    """
    out = np.empty(data.shape, np.float32)
    n_rows = indptr.size - 1
    n_parts = max(1, min(os.cpu_count() or 1, 16, data.size // 1_000_000))
    bounds = np.linspace(0, n_rows, n_parts + 1).astype(np.int64)

    def part(first: int, last: int) -> None:
        start, stop = indptr[first], indptr[last]
        row_scale = np.repeat(scale[first:last], np.diff(indptr[first:last + 1]))
        np.multiply(data[start:stop], row_scale, out=out[start:stop])
        np.log1p(out[start:stop], out=out[start:stop])

    if n_parts == 1:
        part(0, n_rows)
        return out
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n_parts) as pool:
        list(pool.map(part, bounds[:-1], bounds[1:]))
    return out


def _highly_variable(log_expression: sp.csr_matrix, n_top: int) -> np.ndarray:
    """Indices of the ``n_top`` most dispersed genes (scanpy's ``seurat`` flavour).

    Dispersion ``var / mean`` of the de-logged expression, log-transformed and
    z-scored within 20 bins of mean expression. Written with NumPy rather
    than called from scanpy: scanpy's numba kernels leave worker threads that
    slowed the language model that runs next by 10x on 2 cores.
    """
    n_cells, n_genes = log_expression.shape
    if n_genes <= n_top:
        return np.arange(n_genes)
    mean, mean_sq = _column_means(_delogged(log_expression))
    return _top_dispersed(mean, mean_sq, n_cells, n_top)


def _column_means(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-column means of ``matrix`` and of its squares, float64.

    The same products and the same order of summation as scipy's
    ``mean(axis=0)`` (each value times ``1 / n_rows``, added row by row),
    without the scaled copies of the matrix it makes: seconds at atlas scale.
    """
    n_rows = matrix.shape[0]
    values = matrix.data.astype(np.float64)
    weights = np.full(n_rows, 1.0 / n_rows)
    mean = sp.csr_matrix((values, matrix.indices, matrix.indptr), shape=matrix.shape).T @ weights
    values *= values
    mean_sq = sp.csr_matrix((values, matrix.indices, matrix.indptr), shape=matrix.shape).T @ weights
    return mean, mean_sq


def _delogged(log_expression: sp.csr_matrix) -> sp.csr_matrix:
    """``expm1`` of the log expression in float64.

    Log-scale input is at most :data:`~scllm_jax.validation.LOG_SCALE_MAX`
    (30): ``expm1(30) ** 2`` is about 1e26, far inside float64 (float32 would
    overflow past ``expm1(44)``, where squares are taken).
    """
    counts = sp.csr_matrix(log_expression, dtype=np.float64)
    counts.data = np.expm1(counts.data)
    return counts


def _top_dispersed(mean: np.ndarray, mean_sq: np.ndarray, n_cells: int, n_top: int) -> np.ndarray:
    """The seurat-flavour choice of :func:`_highly_variable` from per-gene moments of the de-logged data."""
    mean = mean.copy()
    var = (mean_sq - mean ** 2) * n_cells / max(n_cells - 1, 1)
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = var / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    log_mean = np.log1p(mean)
    frame = pd.DataFrame({"dispersion": dispersion,
                          "bin": pd.cut(log_mean, bins=20)})
    grouped = frame.groupby("bin", observed=False)["dispersion"]
    bin_mean, bin_std = grouped.transform("mean"), grouped.transform("std")
    single = grouped.transform("count") == 1
    bin_std[single], bin_mean[single] = bin_mean[single], 0.0
    normalised = ((frame["dispersion"] - bin_mean) / bin_std).to_numpy()
    normalised[np.isnan(normalised)] = -np.inf
    return np.sort(np.argsort(-normalised, kind="stable")[:n_top])


@dataclasses.dataclass
class Preprocessor:
    """Fitted preprocessing state.

    Attributes
    ----------
    gene_names
        Genes kept after filtering (order of ``log_expression`` columns).
    hvg_names
        Highly variable genes (order of ``expression`` columns).
    values
        Type of the values fitted on: ``"counts"``, ``"linear"`` (TPM, RPKM,
        CPM...) or ``"log"`` (:func:`~scllm_jax.validation.value_kind`); new
        cells must hold the same type.
    layer
        Layer fitted on (``None``: ``adata.X``).
    target_sum
        Library size used for normalisation.
    gene_mean, gene_std
        Scaling of the highly variable genes.
    pca_mean, pca_components
        Centre and ``n_pcs`` x ``len(hvg_names)`` loadings of the PCA.
    input_digest
        Hash of the gene names and values fitted on
        (:attr:`~scllm_jax.validation.CheckedExpression.digest`).
    log_base
        Base that undoes log-scale values (:func:`~scllm_jax.validation.log_base`),
        kept so that new cells are undone alike; ``None`` for other value types.
    """

    gene_names: np.ndarray
    hvg_names: np.ndarray
    values: str
    layer: str | None
    target_sum: float
    gene_mean: np.ndarray
    gene_std: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    input_digest: str = ""
    log_base: float | None = None

    @classmethod
    def fit(cls, adata: ad.AnnData, config: ScllmConfig, *, layer: str | None = None,
            in_blocks: bool | None = None) -> tuple["Preprocessor", PreparedData]:
        """Fit the preprocessing on ``adata`` and return it with the transformed data.

        Parameters
        ----------
        adata
            Cells x genes: raw counts, linear-scale normalised values or
            log-scale values in ``X`` (or in ``layer``).
        config
            Uses ``min_cells_per_gene``, ``target_sum``, ``n_top_genes``,
            ``n_pcs`` and ``seed``.
        layer
            Read ``adata.layers[layer]`` instead of ``X``; ``None`` reads ``X``,
            or ``layers['counts']`` when ``X`` holds no counts but that layer
            does (:func:`~scllm_jax.validation.choose_layer`).
        in_blocks
            Scale and project on sparse blocks, never holding cells x genes
            dense (atlas scale; the expression stays a lazily scaled CSR).
            ``None``: as :func:`~scllm_jax.train.choose_engine` decides for
            these cells (``EngineChoice.large``). Backed input always does.

        Returns
        -------
        (Preprocessor, PreparedData)
        """
        start = time.perf_counter()
        layer = choose_layer(adata, layer, chunk_cells=_CHUNK_CELLS)
        checked = check_expression(adata, layer, chunk_cells=_CHUNK_CELLS)
        logger.info("values checked (%s) in %.1f s", checked.kind, time.perf_counter() - start)
        keep = checked.cells_per_gene >= min(config.preprocess.min_cells_per_gene, max(1, adata.n_obs // 2))
        if keep.sum() < 2:
            raise InputError(f"Only {int(keep.sum())} genes are expressed in at least "
                             f"{config.preprocess.min_cells_per_gene} cells; the data is too sparse to cluster.")
        gene_names = np.asarray(adata.var_names, dtype=object)[keep]
        if getattr(adata, "isbacked", False):
            return cls._fit_streaming(adata, config, checked, keep, gene_names)
        matrix = sp.csr_matrix(matrix_of(adata, layer), dtype=np.float32)
        log_expression = _log_normalise(_columns(matrix, keep), checked.kind, config.preprocess.target_sum,
                                        checked.log_base)
        hvg = _highly_variable(log_expression, config.preprocess.n_top_genes)
        logger.info("normalised and %d variable genes chosen in %.1f s", hvg.size, time.perf_counter() - start)
        log_hvg = _columns(log_expression, hvg)
        if in_blocks is None:
            from .train import choose_engine

            in_blocks = choose_engine(adata.n_obs, hvg.size, config).large
        if in_blocks:
            return cls._fit_in_blocks(checked, gene_names, log_hvg, hvg, config)
        dense = log_hvg.toarray()
        mean = dense.mean(axis=0)
        std = dense.std(axis=0)
        std[std == 0] = 1.0
        scaled = np.clip((dense - mean) / std, -_SCALE_CLIP, _SCALE_CLIP).astype(np.float32)
        n_pcs = min(config.preprocess.n_pcs, scaled.shape[0] - 1, scaled.shape[1] - 1)
        if n_pcs < 2:
            cells = "1 cell" if adata.n_obs == 1 else f"{adata.n_obs} cells"
            raise InputError(f"{cells} x {scaled.shape[1]} genes is too small to cluster; "
                             "at least 3 cells and 3 variable genes are needed.")
        components = _pca_components(scaled, n_pcs, config.seed)
        state = cls._fitted(checked, gene_names, hvg, config, mean, std, scaled.mean(axis=0), components)
        return state, PreparedData(log_hvg, state.hvg_names, scaled, state._project(scaled),
                                   state.pca_mean, state.pca_components)

    @classmethod
    def _fitted(cls, checked: CheckedExpression, gene_names: np.ndarray, hvg: np.ndarray, config: ScllmConfig,
                gene_mean: np.ndarray, gene_std: np.ndarray, pca_mean: np.ndarray,
                pca_components: np.ndarray) -> "Preprocessor":
        return cls(gene_names=gene_names, hvg_names=gene_names[hvg], values=checked.kind, layer=checked.layer,
                   target_sum=config.preprocess.target_sum, gene_mean=np.asarray(gene_mean, np.float32),
                   gene_std=np.asarray(gene_std, np.float32), pca_mean=np.asarray(pca_mean, np.float32),
                   pca_components=np.asarray(pca_components, np.float32), input_digest=checked.digest,
                   log_base=checked.log_base)

    @classmethod
    def _fit_streaming(cls, adata: ad.AnnData, config: ScllmConfig, checked: CheckedExpression, keep: np.ndarray,
                       gene_names: np.ndarray) -> tuple["Preprocessor", PreparedData]:
        """:meth:`fit` for a backed ``.h5ad``: ``X`` is read from disk in chunks of cells, never whole.

        Three passes over the file (validation and cells per gene, done by
        :meth:`fit`; moments of the normalised expression for the variable
        genes; the variable genes' log expression), then scaling and PCA as at
        atlas scale. Memory holds only the variable genes' sparse log
        expression (cells x ``n_top_genes``) and per-gene sums.
        """
        n_cells = adata.n_obs
        kept = np.flatnonzero(keep)

        def log_chunks():
            for _, chunk in row_chunks(adata, _CHUNK_CELLS, checked.layer):
                yield _log_normalise(sp.csr_matrix(chunk[:, kept]), checked.kind, config.preprocess.target_sum,
                                     checked.log_base)

        if kept.size <= config.preprocess.n_top_genes:
            hvg = np.arange(kept.size)
        else:
            total, total_sq = np.zeros(kept.size), np.zeros(kept.size)
            for log in log_chunks():
                counts = _delogged(log)
                total += np.asarray(counts.sum(axis=0)).ravel()
                total_sq += np.asarray(counts.multiply(counts).sum(axis=0)).ravel()
            hvg = _top_dispersed(total / n_cells, total_sq / n_cells, n_cells, config.preprocess.n_top_genes)
        log_hvg = sp.vstack([log[:, hvg] for log in log_chunks()], format="csr", dtype=np.float32)
        if min(n_cells - 1, hvg.size - 1) < 2:
            cells = "1 cell" if n_cells == 1 else f"{n_cells} cells"
            raise InputError(f"{cells} x {hvg.size} genes is too small to cluster; "
                             "at least 3 cells and 3 variable genes are needed.")
        return cls._fit_in_blocks(checked, gene_names, log_hvg, hvg, config)

    @classmethod
    def _fit_in_blocks(cls, checked: CheckedExpression, gene_names: np.ndarray, log_hvg: sp.csr_matrix,
                       hvg: np.ndarray, config: ScllmConfig) -> tuple["Preprocessor", PreparedData]:
        """Scaling and PCA without ever holding cells x genes dense (atlas scale).

        Gene means and standard deviations come from sparse sums; the PCA is
        the eigendecomposition of the covariance of the scaled, clipped data,
        accumulated over blocks of cells (exact, memory genes x genes).
        """
        began = time.perf_counter()
        n_cells, n_genes = log_hvg.shape
        mean, mean_sq = _column_means(log_hvg)
        std = np.sqrt(np.maximum(mean_sq - mean ** 2, 0.0))
        std[std == 0] = 1.0
        expression = ScaledExpression(log_hvg, mean.astype(np.float32), std.astype(np.float32))
        on_device = on_accelerator()
        if on_device:
            # An accelerator densifies and multiplies the blocks itself; the host only ships the CSR once.
            blocks = _DeviceBlocks(expression)
            total, gram = blocks.moments()
        else:
            total = np.zeros(n_genes)
            gram = np.zeros((n_genes, n_genes))
            for _, block in expression.blocks():
                total += block.sum(axis=0, dtype=np.float64)
                gram += (block.T @ block).astype(np.float64)
        centre = total / n_cells
        covariance = gram / n_cells - np.outer(centre, centre)
        n_pcs = min(config.preprocess.n_pcs, n_cells - 1, n_genes - 1)
        values, vectors = np.linalg.eigh(covariance)
        components = vectors[:, ::-1][:, :n_pcs].T
        # Deterministic signs: the largest loading of each component positive (as sklearn's svd_flip).
        signs = np.sign(components[np.arange(n_pcs), np.argmax(np.abs(components), axis=1)])
        components = components * signs[:, None]
        state = cls._fitted(checked, gene_names, hvg, config, expression.mean, expression.std, centre, components)
        if on_device:
            pca = blocks.project(state.pca_mean, state.pca_components)
        else:
            pca = np.empty((n_cells, n_pcs), np.float32)
            for start, block in expression.blocks():
                pca[start:start + block.shape[0]] = state._project(block)
        logger.info("scaled and projected on %d principal components (%s) in %.1f s", n_pcs,
                    "on the device" if on_device else "on the host", time.perf_counter() - began)
        return state, PreparedData(log_hvg, state.hvg_names, expression, pca, state.pca_mean,
                                   state.pca_components)

    def transform(self, adata: ad.AnnData, *, layer: str | None = None) -> PreparedData:
        """Map new cells into the fitted space (same value type, genes, scaling and PCA).

        Every step works cell by cell with the fitted state, so a cell is
        mapped the same whichever other cells come with it.

        Parameters
        ----------
        adata
            New cells.
        layer
            As for :meth:`fit`.
        """
        layer = choose_layer(adata, layer, chunk_cells=_CHUNK_CELLS)
        kind = check_expression(adata, layer, chunk_cells=_CHUNK_CELLS, warn=False).kind
        if kind != self.values:
            hint = f" (the model read {where(self.layer)}: pass layer={self.layer!r})" if self.layer != layer else ""
            raise InputError(f"The model was fitted on {VALUE_KINDS[self.values][0]} but {where(layer)} holds "
                             f"{VALUE_KINDS[kind][0]}; pass data of the same kind{hint}.")
        names = np.asarray(adata.var_names, dtype=object)
        position = {name: j for j, name in enumerate(names)}
        missing = [g for g in self.hvg_names if g not in position]
        if len(missing) > 0.1 * len(self.hvg_names):
            raise InputError(f"{len(missing)} of the model's {len(self.hvg_names)} variable genes are missing "
                             f"from this data (e.g. {missing[:3]}); the data does not match the saved model.")
        matrix = sp.csr_matrix(matrix_of(adata, layer), dtype=np.float32)
        # Library sizes over the genes kept at fit time, as in fit.
        kept = _select_columns(matrix, np.array([position.get(g, -1) for g in self.gene_names]))
        kept_position = {name: j for j, name in enumerate(self.gene_names)}
        full = _log_normalise(kept, self.values, self.target_sum, self.log_base)
        log_expression = _select_columns(full, np.array([kept_position[g] for g in self.hvg_names]))
        scaled = _scaled(log_expression.toarray(), self.gene_mean, self.gene_std)
        return PreparedData(log_expression, self.hvg_names, scaled, self._project(scaled), self.pca_mean,
                            self.pca_components)

    def _project(self, scaled: np.ndarray) -> np.ndarray:
        return ((scaled - self.pca_mean) @ self.pca_components.T).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """State as named arrays, for saving."""
        return {"gene_names": self.gene_names.astype(str), "hvg_names": self.hvg_names.astype(str),
                "values": np.array(self.values), "layer": np.array("" if self.layer is None else self.layer),
                "target_sum": np.array(self.target_sum), "gene_mean": self.gene_mean, "gene_std": self.gene_std,
                "pca_mean": self.pca_mean, "pca_components": self.pca_components,
                "input_digest": np.array(self.input_digest),
                "log_base": np.array(np.nan if self.log_base is None else self.log_base)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Preprocessor":
        """Inverse of :meth:`to_arrays`."""
        return cls(gene_names=np.asarray(arrays["gene_names"], dtype=object),
                   hvg_names=np.asarray(arrays["hvg_names"], dtype=object),
                   values=str(arrays["values"]), layer=str(arrays["layer"]) or None,
                   target_sum=float(arrays["target_sum"]),
                   gene_mean=np.asarray(arrays["gene_mean"]), gene_std=np.asarray(arrays["gene_std"]),
                   pca_mean=np.asarray(arrays["pca_mean"]), pca_components=np.asarray(arrays["pca_components"]),
                   input_digest=str(arrays["input_digest"]),
                   log_base=_optional_float(arrays.get("log_base")))


def _optional_float(value) -> float | None:
    """A saved float, ``None`` where it was saved as NaN or not saved at all."""
    return None if value is None or np.isnan(float(value)) else float(value)


def _columns(matrix: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
    """``matrix[:, columns]`` (a boolean mask or sorted indices) as CSR; the matrix itself when every column is kept.

    Slicing a million-cell matrix copies it (seconds); most data keeps every gene.
    """
    columns = np.asarray(columns)
    every = columns.all() if columns.dtype == bool else np.array_equal(columns, np.arange(matrix.shape[1]))
    if every and columns.size == matrix.shape[1]:
        return matrix
    return sp.csr_matrix(matrix[:, columns])


def _select_columns(matrix: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
    """Columns of ``matrix`` by index, with ``-1`` giving an all-zero column."""
    present = columns >= 0
    picked = matrix[:, columns[present]].tocsc()
    selector = sp.csr_matrix((np.ones(present.sum(), dtype=np.float32),
                              (np.arange(present.sum()), np.flatnonzero(present))),
                             shape=(present.sum(), len(columns)))
    out = picked @ selector
    return sp.csr_matrix(out, dtype=np.float32)


def _pca_components(scaled: np.ndarray, n_pcs: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    solver = "randomized" if min(scaled.shape) > 5 * n_pcs else "full"
    pca = PCA(n_components=n_pcs, svd_solver=solver, random_state=seed)
    pca.fit(scaled)
    return pca.components_.astype(np.float32)
