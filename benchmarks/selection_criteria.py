#!/usr/bin/env python
"""Label-free criteria for the final check (head or Ward), scored on what they would report.

For each labelled ``.h5ad``: one default fit (``--seed``), then the trained head's
partition and Ward's clustering of the principal components, each with

- its ARI against the labels (labels only score);
- its neighbourhood agreement (:func:`scllm_jax.partition.neighbourhood_agreement`) on
  the principal components' and on the clustering space's ``min(10, graph)`` nearest
  neighbours, and on those of a third space that is neither partition's home: the
  correlation of the cells' log-normalised variable genes (``agreement_expression``);
  the expected agreement of a random partition of the same cluster sizes
  (``sum p_c^2``), modularity on the cell graph, the clusters filled and the largest
  cluster's share.

``--summary`` then says which partition each criterion picks on every set and the mean
ARI of what it would report: ``raw`` (mean agreement over the two spaces, the default until session 25),
``kappa`` (each agreement chance-corrected, ``(a - e) / (1 - e)``), ``diff`` (``a - e``),
``pca_only``, ``kappa_pca``, ``diff_pca``, ``modularity``, and ``three_spaces`` (the mean
agreement over the principal components, the clustering space and the expression's
correlation; the default of session 25) and ``kappa_three_spaces`` (the same three, each
chance-corrected: the default since session 26; rows
written before the expression's column existed leave both out); a head that left clusters
empty is never picked, as in the default. ``oracle`` is the better of the two per set.

Rows are appended to ``benchmarks/results/selection_criteria.tsv``; a rerun skips the
(dataset, seed) rows already there.

Examples
--------
    python benchmarks/selection_criteria.py ../shared/data/*.h5ad benchmarks/stress_data/*.h5ad \\
        benchmarks/small_data/*.h5ad benchmarks/tiny_data/*.h5ad benchmarks/data/pbmc68k_reduced.h5ad
    python benchmarks/selection_criteria.py --summary
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
PARTITIONS = ("head", "ward")
MEASURES = ("ari", "agreement_pca", "agreement_space", "agreement_expression", "expected_agreement", "modularity",
            "filled", "largest_share")
COLUMNS = ["dataset", "seed", "n_cells", "K", "chosen"] + [f"{p}_{m}" for p in PARTITIONS for m in MEASURES]
CRITERIA = ("raw", "kappa", "diff", "pca_only", "kappa_pca", "diff_pca", "modularity", "three_spaces",
            "kappa_three_spaces")
#: The criteria that need the third space's agreement (older rows lack it).
THREE_SPACE_CRITERIA = ("three_spaces", "kappa_three_spaces")


def measure(path: Path, seed: int) -> dict:
    """One default fit of ``path`` and the measures of its head's and Ward's partitions."""
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    from scllm_jax import ScllmModel
    from scllm_jax.config import ScllmConfig
    from scllm_jax.graph import knn_adjacency, knn_indices
    from scllm_jax.partition import correlation_rows, modularity, neighbourhood_agreement, reference_labels

    adata = ad.read_h5ad(path)
    truth = adata.obs.pop("cell_type").astype(str).to_numpy()  # labels leave the data: used only to score
    n_clusters = len(set(truth))
    model = ScllmModel(ScllmConfig(seed=seed)).fit(adata, n_clusters, progress=False)
    pca, space = model.prepared_.pca, np.asarray(model.result.embedding, np.float32)
    k = min(model.config.clustering.selection_neighbors, model.graph_neighbors_)
    near_pca, near_space = knn_indices(pca, k, seed=seed), knn_indices(space, k, seed=seed)
    near_expression = knn_indices(correlation_rows(model.prepared_.log_expression), k, seed=seed)
    graph = knn_adjacency(knn_indices(pca, model.graph_neighbors_, seed=seed))
    partitions = {"head": model.result.assignment.argmax(axis=1),
                  "ward": reference_labels(pca, n_clusters, reference="ward", seed=seed, n_init=10)}
    row = {"dataset": path.stem, "seed": seed, "n_cells": adata.n_obs, "K": n_clusters,
           "chosen": model.selection_["chosen"]}
    for name, labels in partitions.items():
        shares = np.bincount(labels, minlength=n_clusters) / labels.size
        values = {"ari": adjusted_rand_score(truth, labels),
                  "agreement_pca": neighbourhood_agreement(near_pca, labels),
                  "agreement_space": neighbourhood_agreement(near_space, labels),
                  "agreement_expression": neighbourhood_agreement(near_expression, labels),
                  "expected_agreement": float(np.sum(shares ** 2)), "modularity": modularity(graph, labels),
                  "filled": int(np.sum(shares > 0)), "largest_share": float(shares.max())}
        row.update({f"{name}_{m}": round(v, 4) if isinstance(v, float) else v for m, v in values.items()})
    return row


def criteria_of(row: dict) -> tuple[str, ...]:
    """The criteria a row can be judged by (rows from before ``agreement_expression`` lack the three-space ones)."""
    if row.get("head_agreement_expression"):
        return CRITERIA
    return tuple(c for c in CRITERIA if c not in THREE_SPACE_CRITERIA)


def scores(row: dict, name: str) -> dict[str, float]:
    """Each criterion's value for one partition of a row (higher is better)."""
    pca, space = float(row[f"{name}_agreement_pca"]), float(row[f"{name}_agreement_space"])
    expected = float(row[f"{name}_expected_agreement"])
    expression = row.get(f"{name}_agreement_expression")

    from scllm_jax.partition import chance_corrected

    def kappa(value: float) -> float:
        # The model's own correction, so that ``kappa_three_spaces`` is the default's rule exactly.
        return chance_corrected(value, expected)

    three = {}
    if expression:
        three = {"three_spaces": (pca + space + float(expression)) / 3,
                 "kappa_three_spaces": (kappa(pca) + kappa(space) + kappa(float(expression))) / 3}

    return {"raw": (pca + space) / 2, "kappa": (kappa(pca) + kappa(space)) / 2, "diff": (pca + space) / 2 - expected,
            "pca_only": pca, "kappa_pca": kappa(pca), "diff_pca": pca - expected,
            "modularity": float(row[f"{name}_modularity"]), **three}


