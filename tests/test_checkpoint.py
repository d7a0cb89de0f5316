"""Checkpointing: a run killed mid-way and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("checkpoint_worker.py")


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]


def _saved_steps(directory: Path) -> list[int]:
    # Orbax writes into a temporary folder and renames it: a bare number is a finished checkpoint.
    return [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.exists() else []


def test_killed_run_resumes_to_the_same_result(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    reference = _start(tmp_path / "reference.npz")
    victim = _start(tmp_path / "killed.npz", "--checkpoint-dir", checkpoints, "--slow", "0.3")
    deadline = time.monotonic() + 240
    while not _saved_steps(checkpoints) and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.2)
    assert victim.poll() is None, "the run ended before it could be killed"
    assert _saved_steps(checkpoints), "no checkpoint was written"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _finish(reference)
    resumed = _start(tmp_path / "resumed.npz", "--checkpoint-dir", checkpoints)
    _finish(resumed)
    ref, out = np.load(tmp_path / "reference.npz"), np.load(tmp_path / "resumed.npz")
    assert int(out["resumed_from"]) > 0
    np.testing.assert_array_equal(ref["labels"], out["labels"])
    np.testing.assert_allclose(ref["total"], out["total"], rtol=1e-5, atol=1e-6)
    params = [name for name in ref.files if name.startswith("p")]
    assert params
    for name in params:
        np.testing.assert_allclose(ref[name], out[name], rtol=1e-5, atol=1e-6)
