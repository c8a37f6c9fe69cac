"""GGUF files (llama.cpp's format): the config and tokenizer (chat template included) through transformers,
the tensors read and dequantized with the `gguf` package, renamed to Hugging Face names."""

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError
from .checkpoint import Checkpoint, eos_ids
from .parallel import Shard, take

# general.architecture -> the Hugging Face class our model code registers under that name.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# GGUF tensor names -> Hugging Face names ({} is the layer index).
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(name: str) -> str:
    """The Hugging Face name of a GGUF tensor name, or "" for tensors the model does not use."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    m = LAYER_TENSOR.fullmatch(name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return ""


def unpermute_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of a Llama q/k projection (its RoPE rotates adjacent channel pairs,
    Hugging Face's the two halves of each head). w: [heads * head_dim, ...] -> same shape."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _reader(path: Path) -> Any:
    try:
        import gguf
    except ImportError:
        raise ConfigError(
            f"{path.name}: loading GGUF files needs the gguf package: pip install 'rocket-trtllm[gguf]'", "model"
        ) from None
    return gguf.GGUFReader(str(path))


@functools.lru_cache(maxsize=2)
def _parsed(path: Path, mtime_ns: int) -> tuple[Any, Any]:
    """transformers' config and tokenizer of a GGUF file. Its parser reads every metadata field in Python
    (seconds for a 49k-token vocabulary), so a process that builds several engines from one file (an
    eval sweep) parses it once."""
    from transformers import AutoConfig, AutoTokenizer

    return (
        AutoConfig.from_pretrained(path.parent, gguf_file=path.name),
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name),
    )


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


class GGUFCheckpoint(Checkpoint):
    """A `.gguf` file: one Llama, Mistral (GGUF calls it llama), Qwen2 or Qwen3 model, any quantization the
    gguf package dequantizes."""

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.is_file() and path.suffix == ".gguf"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reader = _reader(path)
        self.arch = _field(self.reader, "general.architecture")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"{path.name}: GGUF architecture {self.arch!r} is not supported; supported: "
                f"{', '.join(ARCHITECTURES)} (Mistral GGUFs are 'llama')",
                "model",
            )
        self.config = copy.deepcopy(_parsed(path, path.stat().st_mtime_ns)[0])
        self.config.architectures = [ARCHITECTURES[self.arch]]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def native_dtype(self) -> None:
        return None  # quantized blocks: the run's dtype is chosen by the engine

    def tokenizer(self) -> Any:
        return copy.deepcopy(_parsed(self.path, self.path.stat().st_mtime_ns)[1])

    def eos_token_ids(self) -> set[int]:
        eos = _field(self.reader, "tokenizer.ggml.eos_token_id")
        return eos_ids(self.config) | ({eos} if eos is not None else set())

    def tensors(
        self, wanted: set[str], shards: Optional[dict[str, Shard]] = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        from gguf.quants import dequantize

        heads = {"attn_q": self.config.num_attention_heads, "attn_k": self.config.num_key_value_heads}
        for t in self.reader.tensors:
            name = hf_name(t.name)
            if name not in wanted:
                continue
            try:
                array = dequantize(t.data, t.tensor_type)
            except NotImplementedError:
                raise ConfigError(
                    f"{self.path.name}: tensor {t.name} is of GGUF type {t.tensor_type.name}, which the installed "
                    "gguf package cannot dequantize (F32, F16, BF16, Q4_0-Q8_0 and the K-quants can be)",
                    "model",
                ) from None
            tensor = torch.from_numpy(array.copy())
            kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
            if self.arch == "llama" and kind in heads and name.endswith(".weight"):
                tensor = unpermute_rotary(tensor, heads[kind])
            shard = (shards or {}).get(name)
            yield name, tensor if shard is None else take(name, tensor, tuple(tensor.shape), shard)
