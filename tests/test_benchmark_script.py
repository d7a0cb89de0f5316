"""``benchmarks/run_benchmark.py``: resuming, the scanpy baselines, the neighbours work-around, the summary.

Small: 150 real mouse pancreas cells, fits run in this process (the script's own
spawned-process path is exercised by running the benchmark itself).
"""

from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark_script(name: str):
    """Import ``benchmarks/<name>.py`` as a module for the tests of one file, then drop its folder from the path."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def rb():
    yield from _benchmark_script("run_benchmark")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, baron) -> Path:
    """A folder with one small real dataset: 150 cells of four types, gene symbols."""
    rng = np.random.default_rng(1)
    keep = np.flatnonzero(baron.obs["cell_type"].isin(["beta", "ductal", "delta", "endothelial"]).to_numpy())
    small = baron[np.sort(rng.choice(keep, 150, replace=False))].copy()
    small.obs["cell_type"] = small.obs["cell_type"].cat.remove_unused_categories()
    small.uns["gene_symbols"] = True
    folder = tmp_path_factory.mktemp("bench_data")
    small.write_h5ad(folder / "pancreas_small.h5ad")
    return folder


def _row(dataset, method, seed, ari, semantic=""):
    return {"dataset": dataset, "method": method, "seed": str(seed), "n_cells": "150", "n_genes": "2000", "K": "4",
            "clusters_found": "4", "ARI": str(ari), "NMI": "0.5", "ACC": "0.6", "F1": "0.5", "fit_seconds": "1.5",
            "seconds_per_epoch": "0.01" if method.startswith("scllm") else "", "n_epochs": "",
            "peak_memory_gb": "0.4", "semantic_used": semantic, "genes_matched_fraction": ""}


def test_plan_runs_semantic_ablations_only_with_gene_symbols(rb, data_dir, tmp_path, baron):
    jobs, skipped = rb.plan(data_dir, None, list(rb.ALL_METHODS), [0, 1], ablations=True)
    assert len(jobs) == len(rb.ALL_METHODS) * 2 and not skipped
    jobs, _ = rb.plan(data_dir, None, list(rb.ALL_METHODS), [0], ablations=False)
    assert {j["method"] for j in jobs} == {"scllm_full", "scllm_paper", "scllm_auto_k", "leiden_r1", "kmeans", "ward"}
    no_symbols = tmp_path / "no_symbols"
    no_symbols.mkdir()
    small = baron[:50].copy()
    small.uns["gene_symbols"] = False
    small.write_h5ad(no_symbols / "anon.h5ad")
    jobs, skipped = rb.plan(no_symbols, None, list(rb.ALL_METHODS), [0], ablations=True)
    # The structural ablation does not need gene symbols; the semantic ones are skipped, each said.
    assert {j["method"] for j in jobs} == {"scllm_full", "scllm_paper", "scllm_auto_k", "leiden_r1", "kmeans",
                                           "ward", *rb.STRUCTURAL_ABLATIONS}
    assert len(skipped) == len(rb.ABLATIONS)
    with pytest.raises(SystemExit, match="Unknown datasets"):
        rb.plan(data_dir, ["nope"], ["kmeans"], [0], ablations=True)


@pytest.mark.parametrize("method", ["kmeans", "leiden_r1", "ward"])
def test_baseline_fit_scores_a_real_dataset(rb, data_dir, method):
    result = rb.run_fit({"dataset": "pancreas_small", "path": str(data_dir / "pancreas_small.h5ad"),
                         "method": method, "seed": 0})
    row = result["row"]
    assert set(row) == set(rb.COLUMNS)
    assert row["K"] == 4 and row["n_cells"] == 150
    assert 0.3 < row["ARI"] <= 1.0  # four well separated pancreas types
    assert row["fit_seconds"] > 0 and row["peak_memory_gb"] > 0.05
    assert row["seconds_per_epoch"] == "" and row["semantic_used"] == ""


def test_rerun_skips_rows_already_in_the_tsv(rb, data_dir, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    for seed in (0, 1):
        rb.append_row(out / "benchmark.tsv", _row("pancreas_small", "kmeans", seed, 0.8))
    assert rb.main(["--data-dir", str(data_dir), "--methods", "kmeans", "--seeds", "0", "1",
                    "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 fits planned, 2 already in" in printed and "0 to run" in printed
    assert len(rb.read_rows(out / "benchmark.tsv")) == 2
    assert (out / "benchmark.md").exists() and (out / "benchmark_ari.png").exists()
    assert rb.main(["--data-dir", str(data_dir), "--methods", "kmeans", "--seeds", "0", "1", "2",
                    "--out-dir", str(out), "--dry-run"]) == 0
    assert "pancreas_small kmeans seed=2" in capsys.readouterr().out


def test_tsv_round_trip_keeps_the_columns(rb, tmp_path):
    path = tmp_path / "b.tsv"
    rb.append_row(path, {**_row("d", "scllm_full", 0, 0.7, "True"), "ARI": 0.123456789, "semantic_used": True})
    with path.open() as handle:
        header = next(csv.reader(handle, delimiter="\t"))
    assert tuple(header) == rb.COLUMNS
    (row,) = rb.read_rows(path)
    assert row["ARI"] == "0.123457" and row["semantic_used"] == "True"
    assert rb.done_keys([row]) == {("d", "scllm_full", 0)}


def test_older_tsv_gains_new_columns_without_shifting_values(rb, tmp_path):
    path = tmp_path / "b.tsv"
    old_columns = [c for c in rb.COLUMNS if c != "clusters_found"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old_columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerow({k: v for k, v in _row("d", "kmeans", 0, 0.61).items() if k in old_columns})
    assert rb.upgrade_tsv(path)
    rb.append_row(path, {**_row("d", "scllm_auto_k", 0, 0.72), "clusters_found": 9})
    old, new = rb.read_rows(path)
    assert (old["ARI"], old["clusters_found"], old["F1"]) == ("0.61", "", "0.5")
    assert (new["ARI"], new["clusters_found"], new["F1"]) == ("0.72", "9", "0.5")
    assert not rb.upgrade_tsv(path)  # already today's header


def test_auto_k_method_is_not_told_k(rb, data_dir):
    import anndata as ad

    adata = ad.read_h5ad(data_dir / "pancreas_small.h5ad")
    truth = adata.obs.pop("cell_type")
    adata.uns["gene_symbols"] = False  # graph only: no language model in this test
    labels, extra = rb._fit_scllm(adata, "scllm_auto_k", 0, n_clusters=int(truth.nunique()))
    assert adata.uns["scllm"]["params"]["n_clusters_given"] is False
    assert len(labels) == adata.n_obs and len(set(labels)) >= 2 and extra["n_epochs"] > 0


def test_summary_says_whether_scllm_beats_leiden(rb, tmp_path):
    rows = [_row("cellbench_5cl_p1", m, s, a, "True" if m.startswith("scllm") else "")
            for m, aris in (("scllm_full", (0.9, 0.95, 1.0)), ("leiden_r1", (0.971,) * 3), ("kmeans", (0.97,) * 3))
            for s, a in enumerate(aris)]
    rows += [_row("other", "scllm_full", 0, 0.5), _row("other", "leiden_r1", 0, 0.4)]
    md = tmp_path / "benchmark.md"
    rb.write_markdown(rows, md, "python benchmarks/run_benchmark.py", "seeds 0 1 2")
    text = md.read_text()
    assert "| cellbench_5cl_p1 | scllm_full | 3 | 4.0 | 0.950 ± 0.050 |" in text
    assert "cellbench_5cl_p1: scllm_full mean ARI 0.950 >= leiden_r1 0.971? **no**" in text
    assert "other: scllm_full mean ARI 0.500 >= leiden_r1 0.400? **yes**" in text
    assert "| cellbench_5cl_p1 | leiden_r1 | 0,1,2 | 0.971 | 0.971 | +0.000 |" in text
    assert "python benchmarks/run_benchmark.py" in text and "platform:" in text and "scanpy" in text
    rb.write_chart(rows, tmp_path / "ari.png")
    assert (tmp_path / "ari.png").read_bytes()[:4] == b"\x89PNG"


def test_neighbors_workaround_gives_scanpy_graph(rb, monkeypatch):
    """From 8192 cells scanpy switches to pynndescent, whose csr_array has no ``getnnz`` in scipy >= 1.15.

    The work-around builds the very graph scanpy's default path builds where ``getnnz`` exists.
    """
    import anndata as ad
    import scanpy as sc

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(6, 10))
    points = (centres[rng.integers(0, 6, rb.SCANPY_EXACT_KNN_BELOW + 8)] + rng.normal(size=(rb.SCANPY_EXACT_KNN_BELOW + 8, 10)))
    ours = ad.AnnData(points.astype(np.float32))
    reference = ours.copy()

    monkeypatch.delattr(sp.csr_array, "getnnz", raising=False)  # as in scipy >= 1.15
    assert rb.scanpy_neighbors(ours, n_neighbors=15, seed=3).startswith("pynndescent")
    assert isinstance(ours.obsp["connectivities"], sp.spmatrix | sp.sparray)

    monkeypatch.setattr(sp.csr_array, "getnnz", lambda self, axis=None: np.diff(self.indptr) if axis == 1
                        else self.nnz, raising=False)  # what older scipy offered
    sc.pp.neighbors(reference, n_neighbors=15, random_state=3)  # scanpy's own default path
    for key in ("distances", "connectivities"):
        assert ours.obsp[key].nnz == reference.obsp[key].nnz
        assert abs(ours.obsp[key] - reference.obsp[key]).max() == 0


def test_permuted_symbols_control_fits_on_permuted_names(rb, data_dir, monkeypatch):
    import anndata as ad

    adata = ad.read_h5ad(data_dir / "pancreas_small.h5ad")
    truth = adata.obs.pop("cell_type")
    # The control's own override turns the semantic view on; a short path-1 run keeps the test fast.
    assert rb.SCLLM_METHODS["scllm_permuted_symbols"] == {"use_semantic": True}
    monkeypatch.setitem(rb.SCLLM_METHODS, "scllm_permuted_symbols",
                        {"use_semantic": True, "pretrain_epochs": 10, "cluster_epochs": 10})
    labels, extra = rb._fit_scllm(adata, "scllm_permuted_symbols", 0, n_clusters=int(truth.nunique()))
    assert extra["semantic_used"] is True and len(labels) == adata.n_obs
    assert "scllm" not in adata.obs  # the fit ran on a permuted copy, not on the caller's data
    assert "scllm_permuted_symbols" in rb.ABLATIONS  # only where there are symbols to permute


@pytest.fixture(scope="module")
def criteria():
    yield from _benchmark_script("selection_criteria")


def test_selection_criteria_measures_both_partitions_and_summarises(criteria, data_dir, tmp_path, capsys):
    """``benchmarks/selection_criteria.py``: one real fit, both partitions measured, each criterion's pick."""
    out = tmp_path / "criteria.tsv"
    path = data_dir / "pancreas_small.h5ad"
    assert criteria.main([str(path), "--out", str(out)]) == 0
    assert criteria.main([str(path), "--out", str(out)]) == 0  # the row is there: not fitted again
    with out.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 1 and rows[0]["K"] == "4" and rows[0]["chosen"] in ("head", "pca_ward", "pca_ward_consolidated")
    for name in ("head", "ward"):
        shares = float(rows[0][f"{name}_largest_share"])
        assert 0.25 <= shares <= 1.0 and float(rows[0][f"{name}_expected_agreement"]) <= shares + 1e-4
        assert -1.0 <= float(rows[0][f"{name}_ari"]) <= 1.0
        assert 0.0 <= float(rows[0][f"{name}_agreement_expression"]) <= 1.0
    # The default's criterion (the three spaces' chance-corrected agreement) reproduces the fit's own choice.
    head, ward = criteria.scores(rows[0], "head"), criteria.scores(rows[0], "ward")
    full = int(rows[0]["head_filled"]) == 4
    assert (rows[0]["chosen"] == "head") == (full and head["kappa_three_spaces"] >= ward["kappa_three_spaces"])
    agreements = [float(rows[0][f"head_agreement_{space}"]) for space in ("pca", "space", "expression")]
    expected = float(rows[0]["head_expected_agreement"])
    assert head["three_spaces"] == pytest.approx(sum(agreements) / 3)
    assert head["kappa_three_spaces"] == pytest.approx(sum((a - expected) / (1 - expected) for a in agreements) / 3)
    printed = capsys.readouterr().out
    assert "pancreas_small" in printed and "oracle" in printed and "kappa_three_spaces" in printed


