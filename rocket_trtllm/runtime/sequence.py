"""A request as the engine tracks it: its tokens, its KV blocks, and where it is in its life."""

import enum
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    request_id: int
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: Optional[str] = None
    error: Optional[str] = None
    block_table: list[int] = field(default_factory=list)
    reserved_blocks: int = 0
    cache_len: int = 0  # tokens whose K/V sit in the cache (after eviction, the same for every layer)
    inflight: int = 0  # decode steps launched whose token is not appended yet (the overlap scheduler)
    kept_prompt_len: int = 0
    cached_len: int = 0  # leading prompt tokens whose K/V came from the prefix cache (not computed)
    # Chunked prefill: prompt tokens whose K/V are in the cache (the cached prefix and the chunks computed so far),
    # and the prompt tokens this step computes after them (0 once the prompt is done).
    computed_len: int = 0
    chunk_len: int = 0
    prompt_hashes: Optional[list[bytes]] = None  # the prompt's full blocks' prefix-cache keys, computed once
    # Methods that keep the whole prompt's K/V for later turns beside a per-request working set (rocket_mt):
    # the prompt lives in these blocks (shared through the prefix cache), decode reads `block_table`.
    keeps_history: bool = False
    history_table: list[int] = field(default_factory=list)
    generator: Optional[torch.Generator] = None
    logits: list[torch.Tensor] = field(default_factory=list)  # per output token, if asked for
    # Scoring (LLM.score): these tokens replace the sampled ones, each step recording the log-probability
    # the model gave the forced token and whether it was the argmax.
    forced_token_ids: Optional[list[int]] = None
    forced_logprobs: list[float] = field(default_factory=list)
    forced_greedy: list[bool] = field(default_factory=list)
    # Asked-for log-probabilities (SamplingParams.logprobs / prompt_logprobs): one {token id: Logprob} per
    # generated token; per prompt token, None for the first.
    logprobs: list[dict] = field(default_factory=list)
    prompt_logprobs: list[Optional[dict]] = field(default_factory=list)
    # When (time.perf_counter) the request was made, the host had its first output token, and it finished.
    arrival_time: float = 0.0
    first_token_time: Optional[float] = None
    finish_time: Optional[float] = None

    @property
    def prefilled(self) -> bool:
        """Whether the whole prompt is computed (the request decodes)."""
        return self.computed_len >= self.prompt_len

    @property
    def final_chunk(self) -> bool:
        """Whether this step's chunk ends the prompt (its logits give the first output token)."""
        return self.computed_len + self.chunk_len >= self.prompt_len

    @property
    def prompt_logprobs_n(self) -> Optional[int]:
        return self.sampling_params.prompt_logprobs

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + len(self.output_token_ids) + self.inflight

    @property
    def last_token(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
