"""The LLM API: TensorRT-LLM's names for the things a user builds."""

from ..sampling_params import SamplingParams
from ..sparse import RocketSparseAttentionConfig
from .llm import LLM
from .llm_args import CudaGraphConfig, KvCacheConfig, LlmArgs, QuantConfig
from .outputs import CompletionOutput, Logprob, RequestOutput

__all__ = [
    "LLM",
    "CompletionOutput",
    "CudaGraphConfig",
    "KvCacheConfig",
    "LlmArgs",
    "Logprob",
    "QuantConfig",
    "RequestOutput",
    "RocketSparseAttentionConfig",
    "SamplingParams",
]
