"""Initial partitions of the pre-trained latent, and the label-free choice between them.

The Student-t head refines the partition it starts from; it does not find
a different one. The start is therefore chosen with care, from two
candidates that fail in opposite ways:

- **latent k-means**: K centres in the latent ``Z`` (many restarts, lowest
  inertia). It follows the latent's geometry, which the normalised cut
  spreads over all directions: it separates types that overlap in the
  principal components (worm neurons), and it also cuts a large, uniform
  type into pieces (beta cells of a pancreas).
- **graph-merged**: ``overcluster_factor * K`` k-means centres in ``Z``, then
  the fragments merged along the cell graph (the kNN graph of the principal
  components) by greedy modularity until K remain. Pieces of one type share
  many graph edges and are merged back; it also merges types that only the
  latent tells apart.

Which failure a data set invites is not known without labels, so the
candidate whose clusters are better separated in the expression space that
both came from (mean silhouette on the principal components) is taken.
Neither candidate optimises that score, so it arbitrates between them
rather than favouring one by construction; k-means on the principal
components is deliberately not a candidate, because it does optimise it.

After training, :func:`final_partition` guards the result against ending
below its own starting point: the trained head's clusters and a reference
clustering of the principal components are compared by how many of each
cell's nearest neighbours share its cluster, and the higher is kept. The
reference is Ward's agglomerative clustering (:func:`ward_labels`): it
minimises the same within-cluster sum of squares as k-means, but bottom-up,
so the same cells always give the same partition (k-means' optimum over
100 restarts changed with the seed by up to 0.25 ARI on a pancreas set) and
a large type is assembled from its own small merges instead of being cut
to even out cluster sizes. The count is the complement of the kNN-graph cut
with no size term: unlike modularity (whose null model charges a cluster
for its squared volume) and the normalised cut, it does not reward cutting
a large type into halves, which is how the head fails on data where one
type holds half of the cells. Each partition has a home space whose
neighbourhoods it follows more smoothly (the principal components for the
reference, the clustering space for the head), so the count is averaged
over the neighbourhoods of both spaces, and of a third that is home to
neither: the correlation of the cells' log-normalised variable genes.
Where the reference wins, Ward's greedy merges are consolidated by Lloyd's
iterations (:func:`consolidated_labels`), and the consolidated partition is
reported if it scores higher in the same spaces.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import scipy.sparse as sp

from .config import FINAL_SELECTIONS, INITIALISATIONS, REFERENCE_CLUSTERINGS
from .parallel import on_accelerator

logger = logging.getLogger(__name__)

#: Silhouettes are computed on at most this many cells (a seeded random subset above it).
SILHOUETTE_MAX_CELLS = 5000
#: Exact Ward linkage up to this many cells; it needs O(N^2) memory (0.4 GB at 10,000).
WARD_MAX_CELLS = 10_000
#: Above :data:`WARD_MAX_CELLS`, Ward merges this many k-means micro-clusters instead of single cells.
WARD_MICRO_CLUSTERS = 1_000
#: The micro-clusters' centres are fitted on a seeded subset of at most this many cells.
WARD_MICRO_FIT_CELLS = 20_000
#: Above this many cells k-means is fitted on a seeded random subset of this size, then every cell assigned
#: (the centres of an atlas need not see every cell).
KMEANS_MAX_CELLS = 100_000
#: The final selection's expression space (2,000 dense genes) is searched on at most this many cells (a seeded
#: random subset above it): exact search there costs N^2 x genes (3.6 s for 10,000 cells on 2 cores).
EXPRESSION_SELECTION_MAX_CELLS = 10_000
#: On an accelerator, k-means of this many cells or more runs there (:mod:`~scllm_jax.device_kmeans`).
DEVICE_KMEANS_MIN_CELLS = 50_000


def seeded_subset(n_rows: int, max_rows: int, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``max_rows`` of ``n_rows`` rows; ``None`` when all of them fit."""
    if n_rows <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_rows, max_rows, replace=False))


