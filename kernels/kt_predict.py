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
    q_pos, q_neg = split_query(q, kt_min.shape[1], topr)
    lo = _pages(kt_min, block_tables)
    hi = _pages(kt_max, block_tables)
    scores = torch.einsum("bhd,bhpd->bhp", q_pos, hi.nan_to_num()) + torch.einsum(
        "bhd,bhpd->bhp", q_neg, lo.nan_to_num()
    )
    pages = torch.arange(scores.shape[-1], device=q.device)
    return scores.masked_fill(pages[None, None, :] >= num_pages[:, None, None], float("-inf"))


def split_query(q: torch.Tensor, kv_heads: int, topr: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The group's query restricted to its top-r channels, as sums of its positive and negative parts.

    q: [batch, q_heads, d] -> q_pos, q_neg: [batch, kv_heads, d] float32
    """
    batch, q_heads, d = q.shape
    qg = q.float().view(batch, kv_heads, q_heads // kv_heads, d)
    if topr < d:
        # The channels with the largest |q| over the group: one channel set per KV head.
        channels = qg.abs().sum(2).topk(topr, dim=-1).indices
        keep = torch.zeros_like(qg[:, :, 0], dtype=torch.bool).scatter_(-1, channels, True)
        qg = qg * keep[:, :, None, :]
    return qg.clamp(min=0).sum(2), qg.clamp(max=0).sum(2)


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


# ---- Triton: score every KT page of every sequence in one pass over the (fp8) KT cache.

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU-only install path keeps the torch references
    triton = None

if triton is not None:

    @triton.jit
    def _kt_score_kernel(
        qp_ptr, qn_ptr, lo_ptr, hi_ptr, tables_ptr, pages_ptr, out_ptr,
        s_blk, s_h, s_p, st_b, so_b, so_h, max_pages,
        D: tl.constexpr, PPB: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        h = tl.program_id(1)
        kv_heads = tl.num_programs(1)
        p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
        d = tl.arange(0, D)
        n_pages = tl.load(pages_ptr + b)
        ok = p < n_pages
        qp = tl.load(qp_ptr + (b * kv_heads + h) * D + d)
        qn = tl.load(qn_ptr + (b * kv_heads + h) * D + d)
        blk = tl.load(tables_ptr + b * st_b + p // PPB, mask=ok, other=0).to(tl.int64)
        off = blk * s_blk + h * s_h + (p % PPB) * s_p
        hi = tl.load(hi_ptr + off[:, None] + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        lo = tl.load(lo_ptr + off[:, None] + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        score = tl.sum(hi * qp[None, :] + lo * qn[None, :], 1)
        tl.store(out_ptr + b * so_b + h * so_h + p, tl.where(ok, score, float("-inf")), mask=p < max_pages)


def kt_page_scores(q, kt_min, kt_max, block_tables, num_pages, topr):  # noqa: ANN001, ANN201
    """Triton version of `kt_page_scores_ref` (same arguments and result)."""
    if triton is None:
        raise RuntimeError("Triton is not installed; use the torch path (attn_backend: VANILLA)")
    batch = q.shape[0]
    _, kv_heads, ppb, d = kt_min.shape
    q_pos, q_neg = split_query(q, kv_heads, topr)
    max_pages = block_tables.shape[1] * ppb
    out = torch.empty(batch, kv_heads, max_pages, device=q.device, dtype=torch.float32)
    block_p = 64
    _kt_score_kernel[(batch, kv_heads, triton.cdiv(max_pages, block_p))](
        q_pos.contiguous(), q_neg.contiguous(), kt_min, kt_max, block_tables, num_pages.to(torch.int32), out,
        kt_min.stride(0), kt_min.stride(1), kt_min.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), max_pages,
        D=d, PPB=ppb, BLOCK_P=block_p,
    )  # fmt: skip
    return out
