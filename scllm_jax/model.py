"""The user-facing model class: fit, predict, embeddings, save and load.

It orchestrates the stages (preprocessing, graph, semantic view, training)
and does no maths of its own.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import anndata as ad
import jax.numpy as jnp
import jraph
import numpy as np
import pandas as pd
import scipy.sparse as sp
from flax import nnx

from .assignment import student_t_assign
from .config import ScllmConfig
from .graph import (attach_cells, graph_from_adjacency, knn_adjacency, knn_indices, neighbour_count,
                    normalized_adjacency)
from .modules import ROWWISE_MAX_HIDDEN_LAYERS
from .n_clusters import estimate_n_clusters
from .partition import InitialPartition, assign_by_neighbours, final_partition, initial_partition
from .preprocess import PreparedData, Preprocessor
from .step import make_embed, whole_graph_tables
from .train import EngineChoice, FitResult, build_network, choose_engine, fit_network
from .validation import InputError, check_cluster_support, check_n_clusters, count_clusters

logger = logging.getLogger(__name__)

#: 2: the training cells' principal components and graph are saved, so that predict places
#: new cells among them (format 1 built a graph of the new cells alone).
_FORMAT_VERSION = 2


def _budget(n: int) -> int:
    """``n`` rounded up to a power of two (at least 8): a padding budget."""
    return 1 << max(3, (int(n) - 1).bit_length())


class ScllmModel:
    """scLLM-DSC clustering model.

    Parameters
    ----------
    config
        Settings; :class:`~scllm_jax.config.ScllmConfig` defaults if ``None``.

    Examples
    --------
    >>> model = ScllmModel()
    >>> labels = model.fit(adata, n_clusters=8).labels_
    >>> model.save("model_dir"); ScllmModel.load("model_dir").predict(adata)
    """

    def __init__(self, config: ScllmConfig | None = None):
        self.config = config or ScllmConfig()
        self.preprocessor: Preprocessor | None = None
        self.result: FitResult | None = None
        self.n_clusters: int | None = None
        self.n_clusters_found_: int | None = None
        self.semantic_info: dict = {}
        self.timings: dict[str, float] = {}
        self._graphdef = None
        self._params = None
        self._text_dim: int | None = None
        self._gene_embeddings = None
        # The training cells' principal components and normalised graph: predict joins new cells to them.
        self._reference_pca: np.ndarray | None = None
        self._reference_adjacency = None
        self.prepared_: PreparedData | None = None
        self.cell_text_: np.ndarray | None = None
        # How the reported partition was chosen; the training cells' clusters when the reference won.
        self.selection_: dict = {"chosen": "head"}
        self._reference_labels: np.ndarray | None = None
        #: Full graph or mini-batches, and why (set by :meth:`fit`).
        self.engine_: EngineChoice | None = None
        #: Neighbours per cell of the cell graph (:func:`~scllm_jax.graph.neighbour_count`; set by :meth:`fit`).
        self.graph_neighbors_: int | None = None

    # ------------------------------------------------------------------ fitting
    def fit(self, adata: ad.AnnData, n_clusters: int | None = None, *, layer: str | None = None,
            gene_symbols_key: str | None = None, progress: bool = True) -> "ScllmModel":
        """Preprocess, build the graph and the semantic view, and train.

        Parameters
        ----------
        adata
            Cells x genes: raw counts in ``X`` (linear-scale normalised or
            log-scale values are accepted with a warning that says how they
            are treated, :func:`~scllm_jax.validation.value_kind`).
        n_clusters
            Number of clusters K; ``None`` estimates it by Leiden on the kNN
            graph of the principal components, before training
            (:func:`~scllm_jax.n_clusters.estimate_n_clusters`).
        layer
            Cluster ``adata.layers[layer]`` instead of ``X``; ``None`` takes
            ``X``, or ``layers['counts']`` when ``X`` holds no counts but that
            layer does (said with a warning).
        gene_symbols_key
            The ``adata.var`` column of gene symbols for the semantic view;
            ``None``: ``var_names`` (symbols or human Ensembl ids).
        progress
            Show progress bars.

        Returns
        -------
        ScllmModel
            ``self``, with ``labels_``, ``embedding_``, ``result``,
            ``n_clusters_found_`` (non-empty clusters) and ``engine_`` (full
            graph or mini-batches, :func:`~scllm_jax.train.choose_engine`) set.

        Warns
        -----
        UserWarning
            When the cells have fewer distinct profiles than ``n_clusters``
            (duplicate or near-identical cells), and when clusters end empty.
        """
        config = self.config
        check_n_clusters(n_clusters, adata.n_obs)
        # Decided once, here, before any work: the preprocessing and the training data follow it.
        self.engine_ = choose_engine(adata.n_obs, min(adata.n_vars, config.preprocess.n_top_genes), config)
        logger.info("training on %s: %s", "mini-batches" if self.engine_.minibatch else "the full graph",
                    self.engine_.reason)
        if self.engine_.minibatch and len(config.network.hidden_dims) > ROWWISE_MAX_HIDDEN_LAYERS:
            # Batches are encoded exactly from 1-hop neighbourhoods (one hidden layer).
            raise ValueError(f"{adata.n_obs} cells train in mini-batches ({self.engine_.reason}), which support "
                             f"one hidden GCN layer; hidden_dims={config.network.hidden_dims} has "
                             f"{len(config.network.hidden_dims)}. Pass one width, e.g. hidden_dims=(256,).")
        start = time.perf_counter()
        self.preprocessor, prepared = Preprocessor.fit(adata, config, layer=layer, in_blocks=self.engine_.large)
        self.timings["preprocess"] = time.perf_counter() - start
        logger.info("preprocessed %d cells in %.1f s", prepared.n_cells, self.timings["preprocess"])
        text = self._semantic_view(adata, prepared, gene_symbols_key=gene_symbols_key, progress=progress)
        self.prepared_, self.cell_text_ = prepared, text
        # With K given, neighbourhoods no larger than a mean-sized cluster (tiny data sets).
        self.graph_neighbors_ = neighbour_count(adata.n_obs, config.graph.n_neighbors, n_clusters)
        data, indices, self.timings["graph"] = self._training_data(prepared, text)
        logger.info("graph and training data in %.1f s", self.timings["graph"])

        if n_clusters is None:
            # On the principal components (the cell graph's space), not the pre-trained latent:
            # the ncut spreads the latent over all its directions, and Leiden found more
            # communities there (docs/METHOD_NOTES.md).
            n_clusters = estimate_n_clusters(prepared.pca, n_neighbors=config.graph.n_neighbors,
                                             resolution=config.clustering.leiden_resolution, seed=config.seed)
            check_n_clusters(n_clusters, adata.n_obs)
        check_cluster_support(prepared.pca, n_clusters)
        cell_graph = knn_adjacency(indices)

        def initialise(embedding: np.ndarray, k: int) -> InitialPartition:
            clustering = config.clustering
            return initial_partition(embedding, prepared.pca, cell_graph, k, method=clustering.initialisation,
                                     seed=config.seed, n_init=clustering.kmeans_n_init,
                                     overcluster_factor=clustering.overcluster_factor)

        pre = self.preprocessor
        self.result, graphdef = fit_network(data, config, n_clusters, initialise=initialise, progress=progress,
                                            fingerprint={"data": pre.input_digest, "layer": pre.layer,
                                                         "values": pre.values})
        self.n_clusters = int(self.result.assignment.shape[1])
        self._graphdef, self._params = graphdef, self.result.params
        start_selection = time.perf_counter()
        clustering = config.clustering
        choice = final_partition(self.result.labels, prepared.pca, indices, self.result.embedding, self.n_clusters,
                                 method=clustering.final_selection, seed=config.seed, n_init=clustering.kmeans_n_init,
                                 n_neighbors=min(clustering.selection_neighbors, self.graph_neighbors_),
                                 reference=clustering.reference_clustering,
                                 exact_max_cells=config.graph.exact_knn_max_cells,
                                 expression=prepared.log_expression if clustering.selection_expression_space else None,
                                 chance_corrected_agreement=clustering.selection_chance_corrected,
                                 consolidate_reference=clustering.consolidate_reference)
        self.timings["selection"] = time.perf_counter() - start_selection
        logger.info("final partition: %s, in %.1f s", choice.chosen, self.timings["selection"])
        self.result.labels, self.selection_ = choice.labels, choice.summary()
        self._reference_labels = None if choice.chosen == "head" else choice.labels
        self.timings.update({f"train_{k}": v for k, v in self.result.seconds.items()})
        self.timings["total"] = time.perf_counter() - start
        self.n_clusters_found_ = count_clusters(self.labels_, self.n_clusters)
        return self

    def _semantic_view(self, adata: ad.AnnData, prepared: PreparedData, *, gene_symbols_key: str | None,
                       progress: bool) -> np.ndarray | None:
        if not self.config.semantic.use_semantic:
            self.semantic_info = {"used": False, "reason": "use_semantic=False"}
            return None
        from .semantic import build_semantic_view

        start = time.perf_counter()
        view = build_semantic_view(adata, prepared, self.config, gene_symbols_key=gene_symbols_key,
                                   progress=progress)
        self.timings["semantic"] = time.perf_counter() - start
        self.semantic_info = view.info
        self._gene_embeddings = view.gene_embeddings
        if view.cell_embeddings is None:
            return None
        self._text_dim = view.cell_embeddings.shape[1]
        return view.cell_embeddings

    def _training_data(self, prepared: PreparedData, text: np.ndarray | None):
        """The arrays training reads, the cells' kNN indices, and the seconds it took."""
        start = time.perf_counter()
        indices = knn_indices(prepared.pca, self.graph_neighbors_,
                              exact_max_cells=self.config.graph.exact_knn_max_cells, seed=self.config.seed)
        adjacency = normalized_adjacency(indices)
        self._reference_pca, self._reference_adjacency = prepared.pca, adjacency
        if self.engine_.minibatch:
            from .minibatch import minibatch_data
            from .parallel import data_mesh

            data = minibatch_data(prepared.pca, prepared.expression, adjacency, text, self.config, data_mesh())
        else:
            data = whole_graph_tables(prepared.pca, np.asarray(prepared.expression),
                                      graph_from_adjacency(adjacency, prepared.pca), text)
        return data, indices, time.perf_counter() - start

    # --------------------------------------------------------------- outputs
    def _require_fitted(self) -> None:
        if self._params is None:
            raise RuntimeError("The model is not fitted; call fit(adata) or ScllmModel.load(path) first.")

    @property
    def labels_(self) -> np.ndarray:
        """Cluster of each training cell."""
        self._require_fitted()
        if self.result is None:
            raise RuntimeError("A loaded model keeps no training labels; call predict(adata).")
        return self.result.labels

    def cluster_knowledge(self) -> "pd.DataFrame":
        """Marker genes and nearest gene knowledge of each training cluster.

        See :func:`scllm_jax.interpret.cluster_knowledge`.
        """
        from .interpret import cluster_knowledge

        self._require_fitted()
        if self.prepared_ is None:
            raise RuntimeError("cluster_knowledge needs the training data; call it after fit(adata).")
        knowledge = None
        if self.cell_text_ is not None:
            from .knowledge.gene_table import load_gene_knowledge

            knowledge = load_gene_knowledge()
        return cluster_knowledge(self.labels_, self.prepared_.log_expression, self.prepared_.gene_names,
                                 cell_text=self.cell_text_, gene_table=self._gene_embeddings,
                                 knowledge=knowledge, species=self.semantic_info.get("species"))

    @property
    def embedding_(self) -> np.ndarray:
        """The clustering space of each training cell."""
        self._require_fitted()
        return self.result.embedding

    def predict(self, adata: ad.AnnData, *, layer: str | None = None, return_embedding: bool = False,
                progress: bool = False):
        """Assign cells to the trained clusters, each on its own.

        The cells are mapped through the fitted preprocessing (same value
        type, genes, scaling and PCA loadings), joined to the graph of the
        training cells by their nearest training cells
        (:func:`~scllm_jax.graph.attach_cells`; a cell identical to a training
        cell takes its place), encoded by the trained network and assigned to
        the nearest trained centre under the Student-t kernel; when the fit
        reported the reference clustering of the principal components, a cell
        takes the most common of its nearest training cells' clusters there
        (:func:`~scllm_jax.partition.assign_by_neighbours`). No step looks
        at the other cells passed with a cell, so a cell's label does not
        depend on them: ``predict(adata[cells])`` equals
        ``predict(adata)[cells]``.

        Parameters
        ----------
        adata
            Cells x the model's genes, values of the type it was fitted on.
        layer
            As for :meth:`fit`.
        return_embedding
            Also return the cells' clustering space.
        progress
            Show progress bars (the semantic view).

        Returns
        -------
        np.ndarray or (np.ndarray, np.ndarray)
            Labels, and the embedding if ``return_embedding``.
        """
        self._require_fitted()
        prepared = self.preprocessor.transform(adata, layer=layer)
        reference_vote = None
        if self._reference_labels is not None:
            # The fit reported the reference clustering of the principal components: new cells take the
            # cluster of their nearest training cells there.
            reference_vote = assign_by_neighbours(self._reference_pca, self._reference_labels, prepared.pca,
                                                  self.n_clusters, n_neighbors=self.graph_neighbors_,
                                                  exact_max_cells=self.config.graph.exact_knn_max_cells,
                                                  seed=self.config.seed)
            if not return_embedding:  # the network is not needed for these labels
                return reference_vote
        text = None
        if self._text_dim is not None:
            from .semantic import cell_view_from_gene_embeddings

            text = cell_view_from_gene_embeddings(adata, prepared, self._gene_embeddings, self.config,
                                                  paths=self.semantic_info["paths"], progress=progress)
        n_reference, n_new = self._reference_pca.shape[0], prepared.n_cells
        adjacency = attach_cells(self._reference_adjacency, self._reference_pca, prepared.pca,
                                 self.graph_neighbors_, exact_max_cells=self.config.graph.exact_knn_max_cells,
                                 seed=self.config.seed)
        # Nodes and edges padded to budgets that grow in powers of two (a padding graph that no
        # real node reads), so that one compiled embedding serves many batch sizes.
        new_edges = adjacency.nnz - self._reference_adjacency.nnz
        graph = jraph.pad_with_graphs(graph_from_adjacency(adjacency), n_node=n_reference + _budget(n_new + 1),
                                      n_edge=self._reference_adjacency.nnz + _budget(new_edges))
        n_nodes = int(np.sum(graph.n_node))

        def rows(new: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
            # The training cells' rows (zeros where only the new cells' rows are read), the new cells', padding.
            out = np.zeros((n_nodes, new.shape[1]), np.float32)
            out[:n_reference] = 0.0 if reference is None else reference
            out[n_reference:n_reference + n_new] = new
            return out

        data = whole_graph_tables(rows(prepared.pca, self._reference_pca), np.zeros((n_nodes, 0), np.float32), graph,
                                  None if text is None else rows(text))
        if getattr(self, "_embed_for", None) is not self._graphdef:
            self._embed, self._embed_for = make_embed(self._graphdef), self._graphdef
        _, embedding = self._embed(self._params, data, None, None)
        embedding = embedding[n_reference:n_reference + n_new]
        assignment = student_t_assign(embedding, self._params["centres"][...], self.config.train.alpha)
        labels = np.asarray(jnp.argmax(assignment, axis=1)) if reference_vote is None else reference_vote
        return (labels, np.asarray(embedding)) if return_embedding else labels

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Save config, preprocessing state and parameters to the folder ``path``."""
        self._require_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        flat = {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(self._params)}
        np.savez(path / "params.npz", **flat)
        np.savez(path / "preprocessor.npz", **self.preprocessor.to_arrays())
        adjacency = self._reference_adjacency
        np.savez(path / "reference_graph.npz", pca=self._reference_pca, data=adjacency.data,
                 indices=adjacency.indices, indptr=adjacency.indptr)
        if self._gene_embeddings is not None:
            np.savez(path / "gene_embeddings.npz", **self._gene_embeddings)
        if self._reference_labels is not None:
            np.save(path / "reference_labels.npy", self._reference_labels)
        meta = {"format_version": _FORMAT_VERSION, "config": self.config.to_dict(),
                "n_clusters": self.n_clusters, "text_dim": self._text_dim, "graph_neighbors": self.graph_neighbors_,
                "semantic_info": self.semantic_info, "selection": self.selection_}
        (path / "model.json").write_text(json.dumps(meta, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ScllmModel":
        """Load a model written by :meth:`save`."""
        path = Path(path)
        if not (path / "model.json").exists():
            raise FileNotFoundError(f"No saved scllm-jax model in {path} (model.json missing); "
                                    "pass the folder given to ScllmModel.save.")
        meta = json.loads((path / "model.json").read_text())
        if meta.get("format_version") != _FORMAT_VERSION:
            raise InputError(f"{path} holds model format {meta.get('format_version')}, this version reads "
                             f"{_FORMAT_VERSION} (which keeps the training cells' graph, so that predict places "
                             "new cells among them); refit the model and save it again.")
        # Models saved before path 1 had settings were trained with the paper's pooling.
        saved = {"path1_weights": "log", "gene_postprocess": "none", **meta["config"]}
        model = cls(ScllmConfig.from_dict(saved))
        model.n_clusters, model._text_dim = meta["n_clusters"], meta["text_dim"]
        # Saved before the graph's neighbour count depended on K: the configured count.
        model.graph_neighbors_ = meta.get("graph_neighbors", model.config.graph.n_neighbors)
        model.semantic_info = meta.get("semantic_info", {})
        model.selection_ = meta.get("selection", {"chosen": "head"})
        with np.load(path / "preprocessor.npz", allow_pickle=False) as arrays:
            model.preprocessor = Preprocessor.from_arrays(dict(arrays))
        with np.load(path / "reference_graph.npz", allow_pickle=False) as graph:
            n_reference = graph["pca"].shape[0]
            model._reference_pca = graph["pca"]
            model._reference_adjacency = sp.csr_matrix((graph["data"], graph["indices"], graph["indptr"]),
                                                       shape=(n_reference, n_reference))
        if (path / "reference_labels.npy").exists():
            model._reference_labels = np.load(path / "reference_labels.npy", allow_pickle=False)
        elif (path / "pca_centres.npy").exists():
            # Saved when the reference was k-means: its training cells' clusters are their nearest centres.
            # One centre at a time: N x K distances, not an N x K x d array (empty clusters' centres are inf).
            centres = np.load(path / "pca_centres.npy", allow_pickle=False)
            distances = np.stack([((model._reference_pca - centre) ** 2).sum(axis=1) for centre in centres], axis=1)
            model._reference_labels = np.argmin(distances, axis=1)
        if (path / "gene_embeddings.npz").exists():
            with np.load(path / "gene_embeddings.npz", allow_pickle=False) as arrays:
                model._gene_embeddings = dict(arrays)
        n_inputs = model.preprocessor.pca_components.shape[0]
        n_genes = len(model.preprocessor.hvg_names)
        network = build_network(n_inputs, n_genes, model._text_dim, model.n_clusters, model.config)
        graphdef, params = nnx.split(network, nnx.Param)
        with np.load(path / "params.npz", allow_pickle=False) as stored:
            for key, variable in nnx.to_flat_state(params):
                name = ".".join(map(str, key))
                if stored[name].shape != variable[...].shape:
                    raise InputError(f"{path}: parameter {name} has shape {stored[name].shape}, "
                                     f"expected {variable[...].shape}; the files do not belong together.")
                variable[...] = jnp.asarray(stored[name])
        model._graphdef, model._params = graphdef, params
        return model

