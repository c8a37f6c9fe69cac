"""Load a Hugging Face checkpoint folder: config and tokenizer via transformers, weights from safetensors."""

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import ConfigError
from .llama import ARCHITECTURES, CausalLM
from .rope import inv_frequencies, rope_parameters

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_hf_config(model_dir: str) -> Any:
    from transformers import AutoConfig

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a checkpoint folder: it has no config.json", "model")
    return AutoConfig.from_pretrained(path)


def architecture_of(cfg: Any) -> type[CausalLM]:
    names = getattr(cfg, "architectures", None) or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ConfigError(
        f"unsupported architecture {names or cfg.model_type!r}; supported: {', '.join(ARCHITECTURES)}", "model"
    )


def resolve_dtype(cfg: Any, dtype: str) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    found = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(found, torch.dtype):
        return found
    return DTYPES.get(str(found), torch.float32)


def weight_files(model_dir: str) -> list[Path]:
    """The checkpoint's safetensors files: the sharded index's, or the single model.safetensors."""
    path = Path(model_dir)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ConfigError(f"{index.name} names {missing[0]}, which is not in {model_dir}", "model")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found {pickles[0]}: pickled weights are not loaded; convert to safetensors)" if pickles else ""
        raise ConfigError(f"{model_dir} has no *.safetensors weights{hint}", "model")
    return files


def load_model(
    model_dir: str, cfg: Any, dtype: torch.dtype, device: torch.device, random_weights: bool = False
) -> CausalLM:
    """Build the model for `cfg` on `device` in `dtype` and fill it from the folder's safetensors
    (or with random weights, for benchmarks of a public architecture without its checkpoint)."""
    cls = architecture_of(cfg)
    files = [] if random_weights else weight_files(model_dir)
    with torch.device("meta"):
        model = cls(cfg).to(dtype)
    model.to_empty(device=device)  # allocated once, in `dtype` (float32 first would double the peak)
    # Buffers built on the meta device hold nothing: compute the RoPE frequencies for real.
    model.rotary.inv_freq = inv_frequencies(rope_parameters(cfg), model.shape.head_dim).to(device)
    params = dict(model.named_parameters())
    if random_weights:
        for name, p in params.items():
            p.data = torch.ones_like(p, dtype=dtype) if "norm" in name else torch.randn_like(p, dtype=dtype) * 0.02
    loaded: set[str] = set(params) if random_weights else set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name not in params:
                    continue  # e.g. rotary inv_freq buffers saved by old exporters
                tensor = f.get_tensor(name)
                if tensor.shape != params[name].shape:
                    raise ConfigError(
                        f"{file.name}: {name} has shape {tuple(tensor.shape)}, the config implies "
                        f"{tuple(params[name].shape)}",
                        "model",
                    )
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
