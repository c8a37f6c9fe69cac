"""Who runs in the next step: one token budget (`max_num_tokens`) per step, running requests' decode tokens first,
then prompts: with chunked prefill, a prompt longer than what is left of the budget prefills over several steps
(vLLM's order: decodes, then prompts already started, then new ones), so a long prompt never stalls decoding."""

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Optional

from ..errors import RequestError
from .kv_cache import KVCachePool, block_hashes
from .sequence import Sequence, SequenceStatus


@dataclass
class Batch:
    contexts: list[Sequence]  # requests computing prompt tokens this step (a whole prompt or a chunk)
    generations: list[Sequence]
    context_tokens: int = 0  # prompt tokens the contexts compute

    @property
    def sequences(self) -> list[Sequence]:
        return self.contexts + self.generations

    @property
    def emitting(self) -> list[Sequence]:
        """The requests this step samples a token for, in the order of the runner's logits: contexts whose prompt
        ends here, then generations."""
        return [s for s in self.contexts if s.final_chunk] + self.generations


class Fit(NamedTuple):
    """A waiting request's admission: its cached prefix blocks, the blocks looked up for them, the prompt tokens it
    computes in this step, the blocks it takes now and those reserved for later, and its history blocks
    (rocket_mt)."""

    shared: list[int]
    queried: int
    chunk: int
    now: int
    later: int
    history: int


