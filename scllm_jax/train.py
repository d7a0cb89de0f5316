"""Training: the schedule (pre-training, start partition, clustering), its two engines and checkpoints.

The steps themselves are :mod:`scllm_jax.step`'s, the same for both engines.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from .assignment import dec_target, sharpened_target, sinkhorn_target, size_preserving_target, student_t_assign
from .config import ScllmConfig
from .modules import ScllmNetwork
from .objective import total_loss
from .partition import InitialPartition, cluster_means, kmeans_labels
from .step import Tables, make_embed, make_steps, step_keys

logger = logging.getLogger(__name__)

#: Full-graph training runs up to this many epochs (one step each) as one program, between target
#: refreshes and checkpoints: launched one by one, the host's share was 9% (822 cells) to 45% (4,271
#: cells) of an epoch on 2 CPU cores. Each distinct run length compiles once; 20 keeps the bar moving.
WHOLE_GRAPH_EPOCHS_PER_PROGRAM = 20

#: Iterations and entropic temperature of the Sinkhorn targets.
SINKHORN_ITERATIONS = 50
SINKHORN_EPSILON = 0.05


def build_network(n_inputs: int, n_genes: int, text_dim: int | None, n_clusters: int,
                  config: ScllmConfig) -> ScllmNetwork:
    """The network for these widths (``text_dim=None``: graph only), initialised from ``config.seed``.

    Built on the host's CPU when JAX's default device is an accelerator: there
    each of the initialisers' small eager operations would be compiled first.
    The arrays are not committed to the CPU, so the first program that reads
    them moves them to the accelerator.
    """
    with _on_host():
        return ScllmNetwork(n_inputs, n_genes, text_dim, n_clusters,
                            hidden_dims=tuple(config.network.hidden_dims),
                            latent_dim=config.network.latent_dim, decoder_dims=tuple(config.network.decoder_dims),
                            projection_dim=config.network.projection_dim, rngs=nnx.Rngs(config.seed),
                            cluster_space=config.network.cluster_space)


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
    initialisation
        How the clustering head's starting partition was chosen
        (:meth:`~scllm_jax.partition.InitialPartition.summary`).
    resumed_from
        Optimiser step of the checkpoint this fit resumed from, ``None`` when
        it started afresh.
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
    initialisation: dict = dataclasses.field(default_factory=dict)
    resumed_from: int | None = None


def _with_total(terms: dict[str, jax.Array], config: ScllmConfig) -> dict[str, jax.Array]:
    """Each loss term per step of a run of steps, and their weighted total."""
    return {**terms, "total": total_loss(terms, config)}


def _step_values(values: list) -> np.ndarray:
    """One value per step from the per-step arrays kept in ``_Run.partial`` (runs of steps of one epoch)."""
    return np.concatenate([np.atleast_1d(np.asarray(value, dtype=np.float64)) for value in values]) if values \
        else np.zeros(0)


def _latent_kmeans(embedding: np.ndarray, n_clusters: int, config: ScllmConfig) -> InitialPartition:
    labels = kmeans_labels(embedding, n_clusters, seed=config.seed, n_init=config.clustering.kmeans_n_init)
    return InitialPartition(labels, "latent_kmeans", {}, {})


class EngineChoice(NamedTuple):
    """How a fit trains, decided once before any work (:func:`choose_engine`).

    Attributes
    ----------
    minibatch
        Mini-batches (data parallel) instead of one step over the full graph.
    large
        The data is too large to hold dense: the preprocessing works on
        sparse blocks (:meth:`~scllm_jax.preprocess.Preprocessor.fit`).
    reason
        Why, in words (logged).
    """

    minibatch: bool
    large: bool
    reason: str


#: The full-graph engine may plan to fill at most this share of the device's memory; past it the cells
#: train in mini-batches (the rest is left to XLA's temporaries and to the host's own arrays on a CPU).
FULL_GRAPH_MEMORY_SHARE = 0.5


def full_graph_bytes(n_cells: int, n_genes: int, config: ScllmConfig) -> int:
    """Estimated device bytes (float32) of training on the full graph at once.

    Per cell: the dense decoder target, ``A X``, the hidden layer's
    activations and gradients, the latent; per edge (a symmetrised kNN graph
    with self-loops has at most ``2k + 1`` per cell): weights, endpoints and
    one layer's messages. Measured on this project's CPU: 200,000 cells x
    2,000 genes peaked at 8.8 GB of process memory, host arrays included;
    this gives 9.8 GB (``docs/METHOD_NOTES.md``).
    """
    width = max((*config.network.hidden_dims, config.network.latent_dim))
    per_cell = n_genes + config.preprocess.n_pcs + 8 * width + 4 * config.network.latent_dim
    edges = n_cells * (2 * config.graph.n_neighbors + 1)
    return 4 * (n_cells * per_cell + edges * (3 + width))


def device_memory_bytes() -> int | None:
    """Memory of the first local device: the accelerator's limit, or the host's RAM on a CPU (``None``: unknown)."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # some backends do not implement it; the host's RAM is then the bound
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def choose_engine(n_cells: int, n_genes: int, config: ScllmConfig, *, n_devices: int | None = None,
                  memory: int | None = None) -> EngineChoice:
    """Full graph or mini-batches, decided once per fit.

    Mini-batches from ``train.minibatch_min_cells`` cells (the number of
    optimiser steps: a full-graph epoch is one step, so the full graph needs
    its 10x longer schedule, and on this CPU at 200,000 cells that is about
    4x the mini-batch fit's time), when the full graph would need more than
    :data:`FULL_GRAPH_MEMORY_SHARE` of the device's memory
    (:func:`full_graph_bytes`), or on several devices (data parallel).

    Parameters
    ----------
    n_cells, n_genes
        Cells, and genes the decoder reconstructs (at most ``n_top_genes``).
    config
        Settings.
    n_devices
        Devices training runs on (default: all of JAX's).
    memory
        The device's bytes (default: :func:`device_memory_bytes`).
    """
    if n_cells >= config.train.minibatch_min_cells:
        return EngineChoice(True, True, f"{n_cells} cells, from minibatch_min_cells="
                                        f"{config.train.minibatch_min_cells} on")
    need = full_graph_bytes(n_cells, n_genes, config)
    memory = device_memory_bytes() if memory is None else memory
    if memory is not None and need > FULL_GRAPH_MEMORY_SHARE * memory:
        return EngineChoice(True, True, f"the full graph would need about {need / 2 ** 30:.1f} GiB, more than "
                                        f"{FULL_GRAPH_MEMORY_SHARE:.0%} of the device's {memory / 2 ** 30:.1f} GiB")
    n_devices = jax.device_count() if n_devices is None else n_devices
    if n_devices > 1:
        return EngineChoice(True, False, f"{n_devices} devices (data parallel)")
    return EngineChoice(False, False, f"the full graph fits (about {need / 2 ** 30:.2f} GiB)")


