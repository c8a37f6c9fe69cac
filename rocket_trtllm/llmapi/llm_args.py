"""LlmArgs and its parts, with the field names and YAML shape of TensorRT-LLM's LLM API."""

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import Field, field_validator

from ..errors import ConfigError
from ..sparse.registry import BaseSparseAttentionConfig, sparse_config_from_dict
from ..validation import StrictModel, check_power_of_two

DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTN_BACKENDS = ("TRTLLM", "VANILLA")


class KvCacheConfig(StrictModel):
    """The paged KV cache pool."""

    enable_block_reuse: bool = Field(
        default=True, description="Share prompt-prefix blocks across requests (must be false with RocketKV)."
    )
    free_gpu_memory_fraction: Optional[float] = Field(
        default=0.9, description="Fraction of the GPU memory free after loading the weights given to the pool."
    )
    max_tokens: Optional[int] = Field(
        default=None, description="Pool size in tokens (the CPU's pool size; on the GPU, an upper bound)."
    )
    tokens_per_block: int = Field(default=32, description="Token slots per KV block (power of two).")
    dtype: Literal["auto", "bfloat16", "float16", "float32", "fp8"] = Field(
        default="auto",
        description="KV cache storage type; auto = the model's dtype; fp8 = float8_e4m3fn with per-tensor K/V "
        "scales (the checkpoint's k_scale/v_scale, else 1.0).",
    )

    @field_validator("free_gpu_memory_fraction")
    @classmethod
    def _fraction(cls, v: Optional[float]) -> Optional[float]:
        """in (0, 1]"""
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError("must be in (0, 1]")
        return v

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: Optional[int]) -> Optional[int]:
        """>= 1, or null"""
        if v is not None and v < 1:
            raise ValueError("must be >= 1 or null")
        return v

    @field_validator("tokens_per_block")
    @classmethod
    def _block(cls, v: int) -> int:
        """a power of two"""
        return check_power_of_two(v)


