"""The command line: output paths and ``--config`` checked before any work, results written
whole or not at all, Ctrl-C answered with one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from scllm_jax.checkpoint import Checkpointer
from scllm_jax.cli import main
from scllm_jax.config import ScllmConfig
from scllm_jax.io import write_h5ad

from .conftest import config_file, one_error_line


@pytest.fixture(scope="module")
def cells_file(baron, tmp_path_factory) -> Path:
    """200 real cells as an .h5ad file."""
    path = tmp_path_factory.mktemp("input") / "cells.h5ad"
    baron[:200].copy().write_h5ad(path)
    return path


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def unwritable_folder(tmp_path: Path) -> Path:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if _writable(locked):  # root ignores permission bits; sysfs refuses new files even to root
        locked = Path("/sys")
    if not locked.is_dir() or _writable(locked):
        pytest.skip("no folder on this machine refuses writes")
    return locked


# ------------------------------------------------------------------ --out, before any work


@pytest.mark.parametrize("case", ["folder", "under a file", "csv", "no permission"])
def test_bad_output_path_is_refused_before_reading_the_input(tmp_path, capsys, case):
    """The input does not even exist: the output path is what is reported, so it was checked first."""
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "folder.h5ad").mkdir()
    out, expected = {
        "folder": (tmp_path / "folder.h5ad", r"is a folder; name a file in it, e\.g\. .*result\.h5ad"),
        "under a file": (tmp_path / "a_file" / "out.h5ad", r"a_file is a file, not a folder; choose another path"),
        "csv": (tmp_path / "result.csv", r"the result is written as AnnData \(HDF5\); give the file the \.h5ad "
                                         r"suffix, e\.g\. result\.h5ad"),
        "no permission": (None, r"cannot write in .* choose a folder you can write to"),
    }[case]
    if out is None:
        out = unwritable_folder(tmp_path) / "sub" / "out.h5ad"
    assert main(["cluster", str(tmp_path / "missing.h5ad"), "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: --out {out}"), line
    assert re.search(expected, line), line
    assert not (tmp_path / "result.csv").exists()


def test_bad_plots_folder_is_refused_before_reading_the_input(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["cluster", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "o.h5ad"),
                 "--plots", str(tmp_path / "a_file")]) == 2
    assert "--plots" in one_error_line(capsys)


def test_result_is_written_whole_or_not_at_all(baron, tmp_path):
    adata = baron[:5].copy()
    adata.uns["unwritable"] = object()  # anndata fails half-way through the file
    out = tmp_path / "out.h5ad"
    with pytest.raises(Exception):
        write_h5ad(adata, out)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one
    del adata.uns["unwritable"]
    write_h5ad(adata, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]


# ------------------------------------------------------------------------ --config


@pytest.mark.parametrize("content, expected", [
    ('{"pretrain_epochs": 5,}', r"is not valid JSON \(Expecting property name .* at line 1, column 23\); fix the file"),
    ('[1, 2]', r"holds a JSON list, not an object of ScllmConfig fields"),
    ('{"pretrain_epoch": 5}', r": Unknown ScllmConfig settings \['pretrain_epoch'\] \(pretrain_epoch: did you mean "
                              r"pretrain_epochs\?\)"),
    ('{"train": {"pretrain_epoch": 5}}', r"Unknown settings \['pretrain_epoch'\] in the 'train' section"),
    ('{"pretrain_epochs": -1}', r": Invalid ScllmConfig: pretrain_epochs must be >= 0"),
])
def test_bad_config_file_is_named(cells_file, tmp_path, capsys, content, expected):
    config = tmp_path / "settings.json"
    config.write_text(content)
    assert main(["cluster", str(cells_file), "--out", str(tmp_path / "o.h5ad"), "--config", str(config)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: --config {config}"), line
    assert re.search(expected, line), line


def test_missing_config_file_is_named(cells_file, tmp_path, capsys):
    config = tmp_path / "nowhere.json"
    assert main(["cluster", str(cells_file), "--out", str(tmp_path / "o.h5ad"), "--config", str(config)]) == 2
    assert one_error_line(capsys) == f"error: --config {config}: cannot be read (No such file or directory); " \
                                 "check the path."


def test_restart_without_a_checkpoint_folder_is_refused(cells_file, tmp_path, capsys):
    assert main(["cluster", str(cells_file), "--out", str(tmp_path / "o.h5ad"), "--restart"]) == 2
    assert "--restart discards the checkpoints of a checkpoint folder, but none is given" in one_error_line(capsys)


# ------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_prints_one_line_writes_nothing_and_keeps_the_checkpoint(cells_file, tmp_path):
    checkpoints, out = tmp_path / "checkpoints", tmp_path / "out.h5ad"
    config = config_file(ScllmConfig.tiny(pretrain_epochs=5000, checkpoint_every=20), tmp_path)
    # A terminal's Ctrl-C: SIGINT handled as Python does by default, even when this suite runs in a background
    # job (whose children start with SIGINT ignored).
    command = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from scllm_jax.cli import main; sys.exit(main())", "cluster",
               str(cells_file), "--out", str(out), "--n-clusters", "3", "--graph-only", "--quiet",
               "--config", str(config), "--checkpoint-dir", str(checkpoints)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while process.poll() is None and time.monotonic() < deadline and not any(
                p.name.isdigit() for p in checkpoints.glob("*")):
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        time.sleep(1.0)  # well inside training, between or during checkpoints
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert err.strip().splitlines() == [
        "error: interrupted (Ctrl-C); results are written only when a run completes; the last checkpoint in "
        f"{checkpoints} is intact: run the same command to resume."]
    assert list(tmp_path.glob("*out*")) == []  # no output, no partial file
    saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    reader = Checkpointer(checkpoints)
    assert reader.newest_intact_step() == saved[-1] > 0  # read back whole, nothing set aside
    assert reader.restore_meta(saved[-1])["phase"] == "pretrain"
    assert np.isfinite(reader.restore_meta(saved[-1])["history"]["total"]).all()


# ------------------------------------------------------------------- compiled programs


def test_a_second_run_loads_the_compiled_programs_and_writes_the_same_clusters(cells_file, tmp_path):
    """``scllm-jax cluster`` keeps its compiled programs on disk (also on a CPU): a second run of the same data
    reads them back, and its clusters and embedding are bitwise the first run's."""
    import anndata as ad

    cache = tmp_path / "xla"
    env = {**os.environ, "SCLLM_JAX_COMPILATION_CACHE": str(cache)}
    config = config_file(ScllmConfig.tiny(), tmp_path)
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}.h5ad"
        done = subprocess.run([sys.executable, "-m", "scllm_jax.cli", "cluster", str(cells_file), "--out", str(out),
                               "--n-clusters", "3", "--graph-only", "--quiet", "--config", str(config)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        if run == 0:
            kept = sorted(p.name for p in cache.iterdir())
            assert len(kept) >= 5, kept  # the training steps, the embedding pass, ...
        outputs.append(ad.read_h5ad(out))
    assert sorted(p.name for p in cache.iterdir()) == kept  # nothing new compiled: every program was loaded
    np.testing.assert_array_equal(outputs[1].obs["scllm"].to_numpy(), outputs[0].obs["scllm"].to_numpy())
    np.testing.assert_array_equal(outputs[1].obsm["X_scllm"], outputs[0].obsm["X_scllm"])


# ------------------------------------------------------------------- repeated gene names


def test_repeated_gene_names_are_made_unique_with_a_warning(baron, tmp_path):
    """A file whose gene names repeat (symbols converted from Ensembl ids) is clustered: the command line
    suffixes the repeats as scanpy does, says so, and writes those names; the Python API still refuses them."""
    import anndata as ad

    cells = baron[:200].copy()
    names = list(cells.var_names)
    names[1] = names[0]
    cells.var_names = names
    path = tmp_path / "repeated.h5ad"
    cells.write_h5ad(path)
    out = tmp_path / "out.h5ad"
    config = config_file(ScllmConfig.tiny(), tmp_path)
    with pytest.warns(UserWarning, match=rf"1 gene names repeat \(e\.g\. \['{names[0]}'\]\); they were made unique"):
        main(["cluster", str(path), "--out", str(out), "--n-clusters", "3", "--graph-only", "--quiet",
              "--config", str(config)])
    written = ad.read_h5ad(out)
    assert written.var_names.is_unique
    assert list(written.var_names[:2]) == [names[0], f"{names[0]}-1"]
    assert written.obs["scllm"].nunique() == 3


# ------------------------------------------------------------------- scanpy's processed files


def _cluster_files(files: dict, folder: Path) -> tuple[dict, dict]:
    """Write each AnnData of ``files`` to ``folder``, cluster it with the command line (K = 3, tiny settings),
    and return what each run wrote and the text of the warnings it gave."""
    import anndata as ad

    config = config_file(ScllmConfig.tiny(), folder)
    written, said = {}, {}
    for name, adata in files.items():
        path, out = folder / f"{name}.h5ad", folder / f"out_{name}.h5ad"
        adata.write_h5ad(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["cluster", str(path), "--out", str(out), "--n-clusters", "3", "--graph-only", "--quiet",
                         "--config", str(config)]) in (0, None)
        said[name] = " ".join(str(w.message) for w in caught)
        written[name] = ad.read_h5ad(out)
    return written, said


def test_scaled_x_with_log_expression_in_raw_clusters_raw(baron, tmp_path):
    """scanpy's usual processed file: every gene's log expression in ``raw``, scaled variable genes in ``X``.
    The command line clusters ``raw`` with a warning, writes the clusters next to the scaled ``X`` (kept as it
    was), and gives the clusters that the same cells' counts give."""
    import scanpy as sc

    counts = baron[:200].copy()
    processed = counts.copy()
    sc.pp.normalize_total(processed, target_sum=1e4)
    sc.pp.log1p(processed)
    processed.raw = processed
    processed = processed[:, :500].copy()
    sc.pp.scale(processed, max_value=10)
    assert processed.X.min() < 0
    written, said = _cluster_files({"counts": counts, "processed": processed}, tmp_path)
    assert ["clustering adata.raw (" in said[name] for name in ("counts", "processed")] == [False, True]
    result = written["processed"]
    np.testing.assert_array_equal(result.X, processed.X)  # the scaled matrix is kept as it was
    assert result.uns["scllm"]["input"]["layer"] == "raw"
    assert result.obs["scllm"].dtype == "category"
    assert result.uns["scllm"]["input"]["values"] == "log"
    np.testing.assert_array_equal(result.obs["scllm"].to_numpy(), written["counts"].obs["scllm"].to_numpy())


def test_cells_without_counts_are_left_out_with_a_warning(baron, tmp_path):
    """Empty droplets do not cost the whole run: the command line clusters the other cells exactly as it
    clusters a file without them, leaves the empty ones without a cluster (missing label, NaN embedding rows),
    says so, and records how many; the Python API still refuses them."""
    import scipy.sparse as sp

    from scllm_jax import tl
    from scllm_jax.validation import InputError

    cells = baron[:200].copy()
    cells.X = sp.csr_matrix(cells.X)
    empty = [7, 150]
    with_empty = cells.copy()
    dense = with_empty.X.toarray()
    dense[empty] = 0
    with_empty.X = sp.csr_matrix(dense)
    without = with_empty[np.setdiff1d(np.arange(200), empty)].copy()
    written, said = _cluster_files({"with_empty": with_empty, "without": without}, tmp_path)
    assert ["2 cells have no counts at all" in said[name] for name in ("with_empty", "without")] == [True, False]
    result = written["with_empty"]
    assert result.n_obs == 200
    labels = result.obs["scllm"]
    assert labels.dtype == "category"
    assert list(np.flatnonzero(labels.isna())) == empty
    assert np.isnan(result.obsm["X_scllm"][empty]).all() and not np.isnan(np.delete(result.obsm["X_scllm"], empty,
                                                                                     axis=0)).any()
    assert result.uns["scllm"]["input"]["cells_without_counts"] == 2
    np.testing.assert_array_equal(labels.dropna().to_numpy(), written["without"].obs["scllm"].to_numpy())
    with pytest.raises(InputError, match=r"2 cells have no counts at all"):
        tl.cluster(with_empty, 3, config=ScllmConfig.tiny(), progress=False)
