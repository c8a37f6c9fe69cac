"""Decode-step cache writes: each generation request's new K/V into its paged slot, and with a KT
cache the refreshed min/max of the page that slot belongs to (the last, possibly partial page).

An FP8 cache stores K / k_scale and V / v_scale (saturated to the e4m3 range); the KT page is the min/max of
the keys as the cache holds them, dequantized (what attention will read)."""

from typing import Optional

import torch

from ._triton import few_rows, require_triton, tl, triton
from .kt_predict import check_kt, kt_write
from .layer_ops import rotary_ref


def store_token_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    kt: Optional[torch.Tensor] = None,
    page_size: int = 1,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    q: Optional[torch.Tensor] = None,
    cos: Optional[torch.Tensor] = None,
    sin: Optional[torch.Tensor] = None,
) -> None:
    """Write slot `cache_len - 1` of each sequence; with a KT cache `kt`, recompute that slot's page. With
    `cos`/`sin` ([batch, 1, d], the rotary embedding of each sequence's position), k is rotated before it is
    stored and q ([batch, q_heads, d]) is rotated in place (the attention backend's RoPE, fused into the write).

    k, v: [batch, kv_heads, d]; k_cache, v_cache: [num_blocks, kv_heads, block_size, d];
    block_tables: [batch, max_blocks]; cache_lens: [batch]; kt: [groups, kv_heads, d, 2, run] (kt_predict's layout).
    The page's min/max cover its slots up to and including the new one.
    """
    if cos is not None and sin is not None:
        k = rotary_ref(k, cos, sin)
        if q is not None:
            q.copy_(rotary_ref(q, cos, sin))
    slot = cache_lens.long() - 1
    block_size = k_cache.shape[2]
    blocks = torch.gather(block_tables.long(), 1, (slot // block_size)[:, None])[:, 0]
    within = slot % block_size
    k_cache[blocks, :, within] = to_cache(k, k_scale, k_cache.dtype)
    v_cache[blocks, :, within] = to_cache(v, v_scale, v_cache.dtype)
    if kt is None:
        return
    page = within // page_size
    offsets = torch.arange(page_size, device=k.device)
    rows = page[:, None] * page_size + offsets  # [batch, page_size]
    keys = k_cache[blocks[:, None], :, rows].float() * k_scale  # [batch, page_size, kv_heads, d]
    valid = (offsets[None, :] <= (within % page_size)[:, None])[:, :, None, None]
    lo = keys.masked_fill(~valid, float("inf")).amin(1)
    hi = keys.masked_fill(~valid, float("-inf")).amax(1)
    kt_write(kt, blocks, page[:, None], lo[:, None], hi[:, None], block_size // page_size)


FP8_MAX = 448.0
# Warps a program with few rows (`few_rows`; others: 4): RocketKV's 32k batch-1 step 5.70 against 5.74 ms on the H100
# (2 warps: 5.73; docs/log/benchmarks.md).
STORE_FEW_WARPS = 8


def to_cache(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """Values as a cache of `dtype` stores them: divided by the scale and saturated when that is fp8."""
    if dtype != torch.float8_e4m3fn:
        return x.to(dtype)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(dtype)


if triton is not None:

    @triton.jit
    def _rotated(x_at, cos_ptr, sin_ptr, mask, D: tl.constexpr):
        # The head vector(s) at x_at (a pointer, or a column of row pointers) rotated by one position's cos/sin:
        # x * cos + rotate_half(x) * sin in float32, rounded to x's dtype, as `layer_ops.rotary`.
        d = tl.arange(0, D)
        x = tl.load(x_at + d, mask=mask, other=0.0)
        x_half = tl.load(x_at + (d + D // 2) % D, mask=mask, other=0.0).to(tl.float32)
        rotated = tl.where(d < D // 2, -x_half, x_half)
        c = tl.load(cos_ptr + d).to(tl.float32)
        s = tl.load(sin_ptr + d).to(tl.float32)
        return (x.to(tl.float32) * c + rotated * s).to(x.dtype)

    @triton.jit
    def _store_token_kernel(
        k_ptr, v_ptr, kc_ptr, vc_ptr, tables_ptr, lens_ptr, kt_ptr, k_scale, v_scale,
        q_ptr, cos_ptr, sin_ptr, sq_b, sq_h, sr_b,
        sk_b, sk_h, sv_b, sv_h, sc_blk, sc_h, sc_t, st_b, skt_grp, skt_h,
        D: tl.constexpr, BS: tl.constexpr, PS: tl.constexpr, KT: tl.constexpr, GROUP: tl.constexpr,
        RUN: tl.constexpr, FP8: tl.constexpr, ROPE: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        h = tl.program_id(1)
        d = tl.arange(0, D)
        slot = tl.load(lens_ptr + b) - 1
        blk = tl.load(tables_ptr + b * st_b + slot // BS).to(tl.int64)
        within = slot % BS
        base = blk * sc_blk + h * sc_h
        if ROPE:  # this KV head's key and, in place, its query group
            k_new = _rotated(k_ptr + b * sk_b + h * sk_h, cos_ptr + b * sr_b, sin_ptr + b * sr_b, d < D, D)
            g = tl.arange(0, G_PAD)[:, None]
            q_at = q_ptr + b * sq_b + (h * G + g) * sq_h
            q_new = _rotated(q_at, cos_ptr + b * sr_b, sin_ptr + b * sr_b, g < G, D)
            tl.store(q_at + d[None, :], q_new, mask=g < G)
        else:
            k_new = tl.load(k_ptr + b * sk_b + h * sk_h + d)
        v_new = tl.load(v_ptr + b * sv_b + h * sv_h + d)
        if FP8:
            k_new = tl.clamp(k_new.to(tl.float32) / k_scale, -448.0, 448.0)
            v_new = tl.clamp(v_new.to(tl.float32) / v_scale, -448.0, 448.0)
        k_new = k_new.to(kc_ptr.dtype.element_ty)
        tl.store(kc_ptr + base + within * sc_t + d, k_new)
        tl.store(vc_ptr + base + within * sc_t + d, v_new.to(vc_ptr.dtype.element_ty))
        if KT:
            j = tl.arange(0, PS)
            last = within % PS  # the new token's place in its page; the page's earlier rows are cached
            rows = tl.load(
                kc_ptr + base + (within - last + j)[:, None] * sc_t + d[None, :], mask=(j < last)[:, None], other=0.0
            )
            rows = tl.where((j == last)[:, None], k_new[None, :], rows).to(tl.float32) * k_scale
            valid = (j <= last)[:, None]
            # kt_predict's layout: channel d's min at column (blk % GROUP) * pages a block + page of its run, the max
            # a run further
            at = kt_ptr + (blk // GROUP) * skt_grp + h * skt_h + d * 2 * RUN + (blk % GROUP) * (BS // PS) + within // PS
            tl.store(at, tl.min(tl.where(valid, rows, float("inf")), 0).to(kt_ptr.dtype.element_ty))
            tl.store(at + RUN, tl.max(tl.where(valid, rows, float("-inf")), 0).to(kt_ptr.dtype.element_ty))


def store_token(k, v, k_cache, v_cache, block_tables, cache_lens, kt=None, page_size=1,  # noqa: ANN001, ANN201
                k_scale=1.0, v_scale=1.0, q=None, cos=None, sin=None):  # fmt: skip
    """Triton version of `store_token_ref` (same arguments and effect), one program per sequence and KV head."""
    require_triton()
    batch, kv_heads, d = k.shape
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    with_kt = kt is not None
    ppb = k_cache.shape[2] // page_size
    if with_kt:
        check_kt(kt)
    else:
        kt = k_cache  # an unused placeholder
    rope = cos is not None and sin is not None
    if rope and (q is None or q.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride(-1) != 1):
        raise ValueError("store_token's RoPE needs q, cos and sin with contiguous rows (q is rotated in place)")
    if not rope:
        q = cos = sin = k  # unused placeholders
    group = q.shape[1] // kv_heads
    # Launched plainly, never with programmatic dependent launch: with it, an fp8 cache's dense decode at 128k batch 1
    # took 11.09 against 9.65 ms a step on the H100, and RocketKV's step with RoPE in this kernel 6.05 against 5.91 ms
    # (docs/log/benchmarks.md; the cause was not found). Nor does it let the next kernel start early: dense decode
    # started early made dense's step slower (128k, fp8 cache: 11.05 against 9.40 ms, on two machines), and the KT
    # bounds pass's reads before its wait were dropped (docs/log/benchmarks.md, "The bounds pass tuned, chunked prefill
    # on the H200").
    _store_token_kernel[(batch, kv_heads)](
        k, v, k_cache, v_cache, block_tables, cache_lens, kt, float(k_scale), float(v_scale),
        q, cos, sin, q.stride(0), q.stride(1), cos.stride(0),
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), kt.stride(0), kt.stride(1),
        D=d, BS=k_cache.shape[2], PS=page_size, KT=with_kt, GROUP=kt.shape[-1] // ppb if with_kt else 1,
        RUN=kt.shape[-1], FP8=k_cache.dtype == torch.float8_e4m3fn,
        ROPE=rope, G=group, G_PAD=triton.next_power_of_2(group),
        num_warps=STORE_FEW_WARPS if few_rows(batch, kv_heads) else 4,
    )  # fmt: skip
