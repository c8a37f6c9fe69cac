"""Pick the next token of each request from its logits, and the log-probabilities a request asks for."""

from typing import NamedTuple

import torch

from ..kernels import layer_ops
from .sequence import Sequence


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """logits: [rows, vocab] -> each row's argmax [rows] (int64, on logits' device)."""
    if logits.is_cuda and layer_ops.triton is not None and logits.shape[0] > 0:
        return layer_ops.argmax_rows(logits)
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """logits: [len(seqs), vocab] float32 -> one token id per sequence."""
    greedy = greedy_tokens(logits).tolist()
    tokens = []
    for i, seq in enumerate(seqs):
        p = seq.sampling_params
        if p.greedy:
            tokens.append(greedy[i])
            continue
        row = logits[i] / p.temperature
        if p.top_k > 0:
            kth = torch.topk(row, min(p.top_k, row.numel())).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > p.top_p  # keep the smallest prefix reaching top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        tokens.append(int(torch.multinomial(probs, 1, generator=seq.generator)))
    return tokens


class Logprob(NamedTuple):
    """A token's log-probability and its rank among the vocabulary (1: the most likely), TensorRT-LLM's and
    vLLM's shape."""

    logprob: float
    rank: int


def logprobs_of(logits: torch.Tensor, targets: list[int], top: list[int]) -> list[dict[int, Logprob]]:
    """Row i's log-softmax at targets[i] and at its top[i] most likely tokens, as {token id: Logprob}, the target
    first. logits: [rows, vocab] (before any sampling setting)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = torch.tensor(targets, device=lp.device)
    picked = lp.gather(1, chosen[:, None])[:, 0]
    ranks = ((lp > picked[:, None]).sum(-1) + 1).tolist()
    best = lp.topk(max(top), dim=-1) if max(top) else None
    best_ids, best_lps = (best.indices.tolist(), best.values.tolist()) if best else ([], [])
    out = []
    for i, (target, lp_target, rank) in enumerate(zip(targets, picked.tolist(), ranks)):
        entry = {target: Logprob(lp_target, rank)}
        for r in range(top[i]):
            entry.setdefault(best_ids[i][r], Logprob(best_lps[i][r], r + 1))
        out.append(entry)
    return out
