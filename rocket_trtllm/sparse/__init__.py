"""Sparse-attention methods; importing this package registers every built-in one."""

from . import quest, rocket, rocket_mt, snapkv, streamingllm, topk_oracle  # noqa: F401  (registration)
from .configs import (
    QuestSparseAttentionConfig,
    RocketSparseAttentionConfig,
    SnapKVSparseAttentionConfig,
    StreamingLLMSparseAttentionConfig,
    TopkOracleSparseAttentionConfig,
)
from .registry import BaseSparseAttentionConfig, algorithms, lookup, register_sparse_attention
from .rocket_mt import RocketMTSparseAttentionConfig

__all__ = [
    "BaseSparseAttentionConfig",
    "QuestSparseAttentionConfig",
    "RocketMTSparseAttentionConfig",
    "RocketSparseAttentionConfig",
    "SnapKVSparseAttentionConfig",
    "StreamingLLMSparseAttentionConfig",
    "TopkOracleSparseAttentionConfig",
    "algorithms",
    "lookup",
    "register_sparse_attention",
]
