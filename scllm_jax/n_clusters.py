"""Estimating the number of clusters when the user does not give it."""

from __future__ import annotations

import logging

import numpy as np

from .graph import knn_indices

logger = logging.getLogger(__name__)


def leiden_labels(embedding: np.ndarray, *, n_neighbors: int = 15, resolution: float = 1.0,
                  seed: int = 0) -> np.ndarray:
    """Leiden communities (modularity with ``resolution``) of the kNN graph of ``embedding``."""
    import igraph
    import leidenalg

    indices = knn_indices(np.asarray(embedding, dtype=np.float32), n_neighbors, seed=seed)
    rows = np.repeat(np.arange(indices.shape[0]), indices.shape[1])
    pairs = np.unique(np.sort(np.stack([rows, indices.ravel()], axis=1), axis=1), axis=0)
    graph = igraph.Graph(n=indices.shape[0], edges=pairs.tolist())
    partition = leidenalg.find_partition(graph, leidenalg.RBConfigurationVertexPartition,
                                         resolution_parameter=resolution, seed=seed)
    return np.asarray(partition.membership)


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
