"""The decode-size GEMM: a few rows of activations times bf16 or fp8 weights (fp8 with per-output-channel scales).

At decode a step multiplies 1-16 rows by every weight, so the GEMM is a weight read: what matters is reading the
weight bytes at the memory's bandwidth. cuBLAS tiles for larger problems: at one row its bf16 GEMM read at
0.55-0.81 of copy bandwidth on the H100 and its FP8 GEMM (`torch._scaled_mm`, after a kernel that quantizes the
activations) at 0.31-0.60 (docs/log/benchmarks.md). Here each program streams `block_n` weight rows once; fp8 weights
widen in registers (weight-only FP8: the activations stay bf16). Two inner loops: a tensor-core dot over 16 rows
of activations, or, for one row, products summed across K at the end (no dot layout to convert into).
"""

from dataclasses import dataclass
from typing import Optional

import torch

from ._triton import gdc, pdl, require_triton, tl, triton

MAX_ROWS = 16  # the rows one program's dot covers; more rows go to the tiled GEMM
# Weight tiles a program loads before it waits for the kernel before (1 or 2): with 2, 32k batch 1 on the H100 took
# 5.79 against 5.82 ms a step (RocketKV) and 6.81 against 6.88 (dense; docs/log/benchmarks.md).
PREFETCH_TILES = 2


@dataclass(frozen=True)
class Tile:
    block_n: int = 16  # weight rows (output channels) per program
    block_k: int = 512
    warps: int = 4
    stages: int = 4
    dot: bool = True  # False: one activation row per program, no tensor cores


# Per (weight bytes per element, one row?): the tiles with the least time over Llama-3.1-8B's projections in the
# H100 sweeps of benchmarks/experiments/kernel_bandwidth.py (the performance log): at one row 4 weight rows of 1024 a
# program without the dot (`--only gemv`, with PDL: 5.03 ms a step in bf16, 2.82 in fp8); at 4 and 16 rows, 32
# channels per program with the dot.
TILES = {(2, True): Tile(4, 1024, 4, 3, False), (1, True): Tile(4, 1024, 4, 3, False),
         (2, False): Tile(32, 256, 4, 4), (1, False): Tile(32, 256, 4, 4)}  # fmt: skip


def gemv_ref(
    x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """x [rows, K] @ (weight [N, K] (* scale [N, 1])).T (+ bias), in float32 -> x's dtype."""
    out = x.float() @ weight.float().t()
    if scale is not None:
        out *= scale.float().t()
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)


if triton is not None:

    @triton.jit
    def _product(x, w, DOT: tl.constexpr, IEEE: tl.constexpr):
        # One K tile's contribution: a dot over the rows ([BLOCK_M, BLOCK_N]), or the elementwise products of one
        # row, summed across K at the end ([BLOCK_N, BLOCK_K]).
        if DOT:
            if IEEE:  # float32 activations (tests): exact products
                out = tl.dot(x, tl.trans(w.to(tl.float32)), input_precision="ieee")
            else:
                out = tl.dot(x, tl.trans(w.to(x.dtype)))
        else:
            out = w.to(tl.float32) * x.to(tl.float32)
        return out

    @triton.jit
    def _gemv_kernel(
        x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, M, N, K, sx, sw, so,
        HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
        PRE2: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        if DOT:
            m = tl.arange(0, BLOCK_M)
        else:  # one activation row per program (grid axis 1)
            m = tl.program_id(1) + tl.arange(0, 1)
        m_ok = m < M
        # The first weight tile (two with PRE2) does not depend on the kernels before: with PDL its load is on the way
        # while they finish (the GEMV's programs start early and wait in `gdc` for the activations).
        k = tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + n[:, None] * sw + k[None, :], mask=n_ok[:, None] & (k < K)[None, :], other=0.0)
        if PRE2:
            k2 = BLOCK_K + k
            w2 = tl.load(w_ptr + n[:, None] * sw + k2[None, :], mask=n_ok[:, None] & (k2 < K)[None, :], other=0.0)
        gdc(PDL)
        x = tl.load(x_ptr + m[:, None] * sx + k[None, :], mask=m_ok[:, None] & (k < K)[None, :], other=0.0)
        acc = _product(x, w, DOT, IEEE)
        if PRE2:
            x = tl.load(x_ptr + m[:, None] * sx + k2[None, :], mask=m_ok[:, None] & (k2 < K)[None, :], other=0.0)
            acc += _product(x, w2, DOT, IEEE)
        for k0 in range((1 + PRE2) * BLOCK_K, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            if EVEN_K:
                w = tl.load(w_ptr + n[:, None] * sw + k[None, :], mask=n_ok[:, None], other=0.0)
                x = tl.load(x_ptr + m[:, None] * sx + k[None, :], mask=m_ok[:, None], other=0.0)
            else:
                k_ok = k < K
                w = tl.load(w_ptr + n[:, None] * sw + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                x = tl.load(x_ptr + m[:, None] * sx + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            acc += _product(x, w, DOT, IEEE)
        if not DOT:
            acc = tl.sum(acc, 1)[None, :]
        if HAS_SCALE:
            acc = acc * tl.load(s_ptr + n, mask=n_ok, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + m[:, None] * so + n[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])  # fmt: skip


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    tile: Optional[Tile] = None,
) -> torch.Tensor:
    """Triton version of `gemv_ref` for at most MAX_ROWS rows (x [rows, K] contiguous rows; weight [N, K]
    contiguous rows; scale [N, 1] float32, contiguous); `tile` overrides TILES."""
    require_triton()
    rows, k = x.shape
    n = weight.shape[0]
    if rows > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows, got {rows}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    tile = tile or TILES[min(weight.element_size(), 2), rows == 1]  # float32 weights (tests): bf16's tiles
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    dummy = weight  # a pointer the kernel never reads
    block_k = tile.block_k if k >= tile.block_k else max(16, triton.next_power_of_2(k))
    _gemv_kernel[(triton.cdiv(n, tile.block_n), 1 if tile.dot else rows)](
        x, weight, dummy if scale is None else scale, dummy if bias is None else bias, out, rows, n, k,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, DOT=tile.dot,
        BLOCK_M=16, BLOCK_N=tile.block_n, BLOCK_K=block_k, IEEE=x.dtype == torch.float32,
        num_warps=tile.warps, num_stages=tile.stages, PRE2=PREFETCH_TILES == 2, **pdl(x),
    )  # fmt: skip
    return out
