"""The cell graph: a sparse symmetric kNN graph as a ``jraph.GraphsTuple``.

Edges carry the weights of ``D^-1/2 (A + I) D^-1/2`` so one graph convolution
is a weighted segment sum over edges: O(N k) memory, never N x N.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import scipy.sparse as sp

from .parallel import on_accelerator

logger = logging.getLogger(__name__)


def knn_indices(features: np.ndarray, n_neighbors: int, *, exact_max_cells: int = 50_000,
                seed: int = 0) -> np.ndarray:
    """Indices of each cell's ``n_neighbors`` nearest other cells (Euclidean).

    Exact (brute force, in blocks) up to ``exact_max_cells`` cells, pynndescent
    above, as scanpy does; above it on an accelerator, exact on the device
    (:func:`device_knn`).

    Returns
    -------
    np.ndarray
        ``(n_cells, n_neighbors)`` int64.
    """
    n_cells = features.shape[0]
    if n_cells < 3:
        raise ValueError(f"A graph needs at least 3 cells, got {n_cells}.")
    k = neighbour_count(n_cells, n_neighbors)
    if n_cells > exact_max_cells and on_accelerator():
        # On an accelerator exact search is faster than pynndescent on the host.
        logger.info("kNN on %d cells: exact, on the %s", n_cells, jax.default_backend())
        return _drop_self(device_knn(features, k + 1), k)
    if n_cells <= exact_max_cells:
        from sklearn.neighbors import NearestNeighbors

        search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="euclidean")
        search.fit(features)
        _, indices = search.kneighbors(features)
    else:
        from pynndescent import NNDescent

        logger.info("kNN on %d cells: approximate (pynndescent)", n_cells)
        index = NNDescent(features, n_neighbors=k + 1, metric="euclidean", random_state=seed,
                          low_memory=True, n_jobs=-1)
        indices, _ = index.neighbor_graph
    return _drop_self(indices, k)


# Cells per block of queries and of candidates in device_knn: a block pair's scores are 2048 x 32768 floats
# (256 MiB); candidates are ranked in groups of _GROUP consecutive cells.
_QUERY_BLOCK = 2048
_CANDIDATE_BLOCK = 32_768
_GROUP = 32


def device_knn(features: np.ndarray, k: int, *, query_block: int = _QUERY_BLOCK,
               candidate_block: int = _CANDIDATE_BLOCK, group: int = _GROUP,
               precision: jax.lax.Precision = jax.lax.Precision.HIGHEST) -> np.ndarray:
    """Exact ``k`` nearest cells of every cell (itself included), by blocked search on the default device.

    Two passes per block of queries, memory one block pair and never N x N:

    1. Each block of candidates meets the queries in one matrix product
       (``|c|^2 - 2 q.c``; the query's own norm does not change its ranking),
       and only the smallest score of each group of ``group`` consecutive
       candidates is kept.
    2. The ``k`` groups of smallest minima hold every one of the ``k``
       nearest candidates (each candidate nearer than the ``k``-th nearest
       lies in a group whose minimum is nearer still, and at most ``k`` groups
       hold such a candidate), so the exact float32 distances of their
       members, ranked, give the answer. With a ``precision`` below
       ``HIGHEST`` (``HIGH``: three bf16 products on a GPU's tensor cores) the
       ``2 k`` groups of smallest minima are taken, a margin for its rounding;
       a CPU computes float32 whatever is asked. The default, ``HIGHEST``, is
       the one measured on a GPU (recall 1.0000 at 1M cells).

    A top-k over ``N / group`` minima and one over ``k * group`` distances
    replace a top-k over all N scores per query, which dominated the search
    on a GPU (33 s at 1M cells).

    Returns
    -------
    np.ndarray
        ``(n_cells, k)`` int64, nearest first.
    """
    features = np.asarray(features, dtype=np.float32)
    n_cells, n_dims = features.shape
    if not 1 <= k <= n_cells:
        raise ValueError(f"k must lie in [1, {n_cells}], got {k}.")
    group = max(1, min(group, n_cells // k))  # at least k groups hold real cells
    candidate_block = -(-min(candidate_block, n_cells) // group) * group
    query_block = min(query_block, n_cells)
    n_candidate_blocks = -(-n_cells // candidate_block)
    n_padded = n_candidate_blocks * candidate_block
    padded = np.zeros((n_padded, n_dims), np.float32)
    padded[:n_cells] = features
    points = jnp.asarray(padded)
    # Padding candidates are never chosen.
    norms = jnp.where(jnp.arange(n_padded) < n_cells, jnp.sum(points * points, axis=1), jnp.inf)
    n_groups = min(k if precision == jax.lax.Precision.HIGHEST else 2 * k, n_padded // group)
    n_query_blocks = -(-n_cells // query_block)
    queries = np.zeros((n_query_blocks * query_block, n_dims), np.float32)
    queries[:n_cells] = features

    @jax.jit
    def search(points, norms, queries):
        blocks = (points.reshape(n_candidate_blocks, candidate_block, n_dims),
                  norms.reshape(n_candidate_blocks, candidate_block))

        def one_query_block(block_queries):
            def group_minima(_, block):
                block_points, block_norms = block
                scores = block_norms[None, :] - 2.0 * jnp.matmul(block_queries, block_points.T,
                                                                 precision=precision)
                return None, scores.reshape(query_block, -1, group).min(axis=2)

            _, minima = jax.lax.scan(group_minima, None, blocks)  # (candidate blocks, queries, groups)
            minima = jnp.transpose(minima, (1, 0, 2)).reshape(query_block, -1)
            _, nearest_groups = jax.lax.top_k(-minima, n_groups)
            members = (nearest_groups[:, :, None] * group + jnp.arange(group)).reshape(query_block, -1)
            offsets = points[members] - block_queries[:, None, :]
            distances = jnp.where(members < n_cells, jnp.sum(offsets * offsets, axis=2), jnp.inf)
            _, best = jax.lax.top_k(-distances, k)
            return jnp.take_along_axis(members, best, axis=1)

        return jax.lax.map(one_query_block, queries.reshape(n_query_blocks, query_block, n_dims))

    found = search(points, norms, jnp.asarray(queries))
    return np.asarray(found, dtype=np.int64).reshape(-1, k)[:n_cells]


def neighbour_count(n_cells: int, n_neighbors: int, n_clusters: int | None = None) -> int:
    """Neighbours per cell in a graph of ``n_cells``: ``n_neighbors``, fewer on tiny data.

    On tiny data a complete graph would give every cell the same smoothed
    input, so the count is at most ``(n_cells - 1) // 2``. With K known it is
    also at most a mean-sized cluster's other cells, ``n_cells // n_clusters
    - 1`` (at least 1): a neighbourhood larger than its cluster reaches into
    other clusters on every side, and the graph convolution averages types
    together (15 neighbours among 30 cells of 5 types are half the data).
    From 16 cells per cluster on that cap does not bind.

    Parameters
    ----------
    n_cells, n_neighbors
        Cells in the graph, neighbours asked for.
    n_clusters
        K, or ``None`` when it is not known (no cluster cap).
    """
    count = min(n_neighbors, max(1, (n_cells - 1) // 2))
    if n_clusters:
        count = min(count, max(1, n_cells // n_clusters - 1))
    return count


def _drop_self(indices: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own index (or the last neighbour where it is absent)."""
    rows = np.arange(indices.shape[0])[:, None]
    is_self = indices == rows
    # Rows that did not return themselves (duplicates) lose their farthest neighbour instead.
    is_self[~is_self.any(axis=1), -1] = True
    return indices[~is_self].reshape(indices.shape[0], k).astype(np.int64)


def knn_adjacency(indices: np.ndarray) -> sp.csr_matrix:
    """The symmetrised (union) kNN graph ``A``: 1 where either cell is among the other's neighbours."""
    n_cells, k = indices.shape
    rows = np.repeat(np.arange(n_cells), k)
    adjacency = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, indices.ravel())),
                              shape=(n_cells, n_cells))
    adjacency = adjacency.maximum(adjacency.T).tocsr()
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    return adjacency


