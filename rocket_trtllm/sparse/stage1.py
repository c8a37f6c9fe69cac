"""Stage 1 (SnapKV++): which prompt tokens each KV head keeps after prefill."""

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F

Reduce = Optional[Callable[[torch.Tensor], torch.Tensor]]
LOGITS_BYTES = 64 << 20


def window_scores(
    q: torch.Tensor, k: torch.Tensor, window: int, kernel: int, scale: float, scope: str, all_reduce: Reduce = None
) -> torch.Tensor:
    """How much the last `window` queries attend to each earlier key, max-pooled: per KV head (`scope`
    "kv_head"), or once for the layer ("layer": each KV head's scores normalised to sum to 1, then added;
    under tensor parallelism `all_reduce` adds the other ranks' heads, so every rank keeps the same tokens).

    q: [q_heads, >= window, d] (the prompt's last queries); k: [kv_heads, n, d] -> [kv_heads or 1, n - window] float32
    """
    q_heads, d = q.shape[0], q.shape[2]
    kv_heads, n = k.shape[:2]
    group = q_heads // kv_heads
    qw = q[:, q.shape[1] - window :].float().view(kv_heads, group, window, d)
    # The window's queries see the whole prefix and, causally, the window itself.
    future = torch.arange(n, device=q.device)[None, :] > (n - window + torch.arange(window, device=q.device))[:, None]
    scores = torch.empty(kv_heads, n - window, device=q.device)
    # As many KV heads per product as keep its float32 logits under LOGITS_BYTES (all of them for an 8k prompt,
    # one at 128k): a short prompt's scores take a few launches, a long one's logits stay small.
    per = max(1, LOGITS_BYTES // (group * window * n * 4))
    for h in range(0, kv_heads, per):
        logits = torch.einsum("cgwd,cnd->cgwn", qw[h : h + per], k[h : h + per].float()).mul_(scale)
        probs = torch.softmax(logits.masked_fill_(future, float("-inf")), dim=-1)
        # SnapKV's vote, GQA-aware: summed over the window and over the group's query heads.
        scores[h : h + per] = probs[..., : n - window].sum(dim=(1, 2))
    if scope == "layer":
        scores = (scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-30)).sum(dim=0, keepdim=True)
        if all_reduce is not None:
            scores = all_reduce(scores)
    return F.max_pool1d(scores[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]


def keep_indices(
    q: torch.Tensor,
    k: torch.Tensor,
    window: int,
    kernel: int,
    budget: int,
    scale: float,
    scope: str,
    all_reduce: Reduce = None,
) -> torch.Tensor:
    """Kept token positions per KV head, ascending: the best `budget - window` prefix tokens, then the window
    (the same tokens for every KV head when `scope` is "layer").

    Ties (common after max-pooling) go to the earlier token. q: [q_heads, >= window, d] (the prompt's last
    queries: all of them, or those computed past a cached prefix); k: [kv_heads, n, d] -> [kv_heads, budget]
    int64 (n > budget)
    """
    kv_heads, n = k.shape[:2]
    scores = window_scores(q, k, window, kernel, scale, scope, all_reduce)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    prefix = torch.sort(order[:, : budget - window], dim=-1).values
    recent = torch.arange(n - window, n, device=k.device).expand(prefix.shape[0], window)
    return torch.cat([prefix, recent], dim=-1).expand(kv_heads, budget)


def gather_kept(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: [kv_heads, n, d]; idx: [kv_heads, m] -> [kv_heads, m, d]."""
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))
