"""Checkpoint formats: each opens a path and yields the model's config, tokenizer, end-of-sequence ids and
named tensors (in Hugging Face names). A format is a `Checkpoint` subclass that says which paths it `accepts`;
defining it registers it (the safetensors folder here, the GGUF file in gguf.py, imported by the package).
Anything no format accepts is refused by name."""

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open

from ..errors import ConfigError
from .parallel import Shard, take
from .quant import METHODS, Unquantized, kv_cache_fp8, quantization_of

FORMATS: list[type["Checkpoint"]] = []


class Checkpoint:
    """What the engine needs of a checkpoint, whatever its format."""

    path: Path
    config: Any  # a transformers PretrainedConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        FORMATS.append(cls)

    @classmethod
    def accepts(cls, path: Path) -> bool:
        """Whether `path` is a checkpoint of this format."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The model's short name (what a server calls it by default)."""
        return self.path.name

    @property
    def native_dtype(self) -> Optional[torch.dtype]:
        """The dtype the weights were saved in, or None when they are quantized (`dtype: auto` then picks)."""
        found = getattr(self.config, "dtype", None) or getattr(self.config, "torch_dtype", None)
        if isinstance(found, torch.dtype):
            return found
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(str(found))

    def tokenizer(self) -> Any:
        raise NotImplementedError

    def eos_token_ids(self) -> set[int]:
        raise NotImplementedError

    def quantization(self) -> Unquantized:
        """The linear method the checkpoint's weights need (quant.py)."""
        return METHODS["none"]

    def kv_cache_fp8(self) -> bool:
        """Whether the checkpoint asks for an FP8 KV cache (its K/V scales calibrated for one)."""
        return False

    def tensors(
        self, wanted: set[str], shards: Optional[dict[str, Shard]] = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, tensor) for each tensor of the checkpoint named in `wanted`; a name in `shards`
        gives only that slice (read alone where the format allows)."""
        raise NotImplementedError


class SafetensorsCheckpoint(Checkpoint):
    """A Hugging Face checkpoint folder: config.json, *.safetensors (single or sharded), tokenizer files."""

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.is_dir()

    def __init__(self, path: Path) -> None:
        from transformers import AutoConfig

        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a checkpoint folder: it has no config.json", "model")
        self.path = path
        self.config = AutoConfig.from_pretrained(path)

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)

    def eos_token_ids(self) -> set[int]:
        from transformers import GenerationConfig

        generation = None
        if (self.path / "generation_config.json").is_file():
            generation = GenerationConfig.from_pretrained(self.path)
        return eos_ids(self.config, generation)

    def quantization(self) -> Unquantized:
        return quantization_of(self.path, self.config)

    def kv_cache_fp8(self) -> bool:
        return kv_cache_fp8(self.path, self.config)

    def files(self) -> list[Path]:
        """The safetensors files: the sharded index's, or every *.safetensors of the folder."""
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [n for n in names if not (self.path / n).is_file()]
            if missing:
                raise ConfigError(f"{index.name} names {missing[0]}, which is not in {self.path}", "model")
            return [self.path / n for n in names]
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            pickles = [p.name for p in self.path.glob("*.bin")] + [p.name for p in self.path.glob("*.pt")]
            hint = f" (found {pickles[0]}: pickled weights are not loaded; convert to safetensors)" if pickles else ""
            raise ConfigError(f"{self.path} has no *.safetensors weights{hint}", "model")
        return files

    def tensors(
        self, wanted: set[str], shards: Optional[dict[str, Shard]] = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        shards = shards or {}
        for file in self.files():
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name not in wanted:  # e.g. rotary inv_freq buffers saved by old exporters
                        continue
                    view = f.get_slice(name)
                    shape = tuple(view.get_shape())
                    if name in shards and math.prod(shape) > 1:  # not a per-tensor scale: every rank's
                        yield name, take(name, view, shape, shards[name])
                    else:
                        yield name, f.get_tensor(name)


def eos_ids(*sources: Any) -> set[int]:
    """Every end-of-sequence id the given configs (or tokenizers) name."""
    ids: set[int] = set()
    for source in sources:
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, list) else [eos])
    return ids


def open_checkpoint(model: str) -> Checkpoint:
    """The checkpoint at `model`, opened by the first registered format that accepts it."""
    path = Path(model)
    for fmt in FORMATS:
        if fmt.accepts(path):
            return fmt(path)
    if path.is_file():
        raise ConfigError(
            f"{model} is a file of a format not loaded here; give a Hugging Face checkpoint folder "
            "(config.json + safetensors) or a .gguf file",
            "model",
        )
    raise ConfigError(f"{model} does not exist (give a checkpoint folder or a .gguf file)", "model")