def use_minibatch(n_cells: int, config: ScllmConfig, n_devices: int | None = None, *,
                  n_genes: int | None = None) -> bool:
    """Whether ``n_cells`` train in mini-batches (:func:`choose_engine`; ``n_genes`` default ``n_top_genes``)."""
    n_genes = config.preprocess.n_top_genes if n_genes is None else n_genes
    return choose_engine(n_cells, n_genes, config, n_devices=n_devices).minibatch


# ----------------------------------------------------------------------------- engines
# An engine hides how a run of optimiser steps and one pass over all cells are done: the
# whole graph as every step's batch (one step per epoch), or batches of cells gathered on
# the device (data parallel). The maths of a step is one (scllm_jax.step); the engines
# differ only in what a batch is and in the cell tables that batches need.

class _Engine:
    """What the training loop calls, with the whole graph's behaviour where nothing else is needed.

    Each engine also has ``dims()`` (input, genes, text widths), ``compile(graphdef,
    optimizer)``, ``run_steps(...)`` (a run of steps as one program), ``embed_all(params)``
    (latent and clustering space of every cell) and ``assign(params)`` (``Q`` of every cell).
    """

    steps_per_epoch = 1
    whole_graph = True

    def __init__(self, data, config: ScllmConfig):
        self.data, self.config = data, config

    def place(self, params):
        """``params`` where the steps read them (replicated over a mesh)."""
        return params

    def begin_epoch(self, params) -> None:
        """Refresh the cell tables an epoch's batches read (none for the whole graph)."""

    def set_target(self, target_p):
        """Give the steps a new target ``P``; returns it."""
        return target_p

    def tables_state(self) -> dict[str, np.ndarray]:
        """The cell tables a checkpoint keeps beyond ``P`` (none for the whole graph)."""
        return {}

    def load_tables(self, tables: dict[str, np.ndarray]) -> None:
        """Put back what :meth:`tables_state` gave."""