# ------------------------------------------------------------------- reference_candidates.py


@pytest.fixture(scope="module")
def rc():
    yield from _benchmark_script("reference_candidates")


def test_parallel_analysis_counts_the_planted_components(rc):
    """Three planted directions in noise: three components stand above their permuted counterparts."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(400, 3)) * np.array([6.0, 5.0, 4.0])
    loadings = np.linalg.qr(rng.normal(size=(200, 3)))[0].T * 10
    inputs = rc.Inputs.__new__(rc.Inputs)  # only what the count reads
    inputs.scaled = (scores @ loadings + rng.normal(size=(400, 200))).astype(np.float32)
    inputs.pca, inputs.seed, inputs._kept = np.zeros((400, 20)), 0, {}
    assert rc.parallel_analysis_count(inputs) == 3


def test_consensus_of_agreeing_partitions_is_that_partition(rc):
    """Co-association of partitions that agree (up to names) gives that partition back; a split of one block
    in a minority of members does not survive."""
    planted = np.repeat(np.arange(3), [50, 30, 20])
    inputs = rc.Inputs.__new__(rc.Inputs)
    inputs.n_clusters, inputs.seed = 3, 0
    renamed = (planted + 1) % 3
    split = planted.copy()
    split[:25] = 3  # the largest block cut in two
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(planted, rc.consensus([planted, renamed, planted, split], inputs)) == 1.0


def test_candidates_write_one_row_each_and_a_rerun_adds_none(rc, data_dir, tmp_path, capsys):
    out = tmp_path / "candidates.tsv"
    names = ["ward", "kmeans", "consensus_dims", "spectral_kmeans", "unit_ward", "pearson_ward"]
    args = [str(data_dir / "pancreas_small.h5ad"), "--candidates", *names, "--out", str(out)]
    assert rc.main(args) == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [row["candidate"] for row in rows] == names
    assert all(-1.0 <= float(row["ARI"]) <= 1.0 for row in rows)
    ward = next(row for row in rows if row["candidate"] == "ward")
    assert float(ward["ARI"]) > 0.5  # four pancreas types, Ward on the default's principal components
    assert rc.main(args) == 0
    with out.open() as handle:
        assert len(list(csv.DictReader(handle, delimiter="\t"))) == len(names)
    rc.main(["--summary", "--out", str(out)])
    assert "ward" in capsys.readouterr().out


# ------------------------------------------------------------------------------ stress_sets.py


@pytest.fixture(scope="module")
def stress_sets():
    yield from _benchmark_script("stress_sets")


def test_balanced_subsample_gives_every_kept_type_the_same_count(stress_sets):
    """Types of 300, 120 and 55 cells are cut to 55 each; a type of 10 cells is dropped; the seed fixes the draw."""
    labels = np.repeat(np.array(["big", "mid", "small", "rare"]), [300, 120, 55, 10])
    rows = stress_sets.balanced_subsample(labels, per_type=150, seed=0, min_cells=40)
    kinds, counts = np.unique(labels[rows], return_counts=True)
    assert kinds.tolist() == ["big", "mid", "small"] and counts.tolist() == [55, 55, 55]
    assert np.array_equal(rows, np.unique(rows))  # sorted, no cell twice
    capped = stress_sets.balanced_subsample(labels, per_type=20, seed=0, min_cells=40)
    assert np.unique(labels[capped], return_counts=True)[1].tolist() == [20, 20, 20]
    assert np.array_equal(rows, stress_sets.balanced_subsample(labels, per_type=150, seed=0, min_cells=40))
    assert not np.array_equal(capped, stress_sets.balanced_subsample(labels, per_type=20, seed=1, min_cells=40))
    with pytest.raises(ValueError, match="fewer than two types"):
        stress_sets.balanced_subsample(labels, per_type=150, seed=0, min_cells=200)


def test_stress_subsample_gives_the_dominant_type_its_fraction(stress_sets):
    """The largest type holds the asked fraction of the subsample (within one cell)."""
    labels = np.repeat(np.array(["a", "b", "c", "d", "e"]), [400, 300, 200, 100, 50])
    for fraction in stress_sets.DOMINANT_FRACTIONS:
        kept = labels[stress_sets.stress_subsample(labels, fraction, seed=0)]
        kinds, counts = np.unique(kept, return_counts=True)
        assert abs(counts.max() - fraction * kept.size) <= 1.0 and kinds.size >= 3
