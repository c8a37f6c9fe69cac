"""SamplingParams: how to pick each new token and when to stop, with TensorRT-LLM's names."""

from dataclasses import dataclass, field
from typing import Optional, Union

from .errors import RequestError

MAX_LOGPROBS = 20  # most alternatives a token's logprobs may list (vLLM's default max_logprobs)


@dataclass
class SamplingParams:
    """Decoding settings for one request. `temperature=0` (or `top_k=1`) is greedy.

    Example::

        SamplingParams(max_tokens=64, temperature=0.8, top_p=0.95, seed=0, stop=["\\n\\n"])
    """

    max_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    end_id: Optional[int] = None
    include_stop_str_in_output: bool = False
    detokenize: bool = True
    return_generation_logits: bool = False
    # Log-probabilities (the model's log-softmax over its logits, before temperature, top-k or top-p): for each
    # generated token, that token's and the `logprobs` most likely ones'; for each prompt token after the first,
    # the same with `prompt_logprobs` alternatives (from the prefill, which sees the whole prompt for every method).
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.validate()

    def validate(self) -> None:
        """Raise RequestError naming the first field outside its allowed range."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise RequestError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise RequestError(f"top_k must be >= 0 (0 disables it), got {self.top_k!r}")
        if any(not s for s in self.stop):
            raise RequestError("stop strings must be non-empty")
        for name in ("logprobs", "prompt_logprobs"):
            n = getattr(self, name)
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_LOGPROBS):
                raise RequestError(f"{name} must be null or an integer in [0, {MAX_LOGPROBS}], got {n!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1
