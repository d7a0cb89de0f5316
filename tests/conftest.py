"""Shared fixtures: real data from ../shared/data when present, else the bundled set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> ad.AnnData:
    """A labelled dataset from ../shared/data; skips the test where the folder is absent."""
    path = SHARED_DATA / f"{name}.h5ad"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return ad.read_h5ad(path)


@pytest.fixture(scope="session", autouse=True)
def _compiled_programs_in_a_scratch_folder(tmp_path_factory):
    """The CLI keeps its compiled programs on disk: the suite's runs keep theirs in a scratch folder, not ~/.cache."""
    os.environ.setdefault("SCLLM_JAX_COMPILATION_CACHE", str(tmp_path_factory.mktemp("xla")))


@pytest.fixture(scope="session")
def baron() -> ad.AnnData:
    """The bundled mouse pancreas data (always available)."""
    from scllm_jax.datasets import baron_mouse_pancreas

    return baron_mouse_pancreas()


@pytest.fixture(scope="session")
def baron_small(baron) -> ad.AnnData:
    """300 cells of the bundled data, the most common types, all genes."""
    rng = np.random.default_rng(0)
    keep = np.flatnonzero(baron.obs["cell_type"].isin(["beta", "ductal", "delta", "endothelial"]).to_numpy())
    return baron[np.sort(rng.choice(keep, 300, replace=False))].copy()


#: The value types a user's file may hold besides raw counts, built from counts by :func:`value_version`.
VALUE_VERSIONS = ("rpkm", "tpm", "log", "log1p_cpm", "log2_tpm")


def value_version(counts: ad.AnnData, kind: str) -> ad.AnnData:
    """``counts`` (raw UMI counts in ``X``) as a file of another value type would hold it.

    - ``"rpkm"``: RPKM of a full-length protocol, where a molecule of a gene
      of length ``L`` yields reads in proportion to ``L``: reads = counts x L
      (lengths drawn once, log-normal around 2 kb), RPKM = reads x 1e9 /
      (L x total reads of the cell). Non-integer, largest in the hundreds of
      thousands.
    - ``"tpm"``: TPM of the same reads, (reads / L) / sum(reads / L) x 1e6.
    - ``"log"``: scanpy's log-normalisation (``sc.pp.normalize_total`` to the
      median library size, then ``sc.pp.log1p``).
    - ``"log1p_cpm"``: ``ln(1 + CPM)``; ``"log2_tpm"``: ``log2(1 + TPM)``.

    The per-gene length cancels in RPKM and TPM as it does for real
    full-length data; what differs from counts is the scale of every cell
    and that no value is an integer.
    """
    counts_matrix = sp.csr_matrix(counts.X, dtype=np.float64)
    totals = np.asarray(counts_matrix.sum(axis=1)).ravel()
    if kind in ("log", "log1p_cpm"):
        target = np.median(totals) if kind == "log" else 1e6
        values = sp.csr_matrix(sp.diags(target / totals) @ counts_matrix)
        values.data = np.log1p(values.data)
    elif kind == "log2_tpm":
        values = value_version(counts, "tpm").X.astype(np.float64)
        values.data = np.log2(1.0 + values.data)
    else:
        length = np.random.default_rng(0).lognormal(np.log(2_000.0), 0.6, counts.n_vars)
        reads = counts_matrix @ sp.diags(length)
        reads_per_cell = np.asarray(reads.sum(axis=1)).ravel()
        if kind == "rpkm":
            values = sp.diags(1e9 / reads_per_cell) @ reads @ sp.diags(1.0 / length)
        elif kind == "tpm":
            rate = reads @ sp.diags(1.0 / length)
            values = sp.diags(1e6 / np.asarray(rate.sum(axis=1)).ravel()) @ rate
        else:
            raise ValueError(f"unknown value type {kind!r}; one of {VALUE_VERSIONS}")
    out = counts.copy()
    out.X = sp.csr_matrix(values, dtype=np.float32)
    return out


def config_file(config, folder: Path) -> Path:
    """A :class:`~scllm_jax.config.ScllmConfig` as a ``--config`` JSON file (the seed left to ``--seed``)."""
    path = folder / "config.json"
    path.write_text(json.dumps({k: v for k, v in config.to_dict().items() if k != "seed"}))
    return path


def one_error_line(capsys) -> str:
    """What a command printed on stderr: exactly one line, ``error: ...``."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
