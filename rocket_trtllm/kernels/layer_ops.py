"""The decoder layer's elementwise work as one kernel each: RMSNorm (alone, or after the residual add), rotary
embedding, SiLU-and-multiply, and the per-row FP8 quantization of an FP8 GEMM's activations; and greedy
decoding's argmax over the vocabulary.

In torch each is five to a dozen small kernels; at decode, where the GEMMs read the weights once
and are done, those launches are a large share of the step. The references are the torch code
the model runs on the CPU, written as Hugging Face's Llama does it.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import gdc, gdc_wait, pdl, require_triton, tl, triton


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., n]; weight: [n] -> [..., n] in x's dtype (normalised in float32)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm_ref(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The residual add then the next RMSNorm: x += delta in place (in x's dtype), and rms_norm_ref(x)."""
    x += delta
    return rms_norm_ref(x, weight, eps)


def rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim], rotating the two halves of each head (the Hugging Face layout);
    cos, sin: [tokens, 1, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [tokens, 2 * n] (gate, then up) -> silu(gate) * up: [tokens, n]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, w_ptr, out_ptr, sx, so, n, eps, BLOCK: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr
    ):
        gdc(PDL, FIRST=EARLY, WAIT=not EARLY)
        row = tl.program_id(0)
        i = tl.arange(0, BLOCK)
        ok = i < n
        w = tl.load(w_ptr + i, mask=ok, other=0.0).to(tl.float32)  # a weight: read while the kernel before runs
        gdc_wait(PDL and EARLY)
        x = tl.load(x_ptr + row * sx + i, mask=ok, other=0.0)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n + eps)
        # As the reference: normalise in float32, round to x's dtype, then scale by the weight.
        y = (xf * rstd).to(x.dtype).to(tl.float32) * w
        tl.store(out_ptr + row * so + i, y.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _add_rms_norm_kernel(
        x_ptr, d_ptr, w_ptr, out_ptr, sx, sd, so, n, eps, BLOCK: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr
    ):
        gdc(PDL, FIRST=EARLY, WAIT=not EARLY)
        row = tl.program_id(0)
        i = tl.arange(0, BLOCK)
        ok = i < n
        w = tl.load(w_ptr + i, mask=ok, other=0.0).to(tl.float32)  # a weight: read while the kernel before runs
        gdc_wait(PDL and EARLY)
        x = tl.load(x_ptr + row * sx + i, mask=ok, other=0.0)
        d = tl.load(d_ptr + row * sd + i, mask=ok, other=0.0)
        s = (x.to(tl.float32) + d.to(tl.float32)).to(x.dtype)  # the residual, rounded as torch's add rounds it
        tl.store(x_ptr + row * sx + i, s, mask=ok)
        sf = s.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(sf * sf, 0) / n + eps)
        y = (sf * rstd).to(x.dtype).to(tl.float32) * w
        tl.store(out_ptr + row * so + i, y.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _rotary_kernel(
        x_ptr, out_ptr, cos_ptr, sin_ptr, sx_t, sx_h, so_t, so_h, sc_t, heads,
        HALF: tl.constexpr, H_PAD: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        gdc(PDL)
        t = tl.program_id(0)
        h = tl.arange(0, H_PAD)[:, None]
        d = tl.arange(0, HALF)[None, :]
        ok = h < heads
        x1 = tl.load(x_ptr + t * sx_t + h * sx_h + d, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + t * sx_t + h * sx_h + HALF + d, mask=ok, other=0.0).to(tl.float32)
        c1 = tl.load(cos_ptr + t * sc_t + d).to(tl.float32)
        c2 = tl.load(cos_ptr + t * sc_t + HALF + d).to(tl.float32)
        s1 = tl.load(sin_ptr + t * sc_t + d).to(tl.float32)
        s2 = tl.load(sin_ptr + t * sc_t + HALF + d).to(tl.float32)
        dtype = out_ptr.dtype.element_ty
        tl.store(out_ptr + t * so_t + h * so_h + d, (x1 * c1 - x2 * s1).to(dtype), mask=ok)
        tl.store(out_ptr + t * so_t + h * so_h + HALF + d, (x2 * c2 + x1 * s2).to(dtype), mask=ok)

    @triton.jit
    def _silu_mul_kernel(x_ptr, out_ptr, sx, so, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
        gdc(PDL)
        row = tl.program_id(0)
        i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = i < n
        gate = tl.load(x_ptr + row * sx + i, mask=ok, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + row * sx + n + i, mask=ok, other=0.0).to(tl.float32)
        y = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(out_ptr + row * so + i, y.to(out_ptr.dtype.element_ty), mask=ok)


# The RMSNorms read their weight before they wait for the kernel before (PDL): RocketKV's 32k batch-1 step on the H100
# 5.90 against 5.93 ms (docs/log/benchmarks.md).
NORM_EARLY = 1

FP8_MAX = 448.0  # float8_e4m3fn's largest value


def quantize_fp8_rows_ref(x: torch.Tensor, amax: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., n] -> (float8_e4m3fn values, float32 scales [..., 1]) with x ~= values * scales: each row scaled by
    its amax / 448 (saturated; an all-zero row gets a tiny scale, never a division by zero). `amax` [..., 1]: the
    rows' amax when it is not x's own (a tensor-parallel rank holds part of each row)."""
    if amax is None:
        amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = amax.clamp_min(1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


if triton is not None:

    @triton.jit
    def _quantize_fp8_kernel(x_ptr, out_ptr, scale_ptr, sx, so, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
        gdc(PDL)
        row = tl.program_id(0)
        amax = tl.zeros([BLOCK], tl.float32)
        for i0 in range(0, n, BLOCK):
            i = i0 + tl.arange(0, BLOCK)
            amax = tl.maximum(amax, tl.abs(tl.load(x_ptr + row * sx + i, mask=i < n, other=0.0).to(tl.float32)))
        scale = tl.maximum(tl.max(amax, 0), 1e-12) / 448.0
        for i0 in range(0, n, BLOCK):
            i = i0 + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + row * sx + i, mask=i < n, other=0.0).to(tl.float32)
            y = tl.clamp(tl.math.div_rn(x, scale), -448.0, 448.0)
            tl.store(out_ptr + row * so + i, y.to(out_ptr.dtype.element_ty), mask=i < n)
        tl.store(scale_ptr + row, scale)


def quantize_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `quantize_fp8_rows_ref`, one program per row (a torch version is nine kernels)."""
    require_triton()
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows, n = x.shape
    out = torch.empty(rows, n, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    _quantize_fp8_kernel[(rows,)](x, out, scale, x.stride(0), out.stride(0), n,
                                  BLOCK=min(4096, triton.next_power_of_2(n)), **pdl(x))  # fmt: skip
    return out, scale


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton version of `rms_norm_ref`, one program per row."""
    require_triton()
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), n, eps,
                                       BLOCK=triton.next_power_of_2(n), EARLY=NORM_EARLY, **pdl(rows))  # fmt: skip
    return out.view(x.shape)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton version of `add_rms_norm_ref` (x: [tokens, n], contiguous rows; one read of each, one program per
    row): the decode step's residual add and the RMSNorm after it as one kernel."""
    require_triton()
    n = x.shape[-1]
    if x.dim() != 2 or x.stride(-1) != 1:
        return add_rms_norm_ref(x, delta, weight, eps)
    delta = delta if delta.stride(-1) == 1 else delta.contiguous()
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(x.shape[0],)](x, delta, weight, out, x.stride(0), delta.stride(0), out.stride(0), n, eps,
                                        BLOCK=triton.next_power_of_2(n), EARLY=NORM_EARLY, **pdl(x))  # fmt: skip
    return out


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton version of `rotary_ref` (x may be a strided view, e.g. of a fused q/k/v projection);
    `out=x` rotates in place (each program reads its rows before writing them)."""
    require_triton()
    tokens, heads, d = x.shape
    if d % 2 or (d // 2) & (d // 2 - 1) or x.stride(-1) != 1:
        result = rotary_ref(x, cos, sin)  # the kernel's tiles need a power-of-two half head
        return result if out is None else out.copy_(result)
    cos, sin = cos.contiguous(), sin.contiguous()
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _rotary_kernel[(tokens,)](x, out, cos, sin, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
                              cos.stride(0), heads, HALF=d // 2, H_PAD=triton.next_power_of_2(heads),
                              **pdl(x))  # fmt: skip
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """Triton version of `silu_mul_ref`."""
    require_triton()
    tokens, n2 = gate_up.shape
    n = n2 // 2
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    out = torch.empty(tokens, n, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(tokens, triton.cdiv(n, block))](
        gate_up, out, gate_up.stride(0), out.stride(0), n, BLOCK=block, **pdl(gate_up)
    )
    return out


ARGMAX_CHUNK = 4096


if triton is not None:

    @triton.jit
    def _argmax_chunks_kernel(x_ptr, val_ptr, idx_ptr, sx, n, chunks, BLOCK: tl.constexpr, PDL: tl.constexpr):
        gdc(PDL)
        row, c = tl.program_id(0), tl.program_id(1)
        i = c * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * sx + i, mask=i < n, other=float("-inf")).to(tl.float32)
        best = tl.max(x, 0)
        tl.store(val_ptr + row * chunks + c, best)
        tl.store(idx_ptr + row * chunks + c, tl.min(tl.where(x == best, i, n), 0))

    @triton.jit
    def _argmax_rows_kernel(val_ptr, idx_ptr, out_ptr, chunks, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
        gdc(PDL)
        row = tl.program_id(0)
        c = tl.arange(0, BLOCK)
        val = tl.load(val_ptr + row * chunks + c, mask=c < chunks, other=float("-inf"))
        idx = tl.load(idx_ptr + row * chunks + c, mask=c < chunks, other=n)
        best = tl.max(val, 0)
        tl.store(out_ptr + row, tl.min(tl.where(val == best, idx, n), 0).to(tl.int64))


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x.argmax(-1) for x [rows, n] (the first index of each row's largest value; rows of finite values) in two
    launches over chunks of the row: torch reduces a single row in one block, 28 us for Llama-3's 128k logits on an
    H100, a tenth of a batch-1 decode step's small kernels."""
    require_triton()
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows, n = x.shape
    chunks = triton.cdiv(n, ARGMAX_CHUNK)
    val = torch.empty(rows, chunks, dtype=torch.float32, device=x.device)
    idx = torch.empty(rows, chunks, dtype=torch.int32, device=x.device)
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    _argmax_chunks_kernel[(rows, chunks)](
        x, val, idx, x.stride(0), n, chunks, BLOCK=ARGMAX_CHUNK, num_warps=8, **pdl(x)
    )
    _argmax_rows_kernel[(rows,)](val, idx, out, chunks, n, BLOCK=max(16, triton.next_power_of_2(chunks)), **pdl(val))
    return out
