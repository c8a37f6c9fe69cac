"""The paged KV cache: a block pool per layer and the allocator that hands its blocks to requests."""

from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import RequestError


@dataclass(frozen=True)
class ModelShape:
    """The attention shape of a model: what the caches and kernels are sized by."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


class BlockAllocator:
    """Free list of block ids plus reservations, so admitted requests can always grow to their limit."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._reserved = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_reserved(self) -> int:
        return self._reserved

    @property
    def num_available(self) -> int:
        """Blocks neither in use nor promised to a running request."""
        return len(self._free) - self._reserved

    def admit(self, now: int, later: int) -> list[int]:
        """Take `now` blocks and reserve `later` more for the same request."""
        if now + later > self.num_available:
            raise RequestError(f"needs {now + later} KV blocks, {self.num_available} available")
        self._reserved += later
        return [self._free.popleft() for _ in range(now)]

    def take_reserved(self) -> int:
        assert self._reserved > 0, "a request grew past its reservation"
        self._reserved -= 1
        return self._free.popleft()

    def release(self, blocks: list[int], unused_reservation: int) -> None:
        self._free.extend(blocks)
        self._reserved -= unused_reservation


class KVCachePool:
    """K and V for every layer: `[num_layers, num_blocks + 1, kv_heads, tokens_per_block, head_dim]` each.

    The extra block (`scratch_block`) is never handed out: padded rows of a CUDA-graph batch write there.
    An FP8 pool (float8_e4m3fn) stores K / k_scale[layer] and V / v_scale[layer] (per-tensor scales, 1.0
    unless the checkpoint has them); whatever reads it multiplies them back (`scales`).
    """

    def __init__(
        self,
        shape: ModelShape,
        num_blocks: int,
        tokens_per_block: int,
        dtype: torch.dtype,
        device: torch.device,
        k_scale: Optional[list[float]] = None,
        v_scale: Optional[list[float]] = None,
    ) -> None:
        dims = (shape.num_layers, num_blocks + 1, shape.num_kv_heads, tokens_per_block, shape.head_dim)
        self.scratch_block = num_blocks
        self.k = torch.zeros(dims, dtype=dtype, device=device)
        self.v = torch.zeros(dims, dtype=dtype, device=device)
        self.tokens_per_block = tokens_per_block
        self.allocator = BlockAllocator(num_blocks)
        self.k_scale = k_scale or [1.0] * shape.num_layers
        self.v_scale = v_scale or [1.0] * shape.num_layers

    def scales(self, layer: int) -> tuple[float, float]:
        """(K scale, V scale) of `layer`: cached value x scale = the value written."""
        return self.k_scale[layer], self.v_scale[layer]

    @staticmethod
    def bytes_per_block(shape: ModelShape, tokens_per_block: int, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * shape.num_layers * shape.num_kv_heads * tokens_per_block * shape.head_dim * elem

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.tokens_per_block)
