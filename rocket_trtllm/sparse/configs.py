"""Config classes of the built-in methods. RocketSparseAttentionConfig has the fields, defaults and
checks of TensorRT-LLM's class of that name; the baselines reuse its stage-1 and stage-2 fields."""

from typing import TYPE_CHECKING, ClassVar, Literal, Optional, Union

from pydantic import Field, StrictFloat, StrictInt, field_validator, model_validator

from ..errors import ConfigError
from ..validation import check_power_of_two
from .registry import BaseSparseAttentionConfig
from .token_budget import kept_tokens, split

if TYPE_CHECKING:
    from ..runtime.kv_cache import ModelShape

KT_CACHE_DTYPES = ("float8_e5m2", "bfloat16", "float16")


class EvictionFields(BaseSparseAttentionConfig):
    """Stage 1 (SnapKV++ eviction at prefill)."""

    window_size: int = Field(default=32, description="Recent prompt tokens always kept; they score the prefix.")
    kernel_size: int = Field(default=63, description="1-D max-pool kernel over the prefix scores (odd).")
    prompt_budget: int = Field(default=2048, description="Prompt tokens kept after eviction, window included.")
    eviction_scope: Literal["kv_head", "layer"] = Field(
        default="kv_head",
        description="Which heads share one choice of kept tokens: each KV head its own (the paper's SnapKV++), "
        "or every head of a layer (each KV head's scores normalised to sum to 1, then added).",
    )

    evicts_prompt_tokens: ClassVar[bool] = True

    @field_validator("window_size")
    @classmethod
    def _window(cls, v: int) -> int:
        """>= 1"""
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        """odd, >= 1"""
        if v < 1 or v % 2 == 0:
            raise ValueError("must be an odd integer >= 1 (1, 3, 5, ..., 63, ...)")
        return v

    @field_validator("prompt_budget")
    @classmethod
    def _budget(cls, v: int) -> int:
        """>= 2"""
        if v < 2:
            raise ValueError("must be >= 2")
        return v

    def prompt_budget_for(self, prompt_len: int) -> int:
        """Prompt tokens stage 1 keeps of a `prompt_len`-token prompt (at most)."""
        return self.prompt_budget

    @model_validator(mode="after")
    def _window_within_budget(self) -> "EvictionFields":
        """`window_size` < `prompt_budget` (the budget holds the window and the prefix tokens kept)."""
        if self.window_size >= self.prompt_budget:
            raise ConfigError(
                f"{self.window_size} must be < prompt_budget ({self.prompt_budget}): "
                "the budget holds the window plus the prefix tokens kept",
                "window_size",
            )
        return self


