"""RocketKV: stage 1 (SnapKV++ eviction) at prefill, stage 2 (top-r/top-k KT pages) at decode.

Where we differ from TensorRT-LLM on purpose: its attention kernel fetches whole KV blocks around
the selected KT pages; we fetch exactly the selected `page_size`-token pages, so the token budget
is `topk * page_size` (plus the page being written), as in the paper.
"""

from .configs import RocketSparseAttentionConfig
from .quest import PageSelectionAttention
from .registry import register_sparse_attention
from .snapkv import SnapKVAttention


class RocketAttention(SnapKVAttention, PageSelectionAttention):
    """Stage-1 hooks from SnapKVAttention, the KT cache and stage-2 decode from PageSelectionAttention."""


register_sparse_attention(RocketSparseAttentionConfig, RocketAttention)
