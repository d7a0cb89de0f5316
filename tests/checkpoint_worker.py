"""Worker for the checkpoint test: a small mini-batch fit, optionally checkpointed and slowed down.

    python checkpoint_worker.py OUT.npz [--checkpoint-dir DIR] [--slow SECONDS]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--slow", type=float, default=0.0, help="sleep after each step (to be killed mid-way)")
    args = parser.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np

    from scllm_jax.config import ScllmConfig
    from scllm_jax.graph import knn_indices, normalized_adjacency
    from scllm_jax.minibatch import minibatch_data
    from scllm_jax.parallel import data_mesh
    from scllm_jax.train import fit_network

    config = ScllmConfig.tiny(minibatch_size=64, pretrain_epochs=4, cluster_epochs=4,
                              update_interval=1, tol=0.0, hidden_dims=(32,), decoder_dims=(32,),
                              latent_dim=8, checkpoint_dir=args.checkpoint_dir, checkpoint_every=7)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 10)) * 4
    labels = rng.integers(0, 3, 300)
    pca = (centres[labels] + rng.normal(size=(300, 10))).astype(np.float32)
    expression = (pca @ rng.normal(size=(10, 30))).astype(np.float32)
    data = minibatch_data(pca, expression, normalized_adjacency(knn_indices(pca, 6)), None, config, data_mesh())
    steps = []  # the optimiser steps this process runs

    def on_step(step: int) -> None:
        steps.append(step)
        time.sleep(args.slow)

    result, _ = fit_network(data, config, 3, progress=False, on_step=on_step)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(result.params)]
    # resumed_from: as the fit reports it (-1: started afresh).
    np.savez(args.out, labels=result.labels, resumed_from=-1 if result.resumed_from is None else result.resumed_from,
             steps=np.asarray(steps, np.int64), total=np.asarray(result.history["cluster"]["total"]),
             **{f"p{i}": leaf for i, leaf in enumerate(leaves)})


if __name__ == "__main__":
    main()
