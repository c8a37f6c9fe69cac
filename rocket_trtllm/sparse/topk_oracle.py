"""Exact top-k (an oracle baseline): at each step, the tokens with the largest true attention
weights, summed over each GQA group, out of the whole cache; then exact attention over them."""

import torch

from ..kernels.paged_decode import gather_pages_ref, token_decode_ref
from ..runtime.attention import AttentionBackend, AttentionMetadata
from .configs import TopkOracleSparseAttentionConfig
from .registry import register_sparse_attention


class TopkOracleAttention(AttentionBackend):
    reduces_query_groups = True

    supports_cuda_graphs = False  # chooses dense or sparse from this step's lengths

    def attended_tokens(self, cache_len: int) -> int:
        return min(cache_len, self.config.topk)

    def decode_read_bytes(self, cache_len: int) -> int:
        chosen = super().decode_read_bytes(cache_len)
        # Choosing reads every cached key (half of a token's K/V bytes) to score it exactly.
        return chosen if cache_len <= self.config.topk else chosen + cache_len * self.token_kv_bytes // 2

    def decode(self, layer: int, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        topk = self.config.topk
        if meta.max_cache_len <= topk:
            return self.dense_decode(layer, q, meta)
        tables = meta.gen_block_tables[:, : self.pool.blocks_for(meta.max_cache_len)]
        k = gather_pages_ref(self.pool.k[layer], tables).float() * self.pool.scales(layer)[0]  # [b, kv_heads, n, d]
        b, h, n, d = k.shape
        qg = q.float().view(b, h, -1, d)
        logits = torch.einsum("bhgd,bhnd->bhgn", qg, k) * self.scale
        inside = torch.arange(n, device=q.device)[None, None, None, :] < meta.cache_lens[:, None, None, None]
        weights = torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=-1).sum(2)
        top = weights.masked_fill(~inside[:, :, 0], -1.0).topk(topk, dim=-1)
        valid = top.values >= 0
        idx = top.indices
        return self.read_kv(layer, lambda k, v, scale: token_decode_ref(q, k, v, tables, idx, valid, scale))


register_sparse_attention(TopkOracleSparseAttentionConfig, TopkOracleAttention)
