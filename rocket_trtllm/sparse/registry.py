"""The sparse-attention hook: the YAML `algorithm:` name -> config class, attention backend, cache manager.

A new method is one module that defines a config class (a `BaseSparseAttentionConfig` subclass with a
`Literal` `algorithm` field) and an attention backend, and calls `register_sparse_attention`.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol

from pydantic import Field, field_validator

from ..errors import ConfigError
from ..validation import StrictModel

if TYPE_CHECKING:
    from ..runtime.attention import AttentionBackend
    from ..runtime.kv_cache import ModelShape


class RunOptions(Protocol):
    """What a method's cross-field checks read of the run's other arguments (LlmArgs is one)."""

    kv_cache_config: Any


class BaseSparseAttentionConfig(StrictModel):
    """Fields every sparse-attention method has."""

    algorithm: str
    seq_len_threshold: Optional[int] = Field(
        default=None,
        description="Sequences no longer than this many tokens skip sparse attention (dense and exact).",
    )

    #: Methods that evict prompt tokens at prefill cannot share KV blocks between requests.
    evicts_prompt_tokens: ClassVar[bool] = False

    @field_validator("seq_len_threshold")
    @classmethod
    def _check_threshold(cls, v: Optional[int]) -> Optional[int]:
        """>= 1, or null"""
        if v is not None and v < 1:
            raise ValueError("must be >= 1 or null")
        return v

    def supports_backend(self, backend: str) -> bool:
        return backend == "pytorch"

    def check_llm_args(self, args: RunOptions) -> None:
        """A method that evicts prompt tokens needs `kv_cache_config.enable_block_reuse: false` (its default when
        not given)."""
        name = type(self).__name__
        if self.evicts_prompt_tokens and args.kv_cache_config.enable_block_reuse:
            raise ConfigError(
                f"must be false with {name}: eviction changes each request's KV per layer, "
                "so its blocks cannot be shared with other requests (omit it and it defaults to false)",
                "kv_cache_config.enable_block_reuse",
            )

    def check_model(self, shape: "ModelShape", tokens_per_block: int) -> None:
        # Rules that need the model's numbers (checked when it loads); raises ConfigError. None here.
        return


@dataclass(frozen=True)
class SparseAlgorithm:
    config_cls: type[BaseSparseAttentionConfig]
    backend_cls: Optional[type["AttentionBackend"]]


_REGISTRY: dict[str, SparseAlgorithm] = {}


def register_sparse_attention(
    config_cls: type[BaseSparseAttentionConfig], backend_cls: Optional[type["AttentionBackend"]] = None
) -> None:
    """Register a method under its config's `algorithm` default (the YAML name)."""
    name = config_cls.model_fields["algorithm"].default
    _REGISTRY[name] = SparseAlgorithm(config_cls, backend_cls)


def algorithms() -> list[str]:
    return sorted(_REGISTRY)


def lookup(name: str) -> SparseAlgorithm:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown algorithm {name!r}; registered: {', '.join(algorithms())}", "algorithm")
    return _REGISTRY[name]


def sparse_config_from_dict(data: Any) -> BaseSparseAttentionConfig:
    """Build the registered config class named by `data['algorithm']`."""
    if isinstance(data, BaseSparseAttentionConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"must be a mapping with an 'algorithm' key (got {data!r})")
    if "algorithm" not in data:
        raise ConfigError(f"'algorithm' is required; registered: {', '.join(algorithms())}", "algorithm")
    return lookup(data["algorithm"]).config_cls(**data)
