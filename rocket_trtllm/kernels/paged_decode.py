"""Decode attention over a paged KV cache: dense (whole sequence) and sparse (selected tokens).

The cache may hold float8_e4m3fn K/V (an FP8 KV cache): the kernels widen each row to q's dtype as they read it,
and the caller folds the per-tensor K scale into `scale` and multiplies the output by the V scale."""

import torch

from ._triton import device_properties, few_rows, gdc, pdl, require_triton, tl, triton


def attend_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    """Exact attention of each query group over its own gathered tokens, in float32.

    q: [batch, kv_heads, group, head_dim]; k, v: [batch, kv_heads, n, head_dim];
    valid: [batch, kv_heads or 1, n] bool -> [batch, kv_heads, group, head_dim] in q's dtype.
    """
    scores = torch.einsum("bhgd,bhnd->bhgn", q.float(), k.float()) * scale
    scores = scores.masked_fill(~valid[:, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhgn,bhnd->bhgd", probs, v.float()).to(q.dtype)


def gather_pages_ref(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """Every token slot of each sequence's blocks, in logical order.

    cache: [num_blocks, kv_heads, block_size, head_dim]; block_tables: [batch, max_blocks]
    -> [batch, kv_heads, max_blocks * block_size, head_dim]
    """
    blocks = cache[block_tables.long()]  # [batch, max_blocks, kv_heads, block_size, head_dim]
    b, nb, h, bs, d = blocks.shape
    return blocks.permute(0, 2, 1, 3, 4).reshape(b, h, nb * bs, d)


def paged_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Dense decode: each sequence's one query over all its cached tokens.

    q: [batch, q_heads, head_dim]; k_cache, v_cache: [num_blocks, kv_heads, block_size, head_dim];
    block_tables: [batch, max_blocks]; cache_lens: [batch] -> [batch, q_heads, head_dim]
    """
    batch, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    k = gather_pages_ref(k_cache, block_tables)
    v = gather_pages_ref(v_cache, block_tables)
    pos = torch.arange(k.shape[2], device=q.device)
    valid = (pos[None, :] < cache_lens[:, None])[:, None, :]
    out = attend_ref(q.view(batch, kv_heads, q_heads // kv_heads, head_dim), k, v, valid, scale)
    return out.reshape(batch, q_heads, head_dim)


def gather_tokens_ref(cache: torch.Tensor, block_tables: torch.Tensor, token_idx: torch.Tensor) -> torch.Tensor:
    """The cached rows at logical token positions, per KV head.

    cache: [num_blocks, kv_heads, block_size, head_dim]; block_tables: [batch, max_blocks];
    token_idx: [batch, kv_heads, n] (any value < max_blocks * block_size) -> [batch, kv_heads, n, head_dim]
    """
    block_size = cache.shape[2]
    token_idx = token_idx.long()
    blocks = torch.gather(block_tables.long(), 1, (token_idx // block_size).flatten(1)).view_as(token_idx)
    heads = torch.arange(cache.shape[1], device=cache.device)[None, :, None]
    return cache[blocks, heads, token_idx % block_size]


def token_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    token_idx: torch.Tensor,
    valid: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Each query group attends only to its KV head's listed tokens (the baselines' token-level selection).

    q: [batch, q_heads, head_dim]; token_idx, valid: [batch, kv_heads, n] -> [batch, q_heads, head_dim]
    """
    batch, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    k = gather_tokens_ref(k_cache, block_tables, token_idx)
    v = gather_tokens_ref(v_cache, block_tables, token_idx)
    out = attend_ref(q.view(batch, kv_heads, q_heads // kv_heads, head_dim), k, v, valid, scale)
    return out.reshape(batch, q_heads, head_dim)


def page_tokens(pages: torch.Tensor, cache_lens: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected pages -> their token positions and which of those exist (< cache_len).

    pages: [batch, kv_heads, k] -> token_idx, valid: [batch, kv_heads, k * page_size]
    """
    offsets = torch.arange(page_size, device=pages.device)
    token_idx = (pages.long()[..., None] * page_size + offsets).flatten(2)
    return token_idx, token_idx < cache_lens[:, None, None]


def sparse_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    pages: torch.Tensor,
    cache_lens: torch.Tensor,
    page_size: int,
    scale: float,
) -> torch.Tensor:
    """Sparse decode: each query group attends only to the tokens of its KV head's selected pages.

    Pages past a sequence's end (picked when it has fewer pages than the selection) and the unwritten
    slots of its last page are masked. q: [batch, q_heads, head_dim]; pages: [batch, kv_heads, k]
    -> [batch, q_heads, head_dim]
    """
    token_idx, valid = page_tokens(pages, cache_lens, page_size)
    return token_decode_ref(q, k_cache, v_cache, block_tables, token_idx, valid, scale)


# ---- Triton: split-K flash decoding over a paged cache, GQA-aware (one program reads a KV head's
# tokens once for its whole query group), dense (a prefix of each sequence) or sparse (listed tokens).

if triton is not None:

    @triton.jit
    def _decode_split_kernel(
        q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, pages_ptr, po_ptr, pm_ptr, pl_ptr,
        scale, n_tokens, chunk,
        sq_b, sq_h, sk_blk, sk_h, sk_t, st_b, sp_b, sp_h,
        G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
        SPARSE: tl.constexpr, PS: tl.constexpr, IEEE: tl.constexpr, DIRECT: tl.constexpr, PDL: tl.constexpr,
        FIRST: tl.constexpr,
    ):  # fmt: skip
        gdc(PDL, FIRST)
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        n_splits = tl.num_programs(2)
        q_heads = tl.num_programs(1) * G
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + b * sq_b + (h * G + g)[:, None] * sq_h + d[None, :], mask=g[:, None] < G, other=0.0)
        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        seq_len = tl.load(lens_ptr + b)
        start = s * chunk
        end = tl.minimum(start + chunk, n_tokens)
        if not SPARSE:
            end = tl.minimum(end, seq_len)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            inside = n < end
            if SPARSE:  # the n-th token of the selection: slot n % PS of selected page n // PS
                page = tl.load(pages_ptr + b * sp_b + h * sp_h + n // PS, mask=inside, other=0)
                t = page * PS + n % PS
                ok = inside & (t < seq_len)
            else:
                t = n
                ok = inside
            blk = tl.load(tables_ptr + b * st_b + t // BS, mask=ok, other=0).to(tl.int64)
            off = blk * sk_blk + h * sk_h + (t % BS) * sk_t
            k = tl.load(k_ptr + off[:, None] + d[None, :], mask=ok[:, None], other=0.0).to(q.dtype)  # fp8 KV too
            if IEEE:
                qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                qk = tl.dot(q, tl.trans(k))
            qk = tl.where(ok[None, :], qk * scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(qk - m_safe[:, None])
            v = tl.load(v_ptr + off[:, None] + d[None, :], mask=ok[:, None], other=0.0).to(q.dtype)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        row = (b * q_heads + h * G + g) * n_splits + s
        if DIRECT:  # one split: the output itself (po_ptr is the [batch, q_heads, D] output), no combine kernel
            out = acc / l_i[:, None]
            tl.store(po_ptr + row[:, None] * D + d[None, :], out.to(po_ptr.dtype.element_ty), mask=g[:, None] < G)
        else:
            tl.store(po_ptr + row[:, None] * D + d[None, :], acc, mask=g[:, None] < G)
            tl.store(pm_ptr + row, m_i, mask=g < G)
            tl.store(pl_ptr + row, l_i, mask=g < G)

    @triton.jit
    def _combine_kernel(
        po_ptr, pm_ptr, pl_ptr, out_ptr, S, D: tl.constexpr, S_PAD: tl.constexpr, PDL: tl.constexpr, FIRST: tl.constexpr
    ):
        gdc(PDL, FIRST)
        row = tl.program_id(0)  # batch * q_heads + head
        s = tl.arange(0, S_PAD)
        d = tl.arange(0, D)
        m = tl.load(pm_ptr + row * S + s, mask=s < S, other=float("-inf"))
        l_ = tl.load(pl_ptr + row * S + s, mask=s < S, other=0.0)
        m_max = tl.max(m, 0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_max))
        o = tl.load(po_ptr + (row * S + s)[:, None] * D + d[None, :], mask=(s < S)[:, None], other=0.0)
        out = tl.sum(w[:, None] * o, 0) / tl.sum(w * l_, 0)
        tl.store(out_ptr + row * D + d, out.to(out_ptr.dtype.element_ty))


# Fewest tokens a split reads: below it a sequence is read by fewer programs, each reading more tiles (at one
# split the output is written without the combine kernel).
SPLIT_MIN_TOKENS = 64
# Programs a decode launch aims for, per SM: one full wave of resident programs. Dense attention over one layer of
# 5 x 128k tokens on the H200 (132 SMs) took 622 us at 4 programs an SM against 815 at 2 (the rule before), 754 at 6
# and 655 at 8; at batch 1 of 128k 143 against 177 us, at 10 x 32k 317 against 384 (docs/log/benchmarks.md).
SPLIT_PROGRAMS_PER_SM = 4
SPLIT_MAX = 64  # splits a sequence at most


def _num_splits(batch: int, kv_heads: int, n_tokens: int, block_n: int, sms: int) -> int:
    # never a split without tokens
    target = -(-SPLIT_PROGRAMS_PER_SM * sms // max(1, batch * kv_heads))
    return max(1, min(target, -(-n_tokens // max(block_n, SPLIT_MIN_TOKENS)), SPLIT_MAX))


# With PDL, dense attention (a bandwidth-bound read of the whole cache) lets the kernel after it start before it
# waits, and so on to the output projection, whose first weight tiles then load during the attention: dense's 32k
# batch-1 step 6.83 against 6.91 ms on the H100 (docs/log/benchmarks.md). Sparse attention does not: every kernel so
# made RocketKV's step 5.93 against 5.82 ms (its chain is latency-bound, and the weight loads slow it).
DENSE_TRIGGER_FIRST = 1

# (tokens per tile, pipeline stages) per cache element size: an fp8 tile of 64 tokens is half a bf16 one, too
# little in flight to reach the bandwidth, so fp8 reads twice the tokens a tile with a stage more.
TILES = {1: (128, 3), 2: (64, 2), 4: (64, 2)}
# Sparse attention over a bf16 cache with few rows (`few_rows`) takes 2 warps a program (others: 4): RocketKV's 32k
# batch-1 step 5.745 against 5.772 ms on the H100 (8 warps: 5.765); over an fp8 cache's 128-token tiles 2 warps made
# its 128k step 5.90 ms against 5.81 with 4 (docs/log/benchmarks.md).
SPARSE_FEW_WARPS = 2
COMBINE_FEW_WARPS = 1  # its combine's warps there: 5.730 against 5.740 ms with 4


def _decode(q, k_cache, v_cache, block_tables, cache_lens, pages, page_size, scale, n_tokens):
    batch, q_heads, d = q.shape
    _, kv_heads, bs, _ = k_cache.shape
    group = q_heads // kv_heads
    block_n, stages = TILES[k_cache.element_size()]
    sms = device_properties(q).multi_processor_count if q.is_cuda else 132  # the interpreter splits as an H200 would
    splits = _num_splits(batch, kv_heads, n_tokens, block_n, sms)
    chunk = -(-n_tokens // splits)
    chunk = -(-chunk // block_n) * block_n
    splits = -(-n_tokens // chunk)
    sparse = pages is not None
    few = sparse and few_rows(batch, kv_heads) and k_cache.element_size() == 2
    warps = SPARSE_FEW_WARPS if few else 4
    first = not sparse and bool(DENSE_TRIGGER_FIRST)
    if not sparse:
        pages = cache_lens  # an unused placeholder
    q = q.contiguous()
    if splits == 1:
        out = po = torch.empty_like(q)
        pm = pl = q  # unused
    else:
        po = torch.empty(batch * q_heads * splits, d, device=q.device, dtype=torch.float32)
        pm = torch.empty(batch * q_heads * splits, device=q.device, dtype=torch.float32)
        pl = torch.empty_like(pm)
    _decode_split_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, block_tables, cache_lens, pages, po, pm, pl,
        scale, n_tokens, chunk,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), pages.stride(0) if sparse else 0, pages.stride(1) if sparse else 0,
        G=group, G_PAD=max(16, triton.next_power_of_2(group)), D=d, BS=bs, BLOCK_N=block_n,
        SPARSE=sparse, PS=page_size, IEEE=q.dtype == torch.float32, DIRECT=splits == 1,
        num_warps=warps, num_stages=stages, FIRST=first, **pdl(q),
    )  # fmt: skip
    if splits == 1:
        return out
    out = torch.empty_like(q)
    _combine_kernel[(batch * q_heads,)](po, pm, pl, out, splits, D=d, S_PAD=triton.next_power_of_2(splits),
                                        FIRST=first, num_warps=COMBINE_FEW_WARPS if few else 4, **pdl(po))  # fmt: skip
    return out


def _check(q: torch.Tensor, k_cache: torch.Tensor) -> None:
    require_triton()
    if q.shape[-1] & (q.shape[-1] - 1) or k_cache.shape[-1] != q.shape[-1]:
        raise ValueError(f"head_dim must be a power of two shared by q and K, got {q.shape[-1]}, {k_cache.shape[-1]}")
    if q.shape[1] % k_cache.shape[1]:
        raise ValueError(f"q_heads ({q.shape[1]}) must be a multiple of kv_heads ({k_cache.shape[1]})")


def paged_decode(q, k_cache, v_cache, block_tables, cache_lens, scale):  # noqa: ANN001, ANN201
    """Triton version of `paged_decode_ref` (same arguments and result)."""
    _check(q, k_cache)
    n_tokens = block_tables.shape[1] * k_cache.shape[2]
    return _decode(q, k_cache, v_cache, block_tables, cache_lens, None, 1, scale, n_tokens)


def sparse_decode(q, k_cache, v_cache, block_tables, pages, cache_lens, page_size, scale):  # noqa: ANN001, ANN201
    """Triton version of `sparse_decode_ref` (same arguments and result): reads exactly the selected pages."""
    _check(q, k_cache)
    if pages.stride(-1) != 1:
        pages = pages.contiguous()
    n_tokens = pages.shape[-1] * page_size
    return _decode(q, k_cache, v_cache, block_tables, cache_lens, pages, page_size, scale, n_tokens)
