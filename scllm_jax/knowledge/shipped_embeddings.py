"""Gene embeddings computed once for the default language model and shipped with the package.

``data/gene_embeddings_minilm.npz`` holds, for every gene of the shipped
knowledge table that has functional knowledge
(:attr:`~scllm_jax.knowledge.gene_table.GeneKnowledge.described`: protein-coding
or with a Gene Ontology term), the default model's embedding of its knowledge
text as float16, with what it was made from: model id and fingerprint, prompt
and embedding-recipe versions, ``max_length``, one 64-bit hash of each gene's
prompt text and a SHA-256 of the vectors. ``scripts/build_gene_embeddings.py``
writes it.

A shipped vector stands in for a fresh embedding only where everything that
made it is unchanged: the model (same fingerprint), the recipe, ``max_length``
and the gene's exact prompt text. Anything else (another model, a knowledge
table with other text for the gene, a gene outside the file) is embedded by the
language model and cached as before.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from .gene_text import PROMPT_VERSION
from .language_model import DEFAULT_MODEL, EMBEDDING_VERSION, model_fingerprint

__all__ = ["SHIPPED_EMBEDDINGS", "ShippedEmbeddings", "load_shipped_embeddings", "shipped_vectors",
           "text_hashes", "write_shipped_embeddings"]

logger = logging.getLogger(__name__)

#: File name, under ``scllm_jax/knowledge/data/``, of the default model's gene embeddings.
SHIPPED_EMBEDDINGS = "gene_embeddings_minilm.npz"

_FORMAT = "scllm-jax-gene-embeddings/v1"


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """The first 8 bytes of each text's SHA-256 (UTF-8), as ``uint64``.

    Parameters
    ----------
    texts
        The texts.

    Returns
    -------
    numpy.ndarray
        ``(len(texts),)`` uint64.
    """
    digests = b"".join(hashlib.sha256(text.encode("utf-8")).digest()[:8] for text in texts)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _vector_checksum(vectors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype="<f2").tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ShippedEmbeddings:
    """Precomputed gene embeddings of one model, and what made them.

    Attributes
    ----------
    symbols
        Knowledge-table index keys (upper-case symbols), one per row.
    text_hashes
        :func:`text_hashes` of each gene's prompt text.
    vectors
        ``(n_genes, d)`` float16, rows of unit norm (to float16 precision).
    model, fingerprint
        Model id and :func:`~scllm_jax.knowledge.language_model.model_fingerprint`.
    prompt_version, embedding_version, max_length
        Gene prompt recipe, embedding recipe and token limit used.
    sha256
        SHA-256 of the float16 vector bytes (checked on load).
    """

    symbols: np.ndarray
    text_hashes: np.ndarray
    vectors: np.ndarray
    model: str
    fingerprint: str
    prompt_version: str
    embedding_version: str
    max_length: int
    sha256: str

    @functools.cached_property
    def _row(self) -> dict[str, int]:
        return {str(symbol): i for i, symbol in enumerate(self.symbols)}

    def lookup(self, symbols: Sequence[str], prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of the genes whose exact prompt text was embedded into this file.

        Parameters
        ----------
        symbols
            Knowledge-table index keys.
        prompts
            Each gene's prompt text, as it would be embedded now.

        Returns
        -------
        (numpy.ndarray, numpy.ndarray)
            ``(len(symbols), d)`` float32 (zero rows where not found) and a
            boolean mask of the rows found.
        """
        rows = np.array([self._row.get(str(s), -1) for s in symbols], dtype=np.int64)
        found = rows >= 0
        found[found] = self.text_hashes[rows[found]] == text_hashes([prompts[i] for i in np.flatnonzero(found)])
        out = np.zeros((len(rows), self.vectors.shape[1]), dtype=np.float32)
        out[found] = self.vectors[rows[found]]
        return out, found


