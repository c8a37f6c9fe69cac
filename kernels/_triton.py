"""Triton when installed; the CPU-only install path keeps every kernel's torch reference."""

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


def require_triton() -> None:
    if triton is None:
        raise RuntimeError("Triton is not installed; use the torch path (attn_backend: VANILLA)")
