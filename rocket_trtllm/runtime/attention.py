"""The attention-backend interface the sparse-attention registry plugs into, and the dense backend.

A step's tokens are packed: every context request's prompt first, then one token per generation
request. The model computes q/k/v (RoPE applied) for all of them and hands them to `forward`.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

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
    cached_lens: Optional[list[int]] = None  # per context request: prompt tokens already cached (prefix cache)
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


@dataclass
class Prompt:
    """One context request's prompt while its chunks go through a layer (`AttentionBackend.begin_prompt`)."""

    layer: int
    n: int  # tokens computed this step (past the cached prefix)
    cached: int  # prompt tokens already cached (prefix cache)
    table: torch.Tensor  # the request's block table
    history: Optional[torch.Tensor] = None  # where a history-keeping method holds the whole prompt
    filled: int = -1  # tokens of K/V so far, the cached prefix included
    k: Optional[torch.Tensor] = None  # [kv_heads, cached + n, d] once chunks arrive
    v: Optional[torch.Tensor] = None
    window: Optional[torch.Tensor] = None  # [q_heads, w, d]: the prompt's last w queries (stage 1's window)

    def __post_init__(self) -> None:
        if self.filled < 0:
            self.filled = self.cached


def _rows(rope: Optional[tuple[torch.Tensor, torch.Tensor]], rows: slice) -> Optional[tuple[torch.Tensor, ...]]:
    return None if rope is None else (rope[0][rows], rope[1][rows])


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
        if meta.num_contexts:  # each prompt in one piece (a long prompt's layer goes through `prompt_chunk` itself)
            start = 0
            for i, n in enumerate(meta.context_lens):
                prompt = self.begin_prompt(layer, meta, i)
                part = slice(start, start + n)
                self.prompt_chunk(prompt, q[part], k[part], v[part], _rows(rope, part))
                self.end_prompt(prompt, meta)
                start += n
            self.after_context(layer, meta)
        if q.shape[0] == n_ctx:
            return q  # each prompt's output is written over its queries
        out = self.generate(layer, q[n_ctx:], k[n_ctx:], v[n_ctx:], meta, _rows(rope, slice(n_ctx, None)))
        return out if not n_ctx else torch.cat([q[:n_ctx], out])

    def generate(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: AttentionMetadata,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """The generation tokens (one a request, after the step's prompts): each token's K/V into slot
        cache_len - 1 (RoPE applied there, the KT page refreshed), then `decode`."""
        cos, sin = rope if rope is not None else (None, None)
        store = store_token if self.use_kernels else store_token_ref
        ks, vs = self.pool.scales(layer)
        store(k, v, self.pool.k[layer], self.pool.v[layer], meta.gen_block_tables, meta.cache_lens,
              *self.kt_pages(layer), k_scale=ks, v_scale=vs, q=q, cos=cos, sin=sin)  # fmt: skip
        return self.decode(layer, q, meta)

    # A prompt goes through a layer as one or more chunks of consecutive tokens: `begin_prompt`, `prompt_chunk` for
    # each chunk in order, `end_prompt` (which stores what the cache keeps); `after_context` once every prompt of the
    # step is stored. A long prompt's layer runs its projections chunk by chunk too, so q, the fused projection and
    # the attention output never exist for all its tokens at once.
    def begin_prompt(self, layer: int, meta: AttentionMetadata, index: int) -> "Prompt":
        """The state of the step's `index`-th context request as its chunks go through `layer`."""
        history = meta.history_tables[index] if meta.history_tables is not None else None
        return Prompt(layer, meta.context_lens[index], meta.cached_lens[index] if meta.cached_lens else 0,
                      meta.block_tables[index], history)  # fmt: skip

    def prompt_chunk(
        self,
        prompt: "Prompt",
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """The prompt's next tokens, q: [c, q_heads, d]; k, v: [c, kv_heads, d] (RoPE applied here when `rope`
        is given, in place) -> their attention output over the prompt so far, written over q."""
        if rope is not None:
            for x in (q, k):
                self._rotate(x, *rope)
        qi, ki, vi = (t.transpose(0, 1) for t in (q, k, v))  # [heads, c, d]
        done = prompt.filled - prompt.cached
        w = min(prompt.n, self.prompt_query_window)
        if prompt.window is None:
            prompt.window = qi.new_empty(qi.shape[0], w, qi.shape[2])
        first = prompt.n - w  # the window's first query
        lo, hi = max(done, first), done + qi.shape[1]  # the window's queries in this chunk
        if lo < hi:  # copied out before the output overwrites them
            prompt.window[:, lo - first : hi - first] = qi[:, lo - done : hi - done]
        kf, vf = self._append(prompt, ki, vi)
        causal_attention(qi, kf, vf, self.scale, out=qi)
        return q

    def _append(self, prompt: "Prompt", k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The chunk's K/V after the prompt's so far ([kv_heads, c, d] each) -> everything up to the chunk's end. A
        # prompt in one piece without a cached prefix needs no copy; chunks fill one buffer for the whole prompt.
        c = k.shape[1]
        if prompt.k is None and c == prompt.n and not prompt.cached:
            prompt.k, prompt.v = k, v
        else:
            if prompt.k is None:
                total = prompt.cached + prompt.n
                prompt.k = k.new_empty(k.shape[0], total, k.shape[2])
                prompt.v = v.new_empty(v.shape[0], total, v.shape[2])
                if prompt.cached:  # the prefix's K/V come from the cache (methods that keep every prompt token)
                    source = prompt.table if prompt.history is None else prompt.history
                    kc, vc = self._read_rows(prompt.layer, source, prompt.cached, k.dtype)
                    prompt.k[:, : prompt.cached], prompt.v[:, : prompt.cached] = kc, vc
            prompt.k[:, prompt.filled : prompt.filled + c] = k
            prompt.v[:, prompt.filled : prompt.filled + c] = v
        prompt.filled += c
        return prompt.k[:, : prompt.filled], prompt.v[:, : prompt.filled]

    def end_prompt(self, prompt: "Prompt", meta: AttentionMetadata) -> None:
        """Every chunk is in: store what the cache keeps of the prompt (stage 1 chooses it from its whole K/V)."""
        if prompt.filled != prompt.cached + prompt.n:
            raise RuntimeError(f"prompt ended after {prompt.filled - prompt.cached} of its {prompt.n} tokens")
        layer, cached = prompt.layer, prompt.cached
        k, v, new = prompt.k, prompt.v, slice(cached, None)
        if prompt.history is not None:  # the whole prompt stays for later turns; the working set is chosen from it
            self._store_rows(layer, prompt.history, k[:, new], v[:, new], first=cached)
            self._store_rows(layer, prompt.table, *self.compress_prompt(layer, prompt.window, k, v))
        elif cached:
            self._store_rows(layer, prompt.table, k[:, new], v[:, new], first=cached)
        else:
            self._store_rows(layer, prompt.table, *self.compress_prompt(layer, prompt.window, k, v))
        prompt.k = prompt.v = prompt.window = None

    def _read_rows(
        self, layer: int, table: torch.Tensor, n: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` cached tokens' K and V of a request (block table `table`): [kv_heads, n, head_dim]."""
        bs = self.pool.tokens_per_block
        blocks = table[: n // bs].long()
        ks, vs = self.pool.scales(layer)
        k, v = (c[layer][blocks].transpose(0, 1).reshape(c.shape[2], n, -1) for c in (self.pool.k, self.pool.v))
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
        """Called once the context requests' kept K/V of `layer` are in the cache."""

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


# Fewest new queries attended one KV head's group at a time after a cached prefix or earlier chunks: fewer go in one
# call over every head (SDPA's kernels parallelize over heads and query blocks only).
GROUP_MIN_QUERIES = 1024


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """q: [q_heads, n, d]; k, v: [kv_heads, m, d] (m >= n: the queries are the last n of the m tokens, after a
    cached prefix or a prompt's earlier chunks) -> out: [q_heads, n, d] (any strides; q itself too: a head's output
    is written once its queries have been read).

    One KV head's query group at a time, its K/V repeated over the group, keeps SDPA on its flash kernels (GQA
    support varies across torch builds) at 1/kv_heads of repeating them all; past m = n the mask is causal from the
    bottom right (`causal_lower_right`, which flash takes too). A few queries after a long prefix (a conversation's
    next turn) go in one call over every head instead: a group's few query blocks alone would occupy a handful of
    the GPU's SMs.
    """
    group = q.shape[0] // k.shape[0]
    n, m = q.shape[1], k.shape[1]
    causal = {"is_causal": True} if m == n else {"attn_mask": causal_lower_right(n, m)}
    if m > n and n < GROUP_MIN_QUERIES:
        kh, vh = (t.repeat_interleave(group, dim=0) for t in (k, v))
        out.copy_(F.scaled_dot_product_attention(q[None], kh[None], vh[None], scale=scale, **causal)[0])
        return
    for h in range(k.shape[0]):
        heads = slice(h * group, (h + 1) * group)
        kh, vh = k[h : h + 1].expand(group, -1, -1).contiguous(), v[h : h + 1].expand(group, -1, -1).contiguous()
        out[heads] = F.scaled_dot_product_attention(q[None, heads], kh[None], vh[None], scale=scale, **causal)[0]