def normalized_adjacency(indices: np.ndarray) -> sp.csr_matrix:
    """``D^-1/2 (A + I) D^-1/2`` of the symmetrised (union) kNN graph."""
    n_cells = indices.shape[0]
    adjacency = knn_adjacency(indices) + sp.identity(n_cells, dtype=np.float32, format="csr")
    adjacency.data[:] = 1.0
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = 1.0 / np.sqrt(degree)
    return sp.csr_matrix(sp.diags(inv_sqrt) @ adjacency @ sp.diags(inv_sqrt), dtype=np.float32)


def knn_graph(features: np.ndarray, n_neighbors: int = 15, *, exact_max_cells: int = 50_000,
              seed: int = 0) -> jraph.GraphsTuple:
    """Build the normalised cell graph.

    Parameters
    ----------
    features
        ``(n_cells, n_features)``, e.g. principal components.
    n_neighbors
        Neighbours per cell before symmetrisation.
    exact_max_cells
        Above this many cells neighbours are approximate (pynndescent).
    seed
        Seed of the approximate search.

    Returns
    -------
    jraph.GraphsTuple
        ``nodes``: the features; ``edges``: ``(n_edge,)`` weights of
        ``D^-1/2 (A + I) D^-1/2``; ``senders`` / ``receivers`` sorted by receiver;
        one graph (``n_node = [n_cells]``).
    """
    features = np.asarray(features, dtype=np.float32)
    indices = knn_indices(features, n_neighbors, exact_max_cells=exact_max_cells, seed=seed)
    return graph_from_adjacency(normalized_adjacency(indices), features)


