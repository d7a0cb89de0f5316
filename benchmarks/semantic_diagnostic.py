"""How much cell-type information the semantic view holds on its own, per path-1 variant.

For each dataset with gene symbols: k-means with the true K (labels only score,
``n_init=10``) on the expression PCA and on the cell text embedding ``Z_text``
of every path-1 variant (gene-embedding post-processing x gene weighting), of
path 2 and of the default fusion, mean ARI over k-means seeds 0, 1, 2; the same
on the data with its gene symbols permuted among genes (the negative control,
:func:`scllm_jax.controls.permute_gene_symbols`, seed 0: same expression, wrong
knowledge; where it scores as well, the score does not come from knowledge);
the same with random gene vectors (Gaussian, seed 0, for the same embedded
genes: no knowledge at all, so what remains is the pooling's projection of
the expression); and, label-free, the fraction of each cell's 15 nearest neighbours in
``Z_text`` that are also its neighbours in the PCA space (chance: 15 / N).
``tfidf`` rows weigh
the top genes by log expression x log(N / cells expressing the gene); they are
a diagnostic only (no config setting), since the document frequencies of the
training cells would have to be kept for new cells.

The same path-1 rows are computed on the positive control, GO-programme
atlases (:func:`scllm_jax.synthetic.synthetic_atlas` with ``programmes="go"``,
2,000 cells x 2,000 genes, 8 types of 30 genes each, one per ``--control-seeds``
seed; dataset ``go_control_seed<s>``), where knowledge agrees with the
expression structure by construction: the gap between the real and the
permuted-symbol score is how much a variant reads from the knowledge. The
default variant is, among those with a positive gap on every control seed, the
one whose neighbourhoods agree best with the PCA's on the real data sets
(label-free; ``docs/METHOD_NOTES.md``); their k-means scores only report.

Rows go to stdout and, with ``--out``, to a TSV (rewritten).

Example
-------
::

    python benchmarks/semantic_diagnostic.py --out benchmarks/results/semantic_diagnostic.tsv
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
COLUMNS = ["dataset", "view", "path1_weights", "gene_postprocess", "kmeans_ARI", "pca_kmeans_ARI",
           "gap_to_pca", "kmeans_ARI_permuted_symbols", "kmeans_ARI_random_genes", "knn_overlap_with_pca"]
SEEDS = (0, 1, 2)


def variants():
    """(view, path1_weights, gene_postprocess) of every path-1 variant, the paper's first."""
    from scllm_jax.config import GENE_POSTPROCESSING, PATH1_WEIGHTS

    for weights in ("log", *[w for w in PATH1_WEIGHTS if w != "log"], "tfidf"):
        for post in GENE_POSTPROCESSING:
            yield "path1", weights, post


