"""Initial partitions of the head: graph merging, Leiden bisection, the label-free arbiter."""

import numpy as np
import pytest
import scipy.sparse as sp

from scllm_jax.graph import knn_adjacency, knn_indices
from scllm_jax.n_clusters import leiden_with_n_clusters
from sklearn.metrics import adjusted_rand_score

from scllm_jax.partition import (assign_by_neighbours, chance_agreement, chance_corrected, correlation_rows,
                                 final_partition, initial_partition, merge_by_modularity, modularity,
                                 neighbourhood_agreement, separation, ward_labels, weighted_ward)


def planted_graph(sizes, p_in=0.5, p_out=0.01, seed=0):
    """Stochastic block model: dense blocks of the given sizes, sparse between them."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    same = labels[:, None] == labels[None, :]
    upper = np.triu(rng.random((labels.size, labels.size)) < np.where(same, p_in, p_out), k=1)
    return sp.csr_matrix((upper | upper.T).astype(np.float64)), labels


def test_modularity_hand_case():
    # Two triangles joined by one edge: W = 14 (both ways), inside 12, each side's volume 7.
    edges = [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (2, 3)]
    rows, cols = zip(*edges)
    adjacency = sp.coo_matrix((np.ones(7), (rows, cols)), shape=(6, 6))
    adjacency = (adjacency + adjacency.T).tocsr()
    expected = 12 / 14 - 2 * (7 / 14) ** 2
    assert modularity(adjacency, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(expected)
    assert modularity(adjacency, np.zeros(6, dtype=int)) == pytest.approx(0.0)


def test_merge_by_modularity_rebuilds_planted_blocks_from_fragments():
    adjacency, truth = planted_graph([60, 40, 20])
    # Each block cut into pieces, as k-means in a spread-out latent would cut it.
    fragments = truth * 10 + np.arange(truth.size) % np.array([4, 3, 2])[truth]
    assert np.unique(fragments).size == 9
    merged = merge_by_modularity(fragments, adjacency, 3)
    assert np.unique(merged).size == 3
    # Same partition as the planted one, up to the names of the clusters.
    assert np.all([np.unique(merged[truth == block]).size == 1 for block in range(3)])
    assert np.unique(merged).size == np.unique(truth).size


def test_leiden_bisection_returns_exactly_k_planted_communities():
    adjacency, truth = planted_graph([50, 50, 30, 30, 20], p_in=0.4, p_out=0.02, seed=1)
    labels = leiden_with_n_clusters(adjacency, 5, seed=0)
    assert np.unique(labels).size == 5
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, labels) > 0.95


def blobs(sizes, seed=0, dim=10, spread=6.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(len(sizes), dim))
    points = np.concatenate([rng.normal(size=(n, dim)) + c for n, c in zip(sizes, centres)])
    return points.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def test_separation_prefers_the_planted_partition_over_a_split_of_its_largest_block():
    points, truth = blobs([300, 40, 30, 20])
    # Split the dominant block in two along its first coordinate and pool the two smallest blocks:
    # what a size-balancing method does with K fixed.
    split = truth.copy()
    big = np.flatnonzero(truth == 0)
    split[big[points[big, 0] > np.median(points[big, 0])]] = 4
    split[split == 3] = 2
    assert np.unique(split).size == 4
    assert separation(points, truth, seed=0) > separation(points, split, seed=0) + 0.1


def test_select_takes_the_graph_merged_start_when_the_latent_cuts_a_dominant_type():
    # Expression space: one dominant type and three small ones, well separated.
    pca, truth = blobs([240, 40, 30, 30], seed=3)
    adjacency = knn_adjacency(knn_indices(pca, 10))
    # A "latent" that spreads the dominant type into four far-apart lobes (as the cut does).
    latent = pca.copy()
    big = np.flatnonzero(truth == 0)
    latent[big, :2] += 25.0 * np.stack([np.cos(big % 4 * np.pi / 2), np.sin(big % 4 * np.pi / 2)], axis=1)
    start = initial_partition(latent, pca, adjacency, 4, method="select", seed=0, n_init=10, overcluster_factor=3)
    assert set(start.scores) == {"latent_kmeans", "graph_merged"}
    assert start.chosen == "graph_merged"
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, start.labels) > 0.9
    latent_only = initial_partition(latent, pca, adjacency, 4, method="latent_kmeans", seed=0, n_init=10,
                                    overcluster_factor=3)
    assert adjusted_rand_score(truth, latent_only.labels) < 0.6


def test_initial_partition_refuses_an_unknown_method():
    pca, _ = blobs([20, 20])
    with pytest.raises(ValueError, match="Unknown initialisation"):
        initial_partition(pca, pca, knn_adjacency(knn_indices(pca, 5)), 2, method="spectral", seed=0, n_init=1,
                          overcluster_factor=3)


def test_neighbourhood_agreement_hand_case():
    neighbours = np.array([[1, 2], [0, 2], [0, 3], [2, 1]])
    labels = np.array([0, 0, 1, 1])
    # Pairs in the same cluster: (0,1), (1,0), (2,3), (3,2) of 8.
    assert neighbourhood_agreement(neighbours, labels) == pytest.approx(4 / 8)


def dominant_type_cells(seed=0):
    """A wide type of 300 cells and four compact ones of 25, 20, 10 and 8 (60% in one type)."""
    rng = np.random.default_rng(seed)
    sizes, spreads = [300, 25, 20, 10, 8], [1.5, 0.4, 0.4, 0.4, 0.4]
    centres = np.array([[0, 0], [14, 0], [0, 14], [14, 14], [-14, 14]], dtype=float)
    cells = np.vstack([rng.normal(c, s, (n, 2)) for c, n, s in zip(centres, sizes, spreads)])
    truth = np.repeat(np.arange(5), sizes)
    return np.hstack([cells, rng.normal(0, 0.05, (cells.shape[0], 3))]), truth


@pytest.mark.parametrize("reference", ["ward", "kmeans"])
def test_final_partition_replaces_a_head_that_halves_the_dominant_type(reference):
    cells, truth = dominant_type_cells()
    neighbours = knn_indices(cells, 15)
    # The head's failure: the large type cut in two, two small types merged to keep K.
    head = truth.copy()
    head[(truth == 0) & (cells[:, 0] > 0)] = 4
    head[truth == 4] = 3
    choice = final_partition(head, cells, neighbours, cells, 5, method="neighbourhood", seed=0, n_init=10,
                             n_neighbors=10, reference=reference)
    assert choice.chosen == f"pca_{reference}"
    assert choice.scores[f"pca_{reference}"] > choice.scores["head"]
    # The reference partition keeps the large type whole.
    assert np.unique(choice.labels[truth == 0]).size == 1


def test_final_partition_keeps_a_head_that_follows_the_density():
    # Two long parallel stripes: k-means with K = 2 cuts across them, the head follows them.
    rng = np.random.default_rng(1)
    stripes = np.vstack([np.column_stack([rng.uniform(0, 40, 200), rng.normal(y, 0.3, 200)]) for y in (0, 4)])
    head = np.repeat([0, 1], 200)
    choice = final_partition(head, stripes, knn_indices(stripes, 15), stripes, 2, method="neighbourhood", seed=0,
                             n_init=10, n_neighbors=10)
    assert choice.chosen == "head"
    np.testing.assert_array_equal(choice.labels, head)
    assert final_partition(head, stripes, knn_indices(stripes, 15), stripes, 2, method="head", seed=0, n_init=1,
                           n_neighbors=10).chosen == "head"
    with pytest.raises(ValueError, match="final selection"):
        final_partition(head, stripes, knn_indices(stripes, 15), stripes, 2, method="best", seed=0, n_init=1,
                        n_neighbors=10)


def test_final_partition_never_reports_a_head_that_left_clusters_empty():
    cells, truth = dominant_type_cells()
    neighbours = knn_indices(cells, 15)
    # A collapsed head (every cell in one cluster) agrees with every neighbourhood; it must not win.
    collapsed = final_partition(np.zeros(truth.size, np.int64), cells, neighbours, cells, 5,
                                method="neighbourhood", seed=0, n_init=10, n_neighbors=10)
    assert collapsed.chosen == "pca_ward" and collapsed.head_clusters == 1
    assert collapsed.summary()["head_clusters"] == 1 and "neighbourhood_agreement_head" in collapsed.summary()
    assert collapsed.scores["head"] == 1.0 > collapsed.scores["pca_ward"]
    assert np.unique(collapsed.labels).size == 5
    # The true types with the smallest merged into the next: one cluster short, and the same agreement
    # as Ward's full partition (a tie would keep a head that filled every cluster).
    merged = truth.copy()
    merged[truth == 4] = 3
    choice = final_partition(merged, cells, neighbours, cells, 5, method="neighbourhood", seed=0, n_init=10,
                             n_neighbors=10)
    assert choice.scores["head"] >= choice.scores["pca_ward"]
    assert choice.chosen == "pca_ward" and choice.head_clusters == 4


def test_correlation_rows_rank_neighbours_by_correlation():
    """Euclidean distance between the centred unit rows orders cells as their correlation does."""
    rng = np.random.default_rng(0)
    cells = rng.gamma(1.0, size=(6, 40)).astype(np.float32)
    cells[1] = 3.0 * cells[0] + 2.0  # perfectly correlated with cell 0, far from it in plain distance
    rows = correlation_rows(sp.csr_matrix(cells))
    distances = np.linalg.norm(rows[0] - rows, axis=1)
    assert np.argsort(distances)[1] == 1 and distances[1] == pytest.approx(0.0, abs=1e-5)
    assert np.array_equal(np.argsort(distances), np.argsort(-np.corrcoef(cells)[0]))


@pytest.mark.parametrize("max_cells", [10_000, 200])
def test_the_expression_space_outvotes_the_heads_home_advantage(monkeypatch, max_cells):
    """A type that is two lumps in the principal components but one profile in the expression: the head halves it
    (and joins two small types to keep K), and its own clustering space fits it perfectly. Counted over two spaces
    the head wins; the expression's correlation, home to neither partition, sides with the reference."""
    import scllm_jax.partition as partition

    rng = np.random.default_rng(5)
    centres = np.array([[-3.0, 0.0], [3.0, 0.0], [14.0, 0.0], [0.0, 14.0], [14.0, 14.0], [-14.0, 14.0]])
    sizes = [150, 150, 25, 20, 10, 8]
    cells = np.vstack([rng.normal(c, 1.0, (n, 2)) for c, n in zip(centres, sizes)])
    truth = np.repeat([0, 0, 1, 2, 3, 4], sizes)
    monkeypatch.setattr(partition, "reference_labels", lambda *args, **kwargs: truth)
    head = truth.copy()
    head[(truth == 0) & (cells[:, 0] > 0)] = 4
    head[truth == 4] = 3
    # The head's home: its own clusters as far-apart points, so every neighbourhood there agrees with it.
    embedding = 10.0 * np.eye(5)[head] + rng.normal(0, 0.1, (truth.size, 5))
    # Expression: each type's own profile over 60 genes, counts-like noise on top.
    profiles = rng.gamma(2.0, 1.0, (5, 60))
    expression = sp.csr_matrix(rng.poisson(3.0 * profiles[truth]).astype(np.float32))
    neighbours = knn_indices(cells, 15)
    two = final_partition(head, cells, neighbours, embedding, 5, method="neighbourhood", seed=0, n_init=1,
                          n_neighbors=10)
    assert two.chosen == "head" and "head_on_expression" not in two.scores
    three = final_partition(head, cells, neighbours, embedding, 5, method="neighbourhood", seed=0, n_init=1,
                            n_neighbors=10, expression=expression, expression_max_cells=max_cells)
    assert three.chosen == "pca_ward"
    np.testing.assert_array_equal(three.labels, truth)
    assert three.scores["pca_ward_on_expression"] > three.scores["head_on_expression"]
    expected = np.mean([three.scores[f"head_on_{space}"] for space in ("pca", "embedding", "expression")])
    assert three.scores["head"] == pytest.approx(expected)


