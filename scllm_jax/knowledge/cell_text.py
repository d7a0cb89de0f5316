"""The cell semantic view: cells as text embeddings (METHOD.md, steps 3-5).

Path 1 pools gene embeddings into cells. The gene embeddings are first
post-processed (:func:`postprocess_gene_embeddings`: centred, their top common
directions removed, optionally whitened), then summed per cell with one of two
weightings: :func:`denoised_embedding` weighs every variable gene by the
standardised expression that the principal components keep
(``Z1 = X_pca @ G``, the default); :func:`standardised_embedding` by the
standardised expression itself (``Z1 = X_std @ G``, one scale for all cells);
:func:`abundance_weighted_embedding` is the paper's sum of the top-k expressed
genes weighted by expression (``Z1 = X_topk @ G_topk``), as one jitted JAX
computation over fixed-size blocks of cells. Path 2
(:func:`cell_sentences`, :func:`sentence_embeddings`) writes each cell as a
Cell2Sentence sentence (its expressed gene symbols, most expressed first) and
embeds the sentence with the language model. :func:`fuse_views` mixes the two.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from ..config import GENE_POSTPROCESSING
from .language_model import DEFAULT_MODEL, EmbeddingCache, cached_embed_texts, to_device_array

__all__ = [
    "SENTENCE_VERSION",
    "abundance_weighted_embedding",
    "cell_sentences",
    "denoised_embedding",
    "fuse_views",
    "postprocess_gene_embeddings",
    "sentence_embeddings",
    "standardised_embedding",
]

logger = logging.getLogger(__name__)

#: Version of the Cell2Sentence recipe (ordering, case, separator), part of the
#: cache key of :func:`sentence_embeddings`.
SENTENCE_VERSION = "cell2sentence/v1"

_EPS = 1e-12

def _gene_mask(genes: np.ndarray, gene_mask: np.ndarray | None) -> np.ndarray:
    """``gene_mask`` as booleans of shape ``(n_genes,)``; ``None``: the rows of ``genes`` that are not all zero."""
    if gene_mask is None:
        return np.any(np.asarray(genes) != 0, axis=1)
    mask = np.asarray(gene_mask, dtype=bool)
    if mask.shape != (genes.shape[0],):
        raise ValueError(f"gene_mask must have shape ({genes.shape[0]},), got {mask.shape}.")
    return mask


def postprocess_gene_embeddings(gene_embeddings: np.ndarray, gene_mask: np.ndarray | None = None,
                                method: str = "abtt") -> np.ndarray:
    """Remove what all gene embeddings share before they are pooled into cells.

    Language-model embeddings of texts written from one template share a large
    mean and a few dominant directions (format, length, gene type), which carry
    little about what a gene does and swamp the differences between cells once
    summed. ``"centre"`` subtracts the mean gene vector; ``"abtt"``
    ("all-but-the-top", Mu & Viswanath 2018) also projects out the top
    ``D = ceil(d / 100)`` principal directions (their rule of thumb; 4 for
    d = 384); ``"whiten"`` then scales every remaining principal direction to
    the same variance (so no direction of the text space dominates the cell
    distances). Statistics are taken over the embedded genes (rows with
    ``gene_mask``), which are the genes the cells are pooled from.

    Parameters
    ----------
    gene_embeddings
        ``(n_genes, d)`` gene embeddings; rows outside ``gene_mask`` are ignored
        and returned as zeros.
    gene_mask
        ``(n_genes,)`` booleans, True where a gene has an embedding; ``None``:
        rows that are not all zero.
    method
        One of :data:`scllm_jax.config.GENE_POSTPROCESSING`; ``"none"`` returns the input.

    Returns
    -------
    numpy.ndarray
        ``(n_genes, d)`` float32.

    Raises
    ------
    ValueError
        An unknown ``method``.
    """
    if method not in GENE_POSTPROCESSING:
        raise ValueError(f"method must be one of {GENE_POSTPROCESSING}, got {method!r}.")
    genes = np.asarray(gene_embeddings, dtype=np.float64)
    mask = _gene_mask(genes, gene_mask)
    if method == "none" or mask.sum() < 2:
        return genes.astype(np.float32)
    kept = genes[mask] - genes[mask].mean(axis=0)
    if method != "centre":
        _, singular, directions = np.linalg.svd(kept, full_matrices=False)
        top = min(-(-genes.shape[1] // 100), len(singular) - 1)
        kept = kept - (kept @ directions[:top].T) @ directions[:top]
        if method == "whiten":
            rest, scale = directions[top:], singular[top:] / np.sqrt(len(kept))
            keep = scale > scale[0] * 1e-6  # directions with no spread stay at zero
            kept = (kept @ rest[keep].T) / scale[keep] @ rest[keep]
    out = np.zeros_like(genes)
    out[mask] = kept
    return out.astype(np.float32)


def _unit_scale_genes(genes: np.ndarray, gene_mask: np.ndarray | None) -> np.ndarray:
    """``genes`` outside ``gene_mask`` zeroed, the rest divided by their Frobenius norm (one scale for all cells)."""
    mask = _gene_mask(genes, gene_mask)
    genes = np.where(mask[:, None], genes, 0.0)
    return genes / max(float(np.linalg.norm(genes)), _EPS)


@jax.jit
def _project_block(rows: jax.Array, genes: jax.Array) -> jax.Array:
    return rows @ genes


def standardised_embedding(scaled_expression, gene_embeddings: np.ndarray | jax.Array, *,
                           gene_mask: np.ndarray | None = None, batch_size: int = 4096) -> np.ndarray:
    """Path 1 with standardised weights: ``Z1 = X_std @ G / ||G||_F`` over all variable genes.

    Each gene weighs a cell by its per-gene standardised expression (zero mean,
    unit variance over cells, as the expression view's PCA input), so a gene
    counts by how far this cell departs from the average cell, not by how
    abundant it is everywhere: a house-keeping gene that every cell expresses
    highly adds nothing, a marker adds in the cells that express it and
    subtracts in the others. Genes without an embedding weigh nothing.

    There is no per-cell normalisation: a cell's norm says how far it lies from
    the average cell, which is biology, not sequencing depth. One factor for
    all cells, ``1 / ||G||_F`` over the embedded genes, puts the result on a
    unit scale (a cell whose standardised expression is white noise has
    ``E ||z||^2 = 1``); it depends on the genes only, so new cells are
    embedded on the same scale.

    Parameters
    ----------
    scaled_expression
        ``(n_cells, n_genes)`` standardised expression: a dense array, or an
        object with ``blocks(size)`` yielding ``(start, dense rows)`` such as
        :class:`~scllm_jax.preprocess.ScaledExpression`.
    gene_embeddings, gene_mask
        As for :func:`abundance_weighted_embedding`.
    batch_size
        Cells per jitted block (the last one padded, so one compilation).

    Returns
    -------
    numpy.ndarray
        ``(n_cells, d)`` float32; raises ValueError where the shapes disagree.
    """
    genes = _unit_scale_genes(np.asarray(gene_embeddings, dtype=np.float32), gene_mask)
    n_genes = genes.shape[0]
    genes = to_device_array(genes)
    if hasattr(scaled_expression, "blocks"):
        n_cells = scaled_expression.shape[0]
        blocks = scaled_expression.blocks(batch_size)
    else:
        dense = np.asarray(scaled_expression, dtype=np.float32)
        n_cells = dense.shape[0]
        blocks = ((start, dense[start:start + batch_size]) for start in range(0, n_cells, batch_size))
    if scaled_expression.shape[1] != n_genes:
        raise ValueError(f"expression has {scaled_expression.shape[1]} genes but gene_embeddings has "
                         f"{n_genes} rows.")
    out = np.empty((n_cells, genes.shape[1]), dtype=np.float32)
    rows_per_block = max(1, min(batch_size, n_cells))
    for start, rows in blocks:
        padded = np.zeros((rows_per_block, n_genes), dtype=np.float32)
        padded[: len(rows)] = rows
        out[start:start + len(rows)] = np.asarray(_project_block(jnp.asarray(padded), genes))[: len(rows)]
    return out


def denoised_embedding(pca: np.ndarray, pca_mean: np.ndarray, pca_components: np.ndarray,
                       gene_embeddings: np.ndarray, *, gene_mask: np.ndarray | None = None) -> np.ndarray:
    """Path 1 over the expression the principal components keep: ``Z1 = X_pca @ G / ||G||_F``.

    ``X_pca = pca @ pca_components + pca_mean`` is the standardised expression
    reconstructed from its principal components. Single-cell expression is
    mostly sampling noise gene by gene; the expression view clusters on the
    principal components for that reason, and pooling gene embeddings over
    the raw standardised values carries that noise into every cell's text
    vector (a few thousand genes, each a noisy weight). Pooled over what the
    components keep, a gene counts by the part of its expression that it
    shares with the other genes of the main axes of variation. The product
    is taken as ``pca @ (pca_components @ G)``: each principal axis gets one
    text vector, the genes' embeddings weighted by their loadings, and a cell
    is the sum of its axes' vectors weighted by its scores; ``O(cells x
    n_pcs x d)``, no pass over the expression. Weights and scale are
    otherwise those of :func:`standardised_embedding` (on the same scale
    when the components keep all variation).

    Parameters
    ----------
    pca
        ``(n_cells, n_pcs)`` principal components of the cells.
    pca_mean, pca_components
        ``(n_genes,)`` and ``(n_pcs, n_genes)``: the fitted projection,
        ``pca = (X_std - pca_mean) @ pca_components.T``.
    gene_embeddings, gene_mask
        As for :func:`abundance_weighted_embedding`.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, d)`` float32; raises ValueError where the shapes disagree.
    """
    genes = np.asarray(gene_embeddings, dtype=np.float64)
    components = np.asarray(pca_components, dtype=np.float64)
    pca = np.asarray(pca, dtype=np.float64)
    if components.shape[1] != genes.shape[0] or pca.shape[1] != components.shape[0]:
        raise ValueError(f"pca {pca.shape}, pca_components {components.shape} and gene_embeddings {genes.shape} "
                         "do not chain (cells x pcs, pcs x genes, genes x d).")
    genes = _unit_scale_genes(genes, gene_mask)
    axes = components @ genes  # one text vector per principal axis
    return (pca @ axes + np.asarray(pca_mean, np.float64) @ genes).astype(np.float32)


def _as_csr(expression: np.ndarray | sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """A CSR float32 copy holding only the strictly positive entries, indices sorted."""
    if sp.issparse(expression):
        matrix = sp.csr_matrix(expression, dtype=np.float32, copy=True)
    else:
        dense = np.asarray(expression)
        if dense.ndim != 2:
            raise ValueError(f"expression must be 2-D (cells x genes), got shape {dense.shape}.")
        matrix = sp.csr_matrix(dense.astype(np.float32, copy=False))
    if matrix.nnz and not np.all(np.isfinite(matrix.data)):
        raise ValueError("expression holds NaN or infinite values.")
    negative = matrix.data < 0
    if negative.any():
        warnings.warn("expression has negative values (scaled data?); only positive entries "
                      "count as expressed: pass non-negative, e.g. log-normalised, values.",
                      RuntimeWarning, stacklevel=3)
        matrix.data[negative] = 0.0
    matrix.eliminate_zeros()
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def _pack_rows(block: sp.csr_matrix, n_rows: int, width: int, n_genes: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Left-align each row's stored entries into ``(n_rows, width)`` values / columns.

    Padding has value ``-1`` (below every expressed value, so ``top_k`` takes it
    last) and column ``n_genes`` (out of range, dropped by the scatter).
    """
    values = np.full((n_rows, width), -1.0, dtype=np.float32)
    columns = np.full((n_rows, width), n_genes, dtype=np.int32)
    counts = np.diff(block.indptr)
    rows = np.repeat(np.arange(block.shape[0]), counts)
    slots = np.arange(block.nnz) - np.repeat(block.indptr[:-1], counts)
    values[rows, slots] = block.data
    columns[rows, slots] = block.indices
    return values, columns


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _weighted_block(values: jax.Array, columns: jax.Array, genes: jax.Array, *, k: int,
                    normalize: bool) -> jax.Array:
    """Z = W @ G for one block, W holding each row's k largest values.

    ``values``/``columns`` are left-aligned, column-sorted stored entries; when
    ``k`` is smaller than their width ``lax.top_k`` picks the k largest (ties to
    the lower column, since entries are column-sorted).
    """
    n_rows, width = values.shape
    if k < width:
        values, slots = jax.lax.top_k(values, k)
        columns = jnp.take_along_axis(columns, slots, axis=1)
    weights = jnp.maximum(values, 0.0)  # padding (-1) weighs nothing
    dense = jnp.zeros((n_rows, genes.shape[0]), dtype=genes.dtype)
    dense = dense.at[jnp.arange(n_rows)[:, None], columns].add(weights, mode="drop")
    out = dense @ genes
    if normalize:
        norms = jnp.linalg.norm(out, axis=1, keepdims=True)
        out = out / jnp.maximum(norms, _EPS)
    return out


