"""Host overhead of the mini-batch engine: wall time of a training epoch vs the device time of its programs.

An epoch as training runs it (:class:`scllm_jax.train._Run`): the full
embedding pass that refreshes the ncut neighbours' latent, the host's plan
of the epoch (order of cells, budgets) and one program running every step.
The device time is the same programs timed alone on inputs already in place
(``block_until_ready``). Median of repeats, one row per size.

Examples
--------
::

    python benchmarks/engine_overhead.py --cells 100000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tsv_rows import append_row

COLUMNS = ["n_cells", "device", "steps_per_epoch", "epoch_wall_s", "device_s", "embed_device_s",
           "steps_device_s", "wall_over_device", "repeats"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device-label", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "engine_overhead.tsv"))
    args = parser.parse_args()

    import jax
    import optax
    from flax import nnx

    from scllm_jax.config import ScllmConfig
    from scllm_jax.graph import knn_indices, normalized_adjacency
    from scllm_jax.minibatch import embed_plan, epoch_order, minibatch_data, plan_budgets, put_batches
    from scllm_jax.parallel import data_mesh
    from scllm_jax.preprocess import Preprocessor
    from scllm_jax.step import step_keys
    from scllm_jax.synthetic import synthetic_atlas
    from scllm_jax.train import _MiniBatch, build_network

    for n_cells in args.cells:
        config = ScllmConfig(minibatch_min_cells=1)
        adata = synthetic_atlas(n_cells, 2000, 20, seed=0)
        _, prepared = Preprocessor.fit(adata, config)
        adjacency = normalized_adjacency(knn_indices(prepared.pca, config.graph.n_neighbors, seed=0))
        data = minibatch_data(prepared.pca, prepared.expression, adjacency, None, config, data_mesh())
        engine = _MiniBatch(data, config)
        graphdef, params = nnx.split(build_network(*engine.dims(), 1, config), nnx.Param)
        optimizer = optax.adam(config.train.learning_rate)
        params = engine.place(params)
        opt_state = engine.place(optimizer.init(params))
        engine.compile(graphdef, optimizer)
        steps = engine.steps_per_epoch

        def epoch(params, opt_state, number):
            engine.begin_epoch(params)
            keys = step_keys(jax.random.key(number), steps)
            params, opt_state, terms = engine.run_steps(params, opt_state, None, keys, 0, number, 0, steps)
            jax.block_until_ready(terms)
            return params, opt_state

        params, opt_state = epoch(params, opt_state, 0)  # compiles
        walls = []
        for number in range(1, args.repeats + 1):
            start = time.perf_counter()
            params, opt_state = epoch(params, opt_state, number)
            walls.append(time.perf_counter() - start)

        # The same programs alone, their inputs in place.
        order = epoch_order(data, config.seed, 0, 1).reshape(-1, data.local_batch_size)
        batches, budgets = put_batches(data, order), plan_budgets(data, order, data.budgets)
        embed_times, step_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            blocks, embed_budgets = embed_plan(engine.data)
            jax.block_until_ready(engine._embed(params, data.tables._replace(latent=None, target_p=None), blocks,
                                                embed_budgets))
            embed_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            params, opt_state, terms = engine._steps(params, opt_state, engine.data.tables, batches,
                                                     step_keys(jax.random.key(0), steps), budgets)
            jax.block_until_ready(terms)
            step_times.append(time.perf_counter() - start)
        wall, embed_s, steps_s = (float(np.median(v)) for v in (walls, embed_times, step_times))
        append_row(Path(args.out), COLUMNS, {
            "n_cells": n_cells, "device": args.device_label, "steps_per_epoch": steps,
            "epoch_wall_s": round(wall, 3), "device_s": round(embed_s + steps_s, 3),
            "embed_device_s": round(embed_s, 3), "steps_device_s": round(steps_s, 3),
            "wall_over_device": round(wall / (embed_s + steps_s), 3), "repeats": args.repeats})


if __name__ == "__main__":
    main()