class _FullBatch(_Engine):
    """The whole graph is the one batch of every step (one step per epoch)."""

    def dims(self) -> tuple[int, int, int | None]:
        text = None if self.data.text is None else self.data.text.shape[1]
        return self.data.aggregated_input.shape[1], self.data.expression.shape[1], text

    def compile(self, graphdef, optimizer) -> None:
        config, tables = self.config, self.data
        self._steps = make_steps(graphdef, optimizer, config)
        embed = self._embed = make_embed(graphdef)
        self._assign = jax.jit(lambda params: student_t_assign(embed(params, tables, None, None)[1],
                                                               params["centres"][...], config.train.alpha))

    def run_steps(self, params, opt_state, target_p, keys, phase, epoch, index, n_steps):
        # n_steps epochs: the whole graph is every step's batch.
        return self._steps(params, opt_state, self.data._replace(target_p=target_p), None, keys, None)

    def embed_all(self, params):
        latent, embedding = self._embed(params, self.data, None, None)
        return np.asarray(latent), np.asarray(embedding)

    def assign(self, params) -> jax.Array:
        return self._assign(params)


class _MiniBatch(_Engine):
    """Batches of cells gathered on the device; the ncut's neighbours read a latent table refreshed each epoch."""

    whole_graph = False

    def __init__(self, data, config: ScllmConfig):
        super().__init__(data, config)
        self._latent = self._embedding = None
        self.steps_per_epoch = data.steps_per_epoch
        self._order_key = self._order = None

    def dims(self) -> tuple[int, int, int | None]:
        return self.data.n_inputs, self.data.n_genes, self.data.text_dim

    def compile(self, graphdef, optimizer) -> None:
        self._steps = make_steps(graphdef, optimizer, self.config, self.data.mesh)
        self._embed = make_embed(graphdef)

    def place(self, params):
        from .parallel import replicated

        return jax.device_put(params, replicated(self.data.mesh))

    def run_steps(self, params, opt_state, target_p, keys, phase, epoch, index, n_steps):
        from .minibatch import epoch_order, plan_budgets, put_batches

        size = self.data.local_batch_size
        if self._order_key != (phase, epoch):
            order = epoch_order(self.data, self.config.seed, phase, epoch).reshape(-1, size)
            # The whole epoch's order goes to the device once; a run of steps reads its rows there.
            self._order, self._order_key = put_batches(self.data, order), (phase, epoch)
            self.data.budgets = plan_budgets(self.data, order, self.data.budgets)
        batches = self._order[index:index + n_steps]
        return self._steps(params, opt_state, self.data.tables, batches, keys, self.data.budgets)

    def embed_all(self, params):
        from .minibatch import embed_all

        return embed_all(self._embed, params, self.data)

    def begin_epoch(self, params) -> None:
        from .minibatch import with_table

        # Historical latents for the ncut neighbours, refreshed once per epoch.
        self._latent, self._embedding = self.embed_all(params)
        self.data = with_table(self.data, latent=self._latent)

    def assign(self, params) -> jax.Array:
        # Uses the full pass of begin_epoch, run just before with the same params.
        return student_t_assign(jnp.asarray(self._embedding), params["centres"][...], self.config.train.alpha)

    def set_target(self, target_p):
        from .minibatch import with_table

        self.data = with_table(self.data, target_p=None if target_p is None else np.asarray(target_p))
        return target_p

    def tables_state(self) -> dict[str, np.ndarray]:
        if self._latent is None:
            return {}
        return {"latent": self._latent, "embedding": self._embedding}

    def load_tables(self, tables: dict[str, np.ndarray]) -> None:
        from .minibatch import with_table

        self._latent, self._embedding = tables["latent"], tables["embedding"]
        self.data = with_table(self.data, latent=self._latent)


def _engine(data, config: ScllmConfig):
    return _FullBatch(data, config) if isinstance(data, Tables) else _MiniBatch(data, config)


# ----------------------------------------------------------------------------- schedule
_PHASES = {"pretrain": 0, "cluster": 1}


