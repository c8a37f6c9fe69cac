import pytest
import torch

from rocket_trtllm.kernels.paged_decode import paged_decode_ref, sparse_decode_ref, token_decode_ref


@pytest.mark.parametrize("group,lens", [(1, [5, 33]), (4, [1, 17, 64]), (3, [40])])
def test_sparse_over_every_token_equals_dense(group, lens):
    gen = torch.Generator().manual_seed(len(lens) * group)
    kv_heads, d, bs = 2, 16, 8
    k = torch.randn(32, kv_heads, bs, d, generator=gen)
    v = torch.randn(32, kv_heads, bs, d, generator=gen)
    width = max(-(-n // bs) for n in lens)
    tables = torch.randperm(32, generator=gen)[: width * len(lens)].view(len(lens), width)
    q = torch.randn(len(lens), kv_heads * group, d, generator=gen)
    cache_lens = torch.tensor(lens)
    dense = paged_decode_ref(q, k, v, tables, cache_lens, 0.25)
    idx = torch.randperm(width * bs, generator=gen).expand(len(lens), kv_heads, -1)  # any order
    valid = idx < cache_lens[:, None, None]
    assert torch.allclose(dense, token_decode_ref(q, k, v, tables, idx, valid, 0.25), atol=1e-5)
    pages = torch.randperm(width * bs // 4, generator=gen).expand(len(lens), kv_heads, -1)
    assert torch.allclose(dense, sparse_decode_ref(q, k, v, tables, pages, cache_lens, 4, 0.25), atol=1e-5)
    # Against plain attention on contiguous K/V.
    for b, n in enumerate(lens):
        kb = k[tables[b]].permute(1, 0, 2, 3).reshape(kv_heads, -1, d)[:, :n].repeat_interleave(group, 0)
        vb = v[tables[b]].permute(1, 0, 2, 3).reshape(kv_heads, -1, d)[:, :n].repeat_interleave(group, 0)
        ref = torch.softmax(torch.einsum("hd,hnd->hn", q[b], kb) * 0.25, -1)
        assert torch.allclose(dense[b], torch.einsum("hn,hnd->hd", ref, vb), atol=1e-5)


def random_case(group, lens, dtype, device, kv_heads=2, d=16, bs=8, n_sel=9, page=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = max(-(-n // bs) for n in lens)
    blocks = width * len(lens) + 3
    k = torch.randn(blocks, kv_heads, bs, d, generator=gen).to(device, dtype)
    v = torch.randn(blocks, kv_heads, bs, d, generator=gen).to(device, dtype)
    tables = torch.randperm(blocks, generator=gen)[: width * len(lens)].view(len(lens), width).int().to(device)
    q = torch.randn(len(lens), kv_heads * group, d, generator=gen).to(device, dtype)
    cache_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    # Distinct pages per head, some past a short sequence's end (as the selection returns them).
    pages = torch.rand(len(lens), kv_heads, width * bs // page, generator=gen).argsort(-1)[..., :n_sel]
    pages[..., 0] = 0  # the real path always has a valid token (the newest page)
    return q, k, v, tables, cache_lens, pages.contiguous().to(device)


CASES = [(1, [5, 70]), (4, [1, 17, 130]), (8, [64])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group,lens", CASES)
@pytest.mark.parametrize("one_split", [False, True], ids=["splits", "one-split"])
def test_triton_decode_matches_reference(dtype, group, lens, one_split, monkeypatch):
    """Against the reference, split over the sequence and combined, or read by one program per KV head that writes
    the output itself."""
    from rocket_trtllm.kernels import paged_decode as module
    from rocket_trtllm.kernels.paged_decode import paged_decode, sparse_decode

    if one_split:
        monkeypatch.setattr(module, "SPLIT_MIN_TOKENS", 1 << 20)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, tables, cache_lens, pages = random_case(group, lens, dtype, device, seed=group)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    want = paged_decode_ref(q, k, v, tables, cache_lens, 0.25)
    assert torch.allclose(paged_decode(q, k, v, tables, cache_lens, 0.25).float(), want.float(), atol=tol)
    want = sparse_decode_ref(q, k, v, tables, pages, cache_lens, 4, 0.25)
    got = sparse_decode(q, k, v, tables, pages, cache_lens, 4, 0.25)
    assert torch.allclose(got.float(), want.float(), atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group,lens", [(4, [1, 4095, 33000]), (8, [70000]), (1, [300] * 16)])
def test_triton_decode_on_gpu(dtype, group, lens):
    from rocket_trtllm.kernels.paged_decode import paged_decode, sparse_decode

    q, k, v, tables, cache_lens, pages = random_case(
        group, lens, dtype, "cuda", kv_heads=8, d=128, bs=32, n_sel=65, seed=group
    )
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    want = paged_decode_ref(q, k, v, tables, cache_lens, 128**-0.5)
    got = paged_decode(q, k, v, tables, cache_lens, 128**-0.5)
    assert torch.allclose(got.float(), want.float(), atol=tol)
    want = sparse_decode_ref(q, k, v, tables, pages, cache_lens, 4, 128**-0.5)
    got = sparse_decode(q, k, v, tables, pages, cache_lens, 4, 128**-0.5)
    assert torch.allclose(got.float(), want.float(), atol=tol)


@pytest.mark.parametrize("group,lens", CASES[:2])
def test_triton_decode_reads_an_fp8_cache(group, lens):
    """An FP8 cache (float8_e4m3fn) read by the kernels equals the reference over the same cache."""
    from rocket_trtllm.kernels.paged_decode import paged_decode, sparse_decode

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, tables, cache_lens, pages = random_case(group, lens, torch.float32, device, seed=group)
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    want = paged_decode_ref(q, k8, v8, tables, cache_lens, 0.25)
    assert torch.allclose(paged_decode(q, k8, v8, tables, cache_lens, 0.25), want, atol=1e-5)
    assert torch.allclose(want, paged_decode_ref(q, k8.float(), v8.float(), tables, cache_lens, 0.25))
    want = sparse_decode_ref(q, k8, v8, tables, pages, cache_lens, 4, 0.25)
    assert torch.allclose(sparse_decode(q, k8, v8, tables, pages, cache_lens, 4, 0.25), want, atol=1e-5)