def nearest_reference_cells(reference: np.ndarray, features: np.ndarray, k: int, *,
                            exact_max_cells: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices of each row of ``features``'s ``k`` nearest rows of ``reference``, nearest first.

    Exact up to ``exact_max_cells`` reference rows, pynndescent (seeded) above.
    """
    reference = np.asarray(reference, dtype=np.float32)
    features = np.asarray(features, dtype=np.float32)
    if reference.shape[0] <= exact_max_cells:
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(reference).kneighbors(features)
    from pynndescent import NNDescent

    index = NNDescent(reference, n_neighbors=max(k, 15), metric="euclidean", random_state=seed, low_memory=True)
    indices, distances = index.query(features, k=k)
    return distances, indices


def coincides(distances: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Whether each row's nearest reference row is the same point, up to rounding (``distances`` nearest first)."""
    scale = float(np.sqrt(np.mean(np.asarray(reference, dtype=np.float64) ** 2))) or 1.0
    return distances[:, 0] <= 1e-4 * scale


def attach_cells(adjacency: sp.csr_matrix, reference: np.ndarray, features: np.ndarray, n_neighbors: int, *,
                 exact_max_cells: int = 50_000, seed: int = 0) -> sp.csr_matrix:
    """The training graph with new cells added as nodes that read from it, and from nothing else.

    A new cell is joined to its ``n_neighbors`` nearest training cells (as
    many as :func:`knn_indices` gave each training cell), with the weights of
    ``D^-1/2 (A + I) D^-1/2`` for its degree ``k + 1`` and the training
    degrees. A new cell that coincides with a training cell (same point,
    up to rounding) takes that cell's row: its neighbours and weights in
    training. No edge runs from a new cell to a training cell or to another
    new cell, so a graph convolution gives every training cell its training
    value and every new cell a value that depends on it and the training
    cells only, never on which other cells are added with it.

    Parameters
    ----------
    adjacency
        The training graph's normalised adjacency (N x N, with self-loops).
    reference
        The training cells' features (N x F) the graph was built on.
    features
        The new cells' features (M x F) in the same space.
    n_neighbors
        As given to :func:`knn_indices` for the training graph.
    exact_max_cells
        Up to this many training cells the search is exact; above it
        pynndescent (approximate).
    seed
        Seed of the approximate search.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(N + M) x (N + M)``: ``adjacency`` in the first N rows and columns,
        the new cells after it.
    """
    adjacency = sp.csr_matrix(adjacency, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    features = np.asarray(features, dtype=np.float32)
    n_ref, n_new = reference.shape[0], features.shape[0]
    k = neighbour_count(n_ref, n_neighbors)
    distances, indices = nearest_reference_cells(reference, features, k, exact_max_cells=exact_max_cells, seed=seed)
    self_weight = adjacency.diagonal()  # 1 / degree of each training cell
    twin = coincides(distances, reference)
    rows, cols, weights = [], [], []
    # Cells of their own: the k nearest training cells and a self-loop, degree k + 1.
    own = np.flatnonzero(~twin)
    rows += [np.repeat(own, k), own]
    cols += [indices[own].ravel(), n_ref + own]
    weights += [np.sqrt(self_weight[indices[own]].ravel() / (k + 1)), np.full(own.size, 1.0 / (k + 1))]
    # Twins of a training cell: its row, the self-loop moved onto the new cell.
    twins = np.flatnonzero(twin)
    sources = indices[twins, 0]
    edges, counts = row_edges(adjacency, sources)
    targets = adjacency.indices[edges]
    rows.append(np.repeat(twins, counts))
    cols.append(np.where(targets == np.repeat(sources, counts), n_ref + np.repeat(twins, counts), targets))
    weights.append(adjacency.data[edges])
    new_rows = sp.csr_matrix((np.concatenate(weights).astype(np.float32),
                              (np.concatenate(rows), np.concatenate(cols))), shape=(n_new, n_ref + n_new))
    top = sp.hstack([adjacency, sp.csr_matrix((n_ref, n_new), dtype=np.float32)])
    return sp.csr_matrix(sp.vstack([top, new_rows]), dtype=np.float32)


def row_edges(adjacency: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``adjacency.data`` / ``.indices`` of the entries of ``rows``, row after row.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The entry positions, and the number of entries of each row.
    """
    starts, stops = adjacency.indptr[rows], adjacency.indptr[np.asarray(rows) + 1]
    counts = stops - starts
    # Concatenated CSR row slices, vectorised: start of each row plus the position within it.
    return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum()), counts


def graph_from_adjacency(adjacency: sp.csr_matrix, features: np.ndarray | None = None) -> jraph.GraphsTuple:
    """A ``GraphsTuple`` whose edges are the entries of a weighted adjacency (row = receiver)."""
    coo = sp.csr_matrix(adjacency).tocoo()
    order = np.lexsort((coo.col, coo.row))
    return jraph.GraphsTuple(
        nodes=None if features is None else jnp.asarray(features),
        edges=jnp.asarray(coo.data[order], dtype=jnp.float32),
        senders=jnp.asarray(coo.col[order], dtype=jnp.int32),
        receivers=jnp.asarray(coo.row[order], dtype=jnp.int32),
        n_node=jnp.asarray([adjacency.shape[0]]),
        n_edge=jnp.asarray([coo.nnz]),
        globals=None,
    )


def to_scipy(graph: jraph.GraphsTuple) -> sp.csr_matrix:
    """The graph's weighted adjacency as a SciPy CSR matrix (row = receiver)."""
    n_cells = int(np.asarray(graph.n_node).sum())
    return sp.csr_matrix((np.asarray(graph.edges), (np.asarray(graph.receivers), np.asarray(graph.senders))),
                         shape=(n_cells, n_cells))


def propagate(edges: jax.Array, senders: jax.Array, receivers: jax.Array, values: jax.Array) -> jax.Array:
    """One normalised graph convolution: ``out_i = sum_j w_ij values_j``.

    Parameters
    ----------
    edges, senders, receivers
        The graph's edge weights and endpoints (receivers sorted).
    values
        ``(n_cells, width)`` node values.
    """
    messages = values[senders] * edges[:, None]
    return jax.ops.segment_sum(messages, receivers, num_segments=values.shape[0], indices_are_sorted=True)
