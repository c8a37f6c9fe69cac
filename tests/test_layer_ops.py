import pytest
import torch

from rocket_trtllm.kernels import layer_ops
from rocket_trtllm.models.rope import RotaryEmbedding

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n", [16, 48])
def test_rms_norm_matches_reference(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(5, 3, n, generator=gen).to(DEVICE)
    w = torch.rand(n, generator=gen).to(DEVICE)
    got = layer_ops.rms_norm(x, w, 1e-5)
    assert got.shape == x.shape
    assert torch.allclose(got, layer_ops.rms_norm_ref(x, w, 1e-5), atol=1e-5)


@pytest.mark.parametrize("n", [16, 48])
def test_add_rms_norm_adds_in_place_and_normalises(n):
    gen = torch.Generator().manual_seed(n)
    x, delta = (torch.randn(5, n, generator=gen).to(DEVICE) for _ in range(2))
    w = torch.rand(n, generator=gen).to(DEVICE)
    want_x = x.clone()
    want = layer_ops.add_rms_norm_ref(want_x, delta, w, 1e-5)
    got = layer_ops.add_rms_norm(x, delta, w, 1e-5)
    assert torch.allclose(x, want_x, atol=1e-6) and torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(want, layer_ops.rms_norm_ref(want_x, w, 1e-5))  # the norm of the updated residual


@pytest.mark.parametrize("heads,d", [(4, 16), (3, 8)])
def test_rotary_matches_reference_on_strided_views(heads, d):
    gen = torch.Generator().manual_seed(heads)
    fused = torch.randn(6, (heads + 2) * d, generator=gen).to(DEVICE)
    x = fused[:, : heads * d].view(6, heads, d)  # a view into a fused projection, as the model passes it
    rope = RotaryEmbedding({"rope_type": "default", "rope_theta": 10000.0}, d).to(DEVICE)
    cos, sin = rope(torch.arange(6, device=DEVICE) * 37, torch.float32)
    want = layer_ops.rotary_ref(x, cos, sin)
    assert torch.allclose(layer_ops.rotary(x, cos, sin), want, atol=1e-5)
    layer_ops.rotary(x, cos, sin, out=x)  # in place, as the model rotates q and k
    assert torch.allclose(x, want, atol=1e-5)


def test_silu_mul_matches_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2 * 1100, generator=gen).to(DEVICE)  # past one 1024-wide block
    assert torch.allclose(layer_ops.silu_mul(x), layer_ops.silu_mul_ref(x), atol=1e-5)


@pytest.mark.gpu
def test_layer_ops_bf16_on_gpu():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4096, generator=gen).cuda().bfloat16()
    w = torch.rand(4096, generator=gen).cuda().bfloat16()
    assert torch.allclose(layer_ops.rms_norm(x, w, 1e-5).float(), layer_ops.rms_norm_ref(x, w, 1e-5).float(), rtol=1e-2)
    d = torch.randn(300, 4096, generator=gen).cuda().bfloat16()
    x2 = x.clone()
    got, want = layer_ops.add_rms_norm(x, d, w, 1e-5), layer_ops.add_rms_norm_ref(x2, d, w, 1e-5)
    assert torch.equal(x, x2)  # the residual rounded as torch's add rounds it: the same bits
    assert torch.allclose(got.float(), want.float(), rtol=1e-2)
    q = torch.randn(300, 32, 128, generator=gen).cuda().bfloat16()
    cos, sin = RotaryEmbedding({"rope_type": "default", "rope_theta": 5e5}, 128).cuda()(
        torch.arange(300, device="cuda") * 400, torch.bfloat16
    )
    # Against float32 references: the kernels compute in float32 and round once.
    want = layer_ops.rotary_ref(q.float(), cos.float(), sin.float())
    assert torch.allclose(layer_ops.rotary(q, cos, sin).float(), want, atol=1e-2, rtol=1e-2)
    g = torch.randn(300, 2 * 14336, generator=gen).cuda().bfloat16()
    assert torch.allclose(layer_ops.silu_mul(g).float(), layer_ops.silu_mul_ref(g.float()), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("n", [48, 5000])
def test_fp8_row_quantization_matches_reference(n):
    """One kernel quantizes each row (wider rows than one block too; an all-zero row gets its tiny scale) as the
    reference does. Rows are fp8 values times a power of two with one entry at +-448, so every quotient is exact
    (the interpreter rounds to fp8 unlike CUDA); on the GPU random rows too, at most one fp8 step apart."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(4, n, generator=gen).to(torch.float8_e4m3fn).float()
    x[:, 7] = torch.tensor([448.0, -448.0, 448.0, -448.0])
    x = x * torch.tensor([[1.0], [2.0**10], [0.0], [2.0**-10]])
    x = x.to(DEVICE, torch.bfloat16 if DEVICE == "cuda" else torch.float32)
    q, s = layer_ops.quantize_fp8_rows(x)
    want_q, want_s = layer_ops.quantize_fp8_rows_ref(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (4, 1)
    assert torch.equal(s, want_s) and torch.equal(q.float(), want_q.float())
    if DEVICE == "cuda":
        x = torch.randn(5, n, generator=gen).to(DEVICE, torch.bfloat16) * 100
        (q, s), (want_q, want_s) = layer_ops.quantize_fp8_rows(x), layer_ops.quantize_fp8_rows_ref(x)
        torch.testing.assert_close(s, want_s)
        torch.testing.assert_close(q.float(), want_q.float(), rtol=0.125, atol=0)


@pytest.mark.parametrize("rows,n", [(1, 10000), (3, 4096), (2, 77)])
def test_argmax_matches_torch_with_ties(rows, n, monkeypatch):
    """Greedy decoding's argmax over chunks of the row (64-element chunks here) against torch's, ties going to the
    first index as torch's do: each row's maximum planted three times, in different chunks, the last in the last
    (ragged) chunk."""
    monkeypatch.setattr(layer_ops, "ARGMAX_CHUNK", 64)
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(rows, n, generator=gen)
    for r in range(rows):
        x[r, [n // 3 + r, 2 * n // 3, n - 1]] = 5.0 + r
    x = x.to(DEVICE)
    got = layer_ops.argmax_rows(x)
    assert got.dtype == torch.int64 and torch.equal(got, x.argmax(-1))
