"""scllm-jax: scLLM-DSC single-cell clustering in JAX.

Namespaces follow scanpy: :mod:`scllm_jax.tl` (clustering into an AnnData),
:mod:`scllm_jax.pl` (plots); :class:`ScllmModel` for fit / predict / save / load.
"""

from . import datasets, metrics, tl
from .config import ScllmConfig
from .io import read
from .model import ScllmModel
from .validation import InputError

__all__ = ["ScllmConfig", "ScllmModel", "InputError", "datasets", "metrics", "read", "tl"]
__version__ = "0.1.0"