class PageSelectionFields(BaseSparseAttentionConfig):
    """Stage 2 (top-k KT pages at every decode step)."""

    topr: Union[StrictInt, StrictFloat] = Field(
        default=128,
        description="Query channels used to score KT pages: a count (>= head_dim: every channel), or a fraction of "
        "head_dim.",
    )
    topk: int = Field(default=64, description="KT pages selected per decode step, per KV head.")
    page_size: int = Field(default=4, description="Tokens per KT page (power of two).")
    kt_cache_dtype: str = Field(default="float8_e5m2", description="Storage type of the KT cache's min/max.")
    stage2_bound: Literal["sign", "both"] = Field(
        default="sign",
        description="How a page's logit is estimated per channel: sign = one bound, the max where the query summed "
        "over the GQA group is positive and the min elsewhere (TensorRT-LLM's backend and the paper; the kernel reads "
        "only that bound); both = Quest's upper bound max(q*min, q*max), reading both.",
    )
    stage2_temperature: bool = Field(
        default=False,
        description="ours: each query head's softmax over its page estimates at SparQ's temperature "
        "sqrt(head_dim * |q_hat|_1 / |q|_1) (the official implementation) instead of sqrt(head_dim).",
    )

    @field_validator("topk")
    @classmethod
    def _topk(cls, v: int) -> int:
        """>= 1"""
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("page_size")
    @classmethod
    def _pow2(cls, v: int) -> int:
        """a power of two that divides `kv_cache_config.tokens_per_block`"""
        return check_power_of_two(v)

    @field_validator("topr", mode="before")
    @classmethod
    def _topr(cls, v: object) -> Union[int, float]:
        """an int >= 1 (a channel count) or a float in (0, 1] (a fraction of head_dim)"""
        ok_int = isinstance(v, int) and not isinstance(v, bool) and v >= 1
        ok_float = isinstance(v, float) and 0.0 < v <= 1.0
        if not (ok_int or ok_float):
            raise ValueError("must be an int >= 1 (a channel count) or a float in (0, 1] (a fraction of head_dim)")
        return v

    @field_validator("kt_cache_dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        """`float8_e5m2`, `bfloat16` or `float16`"""
        if v not in KT_CACHE_DTYPES:
            raise ValueError(f"must be one of {', '.join(KT_CACHE_DTYPES)}")
        return v

    def topr_channels(self, head_dim: int) -> int:
        """`topr` as a channel count for a model with `head_dim` channels per head (as TensorRT-LLM: a count of
        head_dim or more means every channel)."""
        if isinstance(self.topr, float):
            return max(1, round(self.topr * head_dim))
        return min(self.topr, head_dim)

    def check_model(self, shape: "ModelShape", tokens_per_block: int) -> None:
        """`page_size` divides `kv_cache_config.tokens_per_block` (checked when the model loads)."""
        if tokens_per_block % self.page_size:
            raise ConfigError(
                f"{self.page_size} must divide kv_cache_config.tokens_per_block ({tokens_per_block}), "
                "since KT pages live inside KV blocks",
                "sparse_attention_config.page_size",
            )


class TokenBudgetFields(EvictionFields, PageSelectionFields):
    """RocketKV's fields, or one `token_budget` they are derived from (the official implementation's split)."""

    token_budget: Optional[int] = Field(
        default=None,
        description="Attention's K/V traffic per decode step, in tokens; when set, stage 1 keeps L / c^alpha of "
        "each L-token prompt (c = L / token_budget) and page_size, topr and topk come from the split at "
        "token_budget_len tokens (token_budget.py); leave those four fields unset then.",
    )
    token_budget_len: int = Field(
        default=32768, description="The sequence length the page size, top-r and top-k are derived at."
    )

    @model_validator(mode="after")
    def _derive(self) -> "TokenBudgetFields":
        """With `token_budget`, leave `prompt_budget`, `page_size`, `topr` and `topk` unset (they are derived), and
        `token_budget` > 2 x `window_size`."""
        if self.token_budget is None:
            return self
        clash = sorted({"prompt_budget", "page_size", "topr", "topk"} & self.model_fields_set)
        if clash:
            raise ConfigError("cannot be set with token_budget, which derives prompt_budget, page_size, topr and topk",
                              clash[0])  # fmt: skip
        if self.token_budget <= 2 * self.window_size:
            raise ConfigError(f"{self.token_budget} must be > 2 x window_size ({self.window_size})", "token_budget")
        # Top-r as a fraction of the model's head_dim: page / c2 (c2 = kept / token_budget), at most all of it.
        s = split(self.token_budget_len, self.token_budget, 1)
        topr = min(1.0, s.page_size * self.token_budget / s.kept)
        fields = {"prompt_budget": s.kept, "page_size": s.page_size, "topk": s.topk, "topr": topr}
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        return self

    def prompt_budget_for(self, prompt_len: int) -> int:
        """Prompt tokens stage 1 keeps of a `prompt_len`-token prompt."""
        if self.token_budget is None:
            return self.prompt_budget
        return kept_tokens(prompt_len, self.token_budget)


class RocketSparseAttentionConfig(TokenBudgetFields):
    """RocketKV: SnapKV++ eviction of prompt tokens at prefill, then top-k KT-page selection at decode.

    Example::

        RocketSparseAttentionConfig(prompt_budget=2048, topk=64, page_size=4)
        RocketSparseAttentionConfig(token_budget=256)  # the official split of one budget
    """

    algorithm: Literal["rocket"] = "rocket"


class SnapKVSparseAttentionConfig(EvictionFields):
    """Baseline: stage 1 only (eviction at prefill, dense decode over what is kept)."""

    algorithm: Literal["snapkv"] = "snapkv"


class QuestSparseAttentionConfig(PageSelectionFields):
    """Baseline: stage 2 only (Quest: no eviction; page min/max over all channels)."""

    algorithm: Literal["quest"] = "quest"
    topr: Union[StrictInt, StrictFloat] = Field(default=1.0, description="Query channels used (1.0: all).")
    page_size: int = Field(default=16, description="Tokens per page (power of two).")
    kt_cache_dtype: str = Field(default="float16", description="Storage type of the page min/max.")
    stage2_bound: Literal["sign", "both"] = Field(
        default="both", description="Quest's upper bound max(q*min, q*max) per channel, or the sign rule's one bound."
    )


class StreamingLLMSparseAttentionConfig(BaseSparseAttentionConfig):
    """Baseline: attend to the first `sink_size` tokens and the most recent `window_size`."""

    algorithm: Literal["streamingllm"] = "streamingllm"
    sink_size: int = Field(default=4, description="Attention-sink tokens at the start, always attended.")
    window_size: int = Field(default=508, description="Most recent tokens attended.")

    @field_validator("sink_size", "window_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        """>= 1"""
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class TopkOracleSparseAttentionConfig(BaseSparseAttentionConfig):
    """Baseline: exact top-k tokens by the true attention weights at every decode step (an upper bound)."""

    algorithm: Literal["topk_oracle"] = "topk_oracle"
    topk: int = Field(default=512, description="Tokens attended per decode step, per KV head.")

    @field_validator("topk")
    @classmethod
    def _positive(cls, v: int) -> int:
        """>= 1"""
        if v < 1:
            raise ValueError("must be >= 1")
        return v
