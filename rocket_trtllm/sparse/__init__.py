"""Sparse-attention methods; importing this package registers every built-in one."""

from .registry import BaseSparseAttentionConfig, algorithms, lookup, register_sparse_attention
from .rocket_config import RocketSparseAttentionConfig

register_sparse_attention(RocketSparseAttentionConfig)

__all__ = [
    "BaseSparseAttentionConfig",
    "RocketSparseAttentionConfig",
    "algorithms",
    "lookup",
    "register_sparse_attention",
]
