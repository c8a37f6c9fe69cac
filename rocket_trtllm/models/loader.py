"""Build a model from a checkpoint (any format of checkpoint.py) in the run's dtype on its device."""

from typing import Any

import torch

from ..errors import ConfigError
from ..runtime.distributed import SINGLE, Communicator
from .checkpoint import Checkpoint
from .llama import ARCHITECTURES, CausalLM
from .parallel import shards_of
from .rope import inv_frequencies, rope_parameters

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


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
) -> CausalLM:
    """Build the checkpoint's model on `device` in `dtype` and fill it from the checkpoint's tensors
    (or with random weights, for benchmarks of a public architecture without its checkpoint). Under tensor
    parallelism (`comm`), this rank's slices only."""
    cfg = checkpoint.config
    cls = architecture_of(cfg)
    with torch.device("meta"):
        model = cls(cfg, comm).to(dtype)
    model.to_empty(device=device)  # allocated once, in `dtype` (float32 first would double the peak)
    # Buffers built on the meta device hold nothing: compute the RoPE frequencies for real.
    model.rotary.inv_freq = inv_frequencies(rope_parameters(cfg), model.shape.head_dim).to(device)
    params = dict(model.named_parameters())
    shards = shards_of(model)
    if random_weights:
        for name, p in params.items():
            p.data = torch.ones_like(p, dtype=dtype) if "norm" in name else torch.randn_like(p, dtype=dtype) * 0.02
    loaded: set[str] = set(params) if random_weights else set()
    for name, tensor in [] if random_weights else checkpoint.tensors(set(params), shards):
        want = list(params[name].shape)
        shard = shards.get(name)
        if shard is not None:
            want[shard.dim] = shard.stored  # the rest of the last vocabulary slice stays zero
        if list(tensor.shape) != want:
            raise ConfigError(
                f"{checkpoint.name}: {name} has shape {tuple(tensor.shape)}, the config implies {tuple(want)}",
                "model",
            )
        if shard is not None and shard.stored < shard.length:
            padded = torch.zeros(params[name].shape, dtype=dtype)
            padded.narrow(shard.dim, 0, shard.stored).copy_(tensor)
            tensor = padded
        params[name].data = tensor.to(device=device, dtype=dtype)
        loaded.add(name)
    if model.tie_word_embeddings and "lm_head.weight" not in loaded:
        model.lm_head.weight = model.model.embed_tokens.weight
        loaded.add("lm_head.weight")
    missing = sorted(set(params) - loaded)
    if missing:
        raise ConfigError(f"the checkpoint lacks {len(missing)} weights, e.g. {missing[0]}", "model")
    for p in model.parameters():
        p.data = p.data.to(dtype)
    model.fuse_projections()
    return model.eval().requires_grad_(False)
