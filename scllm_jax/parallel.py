"""Devices, meshes and multi-host start-up for data-parallel training.

One code path serves one device, several devices of one host and several
hosts: every array the training step reads is a global ``jax.Array`` on a 1-D
mesh with axis ``"data"``. Per-cell arrays (tables indexed by cell, and the
cells of a mini-batch) are sharded over that axis, parameters and optimiser
state are replicated, and ``jax.jit`` inserts the collectives (the gradient
all-reduce included). A process only ever supplies its own rows
(:func:`put_rows`, built on ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, local_device_ids: list[int] | None = None) -> bool:
    """Join a multi-process JAX run (one process per host, or per GPU).

    Call it once per process, before anything else touches JAX devices.
    Arguments left ``None`` are read from the environment, in this order:

    - ``SCLLM_COORDINATOR``, ``SCLLM_NUM_PROCESSES``, ``SCLLM_PROCESS_ID``
      (explicit, any launcher);
    - Slurm (``SLURM_JOB_ID`` set): ``jax.distributed.initialize()`` detects
      coordinator, process count and rank itself (one task per process);
    - TPU pods / Cloud TPU VMs: likewise auto-detected by JAX.

    On CPU the cross-process collectives use gloo
    (``jax_cpu_collectives_implementation``).

    Parameters
    ----------
    coordinator_address
        ``host:port`` of process 0.
    num_processes
        Number of processes in the run.
    process_id
        Rank of this process, ``0 .. num_processes - 1``.
    local_device_ids
        Devices this process drives (default: all it sees).

    Returns
    -------
    bool
        ``True`` if a multi-process run was initialised, ``False`` when there
        is nothing to join (a single process: no call is needed).

    Examples
    --------
    Slurm, one task per node (``srun python train.py``)::

        initialize_distributed()          # reads the Slurm environment

    Two processes on one machine (testing)::

        initialize_distributed("127.0.0.1:12355", 2, rank)
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("SCLLM_COORDINATOR")
    if num_processes is None and "SCLLM_NUM_PROCESSES" in env:
        num_processes = int(env["SCLLM_NUM_PROCESSES"])
    if process_id is None and "SCLLM_PROCESS_ID" in env:
        process_id = int(env["SCLLM_PROCESS_ID"])
    auto = "SLURM_JOB_ID" in env or "TPU_WORKER_HOSTNAMES" in env or "CLOUD_TPU_TASK_ID" in env
    if coordinator_address is None and not auto:
        return False
    if num_processes == 1:
        return False
    # CPU collectives across processes need an implementation (gloo ships with jaxlib); the setting
    # only affects the CPU backend. Not jax.default_backend(): that would start the backend too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)
    logger.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                jax.local_device_count(), jax.device_count())
    return True


def on_accelerator() -> bool:
    """Whether JAX's default device is an accelerator (then the atlas-scale stages before training run on it)."""
    return jax.default_backend() != "cpu"


#: Environment variable naming the folder of compiled programs kept between runs ("0" or "off": none).
COMPILATION_CACHE_ENV = "SCLLM_JAX_COMPILATION_CACHE"


def use_compilation_cache() -> str | None:
    """Keep compiled programs on disk between runs; returns the folder used, or ``None`` when turned off.

    Compiling the programs of a fit (kNN, k-means, the training steps of
    both phases, the embedding pass) takes tens of seconds of a one-minute
    atlas run on a GPU, and about 3 s of a 15 s ``scllm-jax cluster`` of
    4,186 cells on 2 CPU cores. The same shapes come back when the same
    command runs again, so a later run loads them instead; the loaded
    programs give bitwise the same output. Another seed of the same data
    reuses them too: the whole graph's edge count, which the randomised PCA
    moves with the seed, is padded to a shared size
    (:func:`~scllm_jax.step.padded_edge_count`). Every program is kept, the quick ones too: on a CPU most compile
    in under half a second, but they add up. The folder is
    ``$SCLLM_JAX_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/scllm-jax/xla``
    (``~/.cache`` when unset);
    ``SCLLM_JAX_COMPILATION_CACHE=0`` turns it off. A folder that cannot be
    written only costs the saving (JAX warns and compiles).
    """
    setting = os.environ.get(COMPILATION_CACHE_ENV, "")
    if setting.lower() in ("0", "off", "false", "no"):
        return None
    folder = setting or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                     "scllm-jax", "xla")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    logger.info("compiled programs kept in %s (%s=0 turns this off)", folder, COMPILATION_CACHE_ENV)
    return folder


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process) with axis ``"data"``."""
    devices = jax.devices() if devices is None else devices
    # jax.devices() lists devices process by process, so each process owns a contiguous block of rows.
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters and optimiser state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def row_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of per-cell arrays: rows split over the ``"data"`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def padded_rows(n_rows: int, mesh: Mesh) -> int:
    """``n_rows`` rounded up to a multiple of the mesh size (sharded dimensions must divide evenly)."""
    size = mesh.devices.size
    return -(-n_rows // size) * size


def process_rows(n_rows: int, mesh: Mesh) -> tuple[int, int]:
    """``[start, stop)`` of the padded global rows this process holds."""
    total = padded_rows(n_rows, mesh)
    per_process = total // jax.process_count()
    start = jax.process_index() * per_process
    return start, start + per_process


def put_rows(local_rows: np.ndarray, n_rows: int, mesh: Mesh) -> jax.Array:
    """Assemble a row-sharded global array from each process's own rows.

    Parameters
    ----------
    local_rows
        This process's rows ``process_rows(n_rows, mesh)`` of the global
        array (rows past ``n_rows`` may be missing: they are zero padding).
    n_rows
        Global number of (unpadded) rows.
    mesh
        The data mesh.
    """
    start, stop = process_rows(n_rows, mesh)
    local_rows = np.asarray(local_rows)
    if local_rows.shape[0] < stop - start:
        pad = np.zeros((stop - start - local_rows.shape[0], *local_rows.shape[1:]), dtype=local_rows.dtype)
        local_rows = np.concatenate([local_rows, pad])
    global_shape = (padded_rows(n_rows, mesh), *local_rows.shape[1:])
    return jax.make_array_from_process_local_data(row_sharded(mesh), local_rows, global_shape)


def put_global_rows(rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """Row-shard an array every process holds in full (each keeps only its own rows)."""
    start, stop = process_rows(rows.shape[0], mesh)
    return put_rows(rows[start:min(stop, rows.shape[0])], rows.shape[0], mesh)


def to_host(array: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) global array as NumPy, on every process."""
    if jax.process_count() == 1:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def agree_max(value: int) -> int:
    """The largest of ``value`` over all processes (padding budgets must match everywhere)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([value], dtype=np.int64))))
