"""Stage 2 prediction: score KT pages (per-page key min/max) against the query, then pick the top pages."""

import torch


def kt_page_scores_ref(
    q: torch.Tensor,
    kt_min: torch.Tensor,
    kt_max: torch.Tensor,
    block_tables: torch.Tensor,
    num_pages: torch.Tensor,
    topr: int,
) -> torch.Tensor:
    """Upper bound of q.k over each page, summed over the GQA group: sum_c max(q_c*min_c, q_c*max_c).

    Uses max(q*lo, q*hi) = relu(q)*hi + min(q, 0)*lo, so the group sum is two small matmuls.
    q: [batch, q_heads, d]; kt_min, kt_max: [num_blocks, kv_heads, pages_per_block, d];
    block_tables: [batch, max_blocks]; num_pages: [batch] -> [batch, kv_heads, max_blocks * pages_per_block]
    (-inf past each sequence's last page)
    """
    batch, q_heads, d = q.shape
    kv_heads = kt_min.shape[1]
    qg = q.float().view(batch, kv_heads, q_heads // kv_heads, d)
    if topr < d:
        # The channels with the largest |q| over the group: one channel set per KV head.
        channels = qg.abs().sum(2).topk(topr, dim=-1).indices
        keep = torch.zeros_like(qg[:, :, 0], dtype=torch.bool).scatter_(-1, channels, True)
        qg = qg * keep[:, :, None, :]
    q_pos = qg.clamp(min=0).sum(2)  # [batch, kv_heads, d]
    q_neg = qg.clamp(max=0).sum(2)
    lo = _pages(kt_min, block_tables)
    hi = _pages(kt_max, block_tables)
    scores = torch.einsum("bhd,bhpd->bhp", q_pos, hi.nan_to_num()) + torch.einsum(
        "bhd,bhpd->bhp", q_neg, lo.nan_to_num()
    )
    pages = torch.arange(scores.shape[-1], device=q.device)
    return scores.masked_fill(pages[None, None, :] >= num_pages[:, None, None], float("-inf"))


def _pages(kt: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    # [num_blocks, kv_heads, ppb, d] -> [batch, kv_heads, max_blocks * ppb, d] in float32
    blocks = kt[block_tables.long()].float()
    b, nb, h, ppb, d = blocks.shape
    return blocks.permute(0, 2, 1, 3, 4).reshape(b, h, nb * ppb, d)


def select_pages_ref(scores: torch.Tensor, num_pages: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `topk` best pages plus each sequence's newest page (the one being written).

    scores: [batch, kv_heads, max_pages] -> (pages [batch, kv_heads, min(topk + 1, max_pages)], valid mask)
    """
    last = (num_pages - 1).long()[:, None, None].expand(-1, scores.shape[1], 1)
    scores = scores.scatter(-1, last, float("inf"))
    top = scores.topk(min(topk + 1, scores.shape[-1]), dim=-1)
    return top.indices, top.values > float("-inf")
