"""The KT cache: per-page, per-channel min and max of K, addressed by KV block.

Each KV block's KT pages (`tokens_per_block / page_size` of them) have a fixed place in the KT layout
(`kernels.kt_predict`: channel-major, the pages of `group` consecutive block ids in one run per channel and bound),
so a request's KT pages are addressed by its KV block table and are freed with its KV blocks. Decode steps refresh
the newest page as they write its K (`kernels.cache_update.store_token`).
"""

import torch

from ..kernels.kt_predict import kt_group, kt_write
from ..runtime.kv_cache import KVCachePool, ModelShape

KT_DTYPES = {"float8_e5m2": torch.float8_e5m2, "bfloat16": torch.bfloat16, "float16": torch.float16}


class KTCache:
    def __init__(self, shape: ModelShape, pool: KVCachePool, page_size: int, dtype: torch.dtype) -> None:
        self.pool = pool
        self.page_size = page_size
        self.pages_per_block = pool.tokens_per_block // page_size
        self.group = kt_group(self.pages_per_block, torch.empty((), dtype=dtype).element_size())
        groups = -(-pool.k.shape[1] // self.group)  # the scratch block included
        run = self.group * self.pages_per_block
        dims = (shape.num_layers, groups, shape.num_kv_heads, shape.head_dim, 2, run)
        self.kt = torch.zeros(dims, dtype=dtype, device=pool.k.device)

    @staticmethod
    def bytes_per_block(shape: ModelShape, tokens_per_block: int, page_size: int, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * shape.num_layers * shape.num_kv_heads * (tokens_per_block // page_size) * shape.head_dim * elem

    def _paged_keys(self, layer: int, blocks: torch.Tensor) -> torch.Tensor:
        # [n] block ids -> [n, kv_heads, pages_per_block, page_size, head_dim]
        k = self.pool.k[layer][blocks]
        n, h, _, d = k.shape
        return k.view(n, h, self.pages_per_block, self.page_size, d)

    def build(self, layer: int, block_table: torch.Tensor, num_tokens: int) -> None:
        """Fill the KT pages of a request's first `num_tokens` cached tokens (after its prefill)."""
        blocks = block_table[: self.pool.blocks_for(num_tokens)].long()
        k = self._paged_keys(layer, blocks).float() * self.pool.scales(layer)[0]  # as attention will read them
        slot = torch.arange(blocks.numel() * self.pool.tokens_per_block, device=k.device)
        valid = (slot < num_tokens).view(blocks.numel(), 1, self.pages_per_block, self.page_size, 1)
        lo = k.masked_fill(~valid, float("inf")).amin(3).transpose(1, 2)  # [n, pages_per_block, kv_heads, d]
        hi = k.masked_fill(~valid, float("-inf")).amax(3).transpose(1, 2)
        pages = torch.arange(self.pages_per_block, device=k.device).expand(blocks.numel(), -1)
        kt_write(self.kt[layer], blocks, pages, lo, hi, self.pages_per_block)
