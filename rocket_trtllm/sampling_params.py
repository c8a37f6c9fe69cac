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

    max_tokens: int = field(default=32, metadata={"doc": "Tokens to generate at most (>= 1)."})
    temperature: float = field(default=1.0, metadata={"doc": "Softmax temperature (>= 0); 0 is greedy."})
    top_p: float = field(default=1.0, metadata={"doc": "Nucleus sampling: the smallest set of tokens holding this "
                                                       "much probability, in (0, 1]."})  # fmt: skip
    top_k: int = field(default=0, metadata={"doc": "Sample among the k likeliest tokens (>= 0; 0: all; 1: greedy)."})
    seed: Optional[int] = field(default=None, metadata={"doc": "This request's sampling seed (default: random)."})
    stop: Optional[Union[str, list[str]]] = field(
        default=None, metadata={"doc": "Non-empty strings that end the output (cut from the text)."}
    )
    stop_token_ids: list[int] = field(default_factory=list, metadata={"doc": "Token ids that end the output."})
    ignore_eos: bool = field(default=False, metadata={"doc": "Keep generating past end-of-sequence tokens."})
    end_id: Optional[int] = field(default=None, metadata={"doc": "The end token (default: the model's EOS ids)."})
    include_stop_str_in_output: bool = field(default=False, metadata={"doc": "Keep the stop string in the text."})
    detokenize: bool = field(default=True, metadata={"doc": "Decode the tokens to text (false: token ids only)."})
    return_generation_logits: bool = field(
        default=False, metadata={"doc": "Return each generated token's logits (`generation_logits`)."}
    )
    # Log-probabilities (the model's log-softmax over its logits, before temperature, top-k or top-p): for each
    # generated token, that token's and the `logprobs` most likely ones'; for each prompt token after the first,
    # the same with `prompt_logprobs` alternatives (from the prefill, which sees the whole prompt for every method).
    logprobs: Optional[int] = field(
        default=None,
        metadata={
            "doc": "Each generated token's logprob and this many alternatives (0-20), before any sampling setting."
        },  # fmt: skip
    )
    prompt_logprobs: Optional[int] = field(
        default=None,
        metadata={
            "doc": "The same for each prompt token after the first (0-20); such a request "
            "computes its whole prompt, past the prefix cache."
        },  # fmt: skip
    )

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