def kmeans_labels(embedding: np.ndarray, n_clusters: int, *, seed: int, n_init: int,
                  max_cells: int = KMEANS_MAX_CELLS) -> np.ndarray:
    """k-means (``n_init`` restarts, lowest inertia kept) labels of every row of ``embedding``.

    Above ``max_cells`` rows the centres are fitted on a seeded random subset
    (the centres of an atlas are well placed from a subset; k-means on all of
    it is the slow part) and every row is assigned to its nearest centre.
    From :data:`DEVICE_KMEANS_MIN_CELLS` rows on an accelerator, the same
    algorithm runs there (:func:`~scllm_jax.device_kmeans.device_kmeans`).
    """
    rows = seeded_subset(embedding.shape[0], max_cells, seed)
    fit_rows = embedding if rows is None else embedding[rows]
    if embedding.shape[0] >= DEVICE_KMEANS_MIN_CELLS and on_accelerator():
        # The same algorithm on the accelerator: restarts side by side, every cell assigned there.
        from .device_kmeans import device_kmeans, nearest_centres

        centres, _ = device_kmeans(fit_rows, n_clusters, seed=seed, n_init=n_init)
        return nearest_centres(embedding, centres)
    from sklearn.cluster import KMeans

    embedding = np.asarray(embedding, dtype=np.float64)
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(np.asarray(fit_rows, np.float64))
    return kmeans.predict(embedding).astype(np.int64)


def consolidated_labels(embedding: np.ndarray, labels: np.ndarray, n_clusters: int, *,
                        max_cells: int = KMEANS_MAX_CELLS, seed: int = 0) -> np.ndarray:
    """A partition consolidated by Lloyd's iterations: k-means started from its own cluster means (one run).

    Agglomerative merges are greedy, and a cell placed early stays where it
    was merged; Lloyd's iterations then lower the same within-cluster sum of
    squares by moving each cell to its nearest centre (the consolidation
    step of hierarchical clustering on principal components, as in
    FactoMineR's HCPC). Above ``max_cells`` rows the iterations run on a
    seeded random subset and every row is assigned to its nearest centre.

    Parameters
    ----------
    embedding
        Cells x features (the principal components).
    labels
        The partition to consolidate, clusters ``0..n_clusters-1``.
    n_clusters
        K.
    max_cells, seed
        As for :func:`kmeans_labels`.
    """
    from sklearn.cluster import KMeans

    embedding = np.asarray(embedding, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rows = seeded_subset(embedding.shape[0], max_cells, seed)
    fit_rows, fit_labels = (embedding, labels) if rows is None else (embedding[rows], labels[rows])
    centres = cluster_means(fit_rows, fit_labels, n_clusters).astype(np.float64)
    kmeans = KMeans(n_clusters=n_clusters, init=centres, n_init=1).fit(fit_rows)
    return kmeans.predict(embedding).astype(np.int64)


def ward_labels(embedding: np.ndarray, n_clusters: int, *, seed: int,
                max_cells: int = WARD_MAX_CELLS, micro_clusters: int = WARD_MICRO_CLUSTERS) -> np.ndarray:
    """Ward's agglomerative clustering of the rows of ``embedding``, cut at ``n_clusters``.

    Ward merges, bottom-up, the two clusters whose union least increases the
    within-cluster sum of squares: the objective of k-means, reached without
    random restarts (the same input gives the same partition) and without
    k-means' pull towards clusters of equal size, since a large type is
    built from its own small merges before anything is cut.

    Up to ``max_cells`` rows the linkage is exact (scipy's nearest-neighbour
    chain). Above, the rows are first grouped into ``micro_clusters``
    k-means clusters (seeded; centres fitted on at most
    :data:`WARD_MICRO_FIT_CELLS` cells, every cell then assigned), and Ward
    merges those, each weighted by its size (:func:`weighted_ward`).
    """
    from scipy.cluster.hierarchy import cut_tree, linkage

    embedding = np.asarray(embedding, dtype=np.float64)
    if embedding.shape[0] <= max_cells:
        tree = linkage(embedding, method="ward")
        return cut_tree(tree, n_clusters=n_clusters).ravel().astype(np.int64)
    micro = kmeans_labels(embedding, micro_clusters, seed=seed, n_init=1, max_cells=WARD_MICRO_FIT_CELLS)
    weights = np.bincount(micro, minlength=micro_clusters).astype(np.float64)
    present = np.flatnonzero(weights)
    centres = cluster_means(embedding, micro, micro_clusters)[present]
    merged = np.zeros(micro_clusters, dtype=np.int64)
    merged[present] = weighted_ward(centres.astype(np.float64), weights[present], n_clusters)
    return merged[micro]


def weighted_ward(points: np.ndarray, weights: np.ndarray, n_clusters: int) -> np.ndarray:
    """Ward's agglomerative clustering of weighted points (each a cluster of ``weights[i]`` cells at ``points[i]``).

    The merge cost of clusters ``a`` and ``b`` is the increase of the
    within-cluster sum of squares, ``n_a n_b / (n_a + n_b) |c_a - c_b|^2``;
    after a merge the costs to the new cluster follow the Lance-Williams
    update for Ward. With unit weights this is Ward's linkage on the points.
    O(M^2) memory and M - K passes over the M x M costs for M points:
    meant for a thousand or so.

    Returns
    -------
    numpy.ndarray
        Cluster ``0..n_clusters-1`` of each point.
    """
    points = np.asarray(points, dtype=np.float64)
    size = np.asarray(weights, dtype=np.float64).copy()
    m = points.shape[0]
    if not 1 <= n_clusters <= m:
        raise ValueError(f"n_clusters must lie in [1, {m}], got {n_clusters}.")
    squared = np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1)
    cost = size[:, None] * size[None, :] / (size[:, None] + size[None, :]) * squared
    np.fill_diagonal(cost, np.inf)
    owner = np.arange(m)
    for _ in range(m - n_clusters):
        a, b = np.unravel_index(np.argmin(cost), cost.shape)
        total = size[a] + size[b] + size
        updated = ((size[a] + size) * cost[a] + (size[b] + size) * cost[b] - size * cost[a, b]) / total
        cost[a, :] = cost[:, a] = updated
        cost[a, a] = np.inf
        cost[b, :] = cost[:, b] = np.inf
        size[a] += size[b]
        owner[owner == b] = a
    return np.unique(owner, return_inverse=True)[1].astype(np.int64)