class _Run:
    """The mutable state of one phase of training, and its checkpoints."""

    def __init__(self, engine, config: ScllmConfig, phase: str, graphdef, params, opt_state, key,
                 checkpointer, global_step: int, extra_meta: dict):
        self.engine, self.config, self.phase = engine, config, phase
        self.graphdef, self.params, self.opt_state, self.key = graphdef, params, opt_state, key
        self.checkpointer, self.global_step, self.extra_meta = checkpointer, global_step, extra_meta
        self.epoch, self.index = 0, 0
        self.history: dict[str, list[float]] = {}
        self.partial: dict[str, list[float]] = {}
        self.target_p = None
        self.previous_labels: np.ndarray | None = None
        self.stopped, self.epochs_run = False, 0

    # -- checkpoints
    def _arrays(self) -> dict:
        empty = np.zeros((0,), np.float32)
        tables = self.engine.tables_state()
        return {"params": self.params, "opt_state": self.opt_state, "key": jax.random.key_data(self.key),
                "target_p": empty if self.target_p is None else np.asarray(self.target_p),
                "labels": np.zeros((0,), np.int64) if self.previous_labels is None else self.previous_labels,
                "latent": tables.get("latent", empty), "embedding": tables.get("embedding", empty)}

    def save(self) -> None:
        partial = {name: [float(value) for value in _step_values(values)] for name, values in self.partial.items()}
        meta = {"phase": self.phase, "epoch": self.epoch, "index": self.index, "global_step": self.global_step,
                "history": self.history, "partial": partial, "epochs_run": self.epochs_run,
                "shapes": {name: list(np.shape(value)) for name, value in self._arrays().items()
                           if name in ("target_p", "labels", "latent", "embedding")}, **self.extra_meta}
        self.checkpointer.save(self.global_step, self._arrays(), meta)

    def restore(self, meta: dict) -> None:
        template = self._arrays()
        for name, shape in meta["shapes"].items():
            dtype = np.int64 if name == "labels" else np.float32
            template[name] = np.zeros(shape, dtype)
        arrays = self.checkpointer.restore_arrays(template, meta["global_step"])
        self.params = self.engine.place(jax.tree.map(jnp.asarray, arrays["params"]))
        self.opt_state = self.engine.place(jax.tree.map(jnp.asarray, arrays["opt_state"]))
        self.key = jax.random.wrap_key_data(jnp.asarray(arrays["key"]))
        self.target_p = None if arrays["target_p"].size == 0 else jnp.asarray(arrays["target_p"])
        self.engine.set_target(self.target_p)
        self.previous_labels = None if arrays["labels"].size == 0 else arrays["labels"]
        if arrays["latent"].size:
            self.engine.load_tables({"latent": arrays["latent"], "embedding": arrays["embedding"]})
        self.epoch, self.index, self.global_step = meta["epoch"], meta["index"], meta["global_step"]
        self.history, self.partial, self.epochs_run = meta["history"], meta["partial"], meta["epochs_run"]
        logger.info("resumed %s at epoch %d, batch %d (step %d)", self.phase, self.epoch, self.index,
                    self.global_step)

    # -- the loop
    def run(self, n_epochs: int, *, refresh_every: int | None, make_target=None, progress: bool,
            on_step=None) -> None:
        """Train up to ``n_epochs``; with ``refresh_every`` (clustering), refresh P and stop on label change."""
        engine, config = self.engine, self.config
        bar = tqdm(total=n_epochs, initial=self.epoch, desc="pre-training" if self.phase == "pretrain"
                   else "clustering", disable=not progress, leave=False)
        self._epoch_start = time.perf_counter()
        while self.epoch < n_epochs:
            if self.index == 0:
                engine.begin_epoch(self.params)
                if refresh_every is not None and self.epoch % refresh_every == 0:
                    assignment = engine.assign(self.params)
                    self.target_p = engine.set_target(make_target(assignment))
                    labels = np.asarray(jnp.argmax(assignment, axis=1))
                    if self.previous_labels is not None:
                        changed = float(np.mean(labels != self.previous_labels))
                        bar.set_postfix(changed=f"{changed:.4f}")
                        if changed < config.train.tol:
                            self.stopped = True
                            break
                    self.previous_labels = labels
            if engine.whole_graph:
                self._run_epochs(n_epochs, refresh_every, bar, on_step)
                continue
            epoch = self.epoch
            while self.epoch == epoch:
                # One program runs the steps up to the epoch's end or the next checkpoint.
                n_steps = self._before_checkpoint(engine.steps_per_epoch - self.index)
                self.key, subkey = jax.random.split(self.key)
                self.params, self.opt_state, terms = engine.run_steps(
                    self.params, self.opt_state, self.target_p, step_keys(subkey, n_steps), _PHASES[self.phase],
                    self.epoch, self.index, n_steps)
                # Device values, kept as they are: the host does not wait for the device.
                for name, value in _with_total(terms, config).items():
                    self.partial.setdefault(name, []).append(value)
                self.index += n_steps
                self.global_step += n_steps
                if self.index == engine.steps_per_epoch:
                    self._end_epoch()
                self._steps_done(n_steps, on_step)
            bar.update(1)
        bar.close()

    def _before_checkpoint(self, n_steps: int) -> int:
        """``n_steps``, or fewer where a checkpoint falls due before them."""
        if self.checkpointer is None:
            return n_steps
        every = self.config.train.checkpoint_every
        return min(n_steps, every - self.global_step % every)

    def _steps_done(self, n_steps: int, on_step) -> None:
        """After a run of ``n_steps`` (counters advanced): the checkpoint if one is due, then ``on_step``."""
        if self.checkpointer is not None and self.global_step % self.config.train.checkpoint_every == 0:
            self.save()
        if on_step is not None:
            for step in range(self.global_step - n_steps + 1, self.global_step + 1):
                on_step(step)

    def _run_epochs(self, n_epochs: int, refresh_every: int | None, bar, on_step) -> None:
        """Full graph: the epochs up to the next target refresh, checkpoint or the end, as one program.

        Each epoch takes the key it would take alone (the run's key split once
        per epoch), so the steps are those of one program per epoch.
        """
        n_steps = min(n_epochs - self.epoch, WHOLE_GRAPH_EPOCHS_PER_PROGRAM)
        if refresh_every is not None:
            n_steps = min(n_steps, refresh_every - self.epoch % refresh_every)
        n_steps = self._before_checkpoint(n_steps)
        keys = []
        for _ in range(n_steps):
            self.key, subkey = jax.random.split(self.key)
            keys.append(subkey)
        self.params, self.opt_state, terms = self.engine.run_steps(
            self.params, self.opt_state, self.target_p, jnp.stack(keys), _PHASES[self.phase], self.epoch, 0, n_steps)
        for name, value in _with_total(terms, self.config).items():  # one step per epoch
            self.history.setdefault(name, []).extend(float(v) for v in np.asarray(value))
        self.epoch += n_steps
        self.epochs_run += n_steps
        self.global_step += n_steps
        self._steps_done(n_steps, on_step)
        bar.update(n_steps)

    def _end_epoch(self) -> None:
        for name, values in self.partial.items():
            self.history.setdefault(name, []).append(float(np.mean(_step_values(values))))
        self.partial = {}
        self.epoch, self.index = self.epoch + 1, 0
        self.epochs_run += 1
        if self.engine.steps_per_epoch > 1:
            now = time.perf_counter()
            logger.info("%s epoch %d: %d steps in %.1f s", self.phase, self.epoch, self.engine.steps_per_epoch,
                        now - self._epoch_start)
            self._epoch_start = now


