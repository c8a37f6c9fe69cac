"""Warm the L2 cache with a tensor's bytes ahead of the kernel that reads it (an experiment: measured slower on the
H100 and removed in the next commit; BENCHMARKS.md, 2026-11-24 fourth session).

At batch 1 a sparse attention layer is a chain of small latency-bound kernels during which HBM sits mostly idle; the
output projection after it then streams its weights (32 MiB for Llama-3.1-8B). Prefetching them into L2 while the
chain runs would move that read off the critical path (Hopper's bulk L2 prefetch: one instruction per chunk)."""

import torch

from ._triton import pdl, tl, triton

CHUNK = 16384  # bytes per prefetch instruction
PER_PROGRAM = 128  # instructions per program


if triton is not None:

    @triton.jit
    def _prefetch_kernel(base, nbytes, CHUNK: tl.constexpr, PER_PROGRAM: tl.constexpr, PDL: tl.constexpr):
        if PDL:  # the kernel after this one may start now: the bytes prefetched depend on no kernel
            tl.extra.cuda.gdc_launch_dependents()
        i = (tl.program_id(0) * PER_PROGRAM + tl.arange(0, PER_PROGRAM)).to(tl.int64)
        size = tl.minimum(tl.maximum(nbytes - i * CHUNK, 0), CHUNK).to(tl.int32) // 16 * 16
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.u32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r", [base + i * CHUNK, size], dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip
        if PDL:  # but it ends after the kernel before it, so the next one's wait still covers that one
            tl.extra.cuda.gdc_wait()


def prefetch_l2(t: torch.Tensor, nbytes: int = 0) -> None:
    """Start pulling t's first `nbytes` (all of it by default) into L2 (Hopper and later; elsewhere nothing)."""
    if triton is None or not t.is_cuda or torch.cuda.get_device_capability(t.device) < (9, 0):
        return
    nbytes = min(nbytes or t.numel() * t.element_size(), t.numel() * t.element_size())
    programs = triton.cdiv(triton.cdiv(nbytes, CHUNK), PER_PROGRAM)
    _prefetch_kernel[(programs,)](t.data_ptr(), nbytes, CHUNK=CHUNK, PER_PROGRAM=PER_PROGRAM, num_warps=4, **pdl(t))
