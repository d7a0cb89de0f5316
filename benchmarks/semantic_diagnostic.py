"""How much cell-type information the semantic view holds on its own (issue: full vs graph-only).

For each dataset with gene symbols: k-means with the true K (labels only score)
on the expression PCA and on the cell text embedding ``Z_text`` of path 1, path 2
and both fused, mean ARI over three k-means seeds; and, label-free, the fraction
of each cell's 15 nearest neighbours in ``Z_text`` that are also its neighbours
in the PCA space (chance: 15 / N).

Example
-------
::

    python benchmarks/semantic_diagnostic.py --datasets baron_mouse1 cellbench_5cl_p1
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", nargs="+", default=["baron_mouse1", "cellbench_5cl_p1"])
    parser.add_argument("--neighbours", type=int, default=15)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import anndata as ad
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.neighbors import NearestNeighbors

    from scllm_jax.config import ScllmConfig
    from scllm_jax.preprocess import Preprocessor
    from scllm_jax.semantic import build_semantic_view

    k = args.neighbours
    print("dataset\tview\tkmeans_ARI\tknn_overlap_with_pca")
    for name in args.datasets:
        adata = ad.read_h5ad(args.data_dir / f"{name}.h5ad")
        labels = adata.obs.pop("cell_type").astype(str).to_numpy()
        n_types = len(set(labels))
        config = ScllmConfig()
        _, prepared = Preprocessor.fit(adata, config)

        def kmeans_ari(x) -> float:
            x = np.asarray(x, np.float64)
            return float(np.mean([adjusted_rand_score(labels, KMeans(n_types, n_init=10, random_state=s)
                                                      .fit_predict(x)) for s in range(3)]))

        def neighbours(x) -> np.ndarray:
            return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]

        reference = neighbours(prepared.pca)

        def overlap(x) -> float:
            found = neighbours(x)
            return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, reference)]))

        print(f"{name}\tpca\t{kmeans_ari(prepared.pca):.3f}\t1.000 (chance {k / adata.n_obs:.3f})", flush=True)
        for view, changes in (("path1", {"use_path2": False}), ("path2", {"use_path1": False}), ("fused", {})):
            text = build_semantic_view(adata, prepared, config.replace(**changes), progress=False).cell_embeddings
            print(f"{name}\t{view}\t{kmeans_ari(text):.3f}\t{overlap(text):.3f}", flush=True)


if __name__ == "__main__":
    main()
