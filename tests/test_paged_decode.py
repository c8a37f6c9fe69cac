import pytest
import torch
from rocket_trtllm.kernels.paged_decode import paged_decode_ref, sparse_decode_ref


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
    sparse = sparse_decode_ref(q, k, v, tables, idx, valid, 0.25)
    assert torch.allclose(dense, sparse, atol=1e-5)
    # Against plain attention on contiguous K/V.
    for b, n in enumerate(lens):
        kb = k[tables[b]].permute(1, 0, 2, 3).reshape(kv_heads, -1, d)[:, :n].repeat_interleave(group, 0)
        vb = v[tables[b]].permute(1, 0, 2, 3).reshape(kv_heads, -1, d)[:, :n].repeat_interleave(group, 0)
        ref = torch.softmax(torch.einsum("hd,hnd->hn", q[b], kb) * 0.25, -1)
        assert torch.allclose(dense[b], torch.einsum("hn,hnd->hd", ref, vb), atol=1e-5)
