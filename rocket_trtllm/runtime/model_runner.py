"""Tensors in, logits out: packs a batch for the model and runs it, decode steps as CUDA graphs."""

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from .attention import AttentionBackend, AttentionMetadata
from .kv_cache import KVCachePool
from .sampler import logprobs_of
from .scheduler import Batch

if TYPE_CHECKING:  # the models sit above the runtime (they call its attention backends)
    from ..models.llama import CausalLM


@dataclass
class Feed:
    """Input tokens read on the device: `tokens` [rows] are a running step's greedy tokens; generation i of the
    next batch takes tokens[rows[i]]."""

    tokens: torch.Tensor
    rows: list[int]


class ModelRunner:
    def __init__(
        self,
        model: "CausalLM",
        backend: AttentionBackend,
        pool: KVCachePool,
        device: torch.device,
        graph_sizes: Optional[list[int]] = None,
        graph_padding: bool = False,
        max_seq_len: int = 0,
    ) -> None:
        self.model = model
        self.backend = backend
        self.pool = pool
        self.device = device
        use_graphs = bool(graph_sizes) and device.type == "cuda" and backend.supports_cuda_graphs
        self.graph_sizes = sorted(graph_sizes or []) if use_graphs else []
        self.graph_padding = graph_padding
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pinned: dict[tuple[int, int, int], torch.Tensor] = {}  # the graphs' host inputs, two per shape
        self._turn = 0
        if self.graph_sizes:
            b, width = self.graph_sizes[-1], pool.blocks_for(max_seq_len)
            self.static = {
                "ids": torch.zeros(b, dtype=torch.int32, device=device),
                "positions": torch.zeros(b, dtype=torch.int32, device=device),
                "logit_idx": torch.arange(b, dtype=torch.int32, device=device),
                "tables": torch.full((b, width), pool.scratch_block, dtype=torch.int32, device=device),
                "cache_lens": torch.ones(b, dtype=torch.int32, device=device),
            }
            self.graph_pool = torch.cuda.graph_pool_handle()

    def prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
        ids: list[int] = []
        positions: list[int] = []
        logit_idx: list[int] = []
        for seq in batch.contexts:  # this step's chunk of the prompt, past its cached prefix and earlier chunks
            start, end = seq.computed_len, seq.computed_len + seq.chunk_len
            ids += seq.prompt_token_ids[start:end]
            positions += range(start, end)
            if seq.final_chunk:
                logit_idx.append(len(ids) - 1)
        for seq in batch.generations:
            ids.append(seq.last_token)
            positions.append(seq.num_tokens - 1)
            logit_idx.append(len(ids) - 1)
        seqs = batch.sequences
        width = max(len(s.block_table) for s in seqs)
        tables = [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
        cache_lens = [s.cache_len + 1 for s in batch.generations]
        meta = AttentionMetadata(
            num_contexts=len(batch.contexts),
            context_lens=[s.chunk_len for s in batch.contexts],
            kept_lens=[s.kept_prompt_len for s in batch.contexts],
            block_tables=self._tensor(tables),
            cache_lens=self._tensor(cache_lens),
            max_cache_len=max(cache_lens, default=0),
            cached_lens=[s.computed_len for s in batch.contexts],
            final=[s.final_chunk for s in batch.contexts],
            history_tables=self._history_tables(batch),
        )
        return self._tensor(ids), self._tensor(positions), self._tensor(logit_idx), meta

    def _history_tables(self, batch: Batch) -> Optional[torch.Tensor]:
        if not any(s.history_table for s in batch.contexts):
            return None
        width = max(len(s.history_table) for s in batch.contexts)
        return self._tensor([s.history_table + [0] * (width - len(s.history_table)) for s in batch.contexts])

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def run(self, batch: Batch, feed: Optional[Feed] = None) -> torch.Tensor:
        """Logits of each sequence's next token, [len(batch.sequences), vocab] float32. With `feed` (a decode-only
        batch), each generation's input token is read on the device from the step still running (the overlap
        scheduler), not from the host's sequences."""
        bucket = self._bucket(batch)
        if bucket:
            logits = self._replay(bucket, self._width(batch), batch, feed)
        else:
            ids, positions, logit_idx, meta = self.prepare(batch)
            if feed is not None:
                ids = feed.tokens.index_select(0, self._tensor(feed.rows)).to(ids.dtype)
            scored = self._prompt_rows(batch)
            if scored:
                hidden_idx = self._tensor([i for _, rows in scored for i in rows])
                logits, hidden = self.model(ids, positions, logit_idx, self.backend, meta, hidden_idx)
                self._prompt_logprobs(scored, hidden)
            else:
                logits = self.model(ids, positions, logit_idx, self.backend, meta)
        for seq in batch.contexts:
            seq.computed_len += seq.chunk_len
            seq.chunk_len = 0
            seq.cache_len = seq.kept_prompt_len if seq.computed_len >= seq.prompt_len else seq.computed_len
        for seq in batch.generations:
            seq.cache_len += 1
        return logits

    # ---- prompt logprobs: the LM head over a context's prompt positions, a slice at a time -----------------

    LOGPROB_SLICE_ELEMENTS = 1 << 25  # logits a slice of prompt positions makes (128 MiB of float32)

    def _prompt_rows(self, batch: Batch) -> list[tuple]:
        """(context, its packed rows whose next token is a prompt token) for each context asking for prompt
        logprobs; the positions computed this step, past any cached prefix."""
        out, start = [], 0
        for seq in batch.contexts:
            n = seq.chunk_len
            if seq.prompt_logprobs_n is not None:  # the last prompt token's next one is the output's first
                out.append((seq, range(start, start + n - (1 if seq.final_chunk else 0))))
            start += n
        return out

    def _prompt_logprobs(self, scored: list[tuple], hidden: torch.Tensor) -> None:
        rows = max(1, self.LOGPROB_SLICE_ELEMENTS // self.model.config.vocab_size)
        offset = 0
        for seq, packed in scored:
            if not seq.computed_len:
                seq.prompt_logprobs = [None]  # the first token has no context to be predicted from
            targets = seq.prompt_token_ids[seq.computed_len + 1 : seq.computed_len + 1 + len(packed)]
            for i in range(0, len(targets), rows):
                part = targets[i : i + rows]
                logits = self.model.lm_head(hidden[offset + i : offset + i + len(part)])
                seq.prompt_logprobs += logprobs_of(logits, part, [seq.prompt_logprobs_n] * len(part))
            offset += len(packed)

    # ---- CUDA graphs for steps that only decode: one per (batch-size bucket, block-table width) ---
    # The width is a power of two of KV blocks (at least MIN_GRAPH_BLOCKS, at most max_seq_len's), so
    # a graph's kernels cover the batch's longest sequence and not max_seq_len: after RocketKV's
    # eviction a 128k prompt keeps ~2k tokens, and its graph scans ~2k-token tables.

    MIN_GRAPH_BLOCKS = 16

    def _width(self, batch: Batch) -> int:
        longest = max(len(s.block_table) for s in batch.generations)
        width = max(self.MIN_GRAPH_BLOCKS, 1 << (longest - 1).bit_length())
        return min(width, self.static["tables"].shape[1])

    def _bucket(self, batch: Batch) -> int:
        return 0 if batch.contexts else self.graph_bucket(len(batch.generations))

    def graph_bucket(self, n: int) -> int:
        """The captured batch size a decode-only step of `n` requests replays (0: it runs eagerly)."""
        if n in self.graph_sizes:
            return n
        if self.graph_padding:
            return next((b for b in self.graph_sizes if b >= n), 0)
        return 0

    def _static_meta(self, bucket: int, width: int) -> AttentionMetadata:
        tables = self.static["tables"][:bucket, :width]
        return AttentionMetadata(
            num_contexts=0,
            context_lens=[],
            kept_lens=[],
            block_tables=tables,
            cache_lens=self.static["cache_lens"][:bucket],
            max_cache_len=tables.shape[1] * self.pool.tokens_per_block,
            static=True,
        )

    def _forward_static(self, bucket: int, width: int) -> torch.Tensor:
        s = self.static
        meta = self._static_meta(bucket, width)
        return self.model(s["ids"][:bucket], s["positions"][:bucket], s["logit_idx"][:bucket], self.backend, meta)

    def _capture(self, bucket: int, width: int) -> None:
        # Padding rows (and the warm-up) read and write only the scratch block.
        self.static["tables"].fill_(self.pool.scratch_block)
        self.static["cache_lens"].fill_(1)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compile the Triton kernels and settle allocations before capture
                self._forward_static(bucket, width)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.graph_pool):
            out = self._forward_static(bucket, width)
        self.graphs[bucket, width] = (graph, out)

    def _replay(self, bucket: int, width: int, batch: Batch, feed: Optional[Feed]) -> torch.Tensor:
        if (bucket, width) not in self.graphs:
            self._capture(bucket, width)
        seqs = batch.generations
        n = len(seqs)
        scratch = self.pool.scratch_block
        # The inputs go up in one copy from pinned memory: from pageable memory the copy would first wait for
        # the stream, i.e. for the step the overlap scheduler is running. Two buffers in turn: the other one may
        # still be read by the previous step's copy.
        self._turn ^= 1
        key = (self._turn, bucket, width)
        if key not in self._pinned:
            self._pinned[key] = torch.empty((bucket, 4 + width), dtype=torch.int32, pin_memory=True)
        host = self._pinned[key]
        pad = [scratch] * width
        # One tensor built from lists: per-element writes took 2.3x as long (1.0 against 0.4 ms at batch 82, CPU).
        rows = feed.rows if feed is not None else itertools.repeat(0)
        host[:n] = torch.tensor(
            [[s.last_token, s.num_tokens - 1, s.cache_len + 1, r, *s.block_table, *pad[: width - len(s.block_table)]]
             for s, r in zip(seqs, rows)], dtype=torch.int32,
        )  # fmt: skip
        if n < bucket:  # padding rows: one cached token in the scratch block
            host[n:, :4] = torch.tensor([0, 0, 1, 0], dtype=torch.int32)
            host[n:, 4:] = scratch
        dev = host.to(self.device, non_blocking=True)
        s = self.static
        s["ids"][:bucket].copy_(dev[:, 0])
        if feed is not None:
            s["ids"][:n].copy_(feed.tokens.index_select(0, dev[:n, 3]))
        s["positions"][:bucket].copy_(dev[:, 1])
        s["cache_lens"][:bucket].copy_(dev[:, 2])
        s["tables"][:bucket, :width].copy_(dev[:, 4:])
        graph, out = self.graphs[bucket, width]
        graph.replay()
        return out[:n]
