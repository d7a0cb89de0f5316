"""Clustering metrics against known labels: ACC, NMI, ARI and macro-F1."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score


def _encode(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    true = pd.Series(np.asarray(labels_true, dtype=object))
    pred = pd.Series(np.asarray(labels_pred, dtype=object))
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true labels but {len(pred)} predicted labels; pass one of each per cell.")
    if len(true) == 0:
        raise ValueError("No labels given; nothing to score.")
    missing = true.isna() | pred.isna()
    if missing.all():
        raise ValueError(f"Every one of the {len(true)} cells has a missing true or predicted label "
                         "(NaN / None); nothing to score.")
    return (pd.factorize(true[~missing].astype(str))[0], pd.factorize(pred[~missing].astype(str))[0])


def best_mapping(labels_true, labels_pred) -> np.ndarray:
    """Each cell's predicted cluster mapped to a true class by the Hungarian algorithm.

    Returns the mapped predictions as true-class codes (``-1`` for clusters
    left without a class when there are more clusters than classes).
    """
    true, pred = _encode(labels_true, labels_pred)
    table = np.zeros((pred.max() + 1, true.max() + 1), dtype=np.int64)
    np.add.at(table, (pred, true), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.full(table.shape[0], -1)
    mapping[rows] = cols
    return mapping[pred]


def clustering_accuracy(labels_true, labels_pred) -> float:
    """ACC: fraction of cells correct under the best one-to-one cluster-to-class map."""
    true, _ = _encode(labels_true, labels_pred)
    return float(np.mean(best_mapping(labels_true, labels_pred) == true))


def cluster_metrics(labels_true, labels_pred) -> dict[str, float]:
    """ACC, NMI (arithmetic), ARI and macro-F1 after mapping.

    Cells whose true or predicted label is missing (NaN / None) are left out.

    Returns
    -------
    dict
        Keys ``ARI``, ``NMI``, ``ACC``, ``F1``.
    """
    true, pred = _encode(labels_true, labels_pred)
    mapped = best_mapping(labels_true, labels_pred)
    return {
        "ARI": float(adjusted_rand_score(true, pred)),
        "NMI": float(normalized_mutual_info_score(true, pred, average_method="arithmetic")),
        "ACC": float(np.mean(mapped == true)),
        "F1": float(f1_score(true, mapped, average="macro", labels=np.unique(true), zero_division=0)),
    }
