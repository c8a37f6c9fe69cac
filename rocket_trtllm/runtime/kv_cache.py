"""The paged KV cache: a block pool per layer and the allocator that hands its blocks to requests."""

import hashlib
from array import array
from collections import OrderedDict
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


def block_hashes(tokens: list[int], tokens_per_block: int, known: list[bytes] = ()) -> list[bytes]:
    """One hash per full block of `tokens`, each covering its tokens and every block before it (`known`: the first
    blocks' hashes, already computed)."""
    out = list(known)
    parent = out[-1] if out else b""
    for i in range(len(out), len(tokens) // tokens_per_block):
        block = array("q", tokens[i * tokens_per_block : (i + 1) * tokens_per_block]).tobytes()
        parent = hashlib.sha256(parent + block).digest()
        out.append(parent)
    return out


class BlockAllocator:
    """Free list of block ids plus reservations, so admitted requests can always grow to their limit.

    With `reuse` (prefix caching), a full block whose tokens are known is kept under the hash of its tokens
    and of the prefix before them: a later request with the same prefix shares it (reference-counted) instead
    of computing it again. Cached blocks no request holds stay reusable until a new block is needed and
    the free list is empty; then the least recently used one is taken.
    """

    def __init__(self, num_blocks: int, reuse: bool = False, group: int = 1) -> None:
        self.num_blocks = num_blocks
        self.reuse = reuse
        # Blocks come out in aligned runs of `group` consecutive ids where they can (a side cache, the KT cache, keeps
        # one run of the group's pages contiguous): a request's next block is its last one's successor if that is
        # free, else the start of a wholly free group, else the oldest free block.
        self.group = group
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._free_in_group = [min(group, num_blocks - g) for g in range(0, num_blocks, group)]
        self._whole: OrderedDict[int, None] = OrderedDict(
            (g, None) for g, n in enumerate(self._free_in_group) if n == group
        )  # groups whose every block is free
        self._reserved = 0
        self._refs: dict[int, int] = {}  # block -> requests holding it
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached blocks no request holds, oldest first
        self.hit_blocks = 0  # prompt blocks found in the cache, since the start
        self.queried_blocks = 0  # full prompt blocks looked up

    @property
    def num_free(self) -> int:
        """Blocks no request holds (cached idle ones included: they are given out when needed)."""
        return len(self._free) + len(self._idle)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        return len(self._hash_of)

    @property
    def num_reserved(self) -> int:
        return self._reserved

    @property
    def num_available(self) -> int:
        """Blocks neither in use nor promised to a running request."""
        return self.num_free - self._reserved

    def match(self, hashes: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes`."""
        found = []
        for h in hashes:
            block = self._block_of.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def idle(self, blocks: list[int]) -> int:
        """How many of `blocks` no request holds (taking them shrinks what is available)."""
        return sum(b in self._idle for b in blocks)

    def admit(self, now: int, later: int, shared: Optional[list[int]] = None) -> list[int]:
        """Take `now` blocks, the first ones `shared` (cached, matched by `match`), and reserve `later`."""
        shared = shared or []
        if now - len(shared) + later + self.idle(shared) > self.num_available:
            raise RequestError(f"needs {now + later} KV blocks, {self.num_available} available")
        for b in shared:
            self._idle.pop(b, None)
            self._refs[b] = self._refs.get(b, 0) + 1
        self._reserved += later
        table = list(shared)
        for _ in range(now - len(shared)):
            table.append(self._take(table[-1] if table else None))
        return table

    def reserve(self, blocks: int) -> None:
        """Promise `blocks` more blocks (fewer, when negative) to running requests."""
        if blocks > self.num_available:
            raise RequestError(f"needs {blocks} more KV blocks, {self.num_available} available")
        self._reserved += blocks

    def take_reserved(self, after: Optional[int] = None) -> int:
        """One of the reserved blocks, for a request whose last block is `after`."""
        assert self._reserved > 0, "a request grew past its reservation"
        self._reserved -= 1
        return self._take(after)

    def _take(self, after: Optional[int] = None) -> int:
        block = self._preferred(after)
        if block is not None:
            self._leave_free(block)
        elif self._free:
            block = next(iter(self._free))
            self._leave_free(block)
        else:  # the least recently used cached block that no request holds
            block, _ = self._idle.popitem(last=False)
            del self._block_of[self._hash_of.pop(block)]
        self._refs[block] = 1
        return block

    def _preferred(self, after: Optional[int]) -> Optional[int]:
        if self.group == 1:
            return None
        if after is not None and (after + 1) % self.group and after + 1 in self._free:
            return after + 1
        return next(iter(self._whole)) * self.group if self._whole else None

    def _leave_free(self, block: int) -> None:
        del self._free[block]
        g = block // self.group
        if self._free_in_group[g] == self.group:
            del self._whole[g]
        self._free_in_group[g] -= 1

    def _enter_free(self, block: int) -> None:
        self._free[block] = None
        g = block // self.group
        self._free_in_group[g] += 1
        if self._free_in_group[g] == self.group:
            self._whole[g] = None

    def register(self, blocks: list[int], hashes: list[bytes]) -> None:
        """Cache full `blocks` under their `hashes` (a content already cached under another block is skipped)."""
        if not self.reuse:
            return
        for block, h in zip(blocks, hashes):
            if block not in self._hash_of and h not in self._block_of:
                self._hash_of[block], self._block_of[h] = h, block

    def release(self, blocks: list[int], unused_reservation: int) -> None:
        for block in blocks:
            self._refs[block] -= 1
            if self._refs[block] == 0:
                del self._refs[block]
                if block in self._hash_of:
                    self._idle[block] = None  # most recently used last
                else:
                    self._enter_free(block)
        self._reserved -= unused_reservation

    def clear_cache(self) -> None:
        """Forget every cached block no request holds (they return to the free list)."""
        for block in list(self._idle):
            del self._block_of[self._hash_of.pop(block)]
            self._enter_free(block)
        self._idle.clear()


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
        reuse: bool = False,
        group: int = 1,
    ) -> None:
        dims = (shape.num_layers, num_blocks + 1, shape.num_kv_heads, tokens_per_block, shape.head_dim)
        self.scratch_block = num_blocks
        self.k = torch.zeros(dims, dtype=dtype, device=device)
        self.v = torch.zeros(dims, dtype=dtype, device=device)
        self.tokens_per_block = tokens_per_block
        self.allocator = BlockAllocator(num_blocks, reuse, group)
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