def test_chance_agreement_and_its_correction_hand_case():
    labels = np.array([0, 0, 0, 1])
    assert chance_agreement(labels) == pytest.approx((3 / 4) ** 2 + (1 / 4) ** 2)
    assert chance_corrected(0.9, 0.625) == pytest.approx((0.9 - 0.625) / 0.375)
    assert chance_corrected(1.0, chance_agreement(np.zeros(5, np.int64))) == 0.0  # one cluster: no better than chance


def test_chance_corrected_check_does_not_reward_merging_types():
    """Four types in a touching chain and one apart. The reference merges the chain and spends the three freed
    clusters on single stray cells of the separate type: it has no boundary inside the chain, so its raw agreement is
    the higher and the raw check reports it; corrected for chance (its big cluster holds 80% of the cells, so random
    labels of those sizes would agree 64% of the time), the check keeps the true types."""
    import scllm_jax.partition as partition

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0], [15.0, 0.0], [0.0, 30.0]])
    cells = np.vstack([rng.normal(c, 1.0, (60, 2)) for c in centres])
    truth = np.repeat(np.arange(5), 60)
    merged = np.where(truth < 4, 0, truth)
    strays = np.argsort(-np.linalg.norm(cells - centres[4], axis=1) * (truth == 4))[:3]
    merged[strays] = [1, 2, 3]
    neighbours = knn_indices(cells, 10)
    raw_scores = [neighbourhood_agreement(neighbours, labels) for labels in (truth, merged)]
    assert raw_scores[1] > raw_scores[0] + 0.01
    for chance, expected in ((False, "pca_ward"), (True, "head")):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(partition, "reference_labels", lambda *args, **kwargs: merged)
            choice = final_partition(truth, cells, neighbours, cells, 5, method="neighbourhood", seed=0, n_init=1,
                                     n_neighbors=10, chance_corrected_agreement=chance)
        assert choice.chosen == expected
    assert choice.scores["pca_ward_expected_on_pca"] == pytest.approx(chance_agreement(merged))
    assert choice.scores["head_on_pca"] == pytest.approx(chance_corrected(raw_scores[0], 0.2))


