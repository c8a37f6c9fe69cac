"""The decode-size FP8 GEMM: a few rows of bf16 activations times fp8 weights with per-output-channel scales.

At decode a step multiplies 1-16 rows by every weight, so the GEMM is a weight read: what matters is reading the
fp8 bytes at the memory's bandwidth. cuBLAS's FP8 GEMM (`torch._scaled_mm`) tiles 128 x 128 and, at one row, read
at 0.31-0.60 of copy bandwidth on the H100 (BENCHMARKS.md), after a kernel that quantizes the activations.
This kernel leaves the activations in bf16 (weight-only FP8: the weights widen to bf16 in registers, one
tensor-core dot per 16 output channels) and streams each program's 16 weight rows once.
"""

from typing import Optional

import torch

from ._triton import require_triton, tl, triton

MAX_ROWS = 16  # the rows one program's dot covers; more rows go to the tiled GEMM


def fp8_gemv_ref(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """x [rows, K] (bf16, fp16 or fp32) @ (weight [N, K] fp8 * scale [N, 1]).T (+ bias), in float32 -> x's dtype."""
    out = x.float() @ weight.float().t() * scale.float().t()
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)


if triton is not None:

    @triton.jit
    def _fp8_gemv_kernel(
        x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, M, N, K, sx, sw, so,
        HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.arange(0, BLOCK_M)
        n_ok = n < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            if EVEN_K:
                w = tl.load(w_ptr + n[:, None] * sw + k[None, :], mask=n_ok[:, None], other=0.0)
                x = tl.load(x_ptr + m[:, None] * sx + k[None, :], mask=m[:, None] < M, other=0.0)
            else:
                k_ok = k < K
                w = tl.load(w_ptr + n[:, None] * sw + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                x = tl.load(x_ptr + m[:, None] * sx + k[None, :], mask=(m[:, None] < M) & k_ok[None, :], other=0.0)
            if IEEE:  # float32 activations (tests): exact products
                acc += tl.dot(x, tl.trans(w.to(tl.float32)), input_precision="ieee")
            else:
                acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        acc = acc * tl.load(s_ptr + n, mask=n_ok, other=0.0)[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + m[:, None] * so + n[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=(m[:, None] < M) & n_ok[None, :])  # fmt: skip


def fp8_gemv(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Triton version of `fp8_gemv_ref` for at most MAX_ROWS rows (x [rows, K] contiguous rows; scale [N, 1]
    float32, contiguous)."""
    require_triton()
    rows, k = x.shape
    n = weight.shape[0]
    if rows > MAX_ROWS:
        raise ValueError(f"fp8_gemv takes at most {MAX_ROWS} rows, got {rows}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    block_k = 512 if k >= 512 else max(16, triton.next_power_of_2(k))
    _fp8_gemv_kernel[(triton.cdiv(n, 16),)](
        x, weight, scale, bias if bias is not None else scale, out, rows, n, k, x.stride(0), weight.stride(0),
        out.stride(0), HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, BLOCK_M=16, BLOCK_N=16, BLOCK_K=block_k,
        IEEE=x.dtype == torch.float32, num_warps=4, num_stages=4,
    )  # fmt: skip
    return out
