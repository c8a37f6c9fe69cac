"""Stage 2 prediction: score KT pages (per-page key min/max) against the query, then pick the top pages.

Each query head estimates its logit on every page from the page's key bounds; a KV head ranks its pages by the
sum over its query heads of their softmax weights over those estimates (computed in log space, so far pages do not
tie at zero). Summing the raw estimates instead lets one head's large logits drown the others': on the shipped
model that loses the question's pages (docs/log/eval.md).

The estimate, as TensorRT-LLM's backend and the paper compute it (`sign_select`): per channel ONE bound, the max where
the query summed over the GQA group is positive and the min elsewhere, over the group's top-r channels (the largest
|q| summed over the group; all of them when topr >= head_dim). Without `sign_select`, Quest's upper bound
sum_c max(q_c*min_c, q_c*max_c) (both bounds of every kept channel). `temperature`: each head's softmax at SparQ's
sqrt(d * |q_hat|_1 / |q|_1) instead of sqrt(d) (the official implementation).

The KT layout (`pack_kt`): per layer `[groups, kv_heads, head_dim, 2, run]`, plane 0 the min and 1 the max, `run`
the pages of `group` consecutive KV block ids (block b's pages at columns (b % group) * ppb ... of group b // group).
One channel's bound over a run of pages is one contiguous read of `run` elements (at least RUN_BYTES), so the scoring
kernel reads exactly the chosen bound of the chosen channels of each page, in whole DRAM sectors when a sequence's
blocks are consecutive ids (the block allocator prefers them).
"""

import torch

from ._triton import few_rows, gdc, pdl, require_triton, tl, triton

# The shortest run of one channel's bound the layout keeps contiguous: one 128-byte L2 line (16 KV blocks of 8 fp8
# pages). With 32-byte runs (4 blocks) the sign rule's bounds pass took 104.7 us at 124 requests on the H200, 4x the
# old both-bounds kernel's time per byte (55.5 us for twice the bytes): a run that small leaves each line's other half
# to the other bound, so the DRAM reads half-used lines. Line-sized runs: chosen after that run, not yet measured.
RUN_BYTES = 128