class Scheduler:
    """First come, first served; a request is admitted only when its KV blocks for the prompt (after
    eviction) and all its output tokens can be guaranteed, so running requests are never evicted.

    `chunked`: a prompt may prefill over several steps; its last chunk then holds at least `min_final_chunk` tokens
    (the queries a method's stage 1 reads, which are not cached), and while it prefills a prompt that eviction will
    shrink holds the blocks of its whole prompt."""

    def __init__(
        self,
        pool: KVCachePool,
        max_batch_size: int,
        max_num_tokens: int,
        chunked: bool = False,
        min_final_chunk: int = 0,
    ) -> None:
        self.pool = pool
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.chunked = chunked
        self.min_final_chunk = min_final_chunk
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @staticmethod
    def final_cache_len(seq: Sequence) -> int:
        # The last sampled token is returned without being fed back, so it never needs a slot.
        return seq.kept_prompt_len + seq.sampling_params.max_tokens - 1

    def _peak_blocks(self, seq: Sequence) -> int:
        # Chunks write the whole prompt before the last one evicts.
        prompt = self.pool.blocks_for(seq.prompt_len) if self.chunked else 0
        return max(prompt, self.pool.blocks_for(self.final_cache_len(seq)))

    def blocks_needed(self, seq: Sequence) -> int:
        """The most KV blocks `seq` holds at once over its life (its prompt's while chunks prefill, its history)."""
        return self._peak_blocks(seq) + self._history_blocks(seq)

    def check_fits(self, seq: Sequence) -> None:
        """Raise RequestError if `seq` could never be admitted, even into an empty engine."""
        need = self.blocks_needed(seq)
        if need > self.pool.allocator.num_blocks:
            raise RequestError(
                f"the request needs {need} KV blocks ({max(seq.prompt_len, self.final_cache_len(seq))} tokens) but "
                f"the whole pool has {self.pool.allocator.num_blocks}; shorten the prompt or max_tokens, or enlarge "
                "the KV cache"
            )
        if seq.prompt_len > self.max_num_tokens and not self.chunked:
            raise RequestError(
                f"prompt has {seq.prompt_len} tokens, more than max_num_tokens ({self.max_num_tokens}); "
                "raise max_num_tokens or set enable_chunked_prefill: true (prompts are prefilled in one step)"
            )

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self, admit: bool = True) -> Batch:
        """The next step: every decoding request decodes, prompts being prefilled take their next chunk, and with
        `admit` waiting prompts join while the token budget and the pool allow."""
        generations = [seq for seq in self.running if seq.prefilled]
        for seq in generations:
            if len(seq.block_table) <= seq.cache_len // self.pool.tokens_per_block:
                last = seq.block_table[-1] if seq.block_table else None
                seq.block_table.append(self.pool.allocator.take_reserved(last))
                seq.reserved_blocks -= 1
        contexts: list[Sequence] = []
        tokens = len(generations)
        for seq in self.running:  # prompts already started, oldest first
            if seq.prefilled:
                continue
            seq.chunk_len = self._chunk(seq.prompt_len - seq.computed_len, self.max_num_tokens - tokens)
            if not seq.chunk_len:
                admit = False  # first come, first served: no newer prompt takes what this one waits for
                break
            contexts.append(seq)
            tokens += seq.chunk_len
        alloc = self.pool.allocator
        while admit and self.waiting and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            fit = self._fit(seq, tokens)
            if fit is None:
                break
            self.waiting.popleft()
            if seq.keeps_history:  # the whole prompt (shared prefix first), then the working set
                seq.history_table = alloc.admit(fit.history, 0, fit.shared)
                seq.block_table = alloc.admit(fit.now, fit.later)
            else:
                seq.block_table = alloc.admit(fit.now, fit.later, fit.shared)
            seq.cached_len = seq.computed_len = len(fit.shared) * self.pool.tokens_per_block
            seq.chunk_len = fit.chunk
            alloc.queried_blocks += fit.queried
            alloc.hit_blocks += len(fit.shared)
            seq.reserved_blocks = fit.later
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            contexts.append(seq)
            tokens += fit.chunk
        return Batch(contexts, generations, tokens - len(generations))

    def _chunk(self, remaining: int, budget: int) -> int:
        """Prompt tokens a request computes in a step with `budget` tokens left: all of them when they fit; with
        chunking as many as fit, leaving at least `min_final_chunk` for the last chunk; else none."""
        if remaining <= budget:
            return remaining
        if not self.chunked:
            return 0
        return max(0, min(budget, remaining - min(self.min_final_chunk, remaining)))

    def can_admit(self) -> bool:
        """Whether a waiting request would join the next step (a full batch or pool leaves it waiting)."""
        return (
            bool(self.waiting)
            and len(self.running) < self.max_batch_size
            and self._fit(self.waiting[0], len(self.running)) is not None
        )

    def _fit(self, seq: Sequence, tokens: int) -> Optional["Fit"]:
        """How `seq` joins a step of `tokens` tokens, when some of its prompt fits there and the pool can promise all
        its blocks; None when it must wait."""
        shared, queried = self._cached_prefix(seq)
        remaining = seq.prompt_len - len(shared) * self.pool.tokens_per_block
        chunk = self._chunk(remaining, self.max_num_tokens - tokens)
        if not chunk:
            return None
        final, history = self.pool.blocks_for(self.final_cache_len(seq)), self._history_blocks(seq)
        # A prompt done in this step writes only what it keeps; one that continues holds its whole prompt until then.
        now = self.pool.blocks_for(seq.kept_prompt_len if chunk == remaining else seq.prompt_len)
        if seq.keeps_history:
            now = self.pool.blocks_for(seq.kept_prompt_len)  # chunks go to the history blocks
        later = max(0, final - now)
        alloc = self.pool.allocator
        if history + now + later - len(shared) + alloc.idle(shared) > alloc.num_available:
            return None
        return Fit(shared, queried, chunk, now, later, history)

    def finish_prefill(self, seq: Sequence) -> None:
        """After a request's last chunk: the blocks its whole prompt held beyond what eviction kept go back to the
        pool, and its reservation covers the rest of its life."""
        keep = self.pool.blocks_for(seq.cache_len)
        if len(seq.block_table) <= keep:
            return
        extra = seq.block_table[keep:]
        del seq.block_table[keep:]
        final = self.pool.blocks_for(self.final_cache_len(seq))
        self.pool.allocator.release(extra, 0)
        self.pool.allocator.reserve(max(0, final - keep) - seq.reserved_blocks)
        seq.reserved_blocks = max(0, final - keep)

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
        if seq.keeps_history:  # the prompt's blocks computed so far (all of them unless it stopped mid-prefill)
            self.pool.allocator.register(seq.history_table, prompt[: seq.computed_len // bs])
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
