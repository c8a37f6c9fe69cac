"""Stage 2, page top-k from the KT cache (Quest-style), and its registration as the `quest` baseline.

RocketKV's backend builds on this class, adding stage 1 and top-r channel selection.
"""

from typing import Any

import torch

from ..kernels.kt_predict import kt_group, predict_pages, predict_pages_ref
from ..kernels.paged_decode import sparse_decode, sparse_decode_ref
from ..runtime.attention import AttentionBackend, AttentionMetadata
from ..runtime.distributed import SINGLE, Communicator
from ..runtime.kv_cache import KVCachePool, ModelShape
from .configs import QuestSparseAttentionConfig
from .kt_cache import KT_DTYPES, KTCache
from .registry import register_sparse_attention


class PageSelectionAttention(AttentionBackend):
    reduces_query_groups = True

    uses_kt_cache = True

    def __init__(
        self, shape: ModelShape, pool: KVCachePool, use_kernels: bool, config: Any, comm: Communicator = SINGLE
    ) -> None:
        super().__init__(shape, pool, use_kernels, config, comm)
        self.page_size = config.page_size
        self.topk = config.topk
        self.topr = config.topr_channels(shape.head_dim)
        self.kt = KTCache(shape, pool, config.page_size, KT_DTYPES[config.kt_cache_dtype])

    @classmethod
    def side_cache_bytes_per_block(cls, shape: ModelShape, config: Any, tokens_per_block: int) -> int:
        return KTCache.bytes_per_block(shape, tokens_per_block, config.page_size, KT_DTYPES[config.kt_cache_dtype])

    @classmethod
    def block_group(cls, config: Any, tokens_per_block: int) -> int:
        return kt_group(tokens_per_block // config.page_size, KT_DTYPES[config.kt_cache_dtype].itemsize)

    def after_context(self, layer: int, meta: AttentionMetadata) -> None:
        for i, kept in enumerate(meta.kept_lens):
            if meta.final is None or meta.final[i]:  # a prompt's KT pages once its last chunk is in place
                self.kt.build(layer, meta.block_tables[i], kept)

    def _is_dense(self, cache_len: int) -> bool:
        threshold = self.config.seq_len_threshold
        pages = -(-cache_len // self.page_size)
        return pages <= self.topk + 1 or (threshold is not None and cache_len <= threshold)

    def attended_tokens(self, cache_len: int) -> int:
        if self._is_dense(cache_len):
            return cache_len
        newest = cache_len - (cache_len - 1) // self.page_size * self.page_size
        return self.topk * self.page_size + newest

    def decode_read_bytes(self, cache_len: int) -> int:
        attended = super().decode_read_bytes(cache_len)
        if self._is_dense(cache_len):
            return attended
        # The scoring kernel reads, of every page, the kept channels' bound the sign rule picks (or both, Quest's).
        bounds = 1 if self.config.stage2_bound == "sign" else 2
        s, pages = self.shape, -(-cache_len // self.page_size)
        return attended + pages * bounds * s.num_layers * s.num_kv_heads * self.topr * self.kt.kt.element_size()

    def kt_pages(self, layer: int) -> tuple:
        return self.kt.kt[layer], self.page_size

    def decode(self, layer: int, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        if not meta.static and self._is_dense(meta.max_cache_len):
            # Everything kept fits in the selection (or the batch is short): exact dense attention.
            # (In a CUDA graph the sparse path runs; it selects every page of a short sequence.)
            return self.dense_decode(layer, q, meta)
        tables = meta.gen_block_tables[:, : self.pool.blocks_for(meta.max_cache_len)]
        num_pages = meta.pages(self.page_size)
        predict = predict_pages if self.use_kernels else predict_pages_ref
        c, ppb = self.config, self.kt.pages_per_block
        pages = predict(q, self.kt.kt[layer], tables, num_pages, self.topr, self.topk, ppb, c.stage2_bound == "sign",
                        c.stage2_temperature)  # fmt: skip
        attend = sparse_decode if self.use_kernels else sparse_decode_ref
        lens, page = meta.cache_lens, self.page_size
        return self.read_kv(layer, lambda k, v, scale: attend(q, k, v, tables, pages, lens, page, scale))


register_sparse_attention(QuestSparseAttentionConfig, PageSelectionAttention)
