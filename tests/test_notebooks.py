"""The notebooks in notebooks/ run end to end in quick mode and draw their figures.

Each notebook runs in a fresh kernel of this interpreter (a kernelspec written to a
temporary folder, so no Jupyter installation outside the test is used or changed),
with ``SCLLM_NOTEBOOK_QUICK=1`` and ``notebooks/`` as working directory. The executed
copies stay in memory; the committed notebooks are never rewritten. Language-model
embeddings go to an empty cache of the test (``SCLLM_JAX_CACHE``), never to the user's
``~/.cache/scllm_jax``: what a notebook computes, and how long it takes, does not depend on
earlier runs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
BENCHMARK_TSV = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "benchmark.tsv"
KERNEL_NAME = "scllm-jax-test"
CELL_TIMEOUT_S = 600
NAMES = ["01_quickstart", "02_bring_your_own_data", "03_benchmark", "04_scale"]


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec for ``sys.executable`` found first on JUPYTER_PATH; quick mode on; an empty embedding cache."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "scllm-jax tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("SCLLM_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("SCLLM_JAX_CACHE", str(tmp_path / "embedding_cache"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("SCLLM_BENCHMARK_TSV", raising=False)
    return tmp_path


def _run(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return notebook


def _outputs(notebook, kind: str) -> list:
    return [out for cell in notebook.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if kind in out.get("data", {})]


def _text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _write_benchmark_fixture(path: Path) -> None:
    """A small table in the layout of benchmarks/results/benchmark.tsv."""
    header = ["dataset", "method", "seed", "n_cells", "n_genes", "K", "ARI", "NMI", "ACC", "F1", "fit_seconds",
              "seconds_per_epoch", "n_epochs", "peak_memory_gb", "semantic_used", "genes_matched_fraction"]
    lines = ["\t".join(header)]
    for d, dataset in enumerate(["baron_mouse1", "worm_neuron"]):
        for m, method in enumerate(["scllm_full", "scllm_graph_only", "scllm_no_infonce", "leiden_r1", "kmeans"]):
            for seed in range(3):
                score = 0.5 + 0.05 * m - 0.1 * d + 0.01 * seed
                scllm = method.startswith("scllm_")
                lines.append("\t".join(map(str, [
                    dataset, method, seed, 822, 14878, 13, score, score + 0.1, score + 0.05, score - 0.05,
                    30.0 + seed, 0.1 if scllm else "", 400 if scllm else "", 1.5,
                    (method != "scllm_graph_only") if scllm else "", 0.85 if scllm else ""])))
    path.write_text("\n".join(lines) + "\n")


def test_committed_notebooks_are_clean():
    """Committed without outputs or execution counts, and with no absolute paths."""
    for name in NAMES:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not cleared"
            assert "/work/" not in cell.source and "/home/" not in cell.source and "/tmp/" not in cell.source


def test_quickstart(kernel_env):
    notebook = _run("01_quickstart")
    assert len(_outputs(notebook, "image/png")) >= 3  # UMAP, training curves, confusion
    text = _text(notebook)
    assert "quick mode" in text and "ARI" in text
    # The semantic view ran, from the shipped gene embeddings (path 1; Cell2Sentence is off by default).
    assert "semantic view used: True" in text


def test_bring_your_own_data(kernel_env):
    notebook = _run("02_bring_your_own_data")
    assert len(_outputs(notebook, "image/png")) >= 1
    text = _text(notebook)
    assert "matched the knowledge base" in text
    assert "estimated K:" in text
    agreement = re.search(r"([0-9.]+)% agree with tl.cluster", text)
    assert agreement is not None and float(agreement.group(1)) >= 95.0


def test_benchmark(kernel_env, monkeypatch):
    if not BENCHMARK_TSV.exists():
        fixture = kernel_env / "benchmark.tsv"
        _write_benchmark_fixture(fixture)
        monkeypatch.setenv("SCLLM_BENCHMARK_TSV", str(fixture))
    notebook = _run("03_benchmark")
    assert len(_outputs(notebook, "image/png")) >= 2  # all methods, ablations
    text = _text(notebook)
    assert "No benchmark table" not in text
    assert "scllm_full" in text


def test_benchmark_without_table_stops_gracefully(kernel_env, monkeypatch):
    monkeypatch.setenv("SCLLM_BENCHMARK_TSV", str(kernel_env / "missing.tsv"))
    notebook = _run("03_benchmark")
    assert "run_benchmark.py" in _text(notebook)
    assert _outputs(notebook, "image/png") == []


def test_scale(kernel_env):
    notebook = _run("04_scale")
    text = _text(notebook)
    assert "CpuDevice(id=3)" in text and "CpuDevice(id=4)" not in text  # 4 host devices
    assert "mini-batch, data-parallel path: True" in text
    assert "ARI" in text
    assert len(_outputs(notebook, "image/png")) >= 1  # scaling curve (scaling_cpu.tsv is committed)
