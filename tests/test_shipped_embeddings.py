"""The gene embeddings shipped for the default model: content, provenance, and use without the model."""

from __future__ import annotations

import numpy as np
import pytest

from scllm_jax.config import ScllmConfig
from scllm_jax.knowledge import language_model as lm
from scllm_jax.knowledge.gene_table import load_gene_knowledge
from scllm_jax.knowledge.gene_text import PROMPT_VERSION, gene_prompts
from scllm_jax.knowledge.shipped_embeddings import load_shipped_embeddings, shipped_vectors, write_shipped_embeddings
from scllm_jax.semantic import gene_embedding_table


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_embeddings()


@pytest.fixture(scope="module")
def knowledge():
    return load_gene_knowledge()


def test_shipped_file_covers_every_described_gene(shipped, knowledge):
    assert shipped.model == lm.DEFAULT_MODEL and shipped.prompt_version == PROMPT_VERSION
    assert shipped.embedding_version == lm.EMBEDDING_VERSION and shipped.max_length == 256
    assert shipped.fingerprint == lm.model_fingerprint(lm.DEFAULT_MODEL)
    assert set(shipped.symbols) == set(knowledge.described) and len(shipped.symbols) > 22_000
    assert shipped.vectors.dtype == np.float16 and shipped.vectors.shape == (len(shipped.symbols), 384)
    norms = np.linalg.norm(shipped.vectors.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def test_shipped_vectors_match_a_fresh_embedding_by_the_real_model(shipped, knowledge):
    pytest.importorskip("transformers")
    # INS and CD3E, a gene with a long GO text and one of the last rows.
    symbols = ["INS", "CD3E", "TP53", str(shipped.symbols[-1])]
    prompts = gene_prompts(symbols, knowledge)
    fresh = lm.embed_texts(prompts, progress=False)
    stored, found = shipped.lookup(symbols, prompts)
    assert found.all()
    cosine = np.sum(fresh * stored, axis=1) / np.linalg.norm(stored, axis=1)
    assert cosine.min() > 0.999, cosine


def test_a_changed_text_or_another_model_is_not_served_from_the_file(shipped, knowledge):
    prompts = gene_prompts(["INS", "GCG"], knowledge)
    _, found = shipped.lookup(["INS", "GCG"], [prompts[0] + " Extra.", prompts[1]])
    assert list(found) == [False, True]
    vectors, found = shipped_vectors("some/other-model", ["INS"], prompts[:1])
    assert vectors is None and not found.any()
    vectors, found = shipped_vectors(lm.DEFAULT_MODEL, ["INS"], prompts[:1], max_length=64)
    assert vectors is None and not found.any()


def test_default_gene_table_runs_no_language_model(tmp_path):
    cache = lm.EmbeddingCache(tmp_path)
    names = np.array(["Ins1", "Gcg", "CD3E", "ENSG00000141510.16", "Malat1", "gene_x", "LINC01234"])
    table, mapping = gene_embedding_table(names, ScllmConfig(), cache=cache, progress=False)
    assert cache.hits == 0 and cache.misses == 0  # every vector came from the shipped file
    assert list(table["symbols"]) == ["", "GCG", "CD3E", "TP53", "MALAT1", "", "LINC01234"]
    # LINC01234 is known but has no functional knowledge (no GO term, not protein-coding): no embedding.
    assert list(table["mask"]) == [False, True, True, True, True, False, False]
    assert table["n_shipped"] == 4 and mapping.via_ensembl == 1
    np.testing.assert_allclose(np.linalg.norm(table["embeddings"][table["mask"]], axis=1), 1.0, atol=2e-3)


def test_damaged_file_is_refused(tmp_path, shipped):
    path = tmp_path / "genes.npz"
    write_shipped_embeddings(path, list(shipped.symbols[:3]), ["a", "b", "c"], shipped.vectors[:3])
    assert load_shipped_embeddings(path).sha256 != ""
    with np.load(path) as stored:
        arrays = dict(stored)
    arrays["vectors"] = arrays["vectors"].copy()
    arrays["vectors"][1, 5] += np.float16(0.5)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="damaged"):
        load_shipped_embeddings(path)
