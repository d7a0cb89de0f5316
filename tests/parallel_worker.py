"""Worker for the parallel tests: a few mini-batch training steps, results saved to ``.npz``.

Run as a script (JAX must see its device count, or join its distributed run,
before it is imported)::

    python parallel_worker.py OUT.npz [--devices N] [--process-id P --num-processes M --coordinator HOST:PORT]
                                      [--batches-of-processes M]

``--batches-of-processes M`` makes a one-process run feed the global batches an
``M``-process run feeds (each process draws its own rows in its own order), so
that the two can be compared step for step.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--batches-of-processes", type=int, default=1)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    from scllm_jax.parallel import initialize_distributed

    if args.coordinator:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    import numpy as np
    import optax
    from flax import nnx

    from scllm_jax.config import ScllmConfig
    from scllm_jax.graph import knn_indices, normalized_adjacency
    from scllm_jax.minibatch import epoch_order, minibatch_data, plan_budgets, put_batches, with_table
    from scllm_jax.modules import ScllmNetwork
    from scllm_jax.parallel import data_mesh, replicated
    from scllm_jax.step import make_steps, step_keys

    config = ScllmConfig.tiny(minibatch_size=64, hidden_dims=(32,), decoder_dims=(32,), latent_dim=8,
                              projection_dim=8)
    rng = np.random.default_rng(0)
    n_cells, n_genes, n_pcs, text_dim = 200, 40, 10, 12
    centres = rng.normal(size=(4, n_pcs)) * 3
    pca = (centres[rng.integers(0, 4, n_cells)] + rng.normal(size=(n_cells, n_pcs))).astype(np.float32)
    expression = rng.normal(size=(n_cells, n_genes)).astype(np.float32)
    text = rng.normal(size=(n_cells, text_dim)).astype(np.float32)
    adjacency = normalized_adjacency(knn_indices(pca, 5))
    mesh = data_mesh()
    data = minibatch_data(pca, expression, adjacency, text, config, mesh)
    data = with_table(data, latent=rng.normal(size=(n_cells, config.network.latent_dim)).astype(np.float32),
                      target_p=rng.dirichlet(np.ones(3), n_cells).astype(np.float32))
    network = ScllmNetwork(n_pcs, n_genes, text_dim, 3, hidden_dims=config.network.hidden_dims,
                           latent_dim=config.network.latent_dim, decoder_dims=config.network.decoder_dims,
                           projection_dim=config.network.projection_dim, rngs=nnx.Rngs(0))
    # Distinct centres: with identical ones the centre gradient is 0 up to rounding, which Adam amplifies.
    network.centres[...] = rng.normal(size=(3, config.network.projection_dim)).astype(np.float32)
    graphdef, params = nnx.split(network, nnx.Param)
    optimizer = optax.adam(1e-2)
    params = jax.device_put(params, replicated(mesh))
    opt_state = optimizer.init(params)
    run_steps = make_steps(graphdef, optimizer, config, mesh)
    order = epoch_order(data, 0, 0, 0)
    losses = []
    size = data.local_batch_size
    for i in range(args.steps):
        rows = order[(i % data.steps_per_epoch) * size:][:size]
        if args.batches_of_processes > 1:
            rows = batch_of_processes(data, i, args.batches_of_processes)
        rows = np.asarray(rows)[None, :]
        budgets = plan_budgets(data, rows)
        params, opt_state, terms = run_steps(params, opt_state, data.tables, put_batches(data, rows),
                                             step_keys(jax.random.key(i), 1), budgets)
        losses.append([float(terms[name][0]) for name in sorted(terms)])
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
    np.savez(args.out, losses=np.asarray(losses), n_devices=jax.device_count(),
             encoder_error=encoder_error(graphdef, params, data, pca, expression, adjacency, text),
             **{f"p{i}": leaf for i, leaf in enumerate(leaves)})
    print("devices", jax.device_count(), "processes", jax.process_count(), "losses", losses[-1])
    if args.coordinator:
        jax.distributed.shutdown()
    sys.exit(0)


def batch_of_processes(data, step: int, n_processes: int):
    """The global batch of ``step`` as ``n_processes`` processes assemble it (see ``minibatch.epoch_order``):
    each takes its block of rows, permuted by its own generator, and contributes its share in rank order."""
    import numpy as np

    share = data.batch_size // n_processes
    per_process = -(-data.n_cells // n_processes)
    parts = []
    for rank in range(n_processes):
        cells = np.arange(rank * per_process, min((rank + 1) * per_process, data.n_cells))
        order = np.resize(cells[np.random.default_rng([0, 0, 0, rank]).permutation(cells.size)],
                          data.steps_per_epoch * share)
        parts.append(order[(step % data.steps_per_epoch) * share:][:share])
    return np.concatenate(parts)


def encoder_error(graphdef, params, data, pca, expression, adjacency, text) -> float:
    """Largest difference between the latent of one sharded mini-batch (on this run's mesh) and the rows
    of the full-graph encoder: the mini-batch encoder must be exact on any number of devices."""
    import jax
    import numpy as np
    from flax import nnx

    from scllm_jax.graph import graph_from_adjacency
    from scllm_jax.minibatch import make_batch
    from scllm_jax.parallel import to_host
    from scllm_jax.step import encode_batch, whole_graph_tables

    host = nnx.merge(graphdef, jax.device_get(params))
    full = whole_graph_tables(pca, expression, graph_from_adjacency(adjacency), text)
    reference = np.asarray(host.encode(full.aggregated_input, *full.graph))
    rows = data.local_cells[:data.local_batch_size]
    batch = make_batch(data, rows)
    latent = jax.jit(lambda p, tables, b: encode_batch(nnx.merge(graphdef, p), tables, b))(params, data.tables, batch)
    cells = to_host(batch.cells)
    return float(np.max(np.abs(to_host(latent) - reference[cells])))


if __name__ == "__main__":
    main()
