"""Decode-step cache writes: each generation request's new K/V into its paged slot, and with a KT
cache the refreshed min/max of the page that slot belongs to (the last, possibly partial page).

An FP8 cache stores K / k_scale and V / v_scale (saturated to the e4m3 range); the KT page is the min/max of
the keys as the cache holds them, dequantized (what attention will read)."""

from typing import Optional

import torch

from ._triton import gdc, pdl, require_triton, tl, triton


def store_token_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    kt_min: Optional[torch.Tensor] = None,
    kt_max: Optional[torch.Tensor] = None,
    page_size: int = 1,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Write slot `cache_len - 1` of each sequence; with `kt_min`/`kt_max`, recompute that slot's page.

    k, v: [batch, kv_heads, d]; k_cache, v_cache: [num_blocks, kv_heads, block_size, d];
    block_tables: [batch, max_blocks]; cache_lens: [batch]; kt_min, kt_max: [num_blocks, kv_heads,
    block_size // page_size, d]. The page's min/max cover its slots up to and including the new one.
    """
    slot = cache_lens.long() - 1
    block_size = k_cache.shape[2]
    blocks = torch.gather(block_tables.long(), 1, (slot // block_size)[:, None])[:, 0]
    within = slot % block_size
    k_cache[blocks, :, within] = to_cache(k, k_scale, k_cache.dtype)
    v_cache[blocks, :, within] = to_cache(v, v_scale, v_cache.dtype)
    if kt_min is None or kt_max is None:
        return
    page = within // page_size
    offsets = torch.arange(page_size, device=k.device)
    rows = page[:, None] * page_size + offsets  # [batch, page_size]
    keys = k_cache[blocks[:, None], :, rows].float() * k_scale  # [batch, page_size, kv_heads, d]
    valid = (offsets[None, :] <= (within % page_size)[:, None])[:, :, None, None]
    kt_min[blocks, :, page] = keys.masked_fill(~valid, float("inf")).amin(1).to(kt_min.dtype)
    kt_max[blocks, :, page] = keys.masked_fill(~valid, float("-inf")).amax(1).to(kt_max.dtype)


FP8_MAX = 448.0


def to_cache(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """Values as a cache of `dtype` stores them: divided by the scale and saturated when that is fp8."""
    if dtype != torch.float8_e4m3fn:
        return x.to(dtype)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(dtype)


if triton is not None:

    @triton.jit
    def _store_token_kernel(
        k_ptr, v_ptr, kc_ptr, vc_ptr, tables_ptr, lens_ptr, lo_ptr, hi_ptr, k_scale, v_scale,
        sk_b, sk_h, sv_b, sv_h, sc_blk, sc_h, sc_t, st_b, skt_blk, skt_h, skt_p,
        D: tl.constexpr, BS: tl.constexpr, PS: tl.constexpr, KT: tl.constexpr, FP8: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        gdc(PDL)
        b = tl.program_id(0)
        h = tl.program_id(1)
        d = tl.arange(0, D)
        slot = tl.load(lens_ptr + b) - 1
        blk = tl.load(tables_ptr + b * st_b + slot // BS).to(tl.int64)
        within = slot % BS
        base = blk * sc_blk + h * sc_h
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
            kt = blk * skt_blk + h * skt_h + (within // PS) * skt_p + d
            tl.store(lo_ptr + kt, tl.min(tl.where(valid, rows, float("inf")), 0).to(lo_ptr.dtype.element_ty))
            tl.store(hi_ptr + kt, tl.max(tl.where(valid, rows, float("-inf")), 0).to(hi_ptr.dtype.element_ty))


def store_token(k, v, k_cache, v_cache, block_tables, cache_lens, kt_min=None, kt_max=None, page_size=1,  # noqa: ANN001, ANN201
                k_scale=1.0, v_scale=1.0):  # fmt: skip
    """Triton version of `store_token_ref` (same arguments and effect), one program per sequence and KV head."""
    require_triton()
    batch, kv_heads, d = k.shape
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    with_kt = kt_min is not None and kt_max is not None
    if not with_kt:
        kt_min = kt_max = k_cache  # unused placeholders
    # An fp8 cache's store launches plainly: chained by PDL to the decode kernel after it, dense decode at 128k batch 1
    # took 11.09 against 9.65 ms a step on the H100 (either launch plain restores it; the cause was not found).
    launch = pdl(k) if k_cache.element_size() > 1 else {"PDL": False}
    _store_token_kernel[(batch, kv_heads)](
        k, v, k_cache, v_cache, block_tables, cache_lens, kt_min, kt_max, float(k_scale), float(v_scale),
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), kt_min.stride(0), kt_min.stride(1), kt_min.stride(2),
        D=d, BS=k_cache.shape[2], PS=page_size, KT=with_kt, FP8=k_cache.dtype == torch.float8_e4m3fn, **launch,
    )  # fmt: skip
