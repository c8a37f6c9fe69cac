"""The attention-backend interface the sparse-attention registry plugs into, and the dense backend.

A step's tokens are packed: every context request's prompt first, then one token per generation
request. The model computes q/k/v (RoPE applied) for all of them and hands them to `forward`.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..kernels import layer_ops
from ..kernels.cache_update import store_token, store_token_ref, to_cache
from ..kernels.paged_decode import paged_decode, paged_decode_ref
from .distributed import SINGLE, Communicator
from .kv_cache import KVCachePool, ModelShape


@dataclass
class AttentionMetadata:
    """Per-step batch layout, built once per step and shared by every layer."""

    num_contexts: int
    context_lens: list[int]  # prompt tokens each context request computes this step (past its cached prefix)
    kept_lens: list[int]  # tokens each context request keeps in the cache
    block_tables: torch.Tensor  # [num_requests, max_blocks] int32, contexts first
    cache_lens: torch.Tensor  # [num_generations] int32: cached tokens including this step's
    max_cache_len: int  # max of cache_lens (0 without generations), known on the host
    static: bool = False  # captured in a CUDA graph: no choice may depend on this step's lengths
    cached_lens: Optional[list[int]] = None  # per context request: prompt tokens already cached (a cached prefix,
    # earlier chunks); its chunk starts there
    final: Optional[list[bool]] = None  # per context request: whether its chunk ends the prompt (default: all do)
    history_tables: Optional[torch.Tensor] = None  # [num_contexts, blocks]: where a history-keeping method
    # (rocket_mt) holds each context request's whole prompt; `block_tables` then address its working set

    derived: dict = field(default_factory=dict, repr=False)  # per-step values the layers share (`pages`)

    def pages(self, page_size: int) -> torch.Tensor:
        """[num_generations]: pages of `page_size` tokens each generation request holds, computed by the first
        layer that asks and shared by the rest (two kernels a layer fewer at decode)."""
        if page_size not in self.derived:
            self.derived[page_size] = (self.cache_lens + page_size - 1) // page_size
        return self.derived[page_size]

    @property
    def num_context_tokens(self) -> int:
        return sum(self.context_lens)

    @property
    def gen_block_tables(self) -> torch.Tensor:
        return self.block_tables[self.num_contexts :]


class AttentionBackend:
    """Dense attention over the paged cache; sparse methods override the marked hooks.

    Hooks: `kept_len` (how many prompt tokens stay after prefill), `compress_prompt` (stage 1: which
    of them), `after_context` (build per-request side caches), `decode` (generation-phase attention).
    """

    uses_kt_cache = False
    supports_cuda_graphs = True
    #: Keeps each request's whole prompt (shareable through the prefix cache) beside the working set it decodes
    #: over (rocket_mt): the scheduler gives such requests a history block table too.
    keeps_history = False
    #: Scores each KV head over its whole query group (summed votes, group top-r): a rank must hold every
    #: query head of its KV heads, so KV heads replicated over tensor-parallel ranks are refused.
    reduces_query_groups = False

    def __init__(
        self,
        shape: ModelShape,
        pool: KVCachePool,
        use_kernels: bool,
        config: Optional[Any] = None,
        comm: Communicator = SINGLE,
    ) -> None:
        self.config = config
        self.comm = comm  # this rank's group: `shape` and `pool` hold its heads only
        self.shape = shape
        self.pool = pool
        self.use_kernels = use_kernels
        self.scale = shape.head_dim**-0.5

    # q: [tokens, q_heads, head_dim]; k, v: [tokens, kv_heads, head_dim] -> [tokens, q_heads, head_dim].
    # rope: (cos, sin), each [tokens, 1, head_dim], when q and k come without their rotary embedding: the backend
    # applies it (q in place), for generation tokens inside the K/V write (one kernel a layer fewer at decode).
    def forward(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: AttentionMetadata,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        n_ctx = meta.num_context_tokens
        parts = []
        if meta.num_contexts:
            qc, kc = q[:n_ctx], k[:n_ctx]
            if rope is not None:
                for x in (qc, kc):
                    self._rotate(x, rope[0][:n_ctx], rope[1][:n_ctx])
            parts.append(self._context(layer, qc, kc, v[:n_ctx], meta))
        if q.shape[0] > n_ctx:  # each generation token's K/V into slot cache_len - 1, its KT page refreshed
            qg = q[n_ctx:]
            cos, sin = (rope[0][n_ctx:], rope[1][n_ctx:]) if rope is not None else (None, None)
            store = store_token if self.use_kernels else store_token_ref
            ks, vs = self.pool.scales(layer)
            store(k[n_ctx:], v[n_ctx:], self.pool.k[layer], self.pool.v[layer], meta.gen_block_tables,
                  meta.cache_lens, *self.kt_pages(layer), k_scale=ks, v_scale=vs, q=qg, cos=cos, sin=sin)  # fmt: skip
            parts.append(self.decode(layer, qg, meta))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _context(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        # Each query group's output overwrites its own queries once they are read: no second [tokens, heads, d]
        # tensor (1 GiB at 128k tokens). What stage 1 reads of the queries is copied out first.
        out = q
        start = 0
        for i, n in enumerate(meta.context_lens):
            qi, ki, vi = (t[start : start + n].transpose(0, 1) for t in (q, k, v))  # [heads, n, head_dim]
            q_window = qi[:, n - min(n, self.prompt_query_window) :].clone()
            cached = meta.cached_lens[i] if meta.cached_lens else 0
            final = meta.final[i] if meta.final else True
            history = meta.history_tables[i] if meta.history_tables is not None else None
            table = meta.block_tables[i]
            if cached:  # the K/V before this chunk come from the cache (a cached prefix, earlier chunks)
                kc, vc = self._read_rows(layer, table if history is None else history, cached, ki.dtype)
                kf, vf = torch.cat([kc, ki], 1), torch.cat([vc, vi], 1)
            else:
                kf, vf = ki, vi
            causal_attention(qi, kf, vf, self.scale, out=out[start : start + n].transpose(0, 1))
            if history is not None:  # the whole prompt stays for later turns; the working set is chosen from it
                self._store_rows(layer, history, ki, vi, first=cached)
                if final:
                    self._store_rows(layer, table, *self.compress_prompt(layer, q_window, kf, vf))
            elif final and self.kept_len(kf.shape[1]) < kf.shape[1]:  # stage 1 over the whole prompt: what it keeps
                self._store_rows(layer, table, *self.compress_prompt(layer, q_window, kf, vf))
            else:
                self._store_rows(layer, table, ki, vi, first=cached)
            start += n
        self.after_context(layer, meta)
        return out

    def _read_rows(
        self, layer: int, table: torch.Tensor, n: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` cached tokens' K and V of a request (block table `table`): [kv_heads, n, head_dim]."""
        blocks = table[: self.pool.blocks_for(n)].long()
        ks, vs = self.pool.scales(layer)
        k, v = (c[layer][blocks].transpose(0, 1).flatten(1, 2)[:, :n] for c in (self.pool.k, self.pool.v))
        if ks == vs == 1.0:  # no float32 copy of a long prompt's K/V
            return k.to(dtype), v.to(dtype)
        return (k.float() * ks).to(dtype), (v.float() * vs).to(dtype)

    def _store_rows(self, layer: int, table: torch.Tensor, k: torch.Tensor, v: torch.Tensor, first: int = 0) -> None:
        # k, v: [kv_heads, n, head_dim] -> slots first..first+n-1 of block table `table`
        slots = torch.arange(first, first + k.shape[1], device=k.device)
        bs = self.pool.tokens_per_block
        blocks = table.long()[slots // bs]
        ks, vs = self.pool.scales(layer)
        self.pool.k[layer][blocks, :, slots % bs] = to_cache(k.transpose(0, 1), ks, self.pool.k.dtype)
        self.pool.v[layer][blocks, :, slots % bs] = to_cache(v.transpose(0, 1), vs, self.pool.v.dtype)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        if self.use_kernels:
            layer_ops.rotary(x, cos, sin, out=x)
        else:
            x.copy_(layer_ops.rotary_ref(x, cos, sin))

    def kt_pages(self, layer: int) -> tuple:
        """(kt_min, kt_max, page_size) of a KT cache each decode step's K/V write refreshes; none here."""
        return ()

    @classmethod
    def side_cache_bytes_per_block(cls, shape: ModelShape, config: Any, tokens_per_block: int) -> int:
        """Bytes of per-block side caches (e.g. the KT cache) this backend keeps beside each KV block."""
        return 0

    @classmethod
    def block_group(cls, config: Any, tokens_per_block: int) -> int:
        """How many consecutive block ids a side cache reads as one run: the allocator gives a request aligned runs of
        them where it can."""
        return 1

    def kept_len(self, prompt_len: int) -> int:
        """Prompt tokens a request keeps in the cache after its context phase."""
        return prompt_len

    # The last prompt queries `compress_prompt` reads (stage 1's observation window); none for dense.
    prompt_query_window = 0

    def compress_prompt(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: the prompt K/V to keep. q: [q_heads, w, d], the prompt's last w = min(n, prompt_query_window)
        queries; k, v: [kv_heads, n, d] -> [kv_heads, kept, d]."""
        return k, v

    def after_context(self, layer: int, meta: AttentionMetadata) -> None:
        """Called once the context requests' K/V of `layer` are in the cache (`meta.final`: whose prompt is done,
        its kept K/V in place)."""

    def decode(self, layer: int, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Generation-phase attention; this step's K/V are already cached. q: [batch, q_heads, d]."""
        return self.dense_decode(layer, q, meta)

    def dense_decode(self, layer: int, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        tables = meta.gen_block_tables[:, : self.pool.blocks_for(meta.max_cache_len)]
        decode_fn = paged_decode if self.use_kernels else paged_decode_ref
        return self.read_kv(layer, lambda k, v, scale: decode_fn(q, k, v, tables, meta.cache_lens, scale))

    def read_kv(self, layer: int, attend: Any) -> torch.Tensor:
        """`attend(k_cache, v_cache, softmax scale)` over `layer`'s cache, with an FP8 cache's scales applied:
        the K scale folded into the softmax scale, the V scale into the output."""
        ks, vs = self.pool.scales(layer)
        out = attend(self.pool.k[layer], self.pool.v[layer], self.scale * ks)
        return out if vs == 1.0 else out * vs

    def attended_tokens(self, cache_len: int) -> int:
        """Tokens one KV head attends to at a decode step over `cache_len` cached tokens."""
        return cache_len

    @property
    def token_kv_bytes(self) -> int:
        """Bytes of one token's K and V over every layer and KV head (the unit of the token budget)."""
        s = self.shape
        return 2 * s.num_layers * s.num_kv_heads * s.head_dim * self.pool.k.element_size()

    def decode_read_bytes(self, cache_len: int) -> int:
        """Bytes attention reads for one sequence at a decode step over `cache_len` cached tokens, every
        layer: the attended tokens' K and V, plus whatever the method reads to choose them."""
        return self.attended_tokens(cache_len) * self.token_kv_bytes

    def release(self, block_table: list[int]) -> None:
        """A request's blocks are going back to the pool; drop any per-request state."""


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """q: [q_heads, n, d]; k, v: [kv_heads, m, d] (m >= n: the queries are the last n of the m tokens, after a
    cached prefix) -> out: [q_heads, n, d] (any strides; q itself too: a head's output is written once its queries
    have been read).

    A whole prompt: one KV head's query group at a time, its K/V repeated over the group, keeps SDPA on its
    flash kernels (GQA support varies across torch builds) at 1/kv_heads of repeating them all. After a cached
    prefix the causal mask is explicit (SDPA's is_causal aligns the queries with the first keys), which rules
    flash out: then every head goes in one call, as the masked kernels parallelize over heads and query blocks
    only (a group's few new queries alone would occupy a handful of the GPU's SMs).
    """
    group = q.shape[0] // k.shape[0]
    n, m = q.shape[1], k.shape[1]
    if m > n and n >= SPLIT_MIN_QUERIES and q.is_cuda and _split_attention(q, k, v, scale, out):
        return
    if m > n:
        mask = torch.arange(m, device=q.device)[None, :] <= (m - n + torch.arange(n, device=q.device))[:, None]
        kh, vh = (t.repeat_interleave(group, dim=0) for t in (k, v))
        out.copy_(F.scaled_dot_product_attention(q[None], kh[None], vh[None], attn_mask=mask, scale=scale)[0])
        return
    for h in range(k.shape[0]):
        heads = slice(h * group, (h + 1) * group)
        kh, vh = k[h : h + 1].expand(group, -1, -1).contiguous(), v[h : h + 1].expand(group, -1, -1).contiguous()
        out[heads] = F.scaled_dot_product_attention(q[None, heads], kh[None], vh[None], is_causal=True, scale=scale)[0]


# A prompt's chunk past the first, of at least this many queries, attends in two parts on CUDA (`_split_attention`).
SPLIT_MIN_QUERIES = 256


def _split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor) -> bool:
    """`causal_attention` after a prefix as two unmasked-or-square-causal parts that keep SDPA on cuDNN's Hopper
    kernel: the chunk's queries over the prefix (no mask) and over the chunk itself (causal, square), merged by their
    log-sum-exps. (A bottom-right causal mask in one call runs FlashAttention-2 at 1.9x the time: the performance
    log.)
    False, with nothing written, where this torch has no cuDNN attention op returning the log-sum-exp or it refuses
    the inputs."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention", None)
    if op is None:
        return False
    group, n, prefix = q.shape[0] // k.shape[0], q.shape[1], k.shape[1] - q.shape[1]
    for h in range(k.shape[0]):
        heads = slice(h * group, (h + 1) * group)
        qh = q[None, heads].contiguous()
        parts = []
        for keys in (slice(0, prefix), slice(prefix, None)):
            kh, vh = (t[h : h + 1, keys].expand(group, -1, -1).contiguous()[None] for t in (k, v))
            try:
                result = op(qh, kh, vh, None, True, 0.0, keys.start == prefix, False, scale=scale)
            except RuntimeError:  # a dtype or shape cuDNN does not take (float32): before any output is written
                if h:
                    raise
                return False
            parts.append((result[0][0].float(), result[1].reshape(group, n, 1).float()))
        (o1, lse1), (o2, lse2) = parts
        top = torch.maximum(lse1, lse2)
        w1, w2 = torch.exp(lse1 - top), torch.exp(lse2 - top)
        out[heads] = ((o1 * w1 + o2 * w2) / (w1 + w2)).to(out.dtype)
    return True