def _target_fn(config: ScllmConfig):
    targets = {"dec": dec_target, "sharpen": sharpened_target,
               "sized": lambda q: size_preserving_target(q, SINKHORN_ITERATIONS),
               "sinkhorn": lambda q: sinkhorn_target(q, SINKHORN_ITERATIONS, SINKHORN_EPSILON)}
    return jax.jit(targets[config.train.target])


def _phase_epochs(engine, config: ScllmConfig) -> tuple[int, int, int]:
    return config.train.schedule(minibatch=not engine.whole_graph)


def _checkpointer(config: ScllmConfig, fingerprint: dict):
    if config.train.checkpoint_dir is None:
        return None
    from .checkpoint import Checkpointer

    return Checkpointer(config.train.checkpoint_dir, fingerprint=fingerprint, restart=config.train.checkpoint_restart)


def pretrain(data, config: ScllmConfig, n_clusters: int = 1, *, progress: bool = True):
    """Pre-train the autoencoder (reconstruction, ncut, alignment).

    The centres (``n_clusters`` of them, zeros) take no part in
    pre-training; they are set from the start partition when clustering
    begins, so K may stay a placeholder here.

    Returns
    -------
    (graphdef, params, history, seconds)
    """
    engine = _engine(data, config)
    run = _pretrain_run(engine, config, None, n_clusters, progress=progress)
    return run.graphdef, run.params, run.history, run.seconds


