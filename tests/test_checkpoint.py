"""Checkpointing: a run killed mid-way and resumed ends where an uninterrupted run ends; a
checkpoint resumes only its own run; a damaged step gives way to the intact one before it."""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scllm_jax import ScllmModel
from scllm_jax.config import ScllmConfig
from scllm_jax.validation import InputError

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
    saved = max(_saved_steps(checkpoints))
    _finish(reference)
    resumed = _start(tmp_path / "resumed.npz", "--checkpoint-dir", checkpoints)
    _finish(resumed)
    ref, out = np.load(tmp_path / "reference.npz"), np.load(tmp_path / "resumed.npz")
    # The fit reports the step it resumed from, and ran only the steps after it.
    assert int(ref["resumed_from"]) == -1
    assert int(out["resumed_from"]) == saved > 0
    total_steps = int(ref["steps"][-1])
    np.testing.assert_array_equal(ref["steps"], np.arange(1, total_steps + 1))
    np.testing.assert_array_equal(out["steps"], np.arange(saved + 1, total_steps + 1))
    np.testing.assert_array_equal(ref["labels"], out["labels"])
    np.testing.assert_allclose(ref["total"], out["total"], rtol=1e-5, atol=1e-6)
    params = [name for name in ref.files if name.startswith("p")]
    assert params
    for name in params:
        np.testing.assert_allclose(ref[name], out[name], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- which run a folder resumes

#: A few epochs of real training, a checkpoint every 4 steps (the newest two are kept).
CHECKPOINTED = ScllmConfig.tiny(use_semantic=False, pretrain_epochs=10, cluster_epochs=10, tol=0.0,
                                checkpoint_every=4, kmeans_n_init=1)


@pytest.fixture(scope="module")
def cells(baron):
    """Two sets of 100 real cells with the same genes: the same shape, other data."""
    return baron[:100].copy(), baron[100:200].copy()


@pytest.fixture(scope="module")
def finished(cells, tmp_path_factory):
    """A checkpointed run to its end: the folder and the model."""
    folder = tmp_path_factory.mktemp("run") / "checkpoints"
    model = ScllmModel(CHECKPOINTED.replace(checkpoint_dir=str(folder))).fit(cells[0], 3, progress=False)
    assert model.result.resumed_from is None
    assert sorted(_saved_steps(folder)) == [16, 20]
    return folder, model


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoints"
    shutil.copytree(folder, copy)
    return copy


def test_same_run_resumes(cells, finished, tmp_path):
    folder, first = finished
    folder = _copy(folder, tmp_path)
    again = ScllmModel(CHECKPOINTED.replace(checkpoint_dir=str(folder))).fit(cells[0], 3, progress=False)
    assert again.result.resumed_from == 20
    np.testing.assert_array_equal(again.labels_, first.labels_)


@pytest.mark.parametrize("change, differs", [
    ("data", r"the data \(another digest of the values\)"),
    ("seed", r"config.seed 1 here, 0 in the checkpoint"),
    ("n_clusters", r"n_clusters 4 here, 3 in the checkpoint"),
])
def test_another_run_is_refused(cells, finished, tmp_path, change, differs):
    folder = _copy(finished[0], tmp_path)
    config = CHECKPOINTED.replace(checkpoint_dir=str(folder), seed=1 if change == "seed" else 0)
    data = cells[1] if change == "data" else cells[0]
    with pytest.raises(InputError, match=rf"Checkpoint folder {re.escape(str(folder))} holds another run: {differs}\. "
                                         r"A checkpoint resumes only the same data and settings; pass another "
                                         r"checkpoint_dir, or pass checkpoint_restart=True \(--restart\)"):
        ScllmModel(config).fit(data, 4 if change == "n_clusters" else 3, progress=False)


def test_restart_starts_afresh(cells, tmp_path):
    folder = tmp_path / "checkpoints"
    ScllmModel(CHECKPOINTED.replace(checkpoint_dir=str(folder), pretrain_epochs=8, cluster_epochs=0)).fit(
        cells[1], 3, progress=False)
    assert _saved_steps(folder)
    config = CHECKPOINTED.replace(checkpoint_dir=str(folder), checkpoint_restart=True)
    model = ScllmModel(config).fit(cells[0], 3, progress=False)
    assert model.result.resumed_from is None
    assert sorted(_saved_steps(folder)) == [16, 20]
    record = json.loads((folder / "run.json").read_text())
    assert record["data"] == model.preprocessor.input_digest


def _damage(step_folder: Path) -> None:
    """Cut the largest array file of a checkpoint step short, as a crash or a full disk would."""
    largest = max((p for p in step_folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:1000])


def test_damaged_newest_step_falls_back_to_the_step_before(cells, finished, tmp_path, caplog):
    folder, first = finished
    folder = _copy(folder, tmp_path)
    _damage(folder / "20")
    with caplog.at_level(logging.WARNING, logger="scllm_jax.checkpoint"):
        model = ScllmModel(CHECKPOINTED.replace(checkpoint_dir=str(folder))).fit(cells[0], 3, progress=False)
    assert "checkpoint step 20" in caplog.text and "cannot be read" in caplog.text
    assert "resuming from checkpoint step 16" in caplog.text
    assert model.result.resumed_from == 16
    # Four steps trained again from step 16 end where the uninterrupted run ended.
    np.testing.assert_array_equal(model.labels_, first.labels_)
    assert sorted(_saved_steps(folder)) == [16, 20]


def test_no_intact_step_names_the_folder_to_delete(cells, finished, tmp_path):
    folder = _copy(finished[0], tmp_path)
    for step in ("16", "20"):
        _damage(folder / step)
    with pytest.raises(InputError, match=rf"No checkpoint in {re.escape(str(folder))} can be read \(step 20: .*\); "
                                         rf"delete the folder {re.escape(str(folder))}, or pass checkpoint_restart"):
        ScllmModel(CHECKPOINTED.replace(checkpoint_dir=str(folder))).fit(cells[0], 3, progress=False)


def test_checkpoint_of_an_older_layout_is_refused(cells, finished, tmp_path):
    """A folder written before the network was built with its K (no ``layout`` in ``run.json``) is refused,
    naming the layout, instead of failing on mismatched array shapes."""
    folder = _copy(finished[0], tmp_path)
    record = folder / "run.json"
    stored = json.loads(record.read_text())
    del stored["layout"]
    record.write_text(json.dumps(stored))
    with pytest.raises(InputError, match=r"holds another run: saved arrays of layout 1 \(an older scllm-jax\), layout 2 here\. "
                                         r"A checkpoint resumes only the same data and settings; pass another "
                                         r"checkpoint_dir, or pass checkpoint_restart=True \(--restart\)"):
        ScllmModel(CHECKPOINTED.replace(checkpoint_dir=str(folder))).fit(cells[0], 3, progress=False)
