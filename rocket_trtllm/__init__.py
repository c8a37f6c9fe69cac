"""rocket-trtllm: RocketKV two-stage KV-cache compression behind TensorRT-LLM's LLM API."""

import os

from .errors import ConfigError, RequestError
from .kernels._triton import set_pdl
from .llmapi import (
    LLM,
    CompletionOutput,
    CudaGraphConfig,
    KvCacheConfig,
    LlmArgs,
    Logprob,
    QuantConfig,
    RequestOutput,
    RocketSparseAttentionConfig,
    SamplingParams,
)

__version__ = "0.1.0"

# The one environment switch below the command lines: ROCKET_PDL=0 launches the Triton kernels without
# programmatic dependent launch (docs/log/benchmarks.md compares both); every process that imports the package reads it.
set_pdl(os.environ.get("ROCKET_PDL", "1") != "0")

__all__ = [
    "LLM",
    "CompletionOutput",
    "ConfigError",
    "CudaGraphConfig",
    "KvCacheConfig",
    "LlmArgs",
    "Logprob",
    "QuantConfig",
    "RequestError",
    "RequestOutput",
    "RocketSparseAttentionConfig",
    "SamplingParams",
    "__version__",
]