def kt_group(pages_per_block: int, element_size: int) -> int:
    """KV blocks whose pages share one run of the KT layout."""
    return max(1, RUN_BYTES // (pages_per_block * element_size))


def pack_kt(lo: torch.Tensor, hi: torch.Tensor, group: int) -> torch.Tensor:
    """Page-major bounds in the KT layout. lo, hi: [num_blocks, kv_heads, ppb, d] -> [ceil(num_blocks / group),
    kv_heads, d, 2, group * ppb] (blocks past num_blocks in the last group: zeros)."""
    n, heads, ppb, d = lo.shape
    groups = -(-n // group)
    kt = torch.zeros(groups * group, heads, d, 2, ppb, dtype=lo.dtype, device=lo.device)
    kt[:n, :, :, 0] = lo.transpose(-1, -2)
    kt[:n, :, :, 1] = hi.transpose(-1, -2)
    kt = kt.view(groups, group, heads, d, 2, ppb).permute(0, 2, 3, 4, 1, 5)
    return kt.contiguous().view(groups, heads, d, 2, group * ppb)


def check_kt(kt: torch.Tensor) -> None:
    """The kernels' assumption: each (group, KV head)'s [d, 2, run] is contiguous."""
    run = kt.shape[-1]
    if kt.dim() != 5 or kt.shape[-2] != 2 or kt.stride()[2:] != (2 * run, run, 1):
        raise ValueError(f"a KT layout [groups, kv_heads, d, 2, run] with contiguous rows, got {tuple(kt.shape)} "
                         f"strides {kt.stride()}")  # fmt: skip


def kt_columns(blocks: torch.Tensor, ppb: int, run: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where blocks' pages live in the KT layout: their group, and the column of each of their pages.
    blocks: [...] -> [...], [..., ppb]"""
    group = run // ppb
    blocks = blocks.long()
    cols = (blocks % group)[..., None] * ppb + torch.arange(ppb, device=blocks.device)
    return blocks // group, cols


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32}  # gathers move bits (the CPU has none for fp8)


def kt_block_pages(kt: torch.Tensor, blocks: torch.Tensor, ppb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The min and max of every page of the given KV blocks: kt: [groups, kv_heads, d, 2, run]; blocks: [...]
    -> lo, hi: [..., kv_heads, ppb, d]"""
    groups, cols = kt_columns(blocks, ppb, kt.shape[-1])
    x = kt.view(_BITS[kt.element_size()])[groups]  # [..., kv_heads, d, 2, run]
    idx = cols[..., None, None, None, :].expand(*x.shape[:-1], ppb)
    x = x.gather(-1, idx).transpose(-1, -3).view(kt.dtype)  # [..., kv_heads, ppb, 2, d]
    return x[..., 0, :], x[..., 1, :]


def kt_write(kt: torch.Tensor, blocks: torch.Tensor, pages: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
             ppb: int) -> None:  # fmt: skip
    """Store pages' bounds: blocks: [n]; pages: [n, m] (page indices within each block); lo, hi: [n, m, kv_heads, d]."""
    groups, cols = kt_columns(blocks, ppb, kt.shape[-1])
    col = cols.gather(1, pages.long())  # [n, m]
    bits = kt.view(_BITS[kt.element_size()])
    bits[groups[:, None], :, :, 0, col] = lo.to(kt.dtype).view(bits.dtype)
    bits[groups[:, None], :, :, 1, col] = hi.to(kt.dtype).view(bits.dtype)


def kt_head_bounds_ref(
    q: torch.Tensor,
    kt: torch.Tensor,
    block_tables: torch.Tensor,
    num_pages: torch.Tensor,
    topr: int,
    ppb: int,
    sign_select: bool = True,
) -> torch.Tensor:
    """Each query head's estimate of its logit on each page (the module docstring's two estimates).

    Both are sums of relu(q)*hi + min(q, 0)*lo type terms, so they are two small matmuls; with topr < head_dim only
    the group's top-r channels count (`topr_query`).
    q: [batch, q_heads, d]; kt: [groups, kv_heads, d, 2, run]; block_tables: [batch, max_blocks]; num_pages: [batch]
    -> [batch, q_heads, max_blocks * ppb] (-inf past each sequence's last page)
    """
    batch, q_heads, _ = q.shape
    qg = topr_query(q, kt.shape[1], topr)
    lo, hi = (_pages(x).nan_to_num() for x in kt_block_pages(kt, block_tables, ppb))
    if sign_select:  # one bound per channel, by the sign of the group's summed query (TensorRT-LLM's > 0)
        up = qg.sum(2, keepdim=True) > 0
        q_hi, q_lo = qg * up, qg * ~up
    else:
        q_hi, q_lo = qg.clamp(min=0), qg.clamp(max=0)
    bounds = torch.einsum("bhgd,bhpd->bhgp", q_hi, hi) + torch.einsum("bhgd,bhpd->bhgp", q_lo, lo)
    bounds = bounds.reshape(batch, q_heads, -1)
    pages = torch.arange(bounds.shape[-1], device=q.device)
    return bounds.masked_fill(pages[None, None, :] >= num_pages[:, None, None], float("-inf"))


def topr_query(q: torch.Tensor, kv_heads: int, topr: int) -> torch.Tensor:
    """The query restricted to its group's top-r channels (the largest |q| summed over the group).

    q: [batch, q_heads, d] -> [batch, kv_heads, group, d] float32
    """
    batch, q_heads, d = q.shape
    qg = q.float().view(batch, kv_heads, q_heads // kv_heads, d)
    if topr < d:
        channels = qg.abs().sum(2).topk(topr, dim=-1).indices
        keep = torch.zeros_like(qg[:, :, 0], dtype=torch.bool).scatter_(-1, channels, True)
        qg = qg * keep[:, :, None, :]
    return qg


def per_head_scales(head_dim: int, topr: int, temperature: bool) -> bool:
    """Whether `head_scales` differ by head (SparQ's temperature over fewer channels than the head has)."""
    return temperature and topr < head_dim


def head_scales(q: torch.Tensor, kv_heads: int, topr: int, temperature: bool) -> torch.Tensor:
    """Each query head's softmax scale over its page estimates: 1/sqrt(d), or with `temperature`
    1/sqrt(d * |q_hat|_1 / |q|_1) (SparQ's correction for the channels top-r drops). -> [batch, q_heads] float32"""
    batch, q_heads, d = q.shape
    if not per_head_scales(d, topr, temperature):
        return torch.full((batch, q_heads), d**-0.5, device=q.device)
    kept = topr_query(q, kv_heads, topr).reshape(batch, q_heads, d).abs().sum(-1)
    share = kept / q.float().abs().sum(-1).clamp_min(1e-30)
    return (d * share.clamp_min(1e-30)) ** -0.5


def group_page_scores(bounds: torch.Tensor, kv_heads: int, scale: "float | torch.Tensor") -> torch.Tensor:
    """log sum over a KV head's query heads of softmax(scale * bounds) over the pages.

    bounds: [batch, q_heads, max_pages] (-inf past each sequence); scale: a float or [batch, q_heads]
    -> [batch, kv_heads, max_pages] (same -inf)
    """
    batch, q_heads, max_pages = bounds.shape
    if isinstance(scale, torch.Tensor):
        scale = scale[..., None]
    weights = torch.log_softmax(bounds * scale, dim=-1)
    return weights.view(batch, kv_heads, q_heads // kv_heads, max_pages).logsumexp(2)


def kt_page_scores_ref(
    q: torch.Tensor,
    kt: torch.Tensor,
    block_tables: torch.Tensor,
    num_pages: torch.Tensor,
    topr: int,
    ppb: int,
    sign_select: bool = True,
    temperature: bool = False,
) -> torch.Tensor:
    """Each KV head's page scores (`group_page_scores` of `kt_head_bounds_ref` at `head_scales`).

    -> [batch, kv_heads, max_blocks * ppb] (-inf past each sequence's last page)
    """
    bounds = kt_head_bounds_ref(q, kt, block_tables, num_pages, topr, ppb, sign_select)
    kv_heads = kt.shape[1]
    return group_page_scores(bounds, kv_heads, head_scales(q, kv_heads, topr, temperature))


def _pages(x: torch.Tensor) -> torch.Tensor:
    # [batch, max_blocks, kv_heads, ppb, d] -> [batch, kv_heads, max_blocks * ppb, d] in float32
    b, nb, h, ppb, d = x.shape
    return x.float().permute(0, 2, 1, 3, 4).reshape(b, h, nb * ppb, d)


def select_pages_ref(scores: torch.Tensor, num_pages: torch.Tensor, topk: int) -> torch.Tensor:
    """The `topk` best pages plus each sequence's newest page (the one being written).

    scores: [batch, kv_heads, max_pages] (-inf past each sequence) -> pages [batch, kv_heads,
    min(topk + 1, max_pages)]; a sequence with fewer pages also gets some past its end, which
    `sparse_decode` masks.
    """
    last = (num_pages - 1).long()[:, None, None].expand(-1, scores.shape[1], 1)
    scores = scores.scatter(-1, last, float("inf"))
    return scores.topk(min(topk + 1, scores.shape[-1]), dim=-1, sorted=False).indices


def predict_pages_ref(
    q: torch.Tensor,
    kt: torch.Tensor,
    block_tables: torch.Tensor,
    num_pages: torch.Tensor,
    topr: int,
    topk: int,
    ppb: int,
    sign_select: bool = True,
    temperature: bool = False,
) -> torch.Tensor:
    """Stage 2's prediction: score every page from the KT cache, keep the best `topk` and the newest."""
    scores = kt_page_scores_ref(q, kt, block_tables, num_pages, topr, ppb, sign_select, temperature)
    return select_pages_ref(scores, num_pages, topk)


# ---- Triton: two passes over the pages, each program owning a chunk of one (sequence, KV head).
# Pass 1 bounds every query head of the group at once (tensor-core dots on the fp8 KT tiles) and
# keeps each head's running softmax max and sum over its chunk; pass 2 merges those partials into
# each head's log-normaliser and writes the group's page scores (`group_page_scores`).

if triton is not None:

    @triton.jit
    def _kt_bounds_kernel(
        q_ptr, kt_ptr, tables_ptr, pages_ptr, out_ptr, part_m_ptr, part_l_ptr, scales_ptr, scale_value,
        sq_b, sq_h, s_grp, s_h, st_b, so_b, so_h, max_pages, chunk, n_chunks,
        G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, TOPR: tl.constexpr, PPB: tl.constexpr,
        GROUP: tl.constexpr, BLOCK_P: tl.constexpr, DOT: tl.constexpr, SIGN: tl.constexpr, PER_HEAD: tl.constexpr,
        FOLD: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        gdc(PDL)
        b = tl.program_id(0)
        h = tl.program_id(1)
        c = tl.program_id(2)
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D)
        RUN: tl.constexpr = GROUP * PPB
        n_pages = tl.minimum(tl.load(pages_ptr + b), max_pages)  # never past the table
        start = c * chunk
        end = tl.minimum(start + chunk, n_pages)
        keep = d < D
        q = tl.load(q_ptr + b * sq_b + (h * G + g)[:, None] * sq_h + d[None, :], mask=g[:, None] < G, other=0.0)
        q = q.to(tl.float32)
        if TOPR < D:
            # topr_query's channel choice, in registers: a channel is kept when fewer than TOPR
            # channels have a larger |q| summed over the group (ties go to the lower channel).
            a = tl.sum(tl.abs(q), 0)
            ahead = (a[None, :] > a[:, None]) | ((a[None, :] == a[:, None]) & (d[None, :] < d[:, None]))
            keep = tl.sum(ahead.to(tl.int32), 1) < TOPR
            q = tl.where(keep[None, :], q, 0.0)
        up = tl.sum(q, 0) > 0  # the sign rule's bound per channel: the max where the group's query is positive
        if SIGN:
            plane = tl.where(up, RUN, 0)
            q_one = q.to(DOT)
        else:
            qp = tl.maximum(q, 0.0).to(DOT)
            qn = tl.minimum(q, 0.0).to(DOT)
        scale = _head_scale(scales_ptr, scale_value, b, h, G, G_PAD, PER_HEAD)
        m = tl.full([G_PAD], -1e30, tl.float32)  # finite, so pages at -inf add exp(-inf) = 0
        total = tl.zeros([G_PAD], tl.float32)
        rows = out_ptr + b * so_b + (h * G + g)[:, None] * so_h
        # Only the sequence's own pages: a graph's table is as wide as its bucket (1024 pages for 2.3k tokens), and
        # the pages past the end get -inf scores from the second pass without bounds.
        for p0 in range(start, end, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            if SIGN:  # the chosen bound of the kept channels only
                one = _kt_tile(kt_ptr, tables_ptr, b, h, p0, end, s_grp, s_h, st_b, plane, keep, PPB, GROUP, D, BLOCK_P)
                bound = _dot(q_one, one.to(DOT))
            else:
                lo = _kt_tile(kt_ptr, tables_ptr, b, h, p0, end, s_grp, s_h, st_b, 0, keep, PPB, GROUP, D, BLOCK_P)
                hi = _kt_tile(kt_ptr, tables_ptr, b, h, p0, end, s_grp, s_h, st_b, RUN, keep, PPB, GROUP, D, BLOCK_P)
                bound = _dot(qp, hi.to(DOT)) + _dot(qn, lo.to(DOT))
            if FOLD:
                m, total = _fold(bound, p, n_pages, max_pages, rows, scale, m, total, G)
            else:
                tl.store(rows + p[None, :], bound, mask=(g[:, None] < G) & (p[None, :] < end))
        if FOLD:
            part = (b * G * tl.num_programs(1) + h * G + g) * n_chunks + c
            tl.store(part_m_ptr + part, m, mask=g < G)
            tl.store(part_l_ptr + part, total, mask=g < G)

    @triton.jit
    def _fold(bound, p, n_pages, max_pages, rows, scale, m, total, G: tl.constexpr):
        # A tile's estimates [G_PAD, BLOCK_P] of pages p: stored (-inf past the sequence), and folded into each head's
        # running softmax max and sum.
        bound = tl.where((p < n_pages)[None, :], bound, float("-inf"))
        g = tl.arange(0, bound.shape[0])
        tl.store(rows + p[None, :], bound, mask=(g[:, None] < G) & (p[None, :] < max_pages))
        m_new = tl.maximum(m, tl.max(bound * scale[:, None], 1))
        total = total * tl.exp(m - m_new) + tl.sum(tl.exp(bound * scale[:, None] - m_new[:, None]), 1)
        return m_new, total

    @triton.jit
    def _dot(a, b):
        # float32 operands (tests) multiply exactly; fp16 and bf16 ones on the tensor cores as they are
        if a.dtype == tl.float32:
            return tl.dot(a, b, input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _kt_tile(kt_ptr, tables_ptr, b, h, p0, end, s_grp, s_h, st_b, plane, keep, PPB: tl.constexpr,
                 GROUP: tl.constexpr, D: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
        # KV head h's bounds of pages p0..p0+BLOCK_P as stored, [D, BLOCK_P]: channel c from plane `plane` (0: min,
        # RUN: max; a scalar or one per channel), zeros in channels not kept and in blocks starting at or past `end`
        # (a block's pages past the sequence's end hold stale values, which the caller masks). Loaded a block's pages
        # at a time: PPB contiguous elements of one channel's bound, which the compiler reads as one vector.
        RUN: tl.constexpr = GROUP * PPB
        NB: tl.constexpr = BLOCK_P // PPB
        d = tl.arange(0, D)
        j = tl.arange(0, PPB)
        bi = p0 // PPB + tl.arange(0, NB)  # the tile's blocks, by index in the block table
        live = bi * PPB < end
        blk = tl.load(tables_ptr + b * st_b + bi, mask=live, other=0).to(tl.int64)
        base = tl.multiple_of((blk // GROUP) * s_grp + h * s_h + (blk % GROUP) * PPB, PPB)  # [NB]
        rows = tl.multiple_of(d * 2 * RUN + plane, PPB)  # [D]
        at = kt_ptr + rows[:, None, None] + base[None, :, None] + j[None, None, :]
        tile = tl.load(at, mask=keep[:, None, None] & live[None, :, None], other=0.0)
        return tl.reshape(tile, (D, BLOCK_P))

    @triton.jit
    def _head_norms(
        part_m_ptr, part_l_ptr, scales_ptr, scale_value, b, h, n_chunks,
        G: tl.constexpr, G_PAD: tl.constexpr, C_PAD: tl.constexpr, PER_HEAD: tl.constexpr,
    ):  # fmt: skip
        # Each query head of KV head h: its log-normaliser, merged from the bounds pass's per-chunk partials, and its
        # softmax scale.
        g = tl.arange(0, G_PAD)
        cs = tl.arange(0, C_PAD)
        part = (b * G * tl.num_programs(1) + h * G + g)[:, None] * n_chunks + cs[None, :]
        ok = (g[:, None] < G) & (cs[None, :] < n_chunks)
        pm = tl.load(part_m_ptr + part, mask=ok, other=-1e30)
        pl = tl.load(part_l_ptr + part, mask=ok, other=0.0)
        top = tl.max(pm, 1)
        lse = top + tl.log(tl.sum(pl * tl.exp(pm - top[:, None]), 1))
        return lse, _head_scale(scales_ptr, scale_value, b, h, G, G_PAD, PER_HEAD)

    @triton.jit
    def _head_scale(scales_ptr, scale_value, b, h, G: tl.constexpr, G_PAD: tl.constexpr, PER_HEAD: tl.constexpr):
        # Each query head of KV head h: its softmax scale.
        g = tl.arange(0, G_PAD)
        if PER_HEAD:
            return tl.load(scales_ptr + b * tl.num_programs(1) * G + h * G + g, mask=g < G, other=1.0)
        return tl.full([G_PAD], scale_value, tl.float32)

    @triton.jit
    def _group_score(bound, scale, lse, heads):
        # Pages' scores for a KV head: the log of its query heads' softmax weights summed ([G_PAD, P] bounds -> [P]).
        w = tl.where(heads, bound * scale[:, None] - lse[:, None], float("-inf"))
        w_max = tl.max(w, 0)
        return w_max + tl.log(tl.sum(tl.exp(w - w_max[None, :]), 0))

    @triton.jit
    def _group_scores_kernel(
        bounds_ptr, part_m_ptr, part_l_ptr, pages_ptr, out_ptr, scales_ptr, scale_value,
        sb_b, sb_h, so_b, so_h, max_pages, chunk, n_chunks,
        G: tl.constexpr, G_PAD: tl.constexpr, C_PAD: tl.constexpr, BLOCK_P: tl.constexpr, NEWEST: tl.constexpr,
        PER_HEAD: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        gdc(PDL)
        b = tl.program_id(0)
        h = tl.program_id(1)
        g = tl.arange(0, G_PAD)
        heads = g[:, None] < G
        lse, scale = _head_norms(part_m_ptr, part_l_ptr, scales_ptr, scale_value, b, h, n_chunks, G, G_PAD, C_PAD,
                                 PER_HEAD)  # fmt: skip
        n_pages = tl.load(pages_ptr + b)
        start = tl.program_id(2) * chunk
        for p0 in range(start, tl.minimum(start + chunk, max_pages), BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            bound = tl.load(bounds_ptr + b * sb_b + (h * G + g)[:, None] * sb_h + p[None, :],
                            mask=heads & (p[None, :] < n_pages), other=0.0)  # fmt: skip
            score = tl.where(p < n_pages, _group_score(bound, scale, lse, heads), float("-inf"))
            if NEWEST:
                score = tl.where(p == n_pages - 1, float("inf"), score)
            tl.store(out_ptr + b * so_b + h * so_h + p, score, mask=p < max_pages)

    @triton.jit
    def _select_kernel(
        scores_ptr, pages_ptr, out_ptr, s_b, s_h, o_b, o_h, k, BLOCK: tl.constexpr, K_PAD: tl.constexpr,
        ONE_BLOCK: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        gdc(PDL)
        # One program per (sequence, KV head): the k best of its first n scores, by bisection on the
        # threshold over the scores' bits read as order-preserving integers, scanning only the n pages
        # the sequence has (torch.topk scans the whole table width with a multi-pass radix select).
        b = tl.program_id(0)
        h = tl.program_id(1)
        n = tl.load(pages_ptr + b).to(tl.int32)
        row = scores_ptr + b * s_b + h * s_h
        out = out_ptr + b * o_b + h * o_h
        if n <= k:  # every page (and some past the end, which the decode kernel masks)
            j = tl.arange(0, K_PAD)
            tl.store(out + j, j.to(tl.int64), mask=j < k)
        elif ONE_BLOCK:  # the row held in registers; the search starts from its own range
            p = tl.arange(0, BLOCK)
            valid = p < n
            _select_row(_order_key(tl.load(row + p, mask=valid, other=0.0)), valid, p, out, k)
        else:
            lo = tl.full([], -2147483648, tl.int64)  # count(key >= lo) >= k always
            hi = tl.full([], 2147483647, tl.int64)  # count(key > hi) < k always
            while lo < hi:
                mid = lo + (hi - lo + 1) // 2
                cnt = 0
                for p0 in range(0, n, BLOCK):
                    p = p0 + tl.arange(0, BLOCK)
                    key = _order_key(tl.load(row + p, mask=p < n, other=0.0))
                    cnt += tl.sum(((key >= mid) & (p < n)).to(tl.int32), 0)
                exact = cnt == k  # the k scores >= mid are the answer: stop with lo = hi = mid - 1
                lo = tl.where(exact, mid - 1, tl.where(cnt > k, mid, lo))
                hi = tl.where(exact, mid - 1, tl.where(cnt > k, hi, mid - 1))
            # Every page above the threshold, then pages equal to it (ties, in page order) up to k.
            above = 0
            for p0 in range(0, n, BLOCK):
                p = p0 + tl.arange(0, BLOCK)
                sel = ((_order_key(tl.load(row + p, mask=p < n, other=0.0)) > lo) & (p < n)).to(tl.int32)
                tl.store(out + above + tl.cumsum(sel, 0) - 1, p.to(tl.int64), mask=sel > 0)
                above += tl.sum(sel, 0)
            ties = 0
            for p0 in range(0, n, BLOCK):
                p = p0 + tl.arange(0, BLOCK)
                sel = ((_order_key(tl.load(row + p, mask=p < n, other=0.0)) == lo) & (p < n)).to(tl.int32)
                rank = ties + tl.cumsum(sel, 0) - 1
                tl.store(out + above + rank, p.to(tl.int64), mask=(sel > 0) & (above + rank < k))
                ties += tl.sum(sel, 0)

    @triton.jit
    def _select_row(key, valid, p, out, k):
        # The k largest of a row's keys (order-preserving integers) held in registers, by bisection on the threshold
        # from the row's own key range, then their page numbers written to `out`: every page above the threshold,
        # then pages equal to it (ties, in page order) up to k.
        lo = tl.min(tl.where(valid, key, 2147483647), 0).to(tl.int64)
        hi = tl.max(tl.where(valid, key, -2147483648), 0).to(tl.int64)
        while lo < hi:
            mid = lo + (hi - lo + 1) // 2
            cnt = tl.sum(((key >= mid) & valid).to(tl.int32), 0)
            exact = cnt == k
            lo = tl.where(exact, mid - 1, tl.where(cnt > k, mid, lo))
            hi = tl.where(exact, mid - 1, tl.where(cnt > k, hi, mid - 1))
        sel = ((key > lo) & valid).to(tl.int32)
        tl.store(out + tl.cumsum(sel, 0) - 1, p.to(tl.int64), mask=sel > 0)
        above = tl.sum(sel, 0)
        tie = ((key == lo) & valid).to(tl.int32)
        rank = tl.cumsum(tie, 0) - 1
        tl.store(out + above + rank, p.to(tl.int64), mask=(tie > 0) & (above + rank < k))

    @triton.jit
    def _score_select_kernel(
        bounds_ptr, part_m_ptr, part_l_ptr, pages_ptr, out_ptr, scales_ptr, scale_value,
        sb_b, sb_h, o_b, o_h, max_pages, n_chunks, k,
        G: tl.constexpr, G_PAD: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr, K_PAD: tl.constexpr,
        PER_HEAD: tl.constexpr, FOLD: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        gdc(PDL)
        # `_group_scores_kernel` (with the newest page at +inf) and `_select_kernel` for a row that fits one block,
        # in one program per (sequence, KV head): the group's page scores never leave registers. FOLD: each head's
        # log-normaliser from the bounds pass's partials; else from the row itself, which this program holds.
        b = tl.program_id(0)
        h = tl.program_id(1)
        n = tl.minimum(tl.load(pages_ptr + b).to(tl.int32), max_pages)
        out = out_ptr + b * o_b + h * o_h
        if n <= k:  # every page (and some past the end, which the decode kernel masks)
            j = tl.arange(0, K_PAD)
            tl.store(out + j, j.to(tl.int64), mask=j < k)
        else:
            g = tl.arange(0, G_PAD)
            heads = g[:, None] < G
            p = tl.arange(0, BLOCK)
            valid = p < n
            bound = tl.load(bounds_ptr + b * sb_b + (h * G + g)[:, None] * sb_h + p[None, :],
                            mask=heads & valid[None, :], other=0.0)  # fmt: skip
            if FOLD:
                lse, scale = _head_norms(part_m_ptr, part_l_ptr, scales_ptr, scale_value, b, h, n_chunks, G, G_PAD,
                                         C_PAD, PER_HEAD)  # fmt: skip
            else:
                scale = _head_scale(scales_ptr, scale_value, b, h, G, G_PAD, PER_HEAD)
                logits = tl.where(heads & valid[None, :], bound * scale[:, None], -1e30)
                top = tl.max(logits, 1)
                lse = top + tl.log(tl.sum(tl.exp(logits - top[:, None]), 1))
            score = _group_score(bound, scale, lse, heads)
            # The newest page (always read) written last; the others searched over their own key range, which the
            # newest page's +inf would widen by a few bisection steps.
            _select_row(_order_key(score), valid & (p != n - 1), p, out, k - 1)
            tl.store(out + k - 1, (n - 1).to(tl.int64))

    @triton.jit
    def _order_key(score):
        # float32 -> int32 with the floats' order (a negative float's magnitude bits flipped)
        bits = score.to(tl.int32, bitcast=True)
        return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)

    # Dot operand types per KT dtype: fp8 and fp16 widen to fp16 exactly (a bf16 query rounds only
    # below fp16's normal range); fp32 (tests) stays fp32.
    _DOT = {torch.float8_e5m2: tl.float16, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
            torch.float32: tl.float32}  # fmt: skip


_BLOCK_P = 64  # pages per tile in the scores pass
BOUNDS_BLOCK_P = 64  # and in the bounds pass (a multiple of _BLOCK_P)
# The bounds pass's loop unpipelined: pipelined, Triton copies each fp8 tile into shared memory as stored (pages
# contiguous) and gathers the dot's operand from there a byte at a time (64 ld.shared.b8 a thread a tile in the sm_90
# PTX, `benchmarks/experiments/ptx_check.py`); unpipelined, it loads 8-byte vectors into registers, widens them there
# and stages the fp16 operand with vector stores. At 124 requests on the H200: 87.7 us a layer unpipelined against
# 111-145 us with 2 or 3 stages (the performance log).
BOUNDS_STAGES = 1
# Warps of a bounds program at larger batches, and with few rows (`few_rows`). At 124 requests (H200): 60.3 us on 2
# warps, 87.5 on 4, 113.6 on 8; at batch 1 the prediction (bounds, scores, selection) 9.6 us on 2, 10.2 on 4, 10.3 on 8
# with the normalisers in the selection (docs/log/benchmarks.md).
BOUNDS_WARPS = 2
BOUNDS_FEW_WARPS = 2


def _launch_bounds(q, kt, block_tables, num_pages, topr, ppb, sign_select=True, temperature=False, fold=True):  # noqa: ANN001, ANN202
    # fold: also each head's softmax max and sum over each chunk (part_m, part_l); else those are unused stand-ins
    require_triton()
    batch, q_heads, d = q.shape
    if d & (d - 1) or d < 16:
        raise ValueError(f"head_dim must be a power of two >= 16, got {d}")
    if q.stride(-1) != 1:
        q = q.contiguous()
    check_kt(kt)
    _, kv_heads, _, _, run = kt.shape
    group = q_heads // kv_heads
    max_pages = block_tables.shape[1] * ppb
    block_p = max(BOUNDS_BLOCK_P, ppb)  # a tile holds whole blocks' pages
    # Enough chunks to fill the GPU about twice (132 SMs on an H100).
    tiles = triton.cdiv(max_pages, block_p)
    chunks = max(1, min(tiles, triton.cdiv(264, batch * kv_heads)))
    chunk = triton.cdiv(tiles, chunks) * block_p
    n_chunks = triton.cdiv(max_pages, chunk)
    bounds = torch.empty(batch, q_heads, max_pages, device=q.device, dtype=torch.float32)
    if fold:
        part_m = torch.empty(batch, q_heads, n_chunks, device=q.device, dtype=torch.float32)
        part_l = torch.empty_like(part_m)
    else:
        part_m = part_l = bounds
    # A constant scale goes in as a float: no tensor for a CUDA graph to keep pointing at (q stands in for the
    # per-head tensor, which the kernels then never read).
    per_head = per_head_scales(d, topr, temperature)
    scales = (head_scales(q, kv_heads, topr, temperature).contiguous() if per_head else q, d**-0.5)
    few = few_rows(batch, kv_heads)
    _kt_bounds_kernel[(batch, kv_heads, n_chunks)](
        q, kt, block_tables, num_pages, bounds, part_m, part_l, *scales,
        q.stride(0), q.stride(1), kt.stride(0), kt.stride(1), block_tables.stride(0),
        bounds.stride(0), bounds.stride(1), max_pages, chunk, n_chunks,
        G=group, G_PAD=max(16, triton.next_power_of_2(group)), D=d, TOPR=min(topr, d), PPB=ppb, GROUP=run // ppb,
        BLOCK_P=block_p, DOT=_DOT[kt.dtype], SIGN=sign_select, PER_HEAD=per_head, FOLD=fold,
        num_warps=BOUNDS_FEW_WARPS if few else BOUNDS_WARPS, num_stages=BOUNDS_STAGES, **pdl(q),
    )  # fmt: skip
    return bounds, part_m, part_l, n_chunks, chunk, scales, per_head


def kt_head_bounds(q, kt, block_tables, num_pages, topr, ppb, sign_select=True):  # noqa: ANN001, ANN201
    """Triton version of `kt_head_bounds_ref` (same arguments and result), the top-r channel choice fused in."""
    bounds = _launch_bounds(q, kt, block_tables, num_pages, topr, ppb, sign_select, fold=False)[0]
    past = torch.arange(bounds.shape[-1], device=bounds.device) >= num_pages.to(bounds.device)[:, None]
    return bounds.masked_fill_(past[:, None, :], float("-inf"))  # the kernel bounds only each sequence's pages


def kt_page_scores(q, kt, block_tables, num_pages, topr, ppb, sign_select=True, temperature=False,  # noqa: ANN001, ANN201
                   newest=False):  # fmt: skip
    """Triton version of `kt_page_scores_ref` (same arguments and result); `newest=True` also scores
    each sequence's newest page +inf (as `select_pages_ref` does)."""
    bounds, part_m, part_l, n_chunks, chunk, scales, per_head = _launch_bounds(
        q, kt, block_tables, num_pages, topr, ppb, sign_select, temperature
    )
    return _launch_scores(bounds, part_m, part_l, num_pages, n_chunks, chunk, scales, per_head, kt.shape[1], newest)


def _launch_scores(bounds, part_m, part_l, num_pages, n_chunks, chunk, scales, per_head, kv_heads, newest):  # noqa: ANN001, ANN202
    batch, q_heads, max_pages = bounds.shape
    out = torch.empty(batch, kv_heads, max_pages, device=bounds.device, dtype=torch.float32)
    _group_scores_kernel[(batch, kv_heads, n_chunks)](
        bounds, part_m, part_l, num_pages, out, *scales,
        bounds.stride(0), bounds.stride(1), out.stride(0), out.stride(1), max_pages, chunk, n_chunks,
        G=q_heads // kv_heads, G_PAD=max(2, triton.next_power_of_2(q_heads // kv_heads)),
        C_PAD=max(2, triton.next_power_of_2(n_chunks)), BLOCK_P=_BLOCK_P, NEWEST=newest, PER_HEAD=per_head,
        **pdl(bounds),
    )  # fmt: skip
    return out


# Widest score rows `select_pages` takes: past it (a long sequence without stage 1, e.g. Quest at 128k) one
# program per row would scan too much, and torch's top-k is faster.
SELECT_MAX_PAGES = 4096
# At 124 requests of ~2.2k kept tokens on the H200, scores + selection took 16.4 us with the newest page set apart on
# 2 warps, 17.3 on 4, 20.0 on 8; with the newest in the search (its +inf in the key range) 20.2 / 21.6 / 26.1, and a
# radix search (8 passes of 4 bits) 104-610 us (docs/log/benchmarks.md).
SELECT_WARPS = 2
# With few rows (`few_rows`) more warps a program shorten the prediction's chain: at 32k batch 1 on the H100, RocketKV's
# step took 5.780 against 5.790 ms with 8 warps for scores and selection (16: 5.86; docs/log/benchmarks.md).
SELECT_FEW_WARPS = 8
SCORE_SELECT_MAX_PAGES = 1024  # widest rows `predict_pages` scores and selects in one kernel
# There, with few rows (`few_rows`), each head's log-normaliser comes from the row the selection holds in registers
# (1), not from per-chunk softmax partials the bounds pass folds tile by tile (0): at batch 1 on the H200 the
# prediction took 9.6 against 10.4-11.0 us a layer. At 124 requests the selection's own pass over the row cost 19 us
# more than the fold saved (96.6 against 77.2 us), so larger batches fold (docs/log/benchmarks.md).
NORMS_IN_SELECT = 1


def select_pages(scores: torch.Tensor, num_pages: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` best of each row's first num_pages[b] scores ([batch, kv_heads, max_pages] float32) -> indices
    [batch, kv_heads, k] int64 in no particular order; a row with at most k pages gets 0..k-1. The same set as
    `scores.topk(k)` when the scores past each row's pages are -inf and the k-th best is not tied."""
    require_triton()
    batch, kv_heads, max_pages = scores.shape
    if max_pages > SELECT_MAX_PAGES or scores.stride(-1) != 1:
        return scores.topk(k, dim=-1, sorted=False).indices
    out = torch.empty(batch, kv_heads, k, device=scores.device, dtype=torch.int64)
    block = min(1024, triton.next_power_of_2(max_pages))
    _select_kernel[(batch, kv_heads)](
        scores, num_pages, out, scores.stride(0), scores.stride(1), out.stride(0), out.stride(1), k,
        BLOCK=block, K_PAD=triton.next_power_of_2(k), ONE_BLOCK=max_pages <= block, num_warps=SELECT_WARPS,
        **pdl(scores),
    )  # fmt: skip
    return out


def predict_pages(q, kt, block_tables, num_pages, topr, topk, ppb, sign_select=True, temperature=False):  # noqa: ANN001, ANN201
    """Triton version of `predict_pages_ref`: the bounds pass, then the group's scores and the selection in one
    kernel when a row's pages fit one block (RocketKV's ~600 kept pages), else the scores pass and
    `select_pages`."""
    fused = block_tables.shape[1] * ppb <= SCORE_SELECT_MAX_PAGES
    fold = not (fused and NORMS_IN_SELECT and few_rows(q.shape[0], kt.shape[1]))
    bounds, part_m, part_l, n_chunks, chunk, scales, per_head = _launch_bounds(
        q, kt, block_tables, num_pages, topr, ppb, sign_select, temperature, fold
    )
    batch, q_heads, max_pages = bounds.shape
    kv_heads = kt.shape[1]
    k = min(topk + 1, max_pages)
    if not fused:
        scores = _launch_scores(bounds, part_m, part_l, num_pages, n_chunks, chunk, scales, per_head, kv_heads,
                                newest=True)  # fmt: skip
        return select_pages(scores, num_pages, k)
    out = torch.empty(batch, kv_heads, k, device=q.device, dtype=torch.int64)
    group = q_heads // kv_heads
    _score_select_kernel[(batch, kv_heads)](
        bounds, part_m, part_l, num_pages, out, *scales, bounds.stride(0), bounds.stride(1), out.stride(0),
        out.stride(1), max_pages, n_chunks, k,
        G=group, G_PAD=max(2, triton.next_power_of_2(group)), C_PAD=max(2, triton.next_power_of_2(n_chunks)),
        BLOCK=max(16, triton.next_power_of_2(max_pages)), K_PAD=triton.next_power_of_2(k), PER_HEAD=per_head,
        FOLD=fold, num_warps=SELECT_FEW_WARPS if few_rows(batch, kv_heads) else SELECT_WARPS, **pdl(bounds),
    )  # fmt: skip
    return out
