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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np


class Checkpointer:
    """Save and restore training state under one folder.

    Parameters
    ----------
    directory
        Checkpoint folder (created if missing).
    max_to_keep
        Newest checkpoints kept.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                               create=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, ``None`` if there is none."""
        return self.manager.latest_step()

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
        self.manager.close()