def diagnose(adata, name: str, neighbours: int = 15, with_path2: bool = True) -> list[dict]:
    """Rows for one dataset: PCA, each path-1 variant, and (``with_path2``) path 2 and the default fusion."""
    import numpy as np
    import scipy.sparse as sp
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.neighbors import NearestNeighbors

    from scllm_jax.config import ScllmConfig
    from scllm_jax.controls import permute_gene_symbols
    from scllm_jax.knowledge.cell_text import (abundance_weighted_embedding, fuse_views,
                                               postprocess_gene_embeddings)
    from scllm_jax.preprocess import Preprocessor
    from scllm_jax.semantic import build_semantic_view, gene_embedding_table, path1_embedding

    labels = adata.obs.pop("cell_type").astype(str).to_numpy()
    n_types = len(set(labels))
    config = ScllmConfig()
    _, prepared = Preprocessor.fit(adata, config)

    def kmeans_ari(x) -> float:
        x = np.asarray(x, np.float64)
        return float(np.mean([adjusted_rand_score(labels, KMeans(n_types, n_init=10, random_state=s).fit_predict(x))
                              for s in SEEDS]))

    def neighbour_sets(x) -> np.ndarray:
        return NearestNeighbors(n_neighbors=neighbours + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]

    reference = neighbour_sets(prepared.pca)

    def overlap(x) -> float:
        return float(np.mean([len(set(a) & set(b)) / neighbours for a, b in zip(neighbour_sets(x), reference)]))

    pca_ari = kmeans_ari(prepared.pca)
    rows = [{"dataset": name, "view": "pca", "path1_weights": "", "gene_postprocess": "", "kmeans_ARI": pca_ari,
             "knn_overlap_with_pca": 1.0}]
    permuted = permute_gene_symbols(adata, seed=0)
    _, prepared_permuted = Preprocessor.fit(permuted, config)  # same arrays, other names
    tables = [gene_embedding_table(data.gene_names, config, species=adata.uns.get("species"), progress=False)[0]
              for data in (prepared, prepared_permuted)]
    noise = np.random.default_rng(0).standard_normal(tables[0]["embeddings"].shape).astype(np.float32)
    random_table = dict(tables[0], embeddings=np.where(tables[0]["mask"][:, None], noise, 0.0))
    matrix = sp.csr_matrix(prepared.log_expression)
    idf = np.log(matrix.shape[0] / np.maximum(np.bincount(matrix.indices, minlength=matrix.shape[1]), 1))

    def pooled(table, weights: str, post: str):
        if weights == "tfidf":
            genes = postprocess_gene_embeddings(table["embeddings"], table["mask"], post)
            return abundance_weighted_embedding(matrix @ sp.diags(idf.astype(np.float32)), genes,
                                                config.semantic.top_k_genes, gene_mask=table["mask"])
        return path1_embedding(prepared, table, config.replace(path1_weights=weights, gene_postprocess=post))

    for view, weights, post in variants():
        text = pooled(tables[0], weights, post)
        rows.append({"dataset": name, "view": view, "path1_weights": weights, "gene_postprocess": post,
                     "kmeans_ARI": kmeans_ari(text), "knn_overlap_with_pca": overlap(text),
                     "kmeans_ARI_permuted_symbols": kmeans_ari(pooled(tables[1], weights, post)),
                     "kmeans_ARI_random_genes": kmeans_ari(pooled(random_table, weights, post))})
        print(_line(rows[-1]), flush=True)
    if with_path2:
        only_path2 = config.replace(use_path1=False, use_path2=True, path2_max_cpu_cells=10 ** 9)
        views = {}
        for key, data, ready in (("real", adata, prepared), ("permuted", permuted, prepared_permuted)):
            path2 = build_semantic_view(data, ready, only_path2, progress=False).cell_embeddings
            path1 = path1_embedding(ready, tables[key == "permuted"], config)
            views[key] = {"path2": path2, "fused": fuse_views(path1, path2, config.semantic.fusion_weight)}
        for view in ("path2", "fused"):
            text = views["real"][view]
            rows.append({"dataset": name, "view": view,
                         "path1_weights": config.semantic.path1_weights if view == "fused" else "",
                         "gene_postprocess": config.semantic.gene_postprocess if view == "fused" else "",
                         "kmeans_ARI": kmeans_ari(text), "knn_overlap_with_pca": overlap(text),
                         "kmeans_ARI_permuted_symbols": kmeans_ari(views["permuted"][view])})
            print(_line(rows[-1]), flush=True)
    for row in rows:
        row["pca_kmeans_ARI"] = pca_ari
        row["gap_to_pca"] = pca_ari - row["kmeans_ARI"]
    return rows


def _line(row: dict) -> str:
    return "\t".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                      for c in COLUMNS if c in row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", nargs="+", default=["baron_mouse1", "cellbench_5cl_p1"])
    parser.add_argument("--neighbours", type=int, default=15)
    parser.add_argument("--control-seeds", nargs="*", type=int, default=[0, 1, 2],
                        help="seeds of the GO-programme control atlases (none: skip the control)")
    parser.add_argument("--out", type=Path, default=None, help="TSV to (re)write with every row")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import anndata as ad
    import pandas as pd

    from scllm_jax.synthetic import synthetic_atlas

    rows = []
    for name in args.datasets:
        rows += diagnose(ad.read_h5ad(args.data_dir / f"{name}.h5ad"), name, args.neighbours)
    for seed in args.control_seeds:
        atlas = synthetic_atlas(2000, 2000, 8, seed=seed, markers_per_type=30, programmes="go")
        rows += diagnose(atlas, f"go_control_seed{seed}", args.neighbours, with_path2=False)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out is not None:
        frame.to_csv(args.out, sep="\t", index=False, float_format="%.3f")


if __name__ == "__main__":
    main()
