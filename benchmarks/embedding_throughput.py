"""Throughput of the semantic view on this machine: gene stage, path 1, path 2 (cells/s), cached rerun.

For each dataset (default: the ones in ``../shared/data`` with gene symbols) in
a fresh, empty embedding cache:

1. load the language model (timed apart, so throughput is the model's work);
2. the gene stage: knowledge texts of the matched highly variable genes, their
   vectors read from the shipped file (default model) or embedded -> seconds,
   and how many came from the file;
3. path 1 (the default pooling, jitted) -> cells/s, its first call (with
   compilation) timed apart;
4. path 2 (Cell2Sentence sentences embedded by the model) with the configured
   ``sentence_genes`` and with short sentences (``--short-genes``) -> cells/s,
   on the device the model runs on (``cuda`` when torch sees a GPU);
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
           "cached_rerun_s", "torch_threads", "language_model", "genes_from_shipped_file", "device",
           "sentence_genes", "path2_short_genes", "path2_short_s", "path2_short_cells_per_s"]


def measure(adata, name: str, config=None, short_genes: int = 25) -> dict:
    """Time each stage of the semantic view for one dataset, in a fresh cache.

    Parameters
    ----------
    adata
        The data (``obs['cell_type']``, if any, is dropped first).
    name
        The dataset's name in the row.
    config
        A :class:`~scllm_jax.config.ScllmConfig`; defaults if ``None``.
    short_genes
        ``sentence_genes`` of the short-sentence measurement of path 2.

    Returns
    -------
    dict
        One row with the :data:`COLUMNS`.
    """
    import torch

    from scllm_jax.config import ScllmConfig
    from scllm_jax.knowledge.cell_text import cell_sentences, sentence_embeddings
    from scllm_jax.knowledge.language_model import EmbeddingCache, default_device, embed_texts
    from scllm_jax.preprocess import Preprocessor
    from scllm_jax.semantic import build_semantic_view, gene_embedding_table, path1_embedding

    config = config or ScllmConfig()
    adata = adata.copy()
    adata.obs = adata.obs.drop(columns=[c for c in adata.obs.columns if c == "cell_type"])
    _, prepared = Preprocessor.fit(adata, config)
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(folder)
        start = time.perf_counter()
        embed_texts(["warm-up"], config.semantic.language_model, progress=False)  # loads the model once
        model_load_s = time.perf_counter() - start

        start = time.perf_counter()
        table, mapping = gene_embedding_table(prepared.gene_names, config, species=adata.uns.get("species"),
                                              progress=False, cache=cache)
        genes_s = time.perf_counter() - start

        def timed(function) -> float:
            begin = time.perf_counter()
            function()
            return time.perf_counter() - begin

        path1_first = timed(lambda: path1_embedding(prepared, table, config))
        path1_s = timed(lambda: path1_embedding(prepared, table, config))

        def path2(n_genes: int) -> None:
            sentences = cell_sentences(prepared.log_expression, table["symbols"], n_genes)
            sentence_embeddings(sentences, config.semantic.language_model, cache=cache, progress=False)

        path2_s = timed(lambda: path2(config.semantic.sentence_genes))
        short_s = timed(lambda: path2(short_genes))
        unlimited = config.replace(path2_max_cpu_cells=max(config.semantic.path2_max_cpu_cells, prepared.n_cells))
        cached_s = timed(lambda: build_semantic_view(adata, prepared, unlimited, progress=False, cache=cache))
    n_cells, n_embedded = prepared.n_cells, int(table["mask"].sum())
    return {"date": _dt.date.today().isoformat(), "dataset": name, "n_cells": n_cells,
            "genes_embedded": n_embedded, "model_load_s": round(model_load_s, 2),
            "genes_s": round(genes_s, 2), "genes_per_s": round(n_embedded / genes_s, 1),
            "path1_first_call_s": round(path1_first, 3), "path1_s": round(path1_s, 4),
            "path1_cells_per_s": round(n_cells / path1_s), "path2_s": round(path2_s, 2),
            "path2_cells_per_s": round(n_cells / path2_s, 1), "cached_rerun_s": round(cached_s, 2),
            "torch_threads": torch.get_num_threads(), "language_model": config.semantic.language_model,
            "genes_from_shipped_file": int(table["n_shipped"]), "device": default_device(),
            "sentence_genes": config.semantic.sentence_genes, "path2_short_genes": short_genes,
            "path2_short_s": round(short_s, 2), "path2_short_cells_per_s": round(n_cells / short_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", nargs="+", default=["baron_mouse1", "cellbench_5cl_p1"])
    parser.add_argument("--short-genes", type=int, default=25, help="sentence_genes of the short-sentence run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "embedding_throughput.tsv")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import anndata as ad

    for name in args.datasets:
        row = measure(ad.read_h5ad(args.data_dir / f"{name}.h5ad"), name, short_genes=args.short_genes)
        append_row(args.out, COLUMNS, row)


if __name__ == "__main__":
    main()
