"""Training checkpoints (orbax): everything a run needs to resume bit for bit.

A checkpoint holds the parameters, the optimiser state, the PRNG key, the
cell tables that carry state between steps (target ``P``, the latent table
of mini-batch ncut, the last labels of the stopping rule) and, as JSON, the
position in the schedule (phase, epoch, batch, step), the number of clusters
and the loss history. Arrays are saved as a flat list of leaves: restoring
unflattens them into the structure of a freshly built network, so the
checkpoint does not depend on how flax lays out its pytrees. Orbax writes
to a temporary folder and renames it, so a crash mid-save leaves the
previous checkpoint intact.

A folder belongs to one run: ``run.json`` records its fingerprint (the data,
how they were read and preprocessed, the configuration with its seed, the
number of clusters and the network's widths), and a run with another
fingerprint is refused instead of resuming someone else's weights. A step
that cannot be read (a truncated file) is set aside for the newest intact
one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .validation import InputError

logger = logging.getLogger(__name__)

#: Settings of the ``train`` section that do not change what a run computes: left out of its fingerprint.
_BOOKKEEPING = ("checkpoint_dir", "checkpoint_every", "checkpoint_restart")
_RUN_FILE = "run.json"
_AFRESH = "pass checkpoint_restart=True (--restart) to discard it and start afresh"


#: What the saved arrays look like; checkpoints of another layout are refused (with the differences named).
#: 2: the network is built with its K from pre-training on (layout 1 had one placeholder centre).
CHECKPOINT_LAYOUT = 2


def run_fingerprint(config, n_clusters: int, dims: tuple, data: dict | None = None) -> dict:
    """What identifies a training run: a checkpoint resumes only a run with the same fingerprint.

    Parameters
    ----------
    config
        The :class:`~scllm_jax.config.ScllmConfig` (seed included; the
        checkpoint settings left out).
    n_clusters
        K.
    dims
        Widths of the network's inputs (principal components, genes, text).
    data
        What the caller knows of the data, e.g. a digest of the values read
        and the preprocessing applied.
    """
    settings = config.to_dict()
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in _BOOKKEEPING}
    return json.loads(json.dumps({"config": settings, "n_clusters": int(n_clusters), "dims": list(dims),
                                  "layout": CHECKPOINT_LAYOUT, **(data or {})}))


def _differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    """Readable ``name: value here vs value in the checkpoint`` for every field that differs."""
    found = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            if key == "data":
                found.append("the data (another digest of the values)")
            elif key == "layout":
                found.append(f"saved arrays of layout {old if old is not None else 1} (an older scllm-jax), "
                             f"layout {new} here")
            else:
                found.append(f"{prefix}{key} {new!r} here, {old!r} in the checkpoint")
    return found


class Checkpointer:
    """Save and restore training state under one folder.

    Parameters
    ----------
    directory
        Checkpoint folder (created if missing).
    max_to_keep
        Newest checkpoints kept.
    fingerprint
        The run's :func:`run_fingerprint`. Checkpoints already in the folder
        must carry the same one; ``None`` skips the check (reading only).
    restart
        Delete the checkpoints in the folder and start afresh.

    Raises
    ------
    InputError
        The folder holds checkpoints of another run (the message names what
        differs), or checkpoints without a fingerprint.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 2, *, fingerprint: dict | None = None,
                 restart: bool = False):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise InputError(f"checkpoint_dir {self.directory} is a file; name a folder for the checkpoints.")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        if restart and self.manager.all_steps():
            logger.warning("checkpoint_restart: deleting checkpoints %s in %s", list(self.manager.all_steps()),
                           self.directory)
            for step in self.manager.all_steps():
                self.manager.delete(step)
        if fingerprint is not None:
            self._claim(fingerprint)

    def _claim(self, fingerprint: dict) -> None:
        """Refuse a folder of another run; record this run's fingerprint in an empty one."""
        record = self.directory / _RUN_FILE
        if self.manager.all_steps():
            if not record.exists():
                raise InputError(f"Checkpoint folder {self.directory} holds checkpoints without a record of their "
                                 f"run ({_RUN_FILE}; written by an older scllm-jax?), so they cannot be matched to "
                                 f"this run; delete the folder, or {_AFRESH}.")
            differences = _differences(json.loads(record.read_text()), fingerprint)
            if differences:
                raise InputError(f"Checkpoint folder {self.directory} holds another run: "
                                 f"{'; '.join(differences[:4])}. A checkpoint resumes only the same data and "
                                 f"settings; pass another checkpoint_dir, or {_AFRESH}.")
        elif jax.process_index() == 0:
            record.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, ``None`` if there is none."""
        return self.manager.latest_step()

    def newest_intact_step(self) -> int | None:
        """Step of the newest checkpoint that reads back whole, ``None`` if there is none.

        Newer steps that cannot be read (a truncated or damaged file) are
        deleted, with a logged warning, so the run resumes from the step
        before and can write them again.

        Raises
        ------
        InputError
            There are checkpoints but none of them reads back; the message
            names the folder to delete.
        """
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                ocp = self._ocp
                self.manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(),
                                                                   meta=ocp.args.JsonRestore()))
            except Exception as error:  # orbax and tensorstore raise many types for damaged files
                reason = " ".join(str(error).split())[:200]
                damaged.append((step, reason))
                logger.warning("checkpoint step %d in %s cannot be read (%s); trying the step before",
                               step, self.directory, reason)
                continue
            for bad, _ in damaged:
                self.manager.delete(bad)
            if damaged:
                logger.warning("resuming from checkpoint step %d in %s; deleted the damaged step(s) %s",
                               step, self.directory, [bad for bad, _ in damaged])
            return step
        if damaged:
            step, reason = damaged[0]
            raise InputError(f"No checkpoint in {self.directory} can be read (step {step}: {reason}); delete the "
                             f"folder {self.directory}, or {_AFRESH}.")
        return None

    def save(self, step: int, arrays: Any, meta: dict) -> None:
        """Write checkpoint ``step``.

        Parameters
        ----------
        arrays
            A pytree of arrays (PRNG keys already turned into key data).
        meta
            JSON-serialisable schedule state.
        """
        leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(arrays)]
        # Orbax refuses zero-size arrays; absent tables are empty and rebuilt from the template on restore.
        tree = {f"{i:05d}": leaf for i, leaf in enumerate(leaves) if leaf.size}
        ocp = self._ocp
        with _interrupt_after():
            self.manager.save(step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(tree),
                                                            meta=ocp.args.JsonSave(meta)), force=True)
            self.manager.wait_until_finished()

    def restore_meta(self, step: int | None = None) -> dict:
        """The JSON part of checkpoint ``step`` (newest by default)."""
        step = self.latest_step() if step is None else step
        ocp = self._ocp
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_arrays(self, template: Any, step: int | None = None) -> Any:
        """The arrays of checkpoint ``step`` in the structure (and dtypes) of ``template``."""
        step = self.latest_step() if step is None else step
        leaves, treedef = jax.tree.flatten(template)
        abstract = {f"{i:05d}": np.zeros(np.shape(leaf), dtype=np.asarray(leaf).dtype)
                    for i, leaf in enumerate(leaves) if np.size(leaf)}
        ocp = self._ocp
        stored = self.manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract)))
        restored = [np.asarray(stored["arrays"][f"{i:05d}"]) if np.size(leaf) else np.asarray(leaf)
                    for i, leaf in enumerate(leaves)]
        for i, (old, new) in enumerate(zip(leaves, restored)):
            if np.shape(old) != new.shape:
                raise ValueError(f"Checkpoint leaf {i} has shape {new.shape}, expected {np.shape(old)}: "
                                 "the checkpoint belongs to another model or data set.")
        return jax.tree.unflatten(treedef, restored)

    def close(self) -> None:
        """Wait for orbax's background writers and release the folder."""
        with _interrupt_after():
            self.manager.close()


@contextlib.contextmanager
def _interrupt_after():
    """Hold back Ctrl-C until the block ends, then raise it.

    A save cut short leaves orbax's writer threads running into interpreter
    shutdown (a screen of tracebacks) and no new step; finishing the save
    first keeps the promise that the newest checkpoint is whole.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
