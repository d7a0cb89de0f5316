import numpy as np
import pytest

from scllm_jax.metrics import best_mapping, cluster_metrics, clustering_accuracy


def test_perfect_clustering_with_renamed_labels():
    true = ["a", "a", "b", "b", "c"]
    pred = [2, 2, 0, 0, 1]
    scores = cluster_metrics(true, pred)
    for name in ("ARI", "NMI", "ACC", "F1"):
        assert scores[name] == pytest.approx(1.0)


def test_accuracy_uses_one_to_one_mapping():
    true = [0, 0, 0, 1, 1, 1]
    pred = [0, 0, 0, 0, 0, 1]
    assert clustering_accuracy(true, pred) == pytest.approx(4 / 6)
    np.testing.assert_array_equal(best_mapping(true, pred), [0, 0, 0, 0, 0, 1])


def test_ari_against_hand_value():
    # Classic example: ARI of [0,0,1,1] vs [0,0,1,2] is 4/7.
    assert cluster_metrics([0, 0, 1, 1], [0, 0, 1, 2])["ARI"] == pytest.approx(4 / 7)


def test_missing_labels_are_left_out():
    true = ["a", "a", None, "b"]
    pred = [0, 0, 1, 1]
    assert cluster_metrics(true, pred) == cluster_metrics(["a", "a", "b"], [0, 0, 1])
