"""scllm-jax: scLLM-DSC single-cell clustering in JAX.

Namespaces follow scanpy: :mod:`scllm_jax.tl` (clustering into an AnnData),
:mod:`scllm_jax.pl` (plots); :class:`ScllmModel` for fit / predict / save / load.
"""

from . import cli, datasets, metrics, pl, tl
from .config import (ClusteringConfig, GraphConfig, NetworkConfig, PreprocessConfig, ScllmConfig, SemanticConfig,
                     TrainConfig)
from .io import read
from .model import ScllmModel
from .validation import InputError

__all__ = ["ScllmConfig", "PreprocessConfig", "GraphConfig", "SemanticConfig", "NetworkConfig", "TrainConfig",
           "ClusteringConfig", "ScllmModel", "InputError", "cli", "datasets", "metrics", "pl", "read", "tl"]
__version__ = "0.1.0"
