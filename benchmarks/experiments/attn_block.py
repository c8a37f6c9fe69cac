"""RocketKV's decode attention block at 128k batch 1 (2048 kept + 256 generated tokens), 20 layers of it in one CUDA
graph: the K/V + KT write (RoPE inside it, or the rotary kernel before it on commits before 5c74b0b), page
prediction, sparse attention. Runs on whichever rocket_trtllm is first on PYTHONPATH (an older commit's: see ab.sh):

    python benchmarks/experiments/attn_block.py new       # prints "<tag> as-is <us> us/layer"
"""

import inspect
import sys

import torch
from triton.testing import do_bench

from rocket_trtllm.kernels.cache_update import store_token
from rocket_trtllm.kernels.kt_predict import kt_group, pack_kt, predict_pages
from rocket_trtllm.kernels.layer_ops import rotary
from rocket_trtllm.kernels.paged_decode import sparse_decode

tag = sys.argv[1]
new = "cos" in inspect.signature(store_token).parameters
H, KVH, D, BS, PS, N = 32, 8, 128, 32, 4, 2304
blocks = 4096
torch.manual_seed(0)
kc = torch.randn(blocks, KVH, BS, D, device="cuda", dtype=torch.bfloat16)
vc = torch.randn_like(kc)
lo = torch.randn(blocks, KVH, BS // PS, D, device="cuda").to(torch.float8_e5m2)
kt = pack_kt(lo, (lo.float() + 1).to(torch.float8_e5m2), kt_group(BS // PS, 1))
tables = torch.randperm(blocks, device="cuda")[:128].view(1, 128).int()
lens = torch.full((1,), N, device="cuda", dtype=torch.int32)
pages = (lens + PS - 1) // PS
qkv = torch.randn(1, (H + 2 * KVH) * D, device="cuda", dtype=torch.bfloat16)
ang = torch.rand(1, 1, D // 2, device="cuda") * 6
cos, sin = torch.cat([ang, ang], -1).cos().bfloat16(), torch.cat([ang, ang], -1).sin().bfloat16()
q, k, v = (t.view(1, -1, D) for t in qkv.split([H * D, KVH * D, KVH * D], -1))


def layer():
    if new:
        store_token(k, v, kc, vc, tables, lens, kt, PS, q=q, cos=cos, sin=sin)
    else:
        qk = qkv[:, : (H + KVH) * D].view(1, -1, D)
        rotary(qk, cos, sin, out=qk)
        store_token(k, v, kc, vc, tables, lens, kt, PS)
    sel = predict_pages(q, kt, tables, pages, 128, 64, BS // PS)
    return sparse_decode(q, kc, vc, tables, sel, lens, PS, D**-0.5)


layer()
torch.cuda.synchronize()
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    for _ in range(20):
        layer()
us = do_bench(graph.replay, warmup=10, rep=100, return_mode="median") / 20 * 1e3
print(f"{tag:4s} as-is {us:6.2f} us/layer")
