"""What generate() returns, with TensorRT-LLM's names."""

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..runtime.sampler import Logprob


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: Optional[str] = None  # "stop", "length", "abort" or "error"
    error: Optional[str] = None
    generation_logits: Optional[torch.Tensor] = None  # [len(token_ids), vocab] float32, when asked for
    # With SamplingParams.logprobs: per generated token, {token id: Logprob} of it and its top alternatives;
    # with prompt_logprobs: the same per prompt token, None for the first.
    logprobs: Optional[list[dict[int, Logprob]]] = None
    prompt_logprobs: Optional[list[Optional[dict[int, Logprob]]]] = None

    @property
    def length(self) -> int:
        return len(self.token_ids)


@dataclass
class RequestOutput:
    request_id: int
    prompt: Optional[str]
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