def _bucket(width: int, limit: int) -> int:
    """Round a row width up to a power of two (at least 64), capped at ``limit``.

    Few distinct widths means few compilations of the jitted block.
    """
    size = 64
    while size < width:
        size *= 2
    return max(1, min(size, limit))


def abundance_weighted_embedding(expression: np.ndarray | sp.spmatrix | sp.sparray,
                                 gene_embeddings: np.ndarray | jax.Array, top_k: int = 2048, *,
                                 batch_size: int = 4096, gene_mask: np.ndarray | None = None,
                                 normalize: bool = True) -> np.ndarray:
    """Path 1: each cell as the expression-weighted sum of its top genes' embeddings.

    For every cell, the ``top_k`` genes with the largest expression among those
    that are expressed (> 0) *and* have an embedding are kept, and their
    embeddings are summed with the expression values as weights
    (``Z1 = X_topk @ G_topk``). Genes without an embedding are excluded
    *before* the top-k choice, so they never take a slot. Ties at the k-th
    value go to the gene with the lower column index.

    Weights are the raw (e.g. log-normalised) expression values; they are not
    rescaled per cell, because with ``normalize=True`` (the default) each
    cell's result is scaled to unit L2 norm, which makes any positive per-cell
    rescaling of the weights irrelevant. Normalising puts every cell on the
    unit sphere whatever its depth, which the downstream projector and the
    fusion with path 2 (also unit norm) expect; ``normalize=False`` returns the
    paper's raw sum. A cell with no expressed, embedded gene gets the zero
    vector (never NaN).

    Cells with at most ``top_k`` expressed genes skip the selection; the
    others go through ``lax.top_k``. Each group is processed in blocks of
    ``batch_size`` cells (the last one padded), each block's non-zeros
    left-aligned into a width rounded up to a power of two, so the jitted
    kernel compiles only a few times per dataset.

    Parameters
    ----------
    expression
        ``(n_cells, n_genes)`` non-negative expression (e.g. log-normalised),
        SciPy sparse (any format) or dense.
    gene_embeddings
        ``(n_genes, d)`` gene embeddings, rows aligned with the columns of
        ``expression``; an all-zero row marks a gene without an embedding.
    top_k
        Genes kept per cell (the paper uses 2048).
    batch_size
        Cells per block; memory per block is about ``batch_size * n_genes * 4``
        bytes on the device.
    gene_mask
        ``(n_genes,)`` booleans, True where a gene has an embedding. ``None``
        means "rows of ``gene_embeddings`` that are not all zero".
    normalize
        Scale each cell's result to unit L2 norm (zero rows stay zero).

    Returns
    -------
    numpy.ndarray
        ``(n_cells, d)`` float32.

    Raises
    ------
    ValueError
        Shapes disagree, ``top_k``/``batch_size`` is not positive, or the
        expression holds NaN/inf.
    """
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be positive, got {top_k} and {batch_size}.")
    genes_host = gene_embeddings if isinstance(gene_embeddings, jax.Array) \
        else np.asarray(gene_embeddings, dtype=np.float32)
    if genes_host.ndim != 2:
        raise ValueError(f"gene_embeddings must be 2-D (genes x d), got shape {genes_host.shape}.")
    matrix = _as_csr(expression)
    n_cells, n_genes = matrix.shape
    if genes_host.shape[0] != n_genes:
        raise ValueError(f"expression has {n_genes} genes but gene_embeddings has "
                         f"{genes_host.shape[0]} rows.")
    gene_mask = _gene_mask(genes_host, gene_mask)
    if not gene_mask.all():
        matrix = matrix @ sp.diags(gene_mask.astype(np.float32), format="csr")
        matrix.eliminate_zeros()
        matrix.sort_indices()
    genes = to_device_array(genes_host)
    width_d = genes.shape[1]
    if n_cells == 0:
        return np.zeros((0, width_d), dtype=np.float32)

    counts = np.diff(matrix.indptr)
    heavy = counts > top_k
    out = np.empty((n_cells, width_d), dtype=np.float32)
    # Cells with at most top_k expressed genes need no selection: they go through
    # a kernel without top_k; only the others pay for it.
    for group in (np.flatnonzero(~heavy), np.flatnonzero(heavy)):
        if group.size == 0:
            continue
        block_rows = min(batch_size, -(-group.size // 8) * 8)
        for start in range(0, group.size, block_rows):
            rows = group[start:start + block_rows]
            longest = int(counts[rows].max())
            width = min(_bucket(longest, n_genes), max(top_k, longest))
            values, columns = _pack_rows(matrix[rows], block_rows, width, n_genes)
            result = _weighted_block(jnp.asarray(values), jnp.asarray(columns), genes,
                                     k=min(top_k, width), normalize=normalize)
            out[rows] = np.asarray(result)[: rows.size]
    return out


def cell_sentences(expression: np.ndarray | sp.spmatrix | sp.sparray, gene_symbols: Sequence[str],
                   n_genes: int = 100) -> list[str]:
    """Path 2, step 1: each cell as a Cell2Sentence sentence.

    The symbols of the cell's expressed genes (> 0), most expressed first,
    upper case, joined by single spaces, at most ``n_genes`` of them. Ties in
    expression are broken by the upper-case symbol (alphabetically), then by
    column index, so a cell's sentence does not depend on the order of the
    genes in the matrix. Genes with an empty symbol are skipped; a cell with no
    expressed gene gives the empty string.

    Parameters
    ----------
    expression
        ``(n_cells, n_genes)`` non-negative expression, SciPy sparse or dense.
    gene_symbols
        One symbol per column of ``expression``.
    n_genes
        Maximum number of symbols per sentence.

    Returns
    -------
    list of str
        One sentence per cell.

    Raises
    ------
    ValueError
        ``gene_symbols`` does not match the columns, or ``n_genes`` < 1.
    """
    if n_genes < 1:
        raise ValueError(f"n_genes must be positive, got {n_genes}.")
    matrix = _as_csr(expression)
    symbols = np.asarray([str(symbol).strip().upper() for symbol in gene_symbols], dtype=object)
    if symbols.shape != (matrix.shape[1],):
        raise ValueError(f"expression has {matrix.shape[1]} genes but {len(symbols)} gene symbols "
                         "were given.")
    named = symbols != ""
    if not named.all():
        matrix = matrix @ sp.diags(named.astype(np.float32), format="csr")
        matrix.eliminate_zeros()
    counts = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    # rank of every symbol in alphabetical order (ties by column through the stable sort)
    symbol_rank = np.empty(len(symbols), dtype=np.int64)
    symbol_rank[np.argsort(symbols.astype(str), kind="stable")] = np.arange(len(symbols))
    order = np.lexsort((symbol_rank[matrix.indices], -matrix.data, rows))
    sorted_columns = matrix.indices[order]
    sentences = []
    for row in range(matrix.shape[0]):
        start = matrix.indptr[row]
        stop = min(matrix.indptr[row + 1], start + n_genes)
        sentences.append(" ".join(symbols[sorted_columns[start:stop]]))
    return sentences


def sentence_embeddings(sentences: Sequence[str], model: str = DEFAULT_MODEL, *,
                        cache: EmbeddingCache | None = None,
                        cache_key_extra: str = SENTENCE_VERSION, batch_size: int = 64,
                        max_length: int = 256, progress: bool = True,
                        device: str | None = None) -> np.ndarray:
    """Path 2, step 2: embed Cell2Sentence sentences with the language model.

    Goes through :func:`~scllm_jax.knowledge.language_model.cached_embed_texts`;
    empty sentences (cells with no expressed gene) get the zero vector and are
    not sent to the model.

    Parameters
    ----------
    sentences
        From :func:`cell_sentences`.
    model
        :data:`~scllm_jax.knowledge.language_model.DEFAULT_MODEL`, a local
        model directory or a Hugging Face id.
    cache
        Embedding cache; ``None`` means the default location.
    cache_key_extra
        Version of the sentence recipe, part of the cache key.
    batch_size, max_length, progress, device
        As for :func:`~scllm_jax.knowledge.language_model.embed_texts`. A
        100-symbol sentence is ~300-350 word pieces, so ``max_length=256``
        reads roughly its first 75-85 genes (the most expressed ones).

    Returns
    -------
    numpy.ndarray
        ``(len(sentences), d)`` float32; unit rows, zero rows for empty sentences.
    """
    sentences = list(sentences)
    filled = np.flatnonzero([bool(sentence.strip()) for sentence in sentences])
    embedded = cached_embed_texts([sentences[i] for i in filled], model,
                                  cache_key_extra=cache_key_extra, cache=cache,
                                  batch_size=batch_size, max_length=max_length,
                                  progress=progress, device=device)
    out = np.zeros((len(sentences), embedded.shape[1]), dtype=np.float32)
    out[filled] = embedded
    return out


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, _EPS)).astype(np.float32)


def fuse_views(z1: np.ndarray, z2: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Fuse the two cell text embeddings: ``w * z1 + (1 - w) * z2``.

    Both inputs are scaled to unit row norm first (zero rows stay zero), so
    ``weight`` really sets the share of each path; the sum itself is not
    re-normalised.

    Parameters
    ----------
    z1
        ``(n_cells, d)`` path-1 embeddings.
    z2
        ``(n_cells, d)`` path-2 embeddings.
    weight
        Share of path 1, in ``[0, 1]``.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, d)`` float32.

    Raises
    ------
    ValueError
        The shapes differ or are not 2-D, or ``weight`` is outside ``[0, 1]``.
    """
    a = np.asarray(z1, dtype=np.float32)
    b = np.asarray(z2, dtype=np.float32)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"z1 and z2 must be 2-D with the same shape, got {a.shape} and {b.shape}.")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight}.")
    return weight * _unit_rows(a) + (1.0 - weight) * _unit_rows(b)
