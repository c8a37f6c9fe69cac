"""Kernel bandwidth on the GPU: dense paged decode vs torch SDPA on contiguous KV, sparse decode and
KT page scoring, each with its bytes moved, achieved bandwidth and ratio to the measured copy bandwidth.

    python benchmarks/kernels.py --json out.json
"""

import argparse
import json

import torch
from rocket_trtllm.kernels.cache_update import store_token
from rocket_trtllm.kernels.kt_predict import kt_page_scores, predict_pages
from rocket_trtllm.kernels.paged_decode import paged_decode, sparse_decode
from triton.testing import do_bench

KV_HEADS, Q_HEADS, D, BS = 8, 32, 128, 32  # Llama-3.1-8B attention, one layer


def copy_bandwidth() -> float:
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * x.numel() / ms / 1e9  # TB/s, bytes read + written


def case(batch: int, n: int, copy_tbs: float) -> list[dict]:
    blocks = batch * n // BS
    k = torch.randn(blocks, KV_HEADS, BS, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    tables = torch.randperm(blocks, device="cuda").view(batch, -1).int()
    lens = torch.full((batch,), n, device="cuda", dtype=torch.int32)
    q = torch.randn(batch, Q_HEADS, D, device="cuda", dtype=torch.bfloat16)
    scale = D**-0.5
    kv_bytes = 2 * batch * n * KV_HEADS * D * 2
    rows = []

    def row(name, fn, nbytes):
        ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        tbs = nbytes / ms / 1e9
        rows.append(dict(kernel=name, batch=batch, tokens=n, ms=ms, mbytes=nbytes / 1e6, tb_s=tbs,
                         vs_copy=tbs / copy_tbs))  # fmt: skip

    row("paged_decode (triton)", lambda: paged_decode(q, k, v, tables, lens, scale), kv_bytes)
    kc = k.permute(1, 0, 2, 3).reshape(KV_HEADS, batch, n, D).transpose(0, 1).contiguous()
    vc = v.permute(1, 0, 2, 3).reshape(KV_HEADS, batch, n, D).transpose(0, 1).contiguous()
    qs = q[:, :, None, :]
    row(
        "sdpa contiguous (torch)",
        lambda: torch.nn.functional.scaled_dot_product_attention(qs, kc, vc, scale=scale, enable_gqa=True),
        kv_bytes,
    )
    pages = torch.rand(batch, KV_HEADS, n // 4, device="cuda").argsort(-1)[..., :65].contiguous()
    row("sparse_decode 65 pages x 4 (triton)", lambda: sparse_decode(q, k, v, tables, pages, lens, 4, scale),
        2 * batch * KV_HEADS * 65 * 4 * D * 2)  # fmt: skip
    ppb = BS // 4
    kt_lo = torch.randn(blocks, KV_HEADS, ppb, D, device="cuda").to(torch.float8_e5m2)
    kt_hi = torch.randn(blocks, KV_HEADS, ppb, D, device="cuda").to(torch.float8_e5m2)
    n_pages = torch.full((batch,), n // 4, device="cuda", dtype=torch.int32)
    kt_bytes = 2 * batch * KV_HEADS * (n // 4) * D
    row("kt_page_scores fp8, top-r 64 (triton)", lambda: kt_page_scores(q, kt_lo, kt_hi, tables, n_pages, 64), kt_bytes)
    # One layer's whole decode attention as a CUDA graph replays it (no launch overhead): write the
    # new K/V (and its KT page), then dense attention, or predict + top-k + sparse attention.
    k_new, v_new = torch.randn_like(q[:, :KV_HEADS]), torch.randn_like(q[:, :KV_HEADS])

    def dense_layer():
        store_token(k_new, v_new, k, v, tables, lens)
        return paged_decode(q, k, v, tables, lens, scale)

    def rocket_layer():
        store_token(k_new, v_new, k, v, tables, lens, kt_lo, kt_hi, 4)
        sel = predict_pages(q, kt_lo, kt_hi, tables, n_pages, 64, 64)
        return sparse_decode(q, k, v, tables, sel, lens, 4, scale)

    row("dense decode layer (graph)", graphed(dense_layer), kv_bytes)
    sparse_bytes = kt_bytes + 2 * batch * KV_HEADS * 260 * D * 2
    row("rocket decode layer, every page scored (graph)", graphed(rocket_layer), sparse_bytes)
    return rows


def graphed(fn):
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    args = p.parse_args()
    copy_tbs = copy_bandwidth()
    rows = []
    # (1, 2304) and (64, 2304): a RocketKV sequence after eviction (2048 kept + 256 generated).
    for batch, n in [(1, 2304), (64, 2304), (1, 32768), (1, 131072), (8, 32768), (32, 8192)]:
        rows += case(batch, n, copy_tbs)
        torch.cuda.empty_cache()
    print(f"device: {torch.cuda.get_device_name()}, copy bandwidth {copy_tbs:.2f} TB/s (read + write)")
    print("| kernel | batch | tokens | ms | MB moved | TB/s | vs copy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['batch']} | {r['tokens']} | {r['ms']:.4f} | {r['mbytes']:.1f} | "
              f"{r['tb_s']:.2f} | {r['vs_copy']:.2f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_tb_s": copy_tbs, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