def summary(path: Path) -> None:
    """Print which partition each criterion picks per set, and the mean ARI it would report."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    criteria = min((criteria_of(row) for row in rows), key=len, default=CRITERIA)
    totals = dict.fromkeys(criteria, 0.0)
    oracle = 0.0
    print(f"{'dataset':28s} {'seed':>4s} {'head':>6s} {'ward':>6s} " + " ".join(f"{c:>12s}" for c in criteria))
    for row in rows:
        head, ward = scores(row, "head"), scores(row, "ward")
        full = int(row["head_filled"]) == int(row["K"])
        picks = {c: "head" if full and head[c] >= ward[c] else "ward" for c in criteria}
        for c in criteria:
            totals[c] += float(row[f"{picks[c]}_ari"])
        oracle += max(float(row["head_ari"]), float(row["ward_ari"]))
        print(f"{row['dataset']:28s} {row['seed']:>4s} {float(row['head_ari']):6.3f} {float(row['ward_ari']):6.3f} "
              + " ".join(f"{picks[c]:>12s}" for c in criteria))
    print("mean ARI of what each criterion reports over", len(rows), "(data set, seed) rows:",
          ", ".join(f"{c} {v / len(rows):.4f}" for c, v in totals.items()), f"| oracle {oracle / len(rows):.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", type=Path, nargs="*")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "selection_criteria.tsv")
    parser.add_argument("--summary", action="store_true", help="only print the summary of --out")
    args = parser.parse_args(argv)
    if not args.summary:
        from tsv_rows import append_row

        warnings.simplefilter("ignore")
        done = set()
        if args.out.exists():
            with args.out.open() as handle:
                done = {(r["dataset"], int(r["seed"])) for r in csv.DictReader(handle, delimiter="\t")}
        for path in args.paths:
            if (path.stem, args.seed) not in done:
                append_row(args.out, COLUMNS, measure(path, args.seed))
    summary(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
