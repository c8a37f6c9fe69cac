"""SnapKV(++) alone: stage-1 eviction of prompt tokens, dense decode over what is kept (a baseline)."""

import torch

from ..runtime.attention import AttentionBackend
from .configs import SnapKVSparseAttentionConfig
from .registry import register_sparse_attention
from .stage1 import gather_kept, keep_indices


class SnapKVAttention(AttentionBackend):
    reduces_query_groups = True

    @property
    def prompt_query_window(self) -> int:
        return self.config.window_size

    def kept_len(self, prompt_len: int) -> int:
        return min(prompt_len, self.config.prompt_budget_for(prompt_len))

    def compress_prompt(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        budget = self.kept_len(k.shape[1])
        if k.shape[1] <= budget:
            return k, v
        window = min(c.window_size, q.shape[1])  # past a cached prefix, the queries computed this turn
        idx = keep_indices(q, k, window, c.kernel_size, budget, self.scale, c.eviction_scope,
                           self.comm.all_reduce)  # fmt: skip
        return gather_kept(k, idx), gather_kept(v, idx)


register_sparse_attention(SnapKVSparseAttentionConfig, SnapKVAttention)
