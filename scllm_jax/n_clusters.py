"""Estimating the number of clusters when the user does not give it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .graph import knn_adjacency, knn_indices

if TYPE_CHECKING:
    import igraph

logger = logging.getLogger(__name__)


def leiden_labels(embedding: np.ndarray, *, n_neighbors: int = 15, resolution: float = 1.0,
                  seed: int = 0) -> np.ndarray:
    """Leiden communities (modularity with ``resolution``) of the kNN graph of ``embedding``."""
    import leidenalg

    indices = knn_indices(np.asarray(embedding, dtype=np.float32), n_neighbors, seed=seed)
    graph = _igraph_of(knn_adjacency(indices))
    partition = leidenalg.find_partition(graph, leidenalg.RBConfigurationVertexPartition,
                                         resolution_parameter=resolution, seed=seed)
    return np.asarray(partition.membership)


def _igraph_of(adjacency) -> "igraph.Graph":
    import igraph
    import scipy.sparse as sp

    upper = sp.triu(sp.csr_matrix(adjacency), k=1).tocoo()
    return igraph.Graph(n=adjacency.shape[0], edges=np.stack([upper.row, upper.col], axis=1).tolist())


def leiden_with_n_clusters(adjacency, n_clusters: int, *, seed: int = 0, max_steps: int = 40) -> np.ndarray:
    """Leiden communities of ``adjacency`` with the resolution bisected until there are ``n_clusters``.

    The resolution is bisected on a log scale between 1e-3 and 1e3 (more
    communities at a higher resolution). Where no resolution gives exactly
    ``n_clusters`` within ``max_steps`` steps (community counts can jump past
    it), the partition whose count came closest is returned and a warning is
    logged.

    Parameters
    ----------
    adjacency
        Symmetric cell graph (cells x cells).
    n_clusters
        Communities wanted.
    seed
        Leiden's seed.
    max_steps
        Bisection steps.

    Returns
    -------
    numpy.ndarray
        Community of each cell, codes ``0..``.
    """
    import leidenalg

    graph = _igraph_of(adjacency)
    low, high = np.log(1e-3), np.log(1e3)
    closest = None
    for _ in range(max_steps):
        resolution = float(np.exp(0.5 * (low + high)))
        partition = leidenalg.find_partition(graph, leidenalg.RBConfigurationVertexPartition,
                                             resolution_parameter=resolution, seed=seed)
        labels = np.asarray(partition.membership)
        found = int(labels.max()) + 1
        if closest is None or abs(found - n_clusters) < abs(closest[0] - n_clusters):
            closest = (found, labels)
        if found == n_clusters:
            return labels
        if found < n_clusters:
            low = np.log(resolution)
        else:
            high = np.log(resolution)
    logger.warning("Leiden gave %d communities at the closest resolution, not %d", closest[0], n_clusters)
    return closest[1]


def estimate_n_clusters(embedding: np.ndarray, *, n_neighbors: int = 15, resolution: float = 1.0,
                        seed: int = 0) -> int:
    """Number of Leiden communities of the kNN graph of ``embedding`` (the principal components in
    :meth:`~scllm_jax.model.ScllmModel.fit`).

    Communities of fewer than 1% of the cells (or 3 cells) are not counted: a
    Student-t centre for a handful of cells does not survive training.

    Returns
    -------
    int
        At least 2.
    """
    labels = leiden_labels(embedding, n_neighbors=n_neighbors, resolution=resolution, seed=seed)
    sizes = np.bincount(labels)
    floor = max(3, int(0.01 * len(labels)))
    n_clusters = max(2, int(np.sum(sizes >= floor)))
    logger.info("Estimated %d clusters (Leiden resolution %.2f; %d communities in all)",
                n_clusters, resolution, len(sizes))
    return n_clusters
