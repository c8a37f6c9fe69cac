import pytest
import torch
from rocket_trtllm.kernels.kt_predict import kt_page_scores_ref, select_pages_ref

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
    scores = kt_page_scores_ref(q, kt.kmin[0], kt.kmax[0], tables, num_pages, topr=16)
    for b, n in enumerate(lens):
        k = pool.k[0][tables[b].long()].permute(1, 0, 2, 3).reshape(2, -1, 16)[:, :n]
        qg = q[b].view(2, group, 16)
        true = torch.einsum("hgd,hnd->hn", qg, k)  # q.k summed over the group, per token
        for p in range(num_pages[b]):
            assert torch.all(scores[b, :, p] >= true[:, p * page : (p + 1) * page].amax(-1) - 1e-4)
        assert torch.all(scores[b, :, num_pages[b] :] == float("-inf"))


def test_append_equals_build():
    gen = torch.Generator().manual_seed(1)
    shape = ModelShape(num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8)
    lens = [13, 30]
    pool, tables = filled(shape, lens, 8, 4, gen)
    built = KTCache(shape, pool, 4, torch.float32)
    grown = KTCache(shape, pool, 4, torch.float32)
    for i, n in enumerate(lens):
        built.build(0, tables[i], n)
        grown.build(0, tables[i], 1)
    for step in range(2, max(lens) + 1):
        cache_lens = torch.tensor([min(step, n) for n in lens])
        grown.append(0, tables, cache_lens)
    pages = torch.tensor([-(-n // 4) for n in lens])
    q = torch.randn(2, 4, 8, generator=gen)
    a = kt_page_scores_ref(q, built.kmin[0], built.kmax[0], tables, pages, 8)
    b = kt_page_scores_ref(q, grown.kmin[0], grown.kmax[0], tables, pages, 8)
    assert torch.allclose(a, b)


def test_topr_keeps_largest_channels():
    gen = torch.Generator().manual_seed(2)
    shape = ModelShape(num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
    pool, tables = filled(shape, [16], 16, 4, gen)
    kt = KTCache(shape, pool, 4, torch.float32)
    kt.build(0, tables[0], 16)
    q = torch.zeros(1, 2, 8)
    q[0, :, 3] = 5.0
    q[0, 0, 1] = 0.1
    full = kt_page_scores_ref(q, kt.kmin[0], kt.kmax[0], tables, torch.tensor([4]), topr=8)
    one = kt_page_scores_ref(q, kt.kmin[0], kt.kmax[0], tables, torch.tensor([4]), topr=1)
    only3 = q.clone()
    only3[0, 0, 1] = 0
    want = kt_page_scores_ref(only3, kt.kmin[0], kt.kmax[0], tables, torch.tensor([4]), topr=8)
    assert torch.allclose(one, want) and not torch.allclose(one, full)


def test_select_pages_keeps_newest_and_best():
    scores = torch.tensor([[[5.0, 1.0, 4.0, 0.0, 3.0, float("-inf")]]])
    pages, ok = select_pages_ref(scores, torch.tensor([5]), topk=2)
    assert sorted(pages[0, 0].tolist()) == [0, 2, 4] and ok.all()
    short = scores.clone()
    short[..., 2:] = float("-inf")  # as kt_page_scores_ref masks pages past the sequence
    pages, ok = select_pages_ref(short, torch.tensor([2]), topk=3)
    assert set(pages[0, 0][ok[0, 0]].tolist()) == {0, 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float8_e5m2])
@pytest.mark.parametrize("topr", [16, 5])
def test_triton_page_scores_match_reference(dtype, topr):
    from rocket_trtllm.kernels.kt_predict import kt_page_scores

    gen = torch.Generator().manual_seed(topr)
    lo = torch.randn(32, 2, 4, 16, generator=gen)
    hi = (lo + torch.rand(32, 2, 4, 16, generator=gen)).to(dtype)
    lo = lo.to(dtype)
    tables = torch.randperm(32, generator=gen)[:20].view(2, 10).int()
    pages = torch.tensor([13, 40])
    q = torch.randn(2, 8, 16, generator=gen)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lo, hi, tables, pages, q = (t.to(device) for t in (lo, hi, tables, pages, q))
    want = kt_page_scores_ref(q, lo, hi, tables, pages, topr)
    got = kt_page_scores(q, lo, hi, tables, pages, topr)
    assert torch.equal(got.isinf(), want.isinf())
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.gpu
def test_triton_page_scores_on_gpu():
    from rocket_trtllm.kernels.kt_predict import kt_page_scores

    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(4096, 8, 8, 128, generator=gen)
    hi = (lo + torch.rand(lo.shape, generator=gen)).to("cuda", torch.float8_e5m2)
    lo = lo.to("cuda", torch.float8_e5m2)
    tables = torch.randperm(4096, generator=gen)[:4000].view(4, 1000).int().cuda()
    pages = torch.tensor([1, 999, 5000, 8000], device="cuda")
    q = torch.randn(4, 32, 128, generator=gen).cuda()
    want = kt_page_scores_ref(q, lo, hi, tables, pages, 64)
    got = kt_page_scores(q, lo, hi, tables, pages, 64)
    assert torch.equal(got.isinf(), want.isinf())
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-2)
