"""Sparse-attention methods; importing this package registers every built-in one."""

from . import quest, rocket, snapkv, streamingllm, topk_oracle  # noqa: F401  (registration)
from .configs import (
    QuestSparseAttentionConfig,
    RocketSparseAttentionConfig,
    SnapKVSparseAttentionConfig,
    StreamingLLMSparseAttentionConfig,
    TopkOracleSparseAttentionConfig,
)
from .registry import BaseSparseAttentionConfig, algorithms, lookup, register_sparse_attention

__all__ = [
    "BaseSparseAttentionConfig",
    "QuestSparseAttentionConfig",
    "RocketSparseAttentionConfig",
    "SnapKVSparseAttentionConfig",
    "StreamingLLMSparseAttentionConfig",
    "TopkOracleSparseAttentionConfig",
    "algorithms",
    "lookup",
    "register_sparse_attention",
]