def _on_host():
    """A context that makes the host's CPU the default device (nothing changes on a CPU-only run)."""
    import contextlib

    from .parallel import on_accelerator

    if not on_accelerator():
        return contextlib.nullcontext()
    try:
        return jax.default_device(jax.local_devices(backend="cpu")[0])
    except RuntimeError:  # JAX_PLATFORMS left the CPU out: build on the accelerator
        return contextlib.nullcontext()


def _pretrain_run(engine, config: ScllmConfig, checkpointer, n_clusters: int, *, progress: bool,
                  resume: dict | None = None, on_step=None) -> _Run:
    # Built with its K: the centres (zeros, created after every other layer, so no other weight changes)
    # get no gradient before the clustering phase sets them.
    began = time.perf_counter()
    graphdef, params = nnx.split(build_network(*engine.dims(), n_clusters, config), nnx.Param)
    optimizer = optax.adam(config.train.learning_rate)
    params = engine.place(params)
    opt_state = engine.place(optimizer.init(params))
    engine.compile(graphdef, optimizer)
    logger.info("network built and placed in %.1f s", time.perf_counter() - began)
    run = _Run(engine, config, "pretrain", graphdef, params, opt_state, jax.random.key(config.seed), checkpointer,
               0, {})
    if resume is not None:
        run.restore(resume)
    start = time.perf_counter()
    run.run(_phase_epochs(engine, config)[0], refresh_every=None, progress=progress, on_step=on_step)
    run.seconds = time.perf_counter() - start + (resume or {}).get("seconds", 0.0)
    return run


def cluster_optimizer(config: ScllmConfig, steps_per_refresh: int) -> optax.GradientTransformation:
    """Adam for the clustering phase, its rate ramped from 0 over the first target refresh (``cluster_warmup``).

    A fresh Adam moves every weight by about the learning rate in its first
    steps, whatever the gradient; the ramp keeps the new KL term from
    jolting the pre-trained latent away from the start partition (on
    worm_neuron the first refresh had moved it by up to 0.05 ARI).
    """
    if not config.train.cluster_warmup:
        return optax.adam(config.train.learning_rate)
    return optax.adam(optax.linear_schedule(0.0, config.train.learning_rate, max(1, steps_per_refresh)))


def _cluster_run(engine, config: ScllmConfig, graphdef, params, n_clusters: int, checkpointer, *,
                 progress: bool, global_step: int, initialise, resume: dict | None = None,
                 extra_meta: dict | None = None, on_step=None) -> _Run:
    _, n_epochs, interval = _phase_epochs(engine, config)
    optimizer = cluster_optimizer(config, interval * engine.steps_per_epoch)
    engine.compile(graphdef, optimizer)
    start = time.perf_counter()
    extra_meta = dict(extra_meta or {})
    if resume is None:
        embedding = np.asarray(engine.embed_all(params)[1])
        start_partition = initialise(embedding, n_clusters)
        extra_meta["initialisation"] = _plain_json(start_partition.summary())
        params["centres"] = nnx.Param(jnp.asarray(cluster_means(embedding, start_partition.labels, n_clusters)))
    params = engine.place(params)
    opt_state = engine.place(optimizer.init(params))
    run = _Run(engine, config, "cluster", graphdef, params, opt_state, jax.random.key(config.seed + 1),
               checkpointer, global_step, extra_meta)
    if resume is not None:
        run.restore(resume)
    run.run(n_epochs, refresh_every=interval, make_target=_target_fn(config), progress=progress, on_step=on_step)
    run.seconds = time.perf_counter() - start + (resume or {}).get("cluster_seconds", 0.0)
    return run