def cluster_means(embedding: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Mean embedding of each cluster ``0..n_clusters-1`` (zeros for an empty one): the centres of a partition."""
    counts = np.bincount(labels, minlength=n_clusters).astype(np.float64)
    # One bincount per feature: np.add.at over a million rows took seconds.
    sums = np.stack([np.bincount(labels, weights=column, minlength=n_clusters) for column in
                     np.asarray(embedding, np.float64).T], axis=1)
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


def modularity(adjacency: sp.spmatrix, labels: np.ndarray, resolution: float = 1.0) -> float:
    """Newman's modularity of ``labels`` on the undirected graph ``adjacency`` (symmetric, weighted).

    ``Q = sum_c [ w_cc / W - resolution * (vol_c / W)^2 ]`` with ``W`` the total
    edge weight counted both ways, ``w_cc`` the weight inside cluster ``c``
    (both ways) and ``vol_c`` its summed degree.
    """
    coo = sp.coo_matrix(adjacency)
    labels = np.asarray(labels)
    total = coo.data.sum()
    inside = coo.data[labels[coo.row] == labels[coo.col]].sum()
    degree = np.asarray(sp.csr_matrix(adjacency).sum(axis=1)).ravel()
    volume = np.bincount(labels, weights=degree)
    return float(inside / total - resolution * np.sum((volume / total) ** 2))


def merge_by_modularity(labels: np.ndarray, adjacency: sp.spmatrix, n_clusters: int) -> np.ndarray:
    """Merge the clusters of ``labels`` along the graph until ``n_clusters`` remain.

    Each step joins the pair of clusters whose union raises the graph's
    modularity most (or lowers it least): Clauset-Newman-Moore's greedy
    agglomeration, started from the given clusters instead of single cells,
    and run to exactly ``n_clusters`` instead of to the modularity peak.

    Parameters
    ----------
    labels
        Fine partition (``M > n_clusters`` clusters, codes ``0..M-1`` or any labels).
    adjacency
        Symmetric cell graph (cells x cells).
    n_clusters
        Clusters wanted.

    Returns
    -------
    numpy.ndarray
        Codes ``0..n_clusters-1``, numbered by first appearance of the merged groups' ids.
    """
    codes = np.unique(labels, return_inverse=True)[1]
    n_fine = int(codes.max()) + 1
    if n_fine <= n_clusters:
        return codes
    membership = sp.csr_matrix((np.ones(codes.size), (np.arange(codes.size), codes)),
                               shape=(codes.size, n_fine))
    between = np.asarray((membership.T @ sp.csr_matrix(adjacency) @ membership).todense(), dtype=np.float64)
    total = between.sum()
    volume = between.sum(axis=1) / total
    between /= total
    group = np.arange(n_fine)
    alive = np.ones(n_fine, dtype=bool)
    for _ in range(n_fine - n_clusters):
        # Modularity change of joining i and j: 2 (e_ij - a_i a_j), e and a as fractions of all edge weight.
        gain = between - np.outer(volume, volume)
        np.fill_diagonal(gain, -np.inf)
        gain[~alive, :] = -np.inf
        gain[:, ~alive] = -np.inf
        i, j = np.unravel_index(np.argmax(gain), gain.shape)
        i, j = min(i, j), max(i, j)
        between[i, :] += between[j, :]
        between[:, i] += between[:, j]
        between[j, :] = 0.0
        between[:, j] = 0.0
        volume[i] += volume[j]
        volume[j] = 0.0
        alive[j] = False
        group[group == j] = i
    return np.unique(group[codes], return_inverse=True)[1]


def separation(space: np.ndarray, labels: np.ndarray, *, seed: int) -> float:
    """Mean silhouette of ``labels`` in ``space`` (on a seeded subset of cells above :data:`SILHOUETTE_MAX_CELLS`).

    Returns ``-1`` for a partition with a single cluster (nothing separated).
    """
    from sklearn.metrics import silhouette_score

    if np.unique(labels).size < 2:
        return -1.0
    sample = min(SILHOUETTE_MAX_CELLS, len(labels))
    return float(silhouette_score(space, labels, sample_size=sample if sample < len(labels) else None,
                                  random_state=seed))


@dataclasses.dataclass
class InitialPartition:
    """The partition the clustering head starts from, and how it was chosen.

    Attributes
    ----------
    labels
        Cluster of each cell (codes ``0..K-1``).
    chosen
        Name of the candidate taken (``"latent_kmeans"`` or ``"graph_merged"``).
    scores
        Silhouette on the principal components of each candidate.
    sizes
        Cells per cluster of each candidate, largest first.
    """

    labels: np.ndarray
    chosen: str
    scores: dict[str, float]
    sizes: dict[str, list[int]]

    def summary(self) -> dict:
        """Plain values for ``uns['scllm']['initialisation']``."""
        return {"chosen": self.chosen, **{f"silhouette_{k}": v for k, v in self.scores.items()},
                **{f"sizes_{k}": np.asarray(v) for k, v in self.sizes.items()}}


def initial_partition(latent: np.ndarray, principal_components: np.ndarray, adjacency: sp.spmatrix,
                      n_clusters: int, *, method: str, seed: int, n_init: int,
                      overcluster_factor: int, max_cells: int = KMEANS_MAX_CELLS) -> InitialPartition:
    """The partition of the pre-trained latent that the clustering head starts from.

    Parameters
    ----------
    latent
        Pre-trained cluster space (cells x d).
    principal_components
        The cells' principal components (the arbiter's space).
    adjacency
        The kNN cell graph of the principal components (symmetric).
    n_clusters
        K.
    method
        ``"select"`` (the better-separated of the two candidates),
        ``"latent_kmeans"`` or ``"graph_merged"`` (that candidate alone), or
        ``"graph_leiden"``: Leiden on the cell graph with its resolution
        bisected to K communities (not a candidate of ``"select"``: it cut
        the large types of the benchmark's data sets finer still), or
        ``"pca_ward"``: Ward's clustering of the principal components
        (:func:`ward_labels`), the head then starting from the final
        selection's reference.
    seed, n_init, max_cells
        k-means seed, restarts, and the most cells it is fitted on.
    overcluster_factor
        The graph-merged candidate starts from this many times K k-means clusters.
    """
    if method not in INITIALISATIONS:
        raise ValueError(f"Unknown initialisation {method!r}; use one of {INITIALISATIONS}.")
    start = time.perf_counter()
    candidates: dict[str, np.ndarray] = {}
    if method == "pca_ward":
        candidates["pca_ward"] = ward_labels(principal_components, n_clusters, seed=seed)
    if method == "graph_leiden":
        from .n_clusters import leiden_with_n_clusters

        candidates["graph_leiden"] = leiden_with_n_clusters(adjacency, n_clusters, seed=seed)
    n_fine = min(overcluster_factor * n_clusters, latent.shape[0] // 2)
    if method in ("select", "latent_kmeans") or (method == "graph_merged" and n_fine <= n_clusters):
        candidates["latent_kmeans"] = kmeans_labels(latent, n_clusters, seed=seed, n_init=n_init,
                                                    max_cells=max_cells)
    if method in ("select", "graph_merged") and n_fine > n_clusters:
        fine = kmeans_labels(latent, n_fine, seed=seed, n_init=max(1, n_init // 5), max_cells=max_cells)
        candidates["graph_merged"] = merge_by_modularity(fine, adjacency, n_clusters)
    scores = {name: separation(principal_components, labels, seed=seed) for name, labels in candidates.items()}
    chosen = max(scores, key=scores.get) if method == "select" else next(iter(candidates))
    sizes = {name: sorted(np.bincount(labels).tolist(), reverse=True) for name, labels in candidates.items()}
    logger.info("initial partition: %s (silhouette on the principal components: %s) in %.1f s", chosen,
                ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), time.perf_counter() - start)
    return InitialPartition(candidates[chosen], chosen, scores, sizes)


def correlation_rows(expression) -> np.ndarray:
    """Rows centred and scaled to unit length, so that Euclidean neighbours are the most correlated cells.

    Parameters
    ----------
    expression
        Cells x genes, dense or scipy sparse (densified).
    """
    rows = np.asarray(expression.toarray() if sp.issparse(expression) else expression, dtype=np.float32)
    rows = rows - rows.mean(axis=1, keepdims=True)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def neighbourhood_agreement(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of (cell, neighbour) pairs whose two cells share a cluster.

    Parameters
    ----------
    neighbours
        ``(cells, k)`` indices of each cell's nearest other cells.
    labels
        Cluster of each cell.
    """
    labels = np.asarray(labels)
    return float(np.mean(labels[neighbours] == labels[:, None]))


def chance_agreement(labels: np.ndarray) -> float:
    """Agreement expected of a random partition with these cluster sizes: the sum of the squared cluster shares.

    Parameters
    ----------
    labels
        Cluster of each cell.
    """
    shares = np.unique(np.asarray(labels), return_counts=True)[1] / np.asarray(labels).size
    return float(np.sum(shares ** 2))


def chance_corrected(agreement: float, expected: float) -> float:
    """``(agreement - expected) / (1 - expected)`` (Cohen's kappa); 0 for a single cluster, which any partition matches."""
    return 0.0 if expected >= 1.0 else (agreement - expected) / (1.0 - expected)


@dataclasses.dataclass
class FinalChoice:
    """The partition a fit reports, and how it was chosen.

    Attributes
    ----------
    labels
        Cluster of each cell.
    chosen
        ``"head"`` (the trained clustering head), ``"pca_ward"`` or
        ``"pca_kmeans"`` (the reference clustering of the principal components).
    scores
        Neighbourhood agreement of each candidate (overall and per space).
    head_clusters
        How many clusters the head filled (``None`` when nothing was compared).
    """

    labels: np.ndarray
    chosen: str
    scores: dict[str, float]
    head_clusters: int | None = None

    def summary(self) -> dict:
        """Plain values for ``uns['scllm']['selection']``."""
        counts = {} if self.head_clusters is None else {"head_clusters": self.head_clusters}
        return {"chosen": self.chosen, **counts,
                **{f"neighbourhood_agreement_{k}": v for k, v in self.scores.items()}}


def reference_labels(principal_components: np.ndarray, n_clusters: int, *, reference: str, seed: int,
                     n_init: int, max_cells: int = KMEANS_MAX_CELLS) -> np.ndarray:
    """The clustering of the principal components that the head is checked against.

    ``reference="ward"``: :func:`ward_labels`; ``"kmeans"``: :func:`kmeans_labels`
    with ``n_init`` restarts (on at most ``max_cells`` cells).
    """
    if reference not in REFERENCE_CLUSTERINGS:
        raise ValueError(f"Unknown reference clustering {reference!r}; use one of {REFERENCE_CLUSTERINGS}.")
    if reference == "ward":
        return ward_labels(principal_components, n_clusters, seed=seed)
    return kmeans_labels(principal_components, n_clusters, seed=seed, n_init=n_init, max_cells=max_cells)


def assign_by_neighbours(reference: np.ndarray, reference_clusters: np.ndarray, features: np.ndarray,
                         n_clusters: int, *, n_neighbors: int, exact_max_cells: int = 50_000,
                         seed: int = 0) -> np.ndarray:
    """Clusters of new cells under a partition of the training cells, by their nearest training cells.

    Each new cell takes the most common cluster among its ``n_neighbors``
    nearest training cells on the principal components (a tie goes to the
    cluster of the nearest of them); a cell that coincides with a training
    cell takes that cell's cluster. Ward's clusters are not the Voronoi cells
    of their means, so the nearest centre would relabel some training cells;
    the vote does not.

    Parameters
    ----------
    reference, reference_clusters
        The training cells' principal components and clusters.
    features
        The new cells' principal components.
    n_clusters
        K.
    n_neighbors, exact_max_cells, seed
        As for :func:`~scllm_jax.graph.nearest_reference_cells`.
    """
    from .graph import coincides, nearest_reference_cells

    reference_clusters = np.asarray(reference_clusters, dtype=np.int64)
    k = min(n_neighbors, reference.shape[0])
    distances, indices = nearest_reference_cells(reference, features, k, exact_max_cells=exact_max_cells, seed=seed)
    votes = reference_clusters[indices]
    counts = np.zeros((votes.shape[0], n_clusters))
    np.add.at(counts, (np.repeat(np.arange(votes.shape[0]), k), votes.ravel()), 1.0)
    counts[np.arange(votes.shape[0]), votes[:, 0]] += 0.5  # a tie goes to the nearest cell's cluster
    labels = np.argmax(counts, axis=1)
    twin = coincides(distances, reference)
    labels[twin] = votes[twin, 0]
    return labels.astype(np.int64)


def final_partition(head_labels: np.ndarray, principal_components: np.ndarray, neighbours: np.ndarray,
                    embedding: np.ndarray, n_clusters: int, *, method: str, seed: int, n_init: int,
                    n_neighbors: int, reference: str = "ward", max_cells: int = KMEANS_MAX_CELLS,
                    exact_max_cells: int = 50_000, expression=None,
                    expression_max_cells: int = EXPRESSION_SELECTION_MAX_CELLS,
                    chance_corrected_agreement: bool = False,
                    consolidate_reference: bool = False) -> FinalChoice:
    """The trained head's partition, or a clustering of the principal components if it agrees better with the neighbourhoods.

    Parameters
    ----------
    head_labels
        The clustering head's hard labels.
    principal_components
        The cells' principal components.
    neighbours
        ``(cells, k)`` nearest-neighbour indices on the principal components,
        nearest first; the first ``n_neighbors`` columns are read.
    embedding
        The clustering space the head's partition lives in; its own
        ``n_neighbors`` nearest neighbours are the second half of the score.
    n_clusters
        K.
    method
        ``"neighbourhood"`` (the candidate of higher mean
        :func:`neighbourhood_agreement` over the spaces' neighbourhoods;
        a tie keeps the head; a head that left clusters empty is not
        reported, since agreement rises as clusters merge, unless the cells
        have fewer distinct profiles than ``n_clusters``) or ``"head"``
        (the head's partition, nothing compared).
    seed, n_init, max_cells
        As for :func:`reference_labels`.
    n_neighbors
        Neighbours per cell the agreement counts.
    reference
        The clustering of the principal components compared with the head:
        ``"ward"`` (:func:`ward_labels`) or ``"kmeans"``.
    exact_max_cells
        The clustering space's neighbours are exact up to this many cells
        (as :func:`~scllm_jax.graph.knn_indices`).
    expression
        Cells x genes (the log-normalised variable genes), or ``None``. When
        given, the nearest neighbours in their correlation
        (:func:`correlation_rows`) are a third space of the count: each
        partition is smooth in the space it was built in (Ward's in the
        principal components, the head's in the clustering space, where its
        agreement is near 1), and this one is home to neither.
    expression_max_cells
        Above this many cells the third space is searched on a seeded random
        subset of that many cells (neighbours among the subset).
    chance_corrected_agreement
        Score each space's agreement against chance (:func:`chance_corrected`,
        with :func:`chance_agreement` of the cells that space counts), so that
        a partition is not favoured for merging clusters.
    consolidate_reference
        Where the reference wins, also score it consolidated by Lloyd's
        iterations (:func:`consolidated_labels`) in the same spaces, and
        report the consolidated partition (``chosen`` ``"<reference>_consolidated"``)
        if it scores higher. The head is weighed against the reference as
        Ward built it either way: a consolidated partition is a Voronoi
        partition of the principal components, at home in their
        neighbourhoods, and would win that comparison for its home advantage.
    """
    if method not in FINAL_SELECTIONS:
        raise ValueError(f"Unknown final selection {method!r}; use one of {FINAL_SELECTIONS}.")
    head_labels = np.asarray(head_labels)
    if method == "head":
        return FinalChoice(head_labels, "head", {})
    from .graph import knn_indices
    from .validation import distinct_profiles

    reference_name = f"pca_{reference}"
    start = time.perf_counter()
    pca_labels = reference_labels(principal_components, n_clusters, reference=reference, seed=seed,
                                  n_init=n_init, max_cells=max_cells)
    reference_seconds, start = time.perf_counter() - start, time.perf_counter()
    # Each space: the cells counted (None: all) and their neighbours' positions among those cells.
    spaces = {"pca": (None, neighbours[:, :n_neighbors]),
              "embedding": (None, knn_indices(np.asarray(embedding, np.float32), n_neighbors,
                                              exact_max_cells=exact_max_cells, seed=seed))}
    if expression is not None:
        subset = seeded_subset(head_labels.size, expression_max_cells, seed)
        rows = correlation_rows(expression if subset is None else expression[subset])
        spaces["expression"] = (subset, knn_indices(rows, n_neighbors, seed=seed))
    logger.info("reference clustering (%s) in %.1f s, neighbours in the %s in %.1f s", reference,
                reference_seconds, " and ".join(name for name in spaces if name != "pca"), time.perf_counter() - start)
    head_clusters = int(np.unique(head_labels).size)
    scores = {}

    def score(name: str, labels: np.ndarray) -> float:
        per_space = {}
        for space, (cells, close) in spaces.items():
            counted = labels if cells is None else labels[cells]
            per_space[space] = neighbourhood_agreement(close, counted)
            if chance_corrected_agreement:
                scores[f"{name}_expected_on_{space}"] = expected = chance_agreement(counted)
                per_space[space] = chance_corrected(per_space[space], expected)
        scores.update({f"{name}_on_{space}": value for space, value in per_space.items()})
        scores[name] = float(np.mean(list(per_space.values())))
        return scores[name]

    score("head", head_labels)
    score(reference_name, pca_labels)
    logger.info("final partition: neighbourhood agreement head %.4f (%d of %d clusters filled), %s on the "
                "principal components %.4f", scores["head"], head_clusters, n_clusters, reference,
                scores[reference_name])
    # Agreement rises as clusters merge (one cluster scores 1), so it cannot weigh a head that left
    # clusters empty against a full partition: such a head is not reported, unless the cells have
    # fewer distinct profiles than K and any K clusters would split identical cells.
    eligible = head_clusters == n_clusters or distinct_profiles(principal_components) < n_clusters
    if eligible and scores["head"] >= scores[reference_name]:
        return FinalChoice(head_labels, "head", scores, head_clusters)
    if consolidate_reference:
        consolidated = consolidated_labels(principal_components, pca_labels, n_clusters, max_cells=max_cells,
                                           seed=seed)
        if score(f"{reference_name}_consolidated", consolidated) > scores[reference_name]:
            return FinalChoice(consolidated, f"{reference_name}_consolidated", scores, head_clusters)
    return FinalChoice(pca_labels, reference_name, scores, head_clusters)
