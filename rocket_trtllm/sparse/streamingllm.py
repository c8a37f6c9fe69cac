"""StreamingLLM: attention sinks plus a recent window (a baseline). Keys keep their original
positions (no re-rotation), and nothing is evicted: the selection happens at each decode step."""

import torch

from ..kernels.paged_decode import token_decode_ref
from ..runtime.attention import AttentionBackend, AttentionMetadata
from .configs import StreamingLLMSparseAttentionConfig
from .registry import register_sparse_attention


class StreamingLLMAttention(AttentionBackend):
    supports_cuda_graphs = False  # chooses dense or sparse from this step's lengths

    def attended_tokens(self, cache_len: int) -> int:
        return min(cache_len, self.config.sink_size + self.config.window_size)

    def decode(self, layer: int, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        sink, window = self.config.sink_size, self.config.window_size
        if meta.max_cache_len <= sink + window:
            return self.dense_decode(layer, q, meta)
        lens = meta.cache_lens.long()[:, None]
        sinks = torch.arange(sink, device=q.device)[None, :].expand(lens.shape[0], -1)
        recent = lens - window + torch.arange(window, device=q.device)[None, :]
        idx = torch.cat([sinks, recent], dim=1)
        pos = torch.arange(sink + window, device=q.device)[None, :]
        # A short sequence's window reaches into its sinks (or before 0): count each token once.
        valid = (idx < lens) & ((pos < sink) | (idx >= sink))
        heads = self.shape.num_kv_heads
        idx, valid = idx.clamp(min=0)[:, None].expand(-1, heads, -1), valid[:, None].expand(-1, heads, -1)
        tables = meta.gen_block_tables[:, : self.pool.blocks_for(meta.max_cache_len)]
        return self.read_kv(layer, lambda k, v, scale: token_decode_ref(q, k, v, tables, idx, valid, scale))


register_sparse_attention(StreamingLLMSparseAttentionConfig, StreamingLLMAttention)
