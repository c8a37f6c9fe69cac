"""Stage 1 (SnapKV++): which prompt tokens each KV head keeps after prefill."""

import torch
import torch.nn.functional as F


def window_scores(
    q: torch.Tensor, k: torch.Tensor, window: int, kernel: int, scale: float, reduction: str
) -> torch.Tensor:
    """How much the last `window` queries attend to each earlier key, per KV head, max-pooled.

    `reduction` combines a query head's window rows: "max" (the most any one of them gives the key) or
    "sum" (SnapKV's vote); the GQA group's query heads are summed either way.
    q: [q_heads, n, d]; k: [kv_heads, n, d] -> [kv_heads, n - window] float32
    """
    q_heads, n, d = q.shape
    kv_heads = k.shape[0]
    qw = q[:, n - window :].float().view(kv_heads, q_heads // kv_heads, window, d)
    # The window's queries see the whole prefix and, causally, the window itself.
    future = torch.arange(n, device=q.device)[None, :] > (n - window + torch.arange(window, device=q.device))[:, None]
    scores = torch.empty(kv_heads, n - window, device=q.device)
    for h in range(kv_heads):  # one KV head at a time: a long prompt's float32 logits stay small
        logits = torch.einsum("gwd,nd->gwn", qw[h], k[h].float()) * scale
        probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
        prefix = probs[..., : n - window]
        per_head = prefix.amax(dim=1) if reduction == "max" else prefix.sum(dim=1)
        scores[h] = per_head.sum(dim=0)  # one choice per KV head: its query heads add up
    return F.max_pool1d(scores[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]


def keep_indices(
    q: torch.Tensor, k: torch.Tensor, window: int, kernel: int, budget: int, scale: float, reduction: str
) -> torch.Tensor:
    """Kept token positions per KV head, ascending: the best `budget - window` prefix tokens, then the window.

    Ties (common after max-pooling) go to the earlier token. q: [q_heads, n, d]; k: [kv_heads, n, d]
    -> [kv_heads, budget] int64 (n > budget)
    """
    n = k.shape[1]
    scores = window_scores(q, k, window, kernel, scale, reduction)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    prefix = torch.sort(order[:, : budget - window], dim=-1).values
    recent = torch.arange(n - window, n, device=k.device).expand(k.shape[0], window)
    return torch.cat([prefix, recent], dim=-1)


def gather_kept(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: [kv_heads, n, d]; idx: [kv_heads, m] -> [kv_heads, m, d]."""
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))
