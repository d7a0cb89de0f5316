"""Training: the schedule (pre-training, k-means initialisation, clustering) and the jitted steps."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from .assignment import dec_target, sinkhorn_target, student_t_assign
from .config import ScllmConfig
from .graph import propagate
from .losses import alignment_loss, kl_clustering_loss, ncut_loss, reconstruction_loss
from .modules import ScllmNetwork

logger = logging.getLogger(__name__)

LOSS_TERMS = ("rec", "ncut", "align", "kl")


class TrainingData(NamedTuple):
    """Device arrays one training step reads (a pytree).

    Attributes
    ----------
    aggregated_input
        ``A X``: the encoder input after its first, fixed neighbourhood aggregation.
    target
        Expression the decoder reconstructs.
    edges, senders, receivers
        The normalised cell graph.
    text
        Cell text embedding ``Z_text``, or ``None`` (graph only).
    """

    aggregated_input: jax.Array
    target: jax.Array
    edges: jax.Array
    senders: jax.Array
    receivers: jax.Array
    text: jax.Array | None


def training_data(features: np.ndarray, target: np.ndarray, graph: jraph.GraphsTuple,
                  text: np.ndarray | None) -> TrainingData:
    """Put the arrays on the device and precompute ``A X``."""
    edges, senders, receivers = graph.edges, graph.senders, graph.receivers
    aggregated = jax.jit(propagate)(edges, senders, receivers, jnp.asarray(features, dtype=jnp.float32))
    return TrainingData(aggregated, jnp.asarray(target, dtype=jnp.float32), edges, senders, receivers,
                        None if text is None else jnp.asarray(text, dtype=jnp.float32))


def build_network(data: TrainingData, n_clusters: int, config: ScllmConfig) -> ScllmNetwork:
    """The network sized for ``data``, initialised from ``config.seed``."""
    text_dim = None if data.text is None else data.text.shape[1]
    return ScllmNetwork(data.aggregated_input.shape[1], data.target.shape[1], text_dim, n_clusters,
                        hidden_dims=tuple(config.hidden_dims), latent_dim=config.latent_dim,
                        decoder_dims=tuple(config.decoder_dims), projection_dim=config.projection_dim,
                        rngs=nnx.Rngs(config.seed))


def loss_terms(network: ScllmNetwork, data: TrainingData, target_p: jax.Array | None, key: jax.Array,
               config: ScllmConfig) -> dict[str, jax.Array]:
    """Every active loss term of one full-graph forward pass.

    ``target_p`` is ``None`` during pre-training (no clustering term).
    """
    latent = network.encode(data.aggregated_input, data.edges, data.senders, data.receivers)
    n_cells = latent.shape[0]
    rec_key, align_key = jax.random.split(key)
    if n_cells > config.reconstruction_batch_size:
        # The decoder is the costliest layer (cells x genes): an unbiased estimate
        # of the mean squared error from a random subset of cells is enough.
        rows = jax.random.choice(rec_key, n_cells, (config.reconstruction_batch_size,), replace=False)
        reconstruction = reconstruction_loss(network.decoder(latent[rows]), data.target[rows])
    else:
        reconstruction = reconstruction_loss(network.decoder(latent), data.target)
    terms = {"rec": reconstruction,
             "ncut": ncut_loss(latent, data.edges, data.senders, data.receivers, config.ncut_eta)}
    if network.has_text and config.use_infonce:
        if n_cells > config.infonce_batch_size:
            batch = jax.random.permutation(align_key, n_cells)[: config.infonce_batch_size]
            text_hat, feature_hat = network.project(latent[batch], data.text[batch])
        else:
            text_hat, feature_hat = network.project(latent, data.text)
        terms["align"] = alignment_loss(text_hat, feature_hat, config.temperature, config.variance_weight)
    if target_p is not None:
        embedding = network.cluster_space(latent, data.text)
        assignment = student_t_assign(embedding, network.centres[...], config.alpha)
        terms["kl"] = kl_clustering_loss(target_p, assignment)
    return terms


def total_loss(terms: dict[str, jax.Array], config: ScllmConfig) -> jax.Array:
    """``a L_align + b L_ncut + c L_rec + d L_kl`` over the terms present."""
    weights = {"align": config.weight_align, "ncut": config.weight_ncut,
               "rec": config.weight_rec, "kl": config.weight_kl}
    return sum(weights[name] * value for name, value in terms.items())


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, config: ScllmConfig):
    """A jitted ``step(params, opt_state, data, target_p, key) -> (params, opt_state, terms)``."""

    def step(params, opt_state, data, target_p, key):
        def objective(params):
            terms = loss_terms(nnx.merge(graphdef, params), data, target_p, key, config)
            return total_loss(terms, config), terms

        grads, terms = jax.grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, terms

    return jax.jit(step, donate_argnums=(0, 1))


def make_embed(graphdef: nnx.GraphDef):
    """A jitted ``embed(params, data) -> (latent, cluster_space)``."""

    def embed(params, data):
        network = nnx.merge(graphdef, params)
        latent = network.encode(data.aggregated_input, data.edges, data.senders, data.receivers)
        return latent, network.cluster_space(latent, data.text)

    return jax.jit(embed)


@dataclasses.dataclass
class FitResult:
    """What training produced.

    Attributes
    ----------
    labels
        Hard cluster of each cell (``argmax_j q_ij``).
    assignment
        Soft assignment ``q`` (cells x clusters).
    embedding
        The clustering space (fused embedding, or ``Z_feat`` graph-only).
    latent
        Structural latent ``Z_feat``.
    history
        Per-epoch values of each loss term and of the total, keyed by phase.
    pretrain_epochs, cluster_epochs
        Epochs actually run in each phase.
    stopped_early
        Whether the label-change criterion stopped the clustering phase.
    seconds
        Wall time of each phase.
    params
        Trained parameters (a ``nnx.State``).
    """

    labels: np.ndarray
    assignment: np.ndarray
    embedding: np.ndarray
    latent: np.ndarray
    history: dict[str, dict[str, list[float]]]
    pretrain_epochs: int
    cluster_epochs: int
    stopped_early: bool
    seconds: dict[str, float]
    params: nnx.State


def _record(history: dict[str, list[float]], terms: dict[str, jax.Array], config: ScllmConfig) -> None:
    values = {name: float(value) for name, value in terms.items()}
    values["total"] = float(total_loss(terms, config))
    for name, value in values.items():
        history.setdefault(name, []).append(value)


def _init_centres(embedding: np.ndarray, n_clusters: int, config: ScllmConfig) -> np.ndarray:
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=n_clusters, n_init=config.kmeans_n_init, random_state=config.seed)
    kmeans.fit(embedding.astype(np.float64))
    return kmeans.cluster_centers_.astype(np.float32)


def pretrain(data: TrainingData, config: ScllmConfig, *, progress: bool = True):
    """Pre-train the autoencoder (reconstruction, ncut, alignment).

    The number of clusters need not be known yet: the centres are a
    placeholder here and are set by :func:`cluster`.

    Returns
    -------
    (graphdef, params, history, seconds)
    """
    network = build_network(data, 1, config)
    graphdef, params = nnx.split(network, nnx.Param)
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(params)
    step = make_train_step(graphdef, optimizer, config)
    key = jax.random.key(config.seed)
    history: dict[str, list[float]] = {}
    start = time.perf_counter()
    for _ in tqdm(range(config.pretrain_epochs), desc="pre-training", disable=not progress, leave=False):
        key, subkey = jax.random.split(key)
        params, opt_state, terms = step(params, opt_state, data, None, subkey)
        _record(history, terms, config)
    return graphdef, params, history, time.perf_counter() - start


def cluster(data: TrainingData, graphdef: nnx.GraphDef, params: nnx.State, n_clusters: int,
            config: ScllmConfig, *, progress: bool = True, pretrain_history=None,
            pretrain_seconds: float = 0.0) -> FitResult:
    """Initialise centres by k-means, then train with every loss term until labels settle."""
    embed = make_embed(graphdef)
    start = time.perf_counter()
    _, embedding = embed(params, data)
    params["centres"] = nnx.Param(jnp.asarray(_init_centres(np.asarray(embedding), n_clusters, config)))
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(params)
    step = make_train_step(graphdef, optimizer, config)
    make_target = jax.jit(lambda q: sinkhorn_target(q, config.sinkhorn_iters, config.sinkhorn_epsilon)
                          if config.target == "sinkhorn" else dec_target(q))
    assign = jax.jit(lambda params: student_t_assign(embed(params, data)[1], params["centres"][...], config.alpha))
    key = jax.random.key(config.seed + 1)
    history: dict[str, list[float]] = {}
    previous_labels, target_p, stopped, epochs = None, None, False, 0
    bar = tqdm(range(config.cluster_epochs), desc="clustering", disable=not progress, leave=False)
    for epoch in bar:
        if epoch % config.update_interval == 0:
            assignment = assign(params)
            target_p = make_target(assignment)
            labels = np.asarray(jnp.argmax(assignment, axis=1))
            if previous_labels is not None:
                changed = float(np.mean(labels != previous_labels))
                bar.set_postfix(changed=f"{changed:.4f}")
                if changed < config.tol:
                    stopped = True
                    break
            previous_labels = labels
        key, subkey = jax.random.split(key)
        params, opt_state, terms = step(params, opt_state, data, target_p, subkey)
        _record(history, terms, config)
        epochs += 1
    latent, embedding = embed(params, data)
    assignment = np.asarray(student_t_assign(embedding, params["centres"][...], config.alpha))
    seconds = {"pretrain": pretrain_seconds, "cluster": time.perf_counter() - start}
    return FitResult(labels=assignment.argmax(axis=1), assignment=assignment, embedding=np.asarray(embedding),
                     latent=np.asarray(latent), history={"pretrain": pretrain_history or {}, "cluster": history},
                     pretrain_epochs=len((pretrain_history or {}).get("total", [])), cluster_epochs=epochs,
                     stopped_early=stopped, seconds=seconds, params=params)
