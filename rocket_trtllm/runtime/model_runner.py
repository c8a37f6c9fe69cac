"""Tensors in, logits out: packs a batch for the model and runs it."""

import torch

from ..models.llama import CausalLM
from .attention import AttentionBackend, AttentionMetadata
from .scheduler import Batch


class ModelRunner:
    def __init__(self, model: CausalLM, backend: AttentionBackend, device: torch.device) -> None:
        self.model = model
        self.backend = backend
        self.device = device

    def prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
        ids: list[int] = []
        positions: list[int] = []
        logit_idx: list[int] = []
        for seq in batch.contexts:
            ids += seq.prompt_token_ids
            positions += range(seq.prompt_len)
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
            context_lens=[s.prompt_len for s in batch.contexts],
            kept_lens=[s.kept_prompt_len for s in batch.contexts],
            block_tables=self._tensor(tables),
            cache_lens=self._tensor(cache_lens),
            max_cache_len=max(cache_lens, default=0),
        )
        return self._tensor(ids), self._tensor(positions), self._tensor(logit_idx), meta

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def run(self, batch: Batch) -> torch.Tensor:
        """Logits of each sequence's next token, [len(batch.sequences), vocab] float32."""
        ids, positions, logit_idx, meta = self.prepare(batch)
        logits = self.model(ids, positions, logit_idx, self.backend, meta)
        for seq in batch.contexts:
            seq.cache_len = seq.kept_prompt_len
        for seq in batch.generations:
            seq.cache_len += 1
        return logits
