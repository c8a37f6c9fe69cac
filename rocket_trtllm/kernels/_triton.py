"""Triton when installed; the CPU-only install path keeps every kernel's torch reference."""

import functools
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = gdc = gdc_wait = None


def require_triton() -> None:
    if triton is None:
        raise RuntimeError("Triton is not installed; use the torch path (attn_backend: VANILLA)")


_PDL = {"enabled": True}


# At most this many (sequence, KV head) rows (batch 8 of 8 KV heads) a decode kernel's programs leave most of the GPU
# idle, and the batch-1 chain (K/V store, KT bounds, selection, sparse attention) takes other warp counts
# (docs/log/benchmarks.md, sixth session).
FEW_ROWS = 64


def few_rows(batch: int, kv_heads: int) -> bool:
    return batch * kv_heads <= FEW_ROWS


def set_pdl(enabled: bool) -> None:
    """Launch the kernels with programmatic dependent launch where the GPU has it (the default), or plainly (the
    package sets it from ROCKET_PDL at import; benchmarks compare both). Kernels launched after the change use it;
    a captured CUDA graph keeps how it was captured."""
    _PDL["enabled"] = enabled


def pdl(t: torch.Tensor) -> dict[str, Any]:
    """A kernel's launch arguments for programmatic dependent launch on t's device (Hopper and later): the kernel's
    programs start while the kernel before it drains, and wait (`gdc`) before they touch memory. At batch 1 a
    decode step is ~450 launches, most of them a few microseconds long."""
    if not t.is_cuda or not _PDL["enabled"]:
        return {"PDL": False}
    props = device_properties(t)
    return {"PDL": True, "launch_pdl": True} if (props.major, props.minor) >= (9, 0) else {"PDL": False}


def device_properties(t: torch.Tensor) -> Any:
    """The properties of the CUDA device t is on (SM count, capability), read once per device."""
    return _properties(t.device.index if t.device.index is not None else torch.cuda.current_device())


@functools.cache
def _properties(index: int) -> Any:
    return torch.cuda.get_device_properties(index)


if triton is not None:

    @triton.jit
    def gdc(PDL: tl.constexpr, FIRST: tl.constexpr = False, WAIT: tl.constexpr = True):
        """With PDL: wait for the kernel before (its writes visible), then let the next one start its programs.
        FIRST: let it start before the wait (the next kernel's programs are then resident while this one waits and
        runs: a GEMV after it loads its first weight tiles meanwhile). WAIT=False (with FIRST): do not wait yet, for a
        kernel that first reads what no kernel of the step writes (weights, block tables) and then calls
        `gdc_wait` itself."""
        if PDL:
            if FIRST:
                tl.extra.cuda.gdc_launch_dependents()
            if WAIT:
                tl.extra.cuda.gdc_wait()
            if not FIRST:
                tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def gdc_wait(PDL: tl.constexpr):
        """With PDL: wait for the kernel before (its writes visible)."""
        if PDL:
            tl.extra.cuda.gdc_wait()
