"""Write the extra labelled datasets the benchmark can run on: pbmc68k_reduced and the GO-programme control.

Both go to ``--out-dir`` (default ``benchmarks/data/``, not committed: each is
rebuilt in seconds, offline) in the layout of ``../shared/data``
(``obs['cell_type']``, ``uns['gene_symbols']``, ``uns['species']``,
``uns['values']``, ``uns['source']``), so that::

    python benchmarks/extra_datasets.py
    python benchmarks/run_benchmark.py --data-dir benchmarks/data --seeds 0

runs every method on them.

``pbmc68k_reduced.h5ad``: scanpy's own ``sc.datasets.pbmc68k_reduced()``
(shipped inside the scanpy package), 700 PBMCs x 765 genes with human
symbols. Caveats, all of them visible in the rows it gives:

- the values are log-normalised (``adata.raw``; library sizes were
  normalised over the full gene set before the 765 genes were kept), not
  counts: the pipeline takes them as already normalised (it warns), and the
  whole matrix is the "variable genes";
- the 765 genes were chosen as highly variable by scanpy's tutorial, so the
  data is easier than a raw matrix;
- ``bulk_labels`` (here ``cell_type``) were assigned by correlation with bulk
  profiles of sorted populations: noisy, with ten classes of which
  "Dendritic" (240 of 700 cells) is implausibly large for blood and the T-cell
  subsets overlap. Treat ARI on it as a weak signal.

``synthetic_go_programmes.h5ad``: the positive control of the knowledge view,
:func:`scllm_jax.synthetic.synthetic_atlas` with ``programmes="go"`` (each of 8
types up-regulates 30 genes of one Gene Ontology process), 2,000 cells x 2,000
real human symbols, raw counts: the atlas of ``semantic_diagnostic.py``'s
``go_control_seed0`` rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pbmc68k_reduced():
    """scanpy's bundled 700-cell PBMC subset in the benchmark layout (log values, ``bulk_labels``)."""
    from importlib.metadata import version

    import anndata as ad
    import pandas as pd
    import scanpy as sc
    import scipy.sparse as sp

    source = sc.datasets.pbmc68k_reduced()
    adata = ad.AnnData(sp.csr_matrix(source.raw.X, dtype="float32"),
                       obs=pd.DataFrame({"cell_type": source.obs["bulk_labels"].astype(str).astype("category")},
                                        index=source.obs_names),
                       var=pd.DataFrame(index=source.raw.var_names.astype(str)))
    adata.uns.update(gene_symbols=True, species="human", values="log-normalised", gene_id_type="symbol",
                     source=f"scanpy {version('scanpy')} sc.datasets.pbmc68k_reduced() (10x Genomics PBMC 68k, "
                            "Zheng et al. 2017; 700 cells, 765 genes, adata.raw log-normalised values; "
                            "labels: bulk_labels, noisy)")
    return adata


def go_programme_control(seed: int = 0):
    """The GO-programme synthetic atlas (positive control) in the benchmark layout."""
    from scllm_jax.synthetic import synthetic_atlas

    adata = synthetic_atlas(2000, 2000, 8, seed=seed, markers_per_type=30, programmes="go")
    adata.uns.update(gene_symbols=True, species="human", values="counts", gene_id_type="symbol",
                     source=f"scllm_jax.synthetic.synthetic_atlas(2000, 2000, 8, seed={seed}, markers_per_type=30, "
                            "programmes='go')")
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "data")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, make in (("pbmc68k_reduced", pbmc68k_reduced), ("synthetic_go_programmes", go_programme_control)):
        adata = make()
        path = args.out_dir / f"{name}.h5ad"
        adata.write_h5ad(path)
        print(f"wrote {path}: {adata.n_obs} cells x {adata.n_vars} genes, {adata.obs['cell_type'].nunique()} types")


if __name__ == "__main__":
    main()
