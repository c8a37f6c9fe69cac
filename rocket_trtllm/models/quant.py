"""Quantized linear layers as one seam: a linear method, chosen at load time from the checkpoint's quantization
config, decides each projection's stored weights and how it multiplies.

- `Unquantized`: the weight in the run's dtype, `F.linear`; on CUDA at decode sizes (up to 16 bf16 rows)
  `kernels.gemv`, which reads the weights closer to the memory's bandwidth than cuBLAS does at one row.
- `Fp8`: float8_e4m3fn weights with a float32 scale per output channel (a per-tensor checkpoint scale is
  broadcast to its channels, so fused q/k/v and gate/up keep each projection's own scale). On CUDA the GEMM is
  `torch._scaled_mm` with the activations quantized per token on the fly, and at decode sizes (up to 16 rows)
  `kernels.gemv`, which keeps the activations in bf16 and streams the fp8 weights once (no quantization
  kernel, no 128-row tiles for one row); elsewhere
  the quantized arithmetic in float32 (`fp8_linear_ref`), which is also the reference the GPU path is tested
  against.

Read from the checkpoint: NVIDIA ModelOpt's FP8 (`hf_quant_config.json` or config.json `quantization_config` with
`quant_method: modelopt`, `quant_algo: FP8`; per-tensor `weight_scale`, `input_scale` ignored for the dynamic
per-token activation scales) and llm-compressor's `compressed-tensors` FP8 (8-bit float weights, per-tensor or
per-channel `weight_scale`). Any other quantization is refused by name, never loaded as if it were bf16.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from torch.nn import functional as F

from ..errors import ConfigError
from ..kernels import gemv, layer_ops

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


# Makes a per-token amax global: a row-parallel rank holds part of each row of x (None: the whole row).
AmaxReduce = Optional[Callable[[torch.Tensor], torch.Tensor]]


class Unquantized:
    name = "none"
    weight_dtype: Optional[torch.dtype] = None  # the run's dtype

    def apply(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        scale: Optional[torch.Tensor],
        reduce_amax: AmaxReduce = None,
    ) -> torch.Tensor:
        if _decode_sized(x) and weight.dtype == torch.bfloat16:
            return _gemv(x, weight, None, bias)
        return F.linear(x, weight, bias)


class Fp8(Unquantized):
    name = "fp8"
    weight_dtype = FP8

    def apply(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        scale: Optional[torch.Tensor],
        reduce_amax: AmaxReduce = None,
    ) -> torch.Tensor:
        if _decode_sized(x):  # the weight read is the GEMM; weight-only FP8 (the activations stay bf16)
            return _gemv(x, weight, scale, bias)
        if x.is_cuda and x.dtype == torch.bfloat16 and _scaled_mm_supported(x.device):  # row-wise scales: bf16 out
            return fp8_linear_cuda(x, weight, scale, bias, reduce_amax)
        return fp8_linear_ref(x, weight, scale, bias, reduce_amax)


METHODS: dict[str, Unquantized] = {m.name: m for m in (Unquantized(), Fp8())}


def quantize_per_token(x: torch.Tensor, reduce_amax: AmaxReduce = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (float8 values, float32 scales [..., 1]) with x ~= values * scales, one scale per row
    (the row's amax over every rank's part of it with `reduce_amax`, so tensor parallelism changes nothing)."""
    if reduce_amax is None:
        return layer_ops.quantize_fp8_rows_ref(x)
    return layer_ops.quantize_fp8_rows_ref(x, reduce_amax(x.abs().amax(dim=-1, keepdim=True).float()))


def _decode_sized(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype == torch.bfloat16 and x.numel() <= gemv.MAX_ROWS * x.shape[-1]


def _gemv(
    x: torch.Tensor, weight: torch.Tensor, scale: Optional[torch.Tensor], bias: Optional[torch.Tensor]
) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    return gemv.gemv(rows, weight, scale, bias).reshape(*x.shape[:-1], weight.shape[0])


def fp8_linear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    reduce_amax: AmaxReduce = None,
) -> torch.Tensor:
    """What the fp8 GEMM computes, in float32: x quantized per token, weight [N, K] fp8 times scale [N, 1]."""
    xq, xs = quantize_per_token(x, reduce_amax)
    out = (xq.float() * xs) @ (weight.float() * scale).t()
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)


def fp8_linear_cuda(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    reduce_amax: AmaxReduce = None,
) -> torch.Tensor:
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    # One kernel for the row's amax, scale and cast; a tensor-parallel row's amax needs every rank's part.
    xq, xs = quantize_per_token(rows, reduce_amax) if reduce_amax else layer_ops.quantize_fp8_rows(rows)
    out = torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=scale.t(), bias=bias, out_dtype=x.dtype)
    return out.reshape(*shape[:-1], weight.shape[0])


def _scaled_mm_supported(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quant_spec(path: Optional[Path], config: Any) -> dict[str, Any]:
    """A checkpoint's quantization config: ModelOpt's hf_quant_config.json, else config.json's (empty: none)."""
    if path is not None and (path / "hf_quant_config.json").is_file():
        spec = json.loads((path / "hf_quant_config.json").read_text()).get("quantization", {})
        return {"quant_method": "modelopt", **spec}
    return dict(getattr(config, "quantization_config", None) or {})


def kv_cache_fp8(path: Optional[Path], config: Any) -> bool:
    """Whether the checkpoint was calibrated for an FP8 KV cache (ModelOpt's `kv_cache_quant_algo: FP8`)."""
    return str(quant_spec(path, config).get("kv_cache_quant_algo") or "").upper() == "FP8"


def quantization_of(path: Optional[Path], config: Any) -> Unquantized:
    """The linear method a checkpoint's quantization config asks for (`Unquantized` without one)."""
    spec = quant_spec(path, config)
    if not spec:
        return METHODS["none"]
    method = str(spec.get("quant_method", "")).lower()
    if method == "modelopt" and str(spec.get("quant_algo", "")).upper() == "FP8":
        return METHODS["fp8"]
    if method == "compressed-tensors" and _compressed_fp8(spec):
        return METHODS["fp8"]
    what = f"quant_method {method!r}" + (f", quant_algo {spec['quant_algo']!r}" if spec.get("quant_algo") else "")
    raise ConfigError(
        f"the checkpoint is quantized ({what}), which this engine cannot run; supported: ModelOpt FP8 "
        "(quant_algo FP8) and compressed-tensors FP8 (8-bit float weights, per-tensor or per-channel scales)",
        "model",
    )


def _compressed_fp8(spec: dict[str, Any]) -> bool:
    groups = spec.get("config_groups") or {}
    if not groups:
        return False
    for group in groups.values():
        w = group.get("weights") or {}
        if not (w.get("num_bits") == 8 and w.get("type") == "float" and w.get("strategy") in ("tensor", "channel")):
            return False
    return True
