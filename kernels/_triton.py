"""Triton when installed; the CPU-only install path keeps every kernel's torch reference."""

import os
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = gdc = None


def require_triton() -> None:
    if triton is None:
        raise RuntimeError("Triton is not installed; use the torch path (attn_backend: VANILLA)")


_PDL_DEVICES: dict[int, bool] = {}


def pdl(t: torch.Tensor) -> dict[str, Any]:
    """A decode kernel's launch arguments for programmatic dependent launch on t's device (Hopper and later): the
    kernel's programs start while the kernel before it drains, and wait (`gdc`) before they touch memory. At batch
    1 a decode step is ~450 launches, most of them a few microseconds long. ROCKET_PDL=0 turns it off."""
    if not t.is_cuda or os.environ.get("ROCKET_PDL", "1") == "0":
        return {"PDL": False}
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _PDL_DEVICES:
        _PDL_DEVICES[index] = torch.cuda.get_device_capability(index) >= (9, 0)
    return {"PDL": True, "launch_pdl": True} if _PDL_DEVICES[index] else {"PDL": False}


if triton is not None:

    @triton.jit
    def gdc(PDL: tl.constexpr):
        """With PDL: wait for the kernel before (its writes visible), then let the next one start its programs."""
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
