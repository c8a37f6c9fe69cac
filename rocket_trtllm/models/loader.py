"""Build a model from a checkpoint (any format of checkpoint.py) in the run's dtype on its device."""

from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..runtime.distributed import SINGLE, Communicator
from .checkpoint import Checkpoint
from .llama import ARCHITECTURES, CausalLM
from .parallel import QuantLinear, shards_of
from .quant import FP8, FP8_MAX, METHODS
from .rope import inv_frequencies, rope_parameters

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _fill_random(params: dict[str, torch.nn.Parameter], dtype: torch.dtype) -> None:
    """N(0, 0.02) weights, unit norms; fp8 weights with the scale that makes them N(0, 0.02) too."""
    for name, p in params.items():
        if "norm" in name:
            p.data = torch.ones_like(p, dtype=dtype)
        elif p.dtype == FP8:
            # Saturated: CUDA casts what is past the e4m3 range to NaN (the CPU saturates).
            p.data = (torch.randn_like(p, dtype=torch.float32) * FP8_MAX / 4).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        elif name.endswith("weight_scale"):
            p.data.fill_(0.02 * 4 / FP8_MAX)
        else:
            p.data = torch.randn_like(p, dtype=dtype) * 0.02


def architecture_of(cfg: Any) -> type[CausalLM]:
    names = getattr(cfg, "architectures", None) or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ConfigError(
        f"unsupported architecture {names or cfg.model_type!r}; supported: {', '.join(ARCHITECTURES)}", "model"
    )


def resolve_dtype(checkpoint: Checkpoint, dtype: str, device: torch.device) -> torch.dtype:
    """The run's dtype: the one asked for, else the checkpoint's own; quantized weights (GGUF) dequantize
    to bfloat16 on the GPU and float32 on the CPU."""
    if dtype != "auto":
        return DTYPES[dtype]
    native = checkpoint.native_dtype
    if native is not None:
        return native
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(
    checkpoint: Checkpoint,
    dtype: torch.dtype,
    device: torch.device,
    random_weights: bool = False,
    comm: Communicator = SINGLE,
    quantization: Optional[str] = None,
) -> CausalLM:
    """Build the checkpoint's model on `device` in `dtype` and fill it from the checkpoint's tensors
    (or with random weights, for benchmarks of a public architecture without its checkpoint). Under tensor
    parallelism (`comm`), this rank's slices only. The linear method is the checkpoint's quantization
    (`quantization` picks one for random weights)."""
    cfg = checkpoint.config
    cls = architecture_of(cfg)
    method = METHODS[quantization] if random_weights and quantization else checkpoint.quantization()
    with torch.device("meta"):
        model = cls(cfg, comm, method).to(dtype)
        for m in model.modules():
            if isinstance(m, QuantLinear):
                m.set_dtypes()
    model.to_empty(device=device)  # allocated once, in `dtype` (float32 first would double the peak)
    # Buffers built on the meta device hold nothing: compute the RoPE frequencies for real.
    model.rotary.inv_freq = inv_frequencies(rope_parameters(cfg), model.shape.head_dim).to(device)
    params = dict(model.named_parameters())
    shards = shards_of(model)
    if random_weights:
        _fill_random(params, dtype)
    loaded: set[str] = set(params) if random_weights else set()
    for name, tensor in [] if random_weights else checkpoint.tensors(set(params), shards):
        param = params[name]
        if tensor.dtype == FP8 and param.dtype != FP8:
            raise ConfigError(
                f"{checkpoint.name}: {name} is stored in float8_e4m3fn but the checkpoint's quantization config "
                f"({method.name}) does not make it an fp8 weight: its scales would be lost",
                "model",
            )
        if name.endswith("weight_scale"):  # per tensor (a scalar) or per channel ([out] or [out, 1])
            tensor = tensor.float().reshape(-1, 1)
            if tensor.shape[0] == 1:
                tensor = tensor.expand(param.shape)
        want = list(param.shape)
        shard = shards.get(name)
        if shard is not None:
            want[shard.dim] = shard.stored  # the rest of the last vocabulary slice stays zero
        if list(tensor.shape) != want:
            raise ConfigError(
                f"{checkpoint.name}: {name} has shape {tuple(tensor.shape)}, the config implies {tuple(want)}",
                "model",
            )
        if shard is not None and shard.stored < shard.length:
            padded = torch.zeros(param.shape, dtype=param.dtype)
            padded.narrow(shard.dim, 0, shard.stored).copy_(tensor)
            tensor = padded
        param.data = tensor.to(device=device, dtype=param.dtype)
        loaded.add(name)
    if model.tie_word_embeddings and "lm_head.weight" not in loaded:
        model.lm_head.weight = model.model.embed_tokens.weight
        loaded.add("lm_head.weight")
    missing = sorted(set(params) - loaded)
    if missing:
        raise ConfigError(f"the checkpoint lacks {len(missing)} weights, e.g. {missing[0]}", "model")
    model.fuse_projections()
    return model.eval().requires_grad_(False)


def kv_scales(checkpoint: Checkpoint, num_layers: int) -> tuple[list[float], list[float]]:
    """Per-layer K and V scales for an FP8 KV cache: the checkpoint's `k_scale` / `v_scale` (ModelOpt writes
    them under `self_attn.k_proj` / `v_proj`, others under `self_attn`), 1.0 where it has none."""
    found: dict[tuple[str, int], float] = {}
    names = {}
    for i in range(num_layers):
        for kind, proj in (("k", "k_proj"), ("v", "v_proj")):
            for name in (f"model.layers.{i}.self_attn.{proj}.{kind}_scale", f"model.layers.{i}.self_attn.{kind}_scale"):
                names[name] = (kind, i)
    for name, tensor in checkpoint.tensors(set(names)):
        found[names[name]] = float(tensor.float().max())
    return [found.get(("k", i), 1.0) for i in range(num_layers)], [found.get(("v", i), 1.0) for i in range(num_layers)]
