"""Files of RPKM, TPM and log-scale values cluster as their counts do.

Each file is built from the bundled pancreas counts (822 cells, 13 types; see
``conftest.value_version``) and clustered through the command line, as a user
would; the value type must be detected by the documented rule, said in a
warning, and the clustering must stay within 0.05 ARI of the counts run.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scllm_jax.cli import main
from scllm_jax.config import ScllmConfig
from scllm_jax.io import read
from scllm_jax.metrics import cluster_metrics
from scllm_jax.preprocess import Preprocessor
from scllm_jax.validation import LOG_SCALE_MAX, check_expression, value_kind

from .conftest import VALUE_VERSIONS, config_file, value_version

K = 13
CONFIG = ScllmConfig.tiny(use_semantic=False)
#: What each file must be taken for, and the rule the warning must name.
EXPECTED = {"rpkm": ("linear", r"above 30\): taken as linear-scale normalised values \(TPM, RPKM, CPM, FPKM\), "
                               r"normalised per cell to target_sum, then log1p"),
            "tpm": ("linear", r"above 30\): taken as linear-scale normalised values"),
            "log": ("log", r"not above 30\): taken as log-scale values .*, brought back to linear scale .* "
                           r"Base found: 2.718"),
            "log1p_cpm": ("log", r"taken as log-scale values .* Base found: 2.718"),
            "log2_tpm": ("log", r"taken as log-scale values .* Base found: 2\.")}


def cluster_file(adata, folder, name: str) -> tuple[float, object]:
    """``scllm-jax cluster`` on ``adata`` written as a file; the ARI against the published types, and the result."""
    path, out, config = folder / f"{name}.h5ad", folder / f"{name}_out.h5ad", config_file(CONFIG, folder)
    adata.write_h5ad(path)
    assert main(["cluster", str(path), "--out", str(out), "--n-clusters", str(K), "--config", str(config),
                 "--quiet"]) == 0
    result = read(out)
    return cluster_metrics(result.obs["cell_type"], result.obs["scllm"])["ARI"], result


@pytest.fixture(scope="module")
def counts_ari(baron, tmp_path_factory) -> float:
    ari, result = cluster_file(baron, tmp_path_factory.mktemp("counts"), "counts")
    assert result.uns["scllm"]["input"]["values"] == "counts"
    return ari


@pytest.mark.slow
@pytest.mark.parametrize("kind", VALUE_VERSIONS)
def test_other_value_types_cluster_like_counts(kind, baron, counts_ari, tmp_path):
    values = value_version(baron, kind)
    assert not np.all(values.X.data == np.round(values.X.data))
    expected_kind, rule = EXPECTED[kind]
    with pytest.warns(UserWarning, match=rule):
        ari, result = cluster_file(values, tmp_path, kind)
    assert result.uns["scllm"]["input"]["values"] == expected_kind
    assert abs(ari - counts_ari) <= 0.05, f"{kind}: ARI {ari:.3f}, counts {counts_ari:.3f}"


def test_the_rule():
    assert value_kind(True, 5_000.0) == "counts"
    assert value_kind(True, 3.0) == "counts"
    assert value_kind(False, LOG_SCALE_MAX + 0.5) == "linear"
    assert value_kind(False, 49_957.0) == "linear"  # the largest RPKM of a human embryo data set
    assert value_kind(False, LOG_SCALE_MAX) == "log"
    assert value_kind(False, 13.8) == "log"  # log1p(CPM) reaches log1p(1e6)


@pytest.mark.parametrize("kind", VALUE_VERSIONS)
def test_detected_on_a_single_cell(baron, kind):
    """The rule gives the same answer for one cell as for all of them (predict sees small batches)."""
    values = value_version(baron[:50], kind)
    expected = EXPECTED[kind][0]
    assert check_expression(values, warn=False).kind == expected
    assert check_expression(values[:1], warn=False).kind == expected


@pytest.mark.parametrize(("kind", "base"), [("log", np.e), ("log1p_cpm", np.e), ("log2_tpm", 2.0)])
def test_the_base_of_log_values_is_the_one_that_makes_cell_totals_agree(baron, kind, base):
    values = value_version(baron[:200], kind)
    assert check_expression(values, warn=False).log_base == pytest.approx(base)


def test_log_values_of_unnormalised_data_are_taken_as_natural_logs(baron):
    from scllm_jax.validation import LOG_BASES, log_base

    values = value_version(baron[:200], "rpkm")
    values.X = values.X.astype(np.float32)
    values.X.data = np.log2(1.0 + values.X.data)  # log of RPKM: no base gives whole numbers or equal totals
    assert check_expression(values, warn=False).log_base == LOG_BASES[0] == pytest.approx(np.e)
    assert log_base({2.0: np.array([1.0, 1.0, 1.0]), np.e: np.array([1.0, 2.0, 3.0])}) == 2.0
    assert log_base({2.0: np.array([1.0, 1.0, 1.0]), np.e: np.array([1.0, 2.0, 3.0])}, {2.0: 0.2, np.e: 1.0}) == np.e


@pytest.mark.parametrize("base", [np.e, 2.0, 10.0])
def test_the_log_of_counts_is_undone_with_the_base_that_gives_whole_numbers(baron, base):
    """``log_b(1 + counts)`` with any of the three bases: the base is found (the cells' totals do not agree
    under any), and the preprocessed cells are those of the counts."""
    counts = baron[:200].copy()
    logged = counts.copy()
    logged.X = sp.csr_matrix(counts.X, dtype=np.float64)
    logged.X.data = (np.log1p(logged.X.data) / np.log(base)).astype(np.float32)
    logged.X = logged.X.astype(np.float32)
    assert check_expression(logged, warn=False).log_base == pytest.approx(base)
    _, from_counts = Preprocessor.fit(counts, CONFIG)
    _, from_logs = Preprocessor.fit(logged, CONFIG)
    np.testing.assert_allclose(np.abs(from_logs.pca), np.abs(from_counts.pca), rtol=1e-3, atol=1e-3)