def write_shipped_embeddings(path: str | Path, symbols: Sequence[str], prompts: Sequence[str],
                             vectors: np.ndarray, *, model: str = DEFAULT_MODEL, max_length: int = 256) -> str:
    """Write gene embeddings in the shipped format (float16, with provenance).

    Parameters
    ----------
    path
        The ``.npz`` file to write.
    symbols, prompts
        Knowledge-table index key and prompt text of each row.
    vectors
        ``(n, d)`` embeddings of ``prompts`` by ``model``.
    model, max_length
        What embedded them (the fingerprint is read from the installed model).

    Returns
    -------
    str
        SHA-256 of the float16 vectors.
    """
    half = np.ascontiguousarray(vectors, dtype="<f2")
    if half.shape != (len(symbols), half.shape[1]) or len(prompts) != len(symbols):
        raise ValueError(f"{len(symbols)} symbols, {len(prompts)} prompts and vectors of shape {vectors.shape} "
                         "do not match.")
    checksum = _vector_checksum(half)
    meta = {"format": _FORMAT, "model": model, "fingerprint": model_fingerprint(model),
            "prompt_version": PROMPT_VERSION, "embedding_version": EMBEDDING_VERSION,
            "max_length": int(max_length), "sha256": checksum}
    np.savez_compressed(path, symbols=np.asarray(symbols, dtype=str), text_hashes=text_hashes(prompts),
                        vectors=half, meta=np.asarray(json.dumps(meta, sort_keys=True)))
    return checksum


def load_shipped_embeddings(path: str | Path | None = None) -> ShippedEmbeddings:
    """Read a gene embedding file and check its vectors against their checksum.

    Parameters
    ----------
    path
        ``None`` reads the file shipped with the package (memoised).

    Returns
    -------
    ShippedEmbeddings

    Raises
    ------
    FileNotFoundError
        The file is absent (a package built without its data: reinstall it).
    ValueError
        The file is not in this format, or its vectors do not match their checksum.
    """
    if path is None:
        return _load_default()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene embedding file not found: {path}; reinstall scllm-jax, or rebuild it with "
                                "scripts/build_gene_embeddings.py.")
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a {_FORMAT} file (format {meta.get('format')!r}).")
        shipped = ShippedEmbeddings(symbols=stored["symbols"], text_hashes=stored["text_hashes"],
                                    vectors=stored["vectors"], model=meta["model"], fingerprint=meta["fingerprint"],
                                    prompt_version=meta["prompt_version"],
                                    embedding_version=meta["embedding_version"],
                                    max_length=int(meta["max_length"]), sha256=meta["sha256"])
    if _vector_checksum(shipped.vectors) != shipped.sha256:
        raise ValueError(f"{path}: the vectors do not match their SHA-256; the file is damaged: reinstall "
                         "scllm-jax or rebuild it with scripts/build_gene_embeddings.py.")
    return shipped


@functools.lru_cache(maxsize=1)
def _load_default() -> ShippedEmbeddings:
    with resources.as_file(resources.files("scllm_jax.knowledge") / "data" / SHIPPED_EMBEDDINGS) as path:
        return load_shipped_embeddings(path)


def shipped_vectors(model: str, symbols: Sequence[str], prompts: Sequence[str], *,
                    max_length: int = 256) -> tuple[np.ndarray | None, np.ndarray]:
    """The shipped vectors that stand for ``model``'s embeddings of these prompts.

    Parameters
    ----------
    model
        The language model the caller would run.
    symbols, prompts
        Knowledge-table index key and prompt text of each gene.
    max_length
        The caller's token limit.

    Returns
    -------
    (numpy.ndarray or None, numpy.ndarray)
        float32 vectors (``None`` when nothing is usable) and the mask of the
        genes they cover; the rest must be embedded.
    """
    none = (None, np.zeros(len(symbols), dtype=bool))
    if model != DEFAULT_MODEL or not len(symbols):
        return none
    try:
        shipped = load_shipped_embeddings()
    except (FileNotFoundError, ValueError) as error:
        logger.warning("Shipped gene embeddings unusable, embedding genes instead: %s", error)
        return none
    made_by = (shipped.fingerprint, shipped.prompt_version, shipped.embedding_version, shipped.max_length)
    if made_by != (model_fingerprint(model), PROMPT_VERSION, EMBEDDING_VERSION, max_length):
        logger.info("Shipped gene embeddings were made by another model version or recipe; embedding genes.")
        return none
    vectors, found = shipped.lookup(symbols, prompts)
    return (vectors if found.any() else None), found
