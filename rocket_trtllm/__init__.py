"""rocket-trtllm: RocketKV two-stage KV-cache compression behind TensorRT-LLM's LLM API."""

from .errors import ConfigError, RequestError
from .llmapi import (
    LLM,
    CompletionOutput,
    CudaGraphConfig,
    KvCacheConfig,
    LlmArgs,
    QuantConfig,
    RequestOutput,
    RocketSparseAttentionConfig,
    SamplingParams,
)

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "CompletionOutput",
    "ConfigError",
    "CudaGraphConfig",
    "KvCacheConfig",
    "LlmArgs",
    "QuantConfig",
    "RequestError",
    "RequestOutput",
    "RocketSparseAttentionConfig",
    "SamplingParams",
    "__version__",
]