class CudaGraphConfig(StrictModel):
    """Decode steps captured as CUDA graphs, one per batch-size bucket (CUDA only)."""

    batch_sizes: Optional[list[int]] = Field(
        default=None, description="Batch sizes to capture; default 1, 2, 4, 8, then steps of 8 up to max_batch_size."
    )
    max_batch_size: int = Field(default=128, description="Largest batch captured when batch_sizes is not given.")
    enable_padding: bool = Field(
        default=False, description="Pad a batch up to the next captured size instead of running it eagerly."
    )

    @field_validator("batch_sizes")
    @classmethod
    def _sizes(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        """a non-empty list of integers >= 1, or null"""
        if v is not None and (not v or min(v) < 1):
            raise ValueError("must be a non-empty list of integers >= 1")
        return v

    @field_validator("max_batch_size")
    @classmethod
    def _max(cls, v: int) -> int:
        """>= 1"""
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    def capture_sizes(self, limit: int) -> list[int]:
        """The batch sizes to capture, capped at `limit` (the engine's max_batch_size). The default ladder captures a
        limit between two of its sizes too, or full batches (82, between 80 and 88) would run eagerly."""
        if self.batch_sizes is not None:
            return sorted({b for b in self.batch_sizes if b <= limit})
        top = self.max_batch_size
        sizes = {b for b in (1, 2, 4) if b <= top} | set(range(8, top + 1, 8))
        return sorted({b for b in sizes if b <= limit} | ({limit} if limit < top else set()))


class QuantConfig(StrictModel):
    """TensorRT-LLM's `quant_config`. A checkpoint's own quantization (ModelOpt, compressed-tensors) is read from
    its files; this names one for random weights (`load_format: dummy`), so an FP8 model can be benchmarked
    without its checkpoint. Write a real FP8 checkpoint with rocket-quantize."""

    quant_algo: Optional[Literal["FP8"]] = Field(default=None, description="FP8: fp8 weights (random weights only).")


class LlmArgs(StrictModel):
    """Everything a run needs, validated once. Build with keywords or `LlmArgs.from_yaml`."""

    model: str = Field(
        description="A Hugging Face checkpoint folder (config.json, safetensors, tokenizer) or a .gguf file."
    )
    tokenizer: Optional[str] = Field(default=None, description="Tokenizer folder; default: the checkpoint's own.")
    backend: str = Field(default="pytorch", description="Only the PyTorch backend exists.")
    attn_backend: str = Field(
        default="TRTLLM", description="TRTLLM: Triton kernels on CUDA; VANILLA: plain torch everywhere."
    )
    dtype: str = Field(default="auto", description="Model dtype: auto (the checkpoint's), bfloat16, float16, float32.")
    max_batch_size: int = Field(default=2048, description="Most requests in flight at once.")
    max_seq_len: Optional[int] = Field(
        default=None, description="Longest prompt + output; default: the model's max_position_embeddings."
    )
    max_num_tokens: int = Field(
        default=8192,
        description="A step's token budget: its decode tokens and prompt tokens together (without chunked prefill a "
        "prompt must fit it).",
    )
    enable_chunked_prefill: bool = Field(
        default=False,
        description="A prompt longer than what a step's budget leaves prefills over several steps, decode tokens "
        "first, so that running requests keep decoding; any method (RocketKV evicts after the last chunk).",
    )
    kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig, description="The paged KV cache.")
    sparse_attention_config: Optional[BaseSparseAttentionConfig] = Field(
        default=None, description="The sparse-attention method, picked by its `algorithm` key (null: dense)."
    )
    cuda_graph_config: Optional[CudaGraphConfig] = Field(
        default_factory=CudaGraphConfig, description="Decode steps as CUDA graphs (null: none)."
    )
    tensor_parallel_size: int = Field(
        default=1, description="Ranks per model (GPUs on CUDA, processes on the CPU); the LLM starts them itself."
    )
    load_format: Literal["auto", "dummy"] = Field(
        default="auto", description="auto: the checkpoint's safetensors; dummy: random weights (benchmarks)."
    )
    quant_config: QuantConfig = Field(
        default_factory=QuantConfig, description="A quantization for random weights (a checkpoint's is read from it)."
    )
    disable_overlap_scheduler: bool = Field(
        default=False,
        description="Off: while a greedy decode step runs on the device, the host processes the step before it "
        "(TensorRT-LLM's overlap scheduler). A request may then compute one token past its end, which is dropped.",
    )

    def __init__(self, **data: Any) -> None:
        data = dict(data)
        sparse = data.get("sparse_attention_config")
        if sparse is not None and not isinstance(sparse, BaseSparseAttentionConfig):
            try:
                data["sparse_attention_config"] = sparse_config_from_dict(sparse)
            except ConfigError as e:
                raise ConfigError(e.detail, f"sparse_attention_config.{e.path}".rstrip(".")) from None
        if "model" not in data:
            raise ConfigError("required: the path to a checkpoint folder or .gguf file", "model")
        super().__init__(**data)
        self._check_cross_field()

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        """`pytorch` (the only backend)"""
        if v != "pytorch":
            raise ValueError("only the PyTorch backend exists in rocket-trtllm; use backend: pytorch")
        return v

    @field_validator("attn_backend")
    @classmethod
    def _attn_backend(cls, v: str) -> str:
        """`TRTLLM` or `VANILLA` (any case)"""
        if v.upper() not in ATTN_BACKENDS:
            raise ValueError(f"must be one of {', '.join(ATTN_BACKENDS)}")
        return v.upper()

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        """`auto`, `bfloat16`, `float16` or `float32`"""
        if v not in DTYPES:
            raise ValueError(f"must be one of {', '.join(DTYPES)}")
        return v

    @field_validator("max_batch_size", "max_num_tokens")
    @classmethod
    def _positive(cls, v: int) -> int:
        """>= 1"""
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("max_seq_len")
    @classmethod
    def _seq(cls, v: Optional[int]) -> Optional[int]:
        """>= 2, or null"""
        if v is not None and v < 2:
            raise ValueError("must be >= 2 or null")
        return v

    @field_validator("tensor_parallel_size")
    @classmethod
    def _tp(cls, v: int) -> int:
        """>= 1"""
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("sparse_attention_config", mode="before")
    @classmethod
    def _sparse(cls, v: Any) -> Any:
        """a mapping whose `algorithm` names a registered method"""
        return None if v is None else sparse_config_from_dict(v)

    def _check_cross_field(self) -> None:
        """With a method that evicts prompt tokens, `kv_cache_config.enable_block_reuse` defaults to false; the
        method's own rules apply; `quant_config.quant_algo` only with `load_format: dummy`."""
        sparse = self.sparse_attention_config
        if sparse is not None:
            if sparse.evicts_prompt_tokens and "enable_block_reuse" not in self.kv_cache_config.model_fields_set:
                # Without an explicit choice, eviction methods get the only setting they work with.
                self.kv_cache_config = self.kv_cache_config.model_copy(update={"enable_block_reuse": False})
            sparse.check_llm_args(self)
        if self.quant_config.quant_algo and self.load_format != "dummy":
            raise ConfigError(
                "applies to random weights only (load_format: dummy): a checkpoint's quantization is read from its "
                "files; write an FP8 checkpoint with `rocket-quantize MODEL OUT --fp8`",
                "quant_config.quant_algo",
            )

    @classmethod
    def from_yaml(cls, path: Union[str, Path], **overrides: Any) -> "LlmArgs":
        """Load TensorRT-LLM's `--config` / extra-LLM-API-options YAML; keyword overrides win."""
        data, lines = read_yaml(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ConfigError as e:
            line = lines.get(e.path) or lines.get(e.path.rsplit(".", 1)[0])
            where = f"{path}:{line}" if line else str(path)
            raise ConfigError(f"{where}: {e}") from None


def read_yaml(path: Union[str, Path]) -> tuple[dict[str, Any], dict[str, int]]:
    """The YAML mapping at `path`, and the 1-based line of every dotted key path in it."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of options, not {type(data).__name__}")
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    return data, lines


def _key_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            out[path] = key.start_mark.line + 1
            _key_lines(value, path, out)
