"""Who runs in the next step: waiting prompts are admitted while running requests keep decoding."""

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Optional

from ..errors import RequestError
from .kv_cache import KVCachePool, block_hashes
from .sequence import Sequence, SequenceStatus


@dataclass
class Batch:
    contexts: list[Sequence]
    generations: list[Sequence]

    @property
    def sequences(self) -> list[Sequence]:
        return self.contexts + self.generations


class Fit(NamedTuple):
    """A waiting request's admission: its cached prefix blocks, the blocks looked up for them, the prompt tokens
    left to compute, the working-set blocks it will hold at its end, and its history blocks (rocket_mt)."""

    shared: list[int]
    queried: int
    new_tokens: int
    total: int
    history: int


class Scheduler:
    """First come, first served; a request is admitted only when its KV blocks for the prompt (after
    eviction) and all its output tokens can be guaranteed, so running requests are never evicted."""

    def __init__(self, pool: KVCachePool, max_batch_size: int, max_num_tokens: int) -> None:
        self.pool = pool
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @staticmethod
    def final_cache_len(seq: Sequence) -> int:
        # The last sampled token is returned without being fed back, so it never needs a slot.
        return seq.kept_prompt_len + seq.sampling_params.max_tokens - 1

    def check_fits(self, seq: Sequence) -> None:
        """Raise RequestError if `seq` could never be admitted, even into an empty engine."""
        need = self.pool.blocks_for(self.final_cache_len(seq)) + self._history_blocks(seq)
        if need > self.pool.allocator.num_blocks:
            raise RequestError(
                f"the request needs {need} KV blocks ({self.final_cache_len(seq)} tokens) but the whole pool "
                f"has {self.pool.allocator.num_blocks}; shorten the prompt or max_tokens, or enlarge the KV cache"
            )
        if seq.prompt_len > self.max_num_tokens:
            raise RequestError(
                f"prompt has {seq.prompt_len} tokens, more than max_num_tokens ({self.max_num_tokens}); "
                "raise max_num_tokens (prompts are prefilled in one step)"
            )

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self, admit: bool = True) -> Batch:
        """The next step: every running request decodes, and with `admit`, waiting prompts join while they fit."""
        generations = list(self.running)
        for seq in generations:
            if len(seq.block_table) <= seq.cache_len // self.pool.tokens_per_block:
                seq.block_table.append(
                    self.pool.allocator.take_reserved(seq.block_table[-1] if seq.block_table else None)
                )
                seq.reserved_blocks -= 1
        contexts: list[Sequence] = []
        tokens = len(generations)
        alloc = self.pool.allocator
        while admit and self.waiting and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            fit = self._fit(seq, tokens)
            if fit is None:
                break
            now = self.pool.blocks_for(seq.kept_prompt_len)
            self.waiting.popleft()
            if seq.keeps_history:  # the whole prompt (shared prefix first), then the working set
                seq.history_table = alloc.admit(fit.history, 0, fit.shared)
                seq.block_table = alloc.admit(now, fit.total - now)
            else:
                seq.block_table = alloc.admit(now, fit.total - now, fit.shared)
            seq.cached_len = len(fit.shared) * self.pool.tokens_per_block
            alloc.queried_blocks += fit.queried
            alloc.hit_blocks += len(fit.shared)
            seq.reserved_blocks = fit.total - now
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            contexts.append(seq)
            tokens += fit.new_tokens
        return Batch(contexts, generations)

    def can_admit(self) -> bool:
        """Whether a waiting request would join the next step (a full batch or pool leaves it waiting)."""
        return (
            bool(self.waiting)
            and len(self.running) < self.max_batch_size
            and self._fit(self.waiting[0], len(self.running)) is not None
        )

    def _fit(self, seq: Sequence, tokens: int) -> Optional["Fit"]:
        """How `seq` joins a step of `tokens` tokens, when it fits there and the pool can promise all its blocks;
        None when it must wait."""
        shared, queried = self._cached_prefix(seq)
        new_tokens = seq.prompt_len - len(shared) * self.pool.tokens_per_block
        if tokens + new_tokens > self.max_num_tokens:
            return None
        total, history = self.pool.blocks_for(self.final_cache_len(seq)), self._history_blocks(seq)
        alloc = self.pool.allocator
        if history + total - len(shared) + alloc.idle(shared) > alloc.num_available:
            return None
        return Fit(shared, queried, new_tokens, total, history)

    def _history_blocks(self, seq: Sequence) -> int:
        return self.pool.blocks_for(seq.prompt_len) if seq.keeps_history else 0

    def _cached_prefix(self, seq: Sequence) -> tuple[list[int], int]:
        """The cached blocks of the prompt's longest cached prefix, and how many full blocks were looked up; at
        least one prompt token is left to compute (its logits start the output)."""
        if not self.pool.allocator.reuse or seq.prompt_logprobs_n is not None:  # every position computed
            return [], 0
        hashes = self._prompt_hashes(seq)[: (seq.prompt_len - 1) // self.pool.tokens_per_block]
        return self.pool.allocator.match(hashes), len(hashes)

    def _prompt_hashes(self, seq: Sequence) -> list[bytes]:
        # Once per request: a request waiting for room is looked up again at every step.
        if seq.prompt_hashes is None:
            seq.prompt_hashes = block_hashes(seq.prompt_token_ids, self.pool.tokens_per_block)
        return seq.prompt_hashes

    def cache_blocks(self, seq: Sequence) -> None:
        """Offer `seq`'s full blocks of computed tokens to the prefix cache (with a history: its prompt's)."""
        if not self.pool.allocator.reuse or not seq.cache_len:
            return
        bs, prompt = self.pool.tokens_per_block, self._prompt_hashes(seq)
        if seq.keeps_history:
            self.pool.allocator.register(seq.history_table, prompt)
            return
        full = seq.cache_len // bs
        tokens = (seq.prompt_token_ids + seq.output_token_ids)[: full * bs]
        self.pool.allocator.register(seq.block_table, block_hashes(tokens, bs, prompt[:full]))

    def finish(self, seq: Sequence) -> None:
        """Take `seq` out of the queues and return its blocks (and unused reservation) to the pool."""
        if seq in self.running:
            self.running.remove(seq)
            if seq.finish_reason != "error":  # a failed step may have left its K/V half written
                self.cache_blocks(seq)
            self.pool.allocator.release(seq.history_table + seq.block_table, seq.reserved_blocks)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.block_table, seq.history_table, seq.reserved_blocks = [], [], 0
        seq.status = SequenceStatus.FINISHED
