import pytest
import torch

from rocket_trtllm.kernels.cache_update import store_token_ref
from rocket_trtllm.kernels.kt_predict import (
    group_page_scores,
    kt_block_pages,
    kt_group,
    kt_head_bounds_ref,
    kt_page_scores_ref,
    pack_kt,
    predict_pages_ref,
    select_pages_ref,
)
from rocket_trtllm.runtime.kv_cache import KVCachePool, ModelShape
from rocket_trtllm.sparse.kt_cache import KTCache


def filled(shape, lens, block, page, gen):
    pool = KVCachePool(shape, num_blocks=64, tokens_per_block=block, dtype=torch.float32, device=torch.device("cpu"))
    pool.k.normal_(generator=gen)
    perm = torch.randperm(64, generator=gen)
    width = max(pool.blocks_for(n) for n in lens)
    tables = torch.stack([perm[i * width : (i + 1) * width] for i in range(len(lens))]).int()
    return pool, tables


@pytest.mark.parametrize("group,page,block", [(1, 4, 16), (4, 2, 8), (2, 8, 8)])
def test_page_score_bounds_true_max(group, page, block):
    gen = torch.Generator().manual_seed(group * 10 + page)
    shape = ModelShape(num_layers=1, num_heads=2 * group, num_kv_heads=2, head_dim=16)
    lens = [37, 9, 64]
    pool, tables = filled(shape, lens, block, page, gen)
    kt = KTCache(shape, pool, page, torch.float32)
    for i, n in enumerate(lens):
        kt.build(0, tables[i], n)
    q = torch.randn(len(lens), shape.num_heads, 16, generator=gen)
    num_pages = torch.tensor([-(-n // page) for n in lens])
    ppb = block // page
    bounds = kt_head_bounds_ref(q, kt.kt[0], tables, num_pages, 16, ppb, sign_select=False)  # Quest's upper bound
    scores = kt_page_scores_ref(q, kt.kt[0], tables, num_pages, 16, ppb)
    for b, n in enumerate(lens):
        k = pool.k[0][tables[b].long()].permute(1, 0, 2, 3).reshape(2, -1, 16)[:, :n]
        k = k.repeat_interleave(group, 0)  # each query head's KV head
        true = torch.einsum("hd,hnd->hn", q[b], k)  # q.k per query head and token
        for p in range(num_pages[b]):
            assert torch.all(bounds[b, :, p] >= true[:, p * page : (p + 1) * page].amax(-1) - 1e-4)
        assert torch.all(bounds[b, :, num_pages[b] :] == float("-inf"))
        assert torch.all(scores[b, :, num_pages[b] :] == float("-inf"))
        assert torch.all(scores[b, :, : num_pages[b]].isfinite())


def test_group_scores_keep_each_heads_best_page():
    # Head 0's logits are large, head 1's small: summing them would rank page 1 (head 0's runner-up)
    # above page 2 (head 1's clear best); the group's softmax weights keep both heads' best pages.
    bounds = torch.tensor([[[10.0, 9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0, float("-inf")]]])
    assert bounds.sum(1)[0].topk(2).indices.tolist() == [0, 1]
    scores = group_page_scores(bounds, kv_heads=1, scale=1.0)
    assert sorted(scores[0, 0].topk(2).indices.tolist()) == [0, 2]
    weights = bounds.softmax(-1).sum(1, keepdim=True)
    assert torch.allclose(scores.exp(), weights)


def test_decode_writes_equal_build():
    # Writing a sequence token by token (K/V and the newest KT page) ends where building it at once does.
    gen = torch.Generator().manual_seed(1)
    shape = ModelShape(num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8)
    lens = [13, 30]
    pool, tables = filled(shape, lens, 8, 4, gen)
    built = KTCache(shape, pool, 4, torch.float32)
    for i, n in enumerate(lens):
        built.build(0, tables[i], n)
    keys = [pool.k[0][tables[i].long()].permute(1, 0, 2, 3).reshape(2, -1, 8)[:, :n] for i, n in enumerate(lens)]
    k_cache, v_cache = torch.full_like(pool.k[0], float("nan")), torch.zeros_like(pool.v[0])
    grown = KTCache(shape, pool, 4, torch.float32)
    for step in range(1, max(lens) + 1):
        rows = [i for i, n in enumerate(lens) if step <= n]
        k_new = torch.stack([keys[i][:, step - 1] for i in rows])
        store_token_ref(k_new, k_new, k_cache, v_cache, tables[rows], torch.tensor([step] * len(rows)),
                        grown.kt[0], 4)  # fmt: skip
    for i, n in enumerate(lens):
        blocks = tables[i, : pool.blocks_for(n)].long()
        pages = -(-n // 4)
        for a, b in zip(kt_block_pages(built.kt[0], blocks, 2), kt_block_pages(grown.kt[0], blocks, 2)):
            a, b = (x.permute(1, 0, 2, 3).reshape(2, -1, 8)[:, :pages] for x in (a, b))
            assert torch.equal(a, b)
        got = k_cache[blocks].permute(1, 0, 2, 3).reshape(2, -1, 8)[:, :n]
        assert torch.equal(got, keys[i])


def test_topr_keeps_largest_channels():
    gen = torch.Generator().manual_seed(2)
    shape = ModelShape(num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
    pool, tables = filled(shape, [16], 16, 4, gen)
    kt = KTCache(shape, pool, 4, torch.float32)
    kt.build(0, tables[0], 16)
    q = torch.zeros(1, 2, 8)
    q[0, :, 3] = 5.0
    q[0, 0, 1] = 0.1
    full = kt_page_scores_ref(q, kt.kt[0], tables, torch.tensor([4]), 8, 4)
    one = kt_page_scores_ref(q, kt.kt[0], tables, torch.tensor([4]), 1, 4)
    only3 = q.clone()
    only3[0, 0, 1] = 0
    want = kt_page_scores_ref(only3, kt.kt[0], tables, torch.tensor([4]), 8, 4)
    assert torch.allclose(one, want) and not torch.allclose(one, full)


def test_select_pages_keeps_newest_and_best():
    scores = torch.tensor([[[5.0, 1.0, 4.0, 0.0, 3.0, float("-inf")]]])
    pages = select_pages_ref(scores, torch.tensor([5]), topk=2)
    assert sorted(pages[0, 0].tolist()) == [0, 2, 4]
    short = scores.clone()
    short[..., 2:] = float("-inf")  # as kt_page_scores_ref masks pages past the sequence
    pages = select_pages_ref(short, torch.tensor([2]), topk=3)
    assert len(pages[0, 0]) == 4 and {0, 1} == {p for p in pages[0, 0].tolist() if p < 2}


@pytest.mark.parametrize("seed,width", [(0, 1500), (1, 1500), (2, 700), (3, 1024)])
def test_triton_select_pages_matches_topk(seed, width):
    """The selection kernel picks the set torch.topk picks among each row's pages (random scores with -inf past
    the pages, +inf on the newest, negative and positive values, rows in one block or several); with ties at the
    threshold, k pages all scoring at least the k-th best; a row with at most k pages gets them all."""
    from rocket_trtllm.kernels.kt_predict import select_pages

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(seed)
    batch, heads, k = 3, 2, 9  # rows wider than one 1024-page block, and rows held in one
    num_pages = torch.tensor([width - 200, 6, 9 + seed], dtype=torch.int32)
    scores = torch.randn(batch, heads, width, generator=gen) * 10.0 ** torch.randint(-3, 3, (1,), generator=gen)
    scores.masked_fill_(torch.arange(width) >= num_pages[:, None, None], float("-inf"))
    scores[:, :, 0] = float("inf")
    got = select_pages(scores.to(device), num_pages.to(device), k).cpu()
    assert got.shape == (batch, heads, k)
    for b in range(batch):
        for h in range(heads):
            if num_pages[b] <= k:
                assert sorted(got[b, h].tolist()) == list(range(k))
            else:
                want = scores[b, h].topk(k).indices.sort().values
                assert torch.equal(got[b, h].sort().values, want)
    ties = torch.zeros(1, 1, 40)
    ties[0, 0, :5] = 2.0
    ties[0, 0, 30:] = float("-inf")
    got = select_pages(ties.to(device), torch.tensor([30], dtype=torch.int32, device=device), 8).cpu()[0, 0]
    assert len(set(got.tolist())) == 8 and set(range(5)) <= set(got.tolist()) and max(got.tolist()) < 30


def chosen(selected: torch.Tensor, num_pages: torch.Tensor) -> list:
    """Each row's selected pages that exist (a short row pads its selection with pages past its end)."""
    return [[sorted(p for p in row.tolist() if p < n) for row in heads] for heads, n in zip(selected, num_pages)]


def packed(lo, hi):
    """Page-major bounds [blocks, kv_heads, ppb, d] in the KT layout, as a KTCache of their dtype lays them out."""
    return pack_kt(lo, hi, kt_group(lo.shape[2], lo.element_size()))


def kt_case(dtype, device, seed, blocks=32, kv_heads=2, ppb=4, d=16, group=4, lens=(13, 40), contiguous=False):
    """Random bounds of `blocks` KV blocks in the KT layout, block tables (shuffled ids, or consecutive ones as the
    allocator prefers), page counts and a bf16-valued query."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.randn(blocks, kv_heads, ppb, d, generator=gen)
    hi = lo + torch.rand(blocks, kv_heads, ppb, d, generator=gen)
    width = -(-max(lens) // ppb)
    ids = torch.arange(blocks) if contiguous else torch.randperm(blocks, generator=gen)
    tables = ids[: width * len(lens)].view(len(lens), width).int()
    q = torch.randn(len(lens), kv_heads * group, d, generator=gen).bfloat16().float()  # a model's bf16 query
    kt = packed(lo.to(dtype), hi.to(dtype))
    return (t.to(device) for t in (q, kt, tables, torch.tensor(lens, dtype=torch.int32)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float8_e5m2, torch.float16])
@pytest.mark.parametrize("topr,group,lens,ppb", [(16, 4, (13, 40), 4), (5, 4, (13, 150), 8), (3, 1, (2, 70), 2),
                                                 (16, 8, (33, 64, 1), 8), (7, 8, (90,), 16)])  # fmt: skip
@pytest.mark.parametrize("sign_select", [True, False])
@pytest.mark.parametrize("rows", ["few", "many", "many, wide tiles"])
def test_triton_page_scores_match_reference(dtype, topr, group, lens, ppb, sign_select, rows, monkeypatch):
    """Against the references: GQA groups of 1, 4 and 8 query heads, fp8 and 16-bit KT, top-r below and at head_dim,
    2 to 16 pages a block, ragged lengths (a partial newest page); the sign rule's one bound and Quest's two; the
    bounds pass as a batch of few rows runs it and as a larger batch does (`FEW_ROWS` 0), also with 128-page tiles."""
    from rocket_trtllm.kernels import _triton, kt_predict
    from rocket_trtllm.kernels.kt_predict import kt_head_bounds, kt_page_scores, predict_pages

    if rows.startswith("many"):
        monkeypatch.setattr(_triton, "FEW_ROWS", 0)
    if rows.endswith("wide tiles"):
        monkeypatch.setattr(kt_predict, "BOUNDS_BLOCK_P", 128)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, kt, tables, pages = kt_case(dtype, device, topr + ppb, blocks=96, group=group, lens=lens, ppb=ppb)
    want = kt_head_bounds_ref(q, kt, tables, pages, topr, ppb, sign_select)
    got = kt_head_bounds(q, kt, tables, pages, topr, ppb, sign_select)
    assert torch.equal(got.isinf(), want.isinf())
    assert torch.allclose(got, want, atol=1e-4)
    want = kt_page_scores_ref(q, kt, tables, pages, topr, ppb, sign_select)
    got = kt_page_scores(q, kt, tables, pages, topr, ppb, sign_select)
    assert torch.equal(got.isinf(), want.isinf())
    assert torch.allclose(got, want, atol=1e-4)
    want = predict_pages_ref(q, kt, tables, pages, topr, 6, ppb, sign_select)
    assert chosen(predict_pages(q, kt, tables, pages, topr, 6, ppb, sign_select), pages) == chosen(want, pages)


def test_sign_rule_reads_one_bound_of_the_kept_channels():
    """The sign rule's estimate depends only on the bound it picks of each kept channel: poisoning the other bound
    (NaN) and the channels top-r drops changes nothing, in the reference and the kernel."""
    from rocket_trtllm.kernels.kt_predict import kt_page_scores

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(11)
    blocks, kv_heads, ppb, d, topr = 24, 2, 4, 16, 5
    lo = torch.randn(blocks, kv_heads, ppb, d, generator=gen)
    hi = lo + torch.rand(lo.shape, generator=gen)
    q = torch.randn(2, kv_heads * 4, d, generator=gen)
    tables = torch.randperm(blocks, generator=gen)[:16].view(2, 8).int()
    pages = torch.tensor([29, 17], dtype=torch.int32)
    qg = q.view(2, kv_heads, 4, d)
    kept = qg.abs().sum(2).topk(topr, -1).indices  # [batch, kv_heads, topr]
    up = qg.sum(2) > 0  # [batch, kv_heads, d]
    want = kt_page_scores_ref(q, packed(lo, hi), tables, pages, topr, ppb)
    bad_lo, bad_hi = lo.clone(), hi.clone()
    for b in range(2):
        for h in range(kv_heads):
            unused = torch.ones(d, dtype=torch.bool)
            unused[kept[b, h]] = False
            rows = tables[b].long()
            bad_lo[rows, h] = bad_lo[rows, h].masked_fill(unused | up[b, h], float("nan"))
            bad_hi[rows, h] = bad_hi[rows, h].masked_fill(unused | ~up[b, h], float("nan"))
    poisoned = packed(bad_lo, bad_hi)
    assert torch.allclose(kt_page_scores_ref(q, poisoned, tables, pages, topr, ppb), want, atol=1e-5)
    got = kt_page_scores(q.to(device), poisoned.to(device), tables.to(device), pages.to(device), topr, ppb)
    assert torch.allclose(got.cpu(), want, atol=1e-4)


@pytest.mark.parametrize("sign_select,temperature", [(True, False), (False, True), (True, True)])
def test_triton_official_variant_matches_reference(sign_select, temperature):
    from rocket_trtllm.kernels.kt_predict import kt_page_scores, predict_pages

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, kt, tables, pages = kt_case(torch.float32, device, 3, blocks=10, lens=(13, 6))
    want = kt_page_scores_ref(q, kt, tables, pages, 8, 4, sign_select, temperature)
    got = kt_page_scores(q, kt, tables, pages, 8, 4, sign_select, temperature)
    assert torch.equal(got.isinf(), want.isinf())
    assert torch.allclose(got, want, atol=1e-4)
    want = predict_pages_ref(q, kt, tables, pages, 8, 3, 4, sign_select, temperature)
    assert chosen(predict_pages(q, kt, tables, pages, 8, 3, 4, sign_select, temperature), pages) == chosen(want, pages)


@pytest.mark.parametrize("path", ["scores-in-selection", "scores-in-selection, norms folded by the bounds pass",
                                  "scores-then-selection"])  # fmt: skip
def test_predict_pages_scores_and_selects_in_one_kernel(path, monkeypatch):
    """predict_pages scores the group's pages and selects in one kernel when a row fits a block (each head's softmax
    normaliser from the row it holds, or from the bounds pass's partials), or runs the scores pass and then
    select_pages: the same pages either way, the newest always among them, a row with at most k pages given all of
    them."""
    from rocket_trtllm.kernels import kt_predict
    from rocket_trtllm.kernels.kt_predict import kt_page_scores, predict_pages, select_pages

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if path == "scores-then-selection":
        monkeypatch.setattr(kt_predict, "SCORE_SELECT_MAX_PAGES", 0)
    monkeypatch.setattr(kt_predict, "NORMS_IN_SELECT", int(not path.endswith("bounds pass")))
    q, kt, tables, pages = kt_case(torch.float32, device, seed=7, blocks=128, lens=(150, 5, 61))
    got = predict_pages(q, kt, tables, pages, 16, 5, 4).cpu()
    scores = kt_page_scores(q, kt, tables, pages, 16, 4, newest=True)
    want = select_pages(scores, pages, 6).cpu()
    assert chosen(got, pages.cpu()) == chosen(want, pages.cpu())
    newest = (pages.cpu() - 1)[:, None]
    assert (got == newest[:, :, None]).any(-1).all()
    assert chosen(got, pages.cpu())[1] == [list(range(5))] * got.shape[1]  # 5 pages, k = 6: all of them


def test_predict_pages_breaks_ties_by_page():
    """Pages with the same KT min/max score the same: the selection takes the newest page and then the lowest
    pages, k distinct pages of the sequence."""
    from rocket_trtllm.kernels.kt_predict import predict_pages

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(1)
    lo = torch.randn(1, 2, 1, 16, generator=gen).expand(64, 2, 4, 16).contiguous()  # every page alike
    hi = lo + 1.0
    tables = torch.randperm(64, generator=gen)[:46].view(2, 23).int().to(device)
    pages = torch.tensor([90, 47], dtype=torch.int32, device=device)
    q = torch.randn(2, 8, 16, generator=gen).to(device)
    got = predict_pages(q, packed(lo, hi).to(device), tables, pages, 16, 7, 4).cpu()
    for row, n in zip(got, pages.tolist()):
        for pick in row.tolist():
            assert sorted(pick) == sorted([*range(7), n - 1])


def test_official_variant_properties():
    """One query head per KV head: the sign-selected bound is the two-sided bound. Every channel kept: SparQ's
    temperature is sqrt(d). Fewer channels: a sharper softmax (|q_hat|_1 < |q|_1)."""
    from rocket_trtllm.kernels.kt_predict import head_scales

    gen = torch.Generator().manual_seed(4)
    lo = torch.randn(6, 4, 2, 16, generator=gen)
    hi = lo + torch.rand(lo.shape, generator=gen)
    tables, pages = torch.arange(6).view(1, 6).int(), torch.tensor([12])
    q = torch.randn(1, 4, 16, generator=gen)
    kt = packed(lo, hi)
    both = kt_head_bounds_ref(q, kt, tables, pages, 16, 2, sign_select=False)
    assert torch.allclose(kt_head_bounds_ref(q, kt, tables, pages, 16, 2, sign_select=True), both)
    assert torch.allclose(head_scales(q, 4, 16, temperature=True), torch.full((1, 4), 0.25))
    assert (head_scales(q, 4, 4, temperature=True) > 0.25).all()


def test_kt_layout_round_trip_and_runs():
    """pack_kt / kt_block_pages are inverses; consecutive block ids share a run (one channel's bound over their pages
    is contiguous), of at least RUN_BYTES."""
    from rocket_trtllm.kernels.kt_predict import RUN_BYTES

    gen = torch.Generator().manual_seed(5)
    lo = torch.randn(20, 3, 8, 16, generator=gen).to(torch.float8_e5m2)
    hi = torch.randn(20, 3, 8, 16, generator=gen).to(torch.float8_e5m2)
    kt = packed(lo, hi)
    group = kt_group(8, 1)
    assert kt.shape == (-(-20 // group), 3, 16, 2, group * 8) and group * 8 >= RUN_BYTES and group <= 20
    blocks = torch.tensor([[3, 19], [0, 4]])
    got_lo, got_hi = kt_block_pages(kt, blocks, 8)
    assert torch.equal(got_lo.float(), lo[blocks].float()) and torch.equal(got_hi.float(), hi[blocks].float())
    run = kt[0, 1, 5, 1]  # group 0, head 1, channel 5, the max: blocks 0..group-1's pages in order
    assert torch.equal(run.float(), hi[:group, 1, :, 5].reshape(-1).float())


@pytest.mark.parametrize("kt_dtype", [torch.float32, torch.bfloat16, torch.float8_e5m2])
@pytest.mark.parametrize("page", [1, 4, 8])
def test_triton_store_token_matches_reference(kt_dtype, page):
    from rocket_trtllm.kernels.cache_update import store_token

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(page)

    def randn(*shape):  # values the KT dtype holds exactly: the interpreter rounds like numpy, not CUDA
        return torch.randn(*shape, generator=gen).to(kt_dtype).float()

    k_cache, v_cache = randn(12, 2, 8, 16), randn(12, 2, 8, 16)
    kt = randn(2, 12, 2, 8 // page, 16).to(kt_dtype)
    kt = packed(kt[0], kt[1])
    tables = torch.randperm(12, generator=gen)[:9].view(3, 3).int()
    lens = torch.tensor([1, 12, 24], dtype=torch.int32)  # first slot, mid-page or page start, last slot
    k, v = randn(3, 2, 16), randn(3, 2, 16)
    want = [t.clone() for t in (k_cache, v_cache, kt)]
    store_token_ref(k, v, *want[:2], tables, lens, want[2], page)
    got = [t.clone().to(device) for t in (k_cache, v_cache, kt)]
    store_token(k.to(device), v.to(device), *got[:2], tables.to(device), lens.to(device), got[2], page)
    for a, b in zip(got, want):
        assert torch.equal(a.cpu().float(), b.float())


@pytest.mark.parametrize("group", [1, 3])
def test_triton_store_token_rotates_q_and_k(group):
    """RoPE inside the K/V write: the key is stored (and its KT page refreshed) rotated, the query group is rotated in
    place in its strided buffer, as the reference and as the rotary kernel followed by a plain write."""
    from rocket_trtllm.kernels.cache_update import store_token
    from rocket_trtllm.kernels.layer_ops import rotary

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(group)
    kv_heads, d, page = 2, 16, 4
    k_cache, v_cache = torch.randn(12, kv_heads, 8, d, generator=gen), torch.randn(12, kv_heads, 8, d, generator=gen)
    kt = torch.randn(2, 12, kv_heads, 8 // page, d, generator=gen)
    kt = packed(kt[0], kt[1])
    tables = torch.randperm(12, generator=gen)[:9].view(3, 3).int()
    lens = torch.tensor([1, 12, 23], dtype=torch.int32)
    qkv = torch.randn(3, (group + 2) * kv_heads * d, generator=gen)  # q, k, v of each token side by side
    angles = torch.rand(3, 1, d // 2, generator=gen) * 6
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def split(t):
        q, k, v = t.split([group * kv_heads * d, kv_heads * d, kv_heads * d], -1)
        return q.view(3, -1, d), k.view(3, -1, d), v.view(3, -1, d)

    want_qkv, want = qkv.clone(), [t.clone() for t in (k_cache, v_cache, kt)]
    q, k, v = split(want_qkv)
    store_token_ref(k, v, *want[:2], tables, lens, want[2], page, q=q, cos=cos, sin=sin)
    assert not torch.equal(want_qkv, qkv)
    runs = []
    for fused in (True, False):
        t_qkv, t_caches = qkv.clone().to(device), [t.clone().to(device) for t in (k_cache, v_cache, kt)]
        q, k, v = split(t_qkv)
        args = (*t_caches[:2], tables.to(device), lens.to(device), t_caches[2], page)
        if fused:
            store_token(k, v, *args, q=q, cos=cos.to(device), sin=sin.to(device))
        else:
            rotary(q, cos.to(device), sin.to(device), out=q)
            store_token(rotary(k, cos.to(device), sin.to(device)), v, *args)
        runs.append([t_qkv, *t_caches])
        for a, b in zip(runs[-1], [want_qkv, *want]):
            assert torch.allclose(a.cpu(), b, atol=1e-5)
    for a, b in zip(*runs):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("page", [1, 4])
def test_triton_store_token_into_an_fp8_cache(page):
    """K/V divided by their scales and saturated into float8_e4m3fn; the KT page from the dequantized keys."""
    from rocket_trtllm.kernels.cache_update import store_token

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(page)
    k_cache = (torch.randn(12, 2, 8, 16, generator=gen) * 8).to(torch.float8_e4m3fn)
    v_cache = (torch.randn(12, 2, 8, 16, generator=gen) * 8).to(torch.float8_e4m3fn)
    kt = torch.randn(2, 12, 2, 8 // page, 16, generator=gen)
    kt = packed(kt[0], kt[1])
    tables = torch.randperm(12, generator=gen)[:9].view(3, 3).int()
    lens = torch.tensor([1, 12, 24], dtype=torch.int32)
    # Values that scale onto fp8 exactly (the interpreter rounds like numpy, not CUDA), some of V's past its range.
    k = torch.randn(3, 2, 16, generator=gen).to(torch.float8_e4m3fn).float() * 0.125
    v = torch.randn(3, 2, 16, generator=gen).to(torch.float8_e4m3fn).float() * 0.5
    v[:, :, ::5] = 1000.0
    want = [t.clone() for t in (k_cache, v_cache, kt)]
    store_token_ref(k, v, *want[:2], tables, lens, want[2], page, k_scale=0.125, v_scale=0.5)
    slot = (tables[2, 23 // 8], 23 % 8)
    assert torch.equal(want[0][slot[0], :, slot[1]].float(), (k[2] / 0.125).to(torch.float8_e4m3fn).float())
    assert want[1].float().abs().max() <= 448
    got = [t.clone().to(device) for t in (k_cache, v_cache, kt)]
    store_token(k.to(device), v.to(device), *got[:2], tables.to(device), lens.to(device), got[2], page, 0.125, 0.5)
    for a, b in zip(got, want):
        assert torch.equal(a.cpu().float(), b.float())


@pytest.mark.gpu
def test_triton_page_scores_on_gpu():
    from rocket_trtllm.kernels.kt_predict import kt_head_bounds, kt_page_scores, predict_pages

    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(4096, 8, 8, 128, generator=gen)
    hi = lo + torch.rand(lo.shape, generator=gen)
    tables = torch.randperm(4096, generator=gen)[:4000].view(4, 1000).int().cuda()
    pages = torch.tensor([1, 999, 5000, 8000], device="cuda")
    q = torch.randn(4, 32, 128, generator=gen).bfloat16().float().cuda()  # a model's bf16 query
    for dtype in (torch.float8_e5m2, torch.bfloat16):
        kt = packed(lo.to(dtype), hi.to(dtype)).cuda()
        for topr, sign in ((64, True), (128, True), (64, False)):
            want = kt_head_bounds_ref(q, kt, tables, pages, topr, 8, sign)
            got = kt_head_bounds(q, kt, tables, pages, topr, 8, sign)
            assert torch.equal(got.isinf(), want.isinf())
            assert torch.allclose(got, want, rtol=1e-3, atol=5e-2)
            want = kt_page_scores_ref(q, kt, tables, pages, topr, 8, sign)
            got = kt_page_scores(q, kt, tables, pages, topr, 8, sign)
            assert torch.equal(got.isinf(), want.isinf())
            assert torch.allclose(got, want, rtol=1e-3, atol=5e-2)
            got = predict_pages(q.bfloat16(), kt, tables, pages, topr, 64, 8, sign)
            want = predict_pages_ref(q.bfloat16(), kt, tables, pages, topr, 64, 8, sign)
            overlap = (got.sort(-1).values[..., :, None] == want[..., None, :]).any(-1).float().mean()
            assert overlap > 0.98  # float summation order may swap near-tied pages


@pytest.mark.gpu
def test_page_scores_graph_outlives_other_batch_sizes():
    """A CUDA graph of the scoring kernels captured at one batch size replays right after a hundred other batch
    sizes ran eagerly and their memory was handed out again (the graph once kept a per-batch-size scale tensor
    from a 64-entry cache: evicted and reused, it faulted the 32k largest-batch run)."""
    from rocket_trtllm.kernels.kt_predict import kt_page_scores

    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(512, 8, 8, 128, generator=gen)
    hi = lo + torch.rand(lo.shape, generator=gen)
    kt = packed(lo.to(torch.float8_e5m2), hi.to(torch.float8_e5m2)).cuda()
    tables = torch.randperm(512, generator=gen)[:64].view(1, 64).int().cuda()
    pages = torch.tensor([500], device="cuda")
    q = torch.randn(1, 32, 128, generator=gen).cuda()
    want = kt_page_scores(q, kt, tables, pages, 128, 8)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        kt_page_scores(q, kt, tables, pages, 128, 8)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kt_page_scores(q, kt, tables, pages, 128, 8)
    for batch in range(2, 100):
        kt_page_scores(q.expand(batch, -1, -1), kt, tables.expand(batch, -1), pages.repeat(batch), 128, 8)
    junk = torch.full((1, 32), float("nan"), device="cuda")
    junk = [junk.clone() for _ in range(20000)]  # every freed small block handed out again, NaN-filled
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want) and len(junk) == 20000


@pytest.mark.gpu
def test_triton_store_token_on_gpu():
    from rocket_trtllm.kernels.cache_update import store_token

    gen = torch.Generator().manual_seed(0)
    k_cache = torch.randn(600, 8, 32, 128, generator=gen).bfloat16()
    kt = torch.randn(2, 600, 8, 8, 128, generator=gen).to(torch.float8_e5m2)
    kt = packed(kt[0], kt[1])
    tables = torch.randperm(600, generator=gen)[:512].view(16, 32).int()
    lens = torch.randint(1, 32 * 32, (16,), generator=gen, dtype=torch.int32)
    k = torch.randn(16, 8, 128, generator=gen).bfloat16()
    want = [t.clone() for t in (k_cache, k_cache, kt)]
    store_token_ref(k, k, *want[:2], tables, lens, want[2], 4)
    got = [t.cuda() for t in (k_cache, k_cache.clone(), kt)]
    store_token(k.cuda(), k.cuda(), *got[:2], tables.cuda(), lens.cuda(), got[2], 4)
    for a, b in zip(got, want):
        assert torch.equal(a.cpu().float(), b.float())
