"""The decode-size GEMM: a few rows of activations times bf16 or fp8 weights (fp8 with per-output-channel scales).

At decode a step multiplies 1-16 rows by every weight, so the GEMM is a weight read: what matters is reading the
weight bytes at the memory's bandwidth. cuBLAS tiles for larger problems: at one row its bf16 GEMM read at
0.55-0.81 of copy bandwidth on the H100 and its FP8 GEMM (`torch._scaled_mm`, after a kernel that quantizes the
activations) at 0.31-0.60 (BENCHMARKS.md). Here each program streams `block_n` weight rows once; fp8 weights
widen in registers (weight-only FP8: the activations stay bf16). Two inner loops: a tensor-core dot over 16 rows
of activations, or, for one row, products summed across K at the end (no dot layout to convert into).
"""

from dataclasses import dataclass
from typing import Optional

import torch

from . import layer_ops
from ._triton import gdc, pdl, require_triton, tl, triton

MAX_ROWS = 16  # the rows one program's dot covers; more rows go to the tiled GEMM


@dataclass(frozen=True)
class Tile:
    block_n: int = 16  # weight rows (output channels) per program
    block_k: int = 512
    warps: int = 4
    stages: int = 4
    dot: bool = True  # False: one activation row per program, no tensor cores


# Per (weight bytes per element, one row?): the tiles with the least time over Llama-3.1-8B's projections in the
# H100 sweep of benchmarks/kernels.py (BENCHMARKS.md): at one row, 2 (bf16) or 4 (fp8) weight rows per program
# without the dot; at 4 and 16 rows, 32 channels per program with the dot.
TILES = {(2, True): Tile(2, 1024, 4, 3, False), (1, True): Tile(4, 512, 4, 3, False),
         (2, False): Tile(32, 256, 4, 4), (1, False): Tile(32, 256, 4, 4)}  # fmt: skip


def gemv_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    *,
    norm: Optional[tuple[torch.Tensor, float]] = None,
    silu: bool = False,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """x [rows, K] @ (weight [N, K] (* scale [N, 1])).T (+ bias), in float32 -> x's dtype. Around the product, as
    the decoder layer would run them: `norm` (weight [K], eps): the RMSNorm of x first; `silu`: x is [rows, 2K]
    (gate, then up) and the product takes silu(gate) * up; `residual` [rows, N]: the result is added to it in
    place (rounded as torch's add) and returned."""
    if norm is not None:
        x = layer_ops.rms_norm_ref(x, norm[0], norm[1])
    if silu:
        x = layer_ops.silu_mul_ref(x)
    out = x.float() @ weight.float().t()
    if scale is not None:
        out *= scale.float().t()
    if bias is not None:
        out += bias.float()
    out = out.to(x.dtype)
    return out if residual is None else residual.add_(out)


