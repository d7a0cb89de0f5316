"""Data-parallel training: one code path, the same steps on 1 device, 4 devices and 2 processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("parallel_worker.py")


def _run(out: Path, *extra: str) -> subprocess.Popen:
    # A fresh interpreter: the device count is fixed when JAX starts.
    return subprocess.Popen([sys.executable, str(WORKER), str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 240) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]


def _params(path: Path) -> list[np.ndarray]:
    stored = np.load(path)
    return [stored[f"p{i}"] for i in range(sum(name.startswith("p") for name in stored.files))]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory) -> Path:
    """The reference: the same steps on one device."""
    out = tmp_path_factory.mktemp("one") / "one.npz"
    _finish(_run(out, "--devices", "1"))
    assert int(np.load(out)["n_devices"]) == 1
    return out


def _assert_same_training(reference: Path, other: Path) -> None:
    np.testing.assert_allclose(np.load(reference)["losses"], np.load(other)["losses"], rtol=1e-4, atol=1e-5)
    for a, b in zip(_params(reference), _params(other), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_one_and_four_devices_agree(one_device, tmp_path):
    four = tmp_path / "four.npz"
    _finish(_run(four, "--devices", "4"))
    assert int(np.load(four)["n_devices"]) == 4
    _assert_same_training(one_device, four)
    # The mini-batch encoder is exact on either mesh.
    assert float(np.load(one_device)["encoder_error"]) < 1e-4
    assert float(np.load(four)["encoder_error"]) < 1e-4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_end_with_the_same_parameters(tmp_path):
    """``jax.distributed`` on loopback (gloo CPU collectives), each process feeding half of every batch.

    Both ranks end with the same parameters, and these are the parameters of a one-device run fed the
    same global batches: an all-reduce that were wrong the same way on both ranks would fail the second
    comparison.
    """
    reference = tmp_path / "one_device_same_batches.npz"
    single = _run(reference, "--devices", "1", "--batches-of-processes", "2")
    coordinator = f"127.0.0.1:{_free_port()}"
    outs = [tmp_path / f"rank{rank}.npz" for rank in range(2)]
    processes = [_run(out, "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(rank))
                 for rank, out in enumerate(outs)]
    try:
        for process in [*processes, single]:
            _finish(process)
    finally:
        for process in [*processes, single]:
            if process.poll() is None:
                process.kill()
    np.testing.assert_allclose(np.load(outs[0])["losses"], np.load(outs[1])["losses"], rtol=0, atol=0)
    for a, b in zip(_params(outs[0]), _params(outs[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(np.load(outs[0])["n_devices"]) == 2
    _assert_same_training(reference, outs[0])
    assert all(float(np.load(out)["encoder_error"]) < 1e-4 for out in outs)


def test_minibatch_encoder_matches_full_graph():
    """The mini-batch latent of a batch equals the full-graph GCN's rows (exact, no sampling), in this
    process on one device; the workers check it on 4 devices and on 2 processes."""
    import jax.numpy as jnp
    from flax import nnx

    from scllm_jax.config import ScllmConfig
    from scllm_jax.graph import graph_from_adjacency, knn_indices, normalized_adjacency
    from scllm_jax.minibatch import make_batch, minibatch_data
    from scllm_jax.modules import ScllmNetwork
    from scllm_jax.parallel import data_mesh
    from scllm_jax.step import encode_batch, whole_graph_tables

    rng = np.random.default_rng(1)
    pca = rng.normal(size=(150, 8)).astype(np.float32)
    expression = rng.normal(size=(150, 20)).astype(np.float32)
    adjacency = normalized_adjacency(knn_indices(pca, 6))
    config = ScllmConfig.tiny(minibatch_size=32)
    network = ScllmNetwork(8, 20, None, 2, hidden_dims=(16,), latent_dim=4, decoder_dims=(8,),
                           projection_dim=4, rngs=nnx.Rngs(0))
    full = whole_graph_tables(pca, expression, graph_from_adjacency(adjacency), None)
    reference = network.encode(full.aggregated_input, *full.graph)
    data = minibatch_data(pca, expression, adjacency, None, config, data_mesh())
    rows = rng.choice(150, 32, replace=False)
    latent = encode_batch(network, data.tables, make_batch(data, rows))
    np.testing.assert_allclose(np.asarray(latent), np.asarray(reference)[rows], rtol=1e-4, atol=1e-5)
    assert jnp.all(jnp.isfinite(latent))
