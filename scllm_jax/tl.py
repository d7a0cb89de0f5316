"""Tools in scanpy's conventions: results are written into the AnnData."""

from __future__ import annotations

import platform
import time

import anndata as ad
import numpy as np
import pandas as pd

from .config import ScllmConfig
from .model import ScllmModel


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("scllm-jax", "jax", "jaxlib", "flax", "optax", "jraph", "anndata", "scanpy", "numpy",
                 "transformers", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def cluster(adata: ad.AnnData, n_clusters: int | None = None, *, layer: str | None = None,
            key_added: str = "scllm", config: ScllmConfig | None = None, copy: bool = False,
            progress: bool = True, return_model: bool = False, gene_symbols_key: str | None = None):
    """Cluster cells with scLLM-DSC.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``X``; gene symbols in ``var_names``
        for the semantic view (``uns['species']`` read when present).
        Linear-scale normalised values (TPM, RPKM, CPM) and log-scale values
        are accepted with a warning that names the rule applied
        (:func:`~scllm_jax.validation.value_kind`).
    n_clusters
        Number of clusters; ``None`` estimates it before training (Leiden
        on the kNN graph of the principal components, resolution
        ``config.clustering.leiden_resolution``).
    layer
        Cluster ``adata.layers[layer]`` instead of ``X`` (scanpy's
        convention); ``None`` takes ``X``, or ``layers['counts']`` when ``X``
        holds no counts but that layer does (said with a warning).
    key_added
        Name of the fields written.
    config
        Settings; defaults if ``None``.
    copy
        Work on and return a copy instead of writing into ``adata``.
    progress
        Show progress bars.
    return_model
        Also return the fitted :class:`~scllm_jax.model.ScllmModel`.
    gene_symbols_key
        The ``adata.var`` column holding gene symbols (scanpy's convention);
        ``None`` reads ``var_names`` (symbols, or human Ensembl ids with or
        without version suffix).

    Returns
    -------
    None, AnnData, or a tuple with the model
        With ``copy``, the annotated copy; with ``return_model``, the model too.

    Notes
    -----
    Writes

    - ``obs[key_added]``: cluster of each cell (categorical, ``"0"``, ``"1"``, ...).
    - ``obsm[f"X_{key_added}"]``: the embedding the clusters live in.
    - ``obsm[f"{key_added}_soft"]``: soft assignment ``q``.
    - ``uns[key_added]``: ``params`` (config, seed, K asked for, versions),
      ``n_clusters_found`` (the non-empty clusters: fewer than K, with a
      warning, where the data cannot support K), ``input`` (the
      matrix read, ``"X"`` or a layer name, and its value type), ``loss_history``
      (per phase, per term), ``timings`` (seconds per stage), ``semantic``
      (knowledge-base match and paths used), ``selection`` (whether the
      trained head's clusters or the reference clustering of the principal
      components were reported, with the neighbourhood agreement of each), ``initialisation`` (the starting
      partition of the head: which candidate was chosen, each candidate's
      silhouette on the principal components and cluster sizes), ``n_epochs``, ``cluster_knowledge``
      (a table per cluster: size, marker genes, the genes whose knowledge lies
      nearest the cluster's semantic centroid and their most frequent Gene
      Ontology processes).
    """
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    model = ScllmModel(config or ScllmConfig()).fit(adata, n_clusters, layer=layer,
                                                    gene_symbols_key=gene_symbols_key, progress=progress)
    result = model.result
    categories = [str(i) for i in range(model.n_clusters)]
    adata.obs[key_added] = pd.Categorical(result.labels.astype(str), categories=categories)
    adata.obsm[f"X_{key_added}"] = result.embedding.astype(np.float32)
    adata.obsm[f"{key_added}_soft"] = result.assignment.astype(np.float32)
    adata.uns[key_added] = {
        "params": {"config": model.config.to_dict(), "n_clusters": model.n_clusters,
                   "n_clusters_given": n_clusters is not None, "seed": model.config.seed,
                   "graph_neighbors": model.graph_neighbors_,
                   "versions": _versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "loss_history": {phase: {term: np.asarray(values, dtype=np.float32) for term, values in terms.items()}
                         for phase, terms in result.history.items()},
        "n_clusters_found": model.n_clusters_found_,
        "input": {"layer": "X" if model.preprocessor.layer is None else model.preprocessor.layer,
                  "values": model.preprocessor.values},
        "timings": dict(model.timings),
        "n_epochs": {"pretrain": result.pretrain_epochs, "cluster": result.cluster_epochs,
                     "stopped_early": result.stopped_early},
        "initialisation": _plain(result.initialisation),
        "selection": _plain(model.selection_),
        "semantic": _plain(model.semantic_info),
        "cluster_knowledge": model.cluster_knowledge(),
    }
    outputs = []
    if copy:
        outputs.append(adata)
    if return_model:
        outputs.append(model)
    if not outputs:
        return None
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _plain(info: dict) -> dict:
    """Values AnnData can write to ``.h5ad`` (no None, lists as arrays)."""
    out = {}
    for key, value in info.items():
        if value is None:
            continue
        out[key] = np.asarray(value).astype(str) if isinstance(value, (list, tuple)) else value
    return out