if triton is not None:

    @triton.jit
    def _load_x(x_ptr, g_ptr, m, k, sx, K, mask, SILU: tl.constexpr, NORM: tl.constexpr):
        """A [rows, BLOCK_K] tile of the product's input and the raw x (for the norm's squares): silu(gate) * up
        rounded to x's dtype (as the unfused kernel stores it), x times the norm weight in float32 (the norm's
        1 / rms is applied to the sums), or x as loaded."""
        if SILU:
            gate = tl.load(x_ptr + m[:, None] * sx + k[None, :], mask=mask, other=0.0)
            up = tl.load(x_ptr + m[:, None] * sx + K + k[None, :], mask=mask, other=0.0).to(tl.float32)
            raw = gate.to(tl.float32)
            x = (raw / (1.0 + tl.exp(-raw)) * up).to(gate.dtype).to(tl.float32)
        else:
            x = tl.load(x_ptr + m[:, None] * sx + k[None, :], mask=mask, other=0.0)
            raw = x
            if NORM:
                raw = x.to(tl.float32)
                x = raw * tl.load(g_ptr + k, mask=k < K, other=0.0).to(tl.float32)[None, :]
        return x, raw

    @triton.jit
    def _gemv_kernel(
        x_ptr, w_ptr, s_ptr, b_ptr, g_ptr, out_ptr, M, N, K, sx, sw, so, eps,
        HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, DOT: tl.constexpr,
        NORM: tl.constexpr, SILU: tl.constexpr, ADD: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        gdc(PDL)
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        if DOT:
            m = tl.arange(0, BLOCK_M)
        else:  # one activation row per program (grid axis 1)
            m = tl.program_id(1) + tl.arange(0, 1)
        m_ok = m < M
        if DOT:
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            squares = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        else:
            part = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            squares = tl.zeros([1, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            if EVEN_K:
                w = tl.load(w_ptr + n[:, None] * sw + k[None, :], mask=n_ok[:, None], other=0.0)
                x, raw = _load_x(x_ptr, g_ptr, m, k, sx, K, m_ok[:, None], SILU, NORM)
            else:
                k_ok = k < K
                w = tl.load(w_ptr + n[:, None] * sw + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                x, raw = _load_x(x_ptr, g_ptr, m, k, sx, K, m_ok[:, None] & k_ok[None, :], SILU, NORM)
            if NORM:
                squares += raw * raw
            if DOT:
                if IEEE:  # float32 activations (tests): exact products
                    acc += tl.dot(x, tl.trans(w.to(tl.float32)), input_precision="ieee")
                else:
                    xd = x.to(x_ptr.dtype.element_ty)
                    acc += tl.dot(xd, tl.trans(w.to(xd.dtype)))
            else:
                part += w.to(tl.float32) * x.to(tl.float32)
        if not DOT:
            acc = tl.sum(part, 1)[None, :]
        if NORM:  # RMSNorm(x) @ W.T = (x * g) @ W.T / rms(x), rms over the whole row
            acc = acc / tl.sqrt(tl.sum(squares, 1) / K + eps)[:, None]
        if HAS_SCALE:
            acc = acc * tl.load(s_ptr + n, mask=n_ok, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + m[:, None] * so + n[None, :]
        ok = m_ok[:, None] & n_ok[None, :]
        if ADD:  # the residual stream += this product, rounded as the unfused add rounds it
            delta = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
            acc = tl.load(out, mask=ok, other=0.0).to(tl.float32) + delta
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=ok)


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    tile: Optional[Tile] = None,
    *,
    norm: Optional[tuple[torch.Tensor, float]] = None,
    silu: bool = False,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Triton version of `gemv_ref` for at most MAX_ROWS rows (x [rows, K] contiguous rows, [rows, 2K] with `silu`;
    weight [N, K] contiguous rows; scale [N, 1] float32, contiguous; residual [rows, N] contiguous rows);
    `tile` overrides TILES. The norm, SiLU and residual add cost no launch of their own: at decode each is a
    kernel of ~2 us around a GEMV that reads the weights."""
    require_triton()
    rows, k = x.shape
    n = weight.shape[0]
    if rows > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows, got {rows}")
    if silu:
        k //= 2
    if k != weight.shape[1]:
        raise ValueError(f"gemv: x has {k} inputs per row{' after SiLU' if silu else ''}, the weight {weight.shape[1]}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    tile = tile or TILES[min(weight.element_size(), 2), rows == 1]  # float32 weights (tests): bf16's tiles
    if residual is not None:
        if residual.shape != (rows, n) or residual.stride(-1) != 1:
            raise ValueError(f"gemv: residual must be [{rows}, {n}] with contiguous rows, got {tuple(residual.shape)}")
        out = residual
    else:
        out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    dummy = weight  # a pointer the kernel never reads
    block_k = tile.block_k if k >= tile.block_k else max(16, triton.next_power_of_2(k))
    _gemv_kernel[(triton.cdiv(n, tile.block_n), 1 if tile.dot else rows)](
        x, weight, dummy if scale is None else scale, dummy if bias is None else bias,
        dummy if norm is None else norm[0], out, rows, n, k, x.stride(0), weight.stride(0), out.stride(0),
        0.0 if norm is None else norm[1],
        HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, DOT=tile.dot,
        NORM=norm is not None, SILU=silu, ADD=residual is not None,
        BLOCK_M=16, BLOCK_N=tile.block_n, BLOCK_K=block_k, IEEE=x.dtype == torch.float32,
        num_warps=tile.warps, num_stages=tile.stages, **pdl(x),
    )  # fmt: skip
    return out