def _result(engine, run: _Run, pretrain_history, pretrain_seconds: float) -> FitResult:
    config = run.config
    latent, embedding = engine.embed_all(run.params)
    assignment = np.asarray(student_t_assign(jnp.asarray(embedding), run.params["centres"][...], config.train.alpha))
    seconds = {"pretrain": pretrain_seconds, "cluster": run.seconds}
    pretrain_history = pretrain_history or {}
    return FitResult(labels=assignment.argmax(axis=1), assignment=assignment, embedding=np.asarray(embedding),
                     latent=np.asarray(latent), history={"pretrain": pretrain_history, "cluster": run.history},
                     pretrain_epochs=len(pretrain_history.get("total", [])), cluster_epochs=run.epochs_run,
                     stopped_early=run.stopped, seconds=seconds, params=run.params,
                     initialisation=run.extra_meta.get("initialisation", {}))


def _plain_json(values: dict) -> dict:
    """``values`` with arrays as lists, for checkpoint metadata (JSON)."""
    return {key: value.tolist() if isinstance(value, np.ndarray) else value for key, value in values.items()}


def fit_network(data, config: ScllmConfig, n_clusters: int, *, initialise=None, progress: bool = True,
                on_step=None, fingerprint: dict | None = None) -> tuple[FitResult, nnx.GraphDef]:
    """Both phases, checkpointed and resumable when ``config.train.checkpoint_dir`` is set.

    Parameters
    ----------
    data
        Whole-graph :class:`~scllm_jax.step.Tables` (:func:`~scllm_jax.step.whole_graph_tables`) or
        :class:`~scllm_jax.minibatch.MinibatchData` (mini-batch, data parallel).
    config
        Settings; ``checkpoint_dir`` and ``checkpoint_every`` control checkpoints.
    n_clusters
        K (see :func:`~scllm_jax.n_clusters.estimate_n_clusters` when it is unknown).
    initialise
        ``f(embedding, n_clusters) -> InitialPartition``: the partition of the
        pre-trained cluster space whose cluster means become the centres
        (:func:`~scllm_jax.partition.initial_partition`); ``None``: k-means in
        that space.
    progress
        Show progress bars.
    on_step
        ``f(global_step)`` for every optimiser step, called once the run of
        steps holding it has finished (monitoring, tests).
    fingerprint
        What identifies the data of this run (e.g. a digest of the values and
        the preprocessing); with the configuration, K and the network's
        widths it makes the run's
        :func:`~scllm_jax.checkpoint.run_fingerprint`, and a checkpoint is
        resumed only by a run with the same one.

    Returns
    -------
    (FitResult, graphdef)

    Notes
    -----
    A checkpoint records the phase, epoch, batch, PRNG key, parameters,
    optimiser state, target ``P`` and loss history: a resumed run repeats
    exactly the steps an uninterrupted one would have made, losing at most
    ``checkpoint_every`` steps of work.
    """
    from .checkpoint import run_fingerprint

    engine = _engine(data, config)
    checkpointer = _checkpointer(config, run_fingerprint(config, n_clusters, engine.dims(), fingerprint))
    try:
        meta = None
        step = None if checkpointer is None else checkpointer.newest_intact_step()
        if step is not None:
            meta = checkpointer.restore_meta(step)
        if meta is None or meta["phase"] == "pretrain":
            run = _pretrain_run(engine, config, checkpointer, int(n_clusters), progress=progress, resume=meta,
                                on_step=on_step)
            graphdef, params, pretrain_history, pretrain_seconds = run.graphdef, run.params, run.history, run.seconds
            global_step = run.global_step
            resume = None
        else:
            graphdef, params = nnx.split(build_network(*engine.dims(), int(meta["n_clusters"]), config), nnx.Param)
            pretrain_history, pretrain_seconds = meta["pretrain_history"], meta["seconds"]
            n_clusters, global_step, resume = meta["n_clusters"], meta["global_step"], meta
        extra = {"pretrain_history": pretrain_history, "seconds": pretrain_seconds, "n_clusters": int(n_clusters)}
        if resume is not None:
            extra["initialisation"] = resume.get("initialisation", {})
        if initialise is None:
            initialise = lambda embedding, k: _latent_kmeans(embedding, k, config)  # noqa: E731
        run = _cluster_run(engine, config, graphdef, params, int(n_clusters), checkpointer, progress=progress,
                           global_step=global_step, initialise=initialise, resume=resume, extra_meta=extra,
                           on_step=on_step)
    finally:  # also on Ctrl-C: orbax's writer threads must finish before the interpreter exits
        if checkpointer is not None:
            checkpointer.close()
    result = _result(engine, run, pretrain_history, pretrain_seconds)
    result.resumed_from = step
    return result, graphdef
