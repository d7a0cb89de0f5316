"""Throughput of the semantic view on this machine: genes/s, cells/s per path, cached rerun.

For each dataset (default: the ones in ``../shared/data`` with gene symbols) in
a fresh, empty embedding cache:

1. load the language model (timed apart, so throughput is the model's work);
2. embed the knowledge text of the matched highly variable genes -> genes/s;
3. path 1 (abundance-weighted gene embeddings, jitted) -> cells/s, its first
   call (with compilation) timed apart;
4. path 2 (Cell2Sentence sentences embedded by the model) -> cells/s;
5. the whole view again with the same cache -> seconds of a cache hit.

One row per dataset is appended to ``benchmarks/results/embedding_throughput.tsv``.

Example
-------
::

    python benchmarks/embedding_throughput.py
    python benchmarks/embedding_throughput.py --datasets baron_mouse1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import tempfile
import time
from pathlib import Path

from tsv_rows import append_row

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
COLUMNS = ["date", "dataset", "n_cells", "genes_embedded", "model_load_s", "genes_s", "genes_per_s",
           "path1_first_call_s", "path1_s", "path1_cells_per_s", "path2_s", "path2_cells_per_s",
           "cached_rerun_s", "torch_threads", "language_model"]


def measure(path: Path) -> dict:
    """Time each stage of the semantic view for one dataset, in a fresh cache."""
    import anndata as ad
    import torch

    from scllm_jax.config import ScllmConfig
    from scllm_jax.knowledge.cell_text import abundance_weighted_embedding, cell_sentences, sentence_embeddings
    from scllm_jax.knowledge.language_model import EmbeddingCache, embed_texts
    from scllm_jax.preprocess import Preprocessor
    from scllm_jax.semantic import build_semantic_view, gene_embedding_table

    adata = ad.read_h5ad(path)
    adata.obs = adata.obs.drop(columns=[c for c in adata.obs.columns if c == "cell_type"])
    config = ScllmConfig()
    _, prepared = Preprocessor.fit(adata, config)
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(folder)
        start = time.perf_counter()
        embed_texts(["warm-up"], config.language_model, progress=False)  # loads the model once
        model_load_s = time.perf_counter() - start

        start = time.perf_counter()
        table, mapping = gene_embedding_table(prepared.gene_names, config, species=adata.uns.get("species"),
                                              progress=False, cache=cache)
        genes_s = time.perf_counter() - start

        def path1():
            return abundance_weighted_embedding(prepared.log_expression, table["embeddings"], config.top_k_genes,
                                                gene_mask=table["mask"])

        start = time.perf_counter()
        path1()
        path1_first = time.perf_counter() - start
        start = time.perf_counter()
        path1()
        path1_s = time.perf_counter() - start

        symbols = [s if known else "" for s, known in zip(prepared.gene_names.astype(str), table["mask"])]
        start = time.perf_counter()
        sentences = cell_sentences(prepared.log_expression, symbols, config.sentence_genes)
        sentence_embeddings(sentences, config.language_model, cache=cache, progress=False)
        path2_s = time.perf_counter() - start

        start = time.perf_counter()
        build_semantic_view(adata, prepared, config, progress=False, cache=cache)
        cached_s = time.perf_counter() - start
    n_cells = prepared.n_cells
    return {"date": _dt.date.today().isoformat(), "dataset": path.stem, "n_cells": n_cells,
            "genes_embedded": int(mapping.n_matched), "model_load_s": round(model_load_s, 2),
            "genes_s": round(genes_s, 2), "genes_per_s": round(mapping.n_matched / genes_s, 1),
            "path1_first_call_s": round(path1_first, 3), "path1_s": round(path1_s, 4),
            "path1_cells_per_s": round(n_cells / path1_s), "path2_s": round(path2_s, 2),
            "path2_cells_per_s": round(n_cells / path2_s, 1), "cached_rerun_s": round(cached_s, 2),
            "torch_threads": torch.get_num_threads(), "language_model": config.language_model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", nargs="+", default=["baron_mouse1", "cellbench_5cl_p1"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "embedding_throughput.tsv")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        row = measure(args.data_dir / f"{name}.h5ad")
        append_row(args.out, COLUMNS, row)


if __name__ == "__main__":
    main()