def test_consolidated_labels_move_cells_to_the_nearest_centre():
    from scllm_jax.partition import consolidated_labels

    # Centres of [0 0 1 1 1 1] are 0.5 and 8.75; the cell at 2 lies nearer the first, and then the centres are 1 and 11.
    line = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    assert list(consolidated_labels(line, np.array([0, 0, 1, 1, 1, 1]), 2)) == [0, 0, 0, 1, 1, 1]
    # Above max_cells the iterations run on a subset, and every cell is assigned to its nearest centre.
    rng = np.random.default_rng(0)
    blobs = np.vstack([rng.normal(0.0, 1.0, (100, 3)), rng.normal(8.0, 1.0, (100, 3))])
    truth = np.repeat([0, 1], 100)
    start = truth.copy()
    start[:10] = 1
    labels = consolidated_labels(blobs, start, 2, max_cells=50, seed=1)
    assert labels.shape == (200,) and adjusted_rand_score(truth, labels) == pytest.approx(1.0)


def test_final_partition_reports_the_consolidated_reference_only_where_it_scores_higher():
    """Two touching blobs. A head that cuts across both loses to the reference; the reference has ten cells on the
    wrong side of its cut, which Lloyd's iterations move back, and the consolidated partition agrees better with the
    neighbourhoods, so it is reported. A head that follows the valley wins and nothing is consolidated."""
    import scllm_jax.partition as partition

    rng = np.random.default_rng(0)
    cells = np.vstack([rng.normal([0.0, 0.0], 1.0, (100, 2)), rng.normal([3.0, 0.0], 1.0, (100, 2))])
    valley_cut = (cells[:, 0] > 1.5).astype(np.int64)
    reference = valley_cut.copy()
    reference[np.argsort(np.abs(cells[:, 0] - 1.5))[:10]] ^= 1
    across = (cells[:, 1] > 0).astype(np.int64)
    neighbours = knn_indices(cells, 10)
    for head, expected in ((across, "pca_ward_consolidated"), (valley_cut, "head")):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(partition, "reference_labels", lambda *args, **kwargs: reference)
            choice = final_partition(head, cells, neighbours, cells, 2, method="neighbourhood", seed=0, n_init=1,
                                     n_neighbors=10, chance_corrected_agreement=True, consolidate_reference=True)
        assert choice.chosen == expected
        assert ("pca_ward_consolidated" in choice.scores) == (expected != "head")
    assert choice.scores["head"] >= choice.scores["pca_ward"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(partition, "reference_labels", lambda *args, **kwargs: reference)
        choice = final_partition(across, cells, neighbours, cells, 2, method="neighbourhood", seed=0, n_init=1,
                                 n_neighbors=10, chance_corrected_agreement=True, consolidate_reference=True)
    assert choice.scores["pca_ward_consolidated"] > choice.scores["pca_ward"] > choice.scores["head"]
    centres = np.stack([cells[choice.labels == c].mean(0) for c in (0, 1)])
    nearest = np.argmin(((cells[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(choice.labels, nearest)  # a fixed point of Lloyd's iterations


def test_weighted_ward_with_unit_weights_is_wards_linkage():
    from scipy.cluster.hierarchy import cut_tree, linkage

    points = np.random.default_rng(3).normal(size=(60, 4))
    for k in (2, 5, 9):
        ours = weighted_ward(points, np.ones(60), k)
        theirs = cut_tree(linkage(points, method="ward"), n_clusters=k).ravel()
        assert adjusted_rand_score(theirs, ours) == pytest.approx(1.0)


def test_weighted_ward_merges_by_the_size_weighted_cost():
    # Points at 0, 1 and 3 on a line. Unit weights: cost(0,1) = 1/2 * 1 < cost(1,3) = 1/2 * 4, so 0 and 1 merge.
    line = np.array([[0.0], [1.0], [3.0]])
    assert list(weighted_ward(line, np.ones(3), 2)) == [0, 0, 1]
    # Weights 100, 10, 1: cost(0,1) = 1000/110 = 9.09, cost(1,3) = 10/11 * 4 = 3.64,
    # cost(0,3) = 100/101 * 9 = 8.91: now 1 and 3 merge, though they lie farther apart.
    assert list(weighted_ward(line, np.array([100.0, 10.0, 1.0]), 2)) == [0, 1, 1]
    with pytest.raises(ValueError, match="n_clusters"):
        weighted_ward(line, np.ones(3), 4)


def test_ward_keeps_the_dominant_type_whole_where_kmeans_cuts_it():
    cells, truth = dominant_type_cells()
    ward = ward_labels(cells, 5, seed=0)
    assert adjusted_rand_score(truth, ward) == pytest.approx(1.0)
    assert ward.dtype == np.int64 and set(ward) == set(range(5))


def test_ward_on_micro_clusters_above_the_exact_limit():
    cells, truth = dominant_type_cells()
    exact = ward_labels(cells, 5, seed=0)
    micro = ward_labels(cells, 5, seed=0, max_cells=100, micro_clusters=60)
    assert adjusted_rand_score(exact, micro) > 0.95
    assert adjusted_rand_score(truth, micro) > 0.95


def test_assign_by_neighbours_votes_and_keeps_training_cells():
    # Training cells on a line: cluster 0 at 0, 1, 2 and cluster 1 at 10, 11, 12, except the cell at 2 is in 1
    # (Ward's clusters need not be the Voronoi cells of their means).
    reference = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    labels = np.array([0, 0, 1, 1, 1, 1])
    new = np.array([[2.0], [0.4], [10.6], [1.6]])
    got = assign_by_neighbours(reference, labels, new, 2, n_neighbors=3)
    # 2.0 is a training cell: its own cluster, though its neighbours vote 0. 0.4: neighbours 0, 1, 2 vote 0, 0, 1.
    # 10.6: all 1. 1.6: neighbours 2, 1, 0 vote 1, 0, 0: the majority, not the nearest cell.
    assert list(got) == [1, 0, 1, 0]
    # Two neighbours voting 0 and 1: the nearest cell's cluster.
    assert list(assign_by_neighbours(reference, labels, np.array([[1.8]]), 2, n_neighbors=2)) == [1]
