"""RocketKV's decode attention kernels at the largest batch and at batch 1, one layer of Llama-3.1-8B (32 query heads,
8 KV heads of 128, bf16 K/V in 32-token blocks, fp8 KT pages of 4 in the KT layout, each sequence's blocks
consecutive ids as the allocator gives them): the K/V + KT store, the KT bounds pass, the scores + selection (per
warp count), sparse attention, and the whole chain, each replayed 20 times in a CUDA graph.

    python benchmarks/experiments/stage2_batch.py --json out.json [--batches 124 1] [--tokens 2176]
"""

import argparse
import json

import torch
from triton.testing import do_bench

from rocket_trtllm.kernels import _triton, kt_predict
from rocket_trtllm.kernels.cache_update import store_token
from rocket_trtllm.kernels.kt_predict import _launch_bounds, kt_group, pack_kt, predict_pages
from rocket_trtllm.kernels.paged_decode import sparse_decode

KV_HEADS, Q_HEADS, D, BS, PS, TOPK = 8, 32, 128, 32, 4, 64
REPEAT = 20
PATCH = "rocket_trtllm.kernels.kt_predict:"  # the variants as benchmarks/experiments/bench_patched.py patches them
# The prediction's variants timed (sign rule): the bounds pass's warps and pages a tile at large batches; with few rows
# (batch 1) its warps and where each head's softmax normaliser is computed (the selection from the row it holds, or the
# bounds pass folding tile by tile). What else was timed and dropped (pipelining, tiles loaded a tile ahead, more
# programs, the early first tile, a kernel summing a channel at a time on the CUDA cores, a register cap, the
# normalisers in the selection at large batches): docs/log/benchmarks.md.
VARIANTS_MANY = [dict(BOUNDS_WARPS=w, BOUNDS_BLOCK_P=p) for w in (2, 4) for p in (64, 128)]
# Issue 42's hypothesis, separated from the unpipelined loop it landed with (b2699bf): the KT layout's run of one
# channel's bound as 32 or 64 bytes (4 or 8 blocks of 8 fp8 pages, the other bound beside it in the same 128-byte
# line) against 128 (one line), at the kept tile and warps.
VARIANTS_MANY += [dict(RUN_BYTES=r, BOUNDS_WARPS=2, BOUNDS_BLOCK_P=64) for r in (32, 64)]
VARIANTS_FEW = [dict(NORMS_IN_SELECT=n, BOUNDS_FEW_WARPS=w) for n in (1, 0) for w in (2, 4, 8)]


def graphed(fn) -> float:  # noqa: ANN001
    """Microseconds one call takes, as the median replay of a CUDA graph of REPEAT calls."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPEAT):
            fn()
    return do_bench(graph.replay, warmup=20, rep=200, return_mode="median") / REPEAT * 1e3


def inputs(batch: int, n: int) -> dict:
    """The same tensors at every call (a fixed seed), the KT layout's runs as kt_predict.RUN_BYTES says."""
    torch.manual_seed(0)
    ppb = BS // PS
    per_seq = -(-n // BS)
    blocks = batch * per_seq + 8
    k = torch.randn(blocks, KV_HEADS, BS, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    lo = torch.randn(blocks, KV_HEADS, ppb, D, device="cuda")
    kt = pack_kt(lo.to(torch.float8_e5m2), (lo + torch.rand_like(lo)).to(torch.float8_e5m2), kt_group(ppb, 1))
    tables = torch.arange(batch * per_seq, device="cuda", dtype=torch.int32).view(batch, per_seq)
    width = max(16, 1 << (per_seq - 1).bit_length())  # a decode graph's table width
    tables = torch.cat([tables, torch.full((batch, width - per_seq), blocks - 1, device="cuda", dtype=torch.int32)], 1)
    lens = torch.full((batch,), n, device="cuda", dtype=torch.int32)
    q = torch.randn(batch, Q_HEADS, D, device="cuda", dtype=torch.bfloat16)
    k_new, v_new = (
        torch.randn(batch, KV_HEADS, D, device="cuda", dtype=torch.bfloat16),
        torch.randn(batch, KV_HEADS, D, device="cuda", dtype=torch.bfloat16),
    )
    pages = (lens + PS - 1) // PS
    return dict(k=k, v=v, kt=kt, tables=tables, lens=lens, q=q, k_new=k_new, v_new=v_new, pages=pages, ppb=ppb)


def rows_for(batch: int, n: int, copy_tbs: float) -> list[dict]:
    x = inputs(batch, n)
    rows = []
    n_pages = -(-n // PS)
    kt_bytes = batch * KV_HEADS * n_pages * D  # one fp8 bound of every channel (top-r 128)
    kv_bytes = batch * KV_HEADS * (TOPK + 1) * PS * D * 2 * 2
    select_bytes = batch * Q_HEADS * n_pages * 4

    def row(name: str, fn, nbytes: int) -> None:  # noqa: ANN001
        us = graphed(fn)
        rows.append(dict(kernel=name, batch=batch, tokens=n, us=us, mbytes=nbytes / 1e6,
                         vs_copy=nbytes / us / 1e6 / copy_tbs))  # fmt: skip
        print(f"{name:58s} batch {batch:4d}: {us:8.2f} us  {nbytes / us / 1e6:5.2f} TB/s", flush=True)

    def predict() -> torch.Tensor:
        return predict_pages(x["q"], x["kt"], x["tables"], x["pages"], 128, TOPK, x["ppb"])

    row("store_token (K/V and KT page)",
        lambda: store_token(x["k_new"], x["v_new"], x["k"], x["v"], x["tables"], x["lens"], x["kt"], PS),
        batch * KV_HEADS * D * 2 * 2)  # fmt: skip
    row("KT bounds pass (sign, top-r 128)",
        lambda: _launch_bounds(x["q"], x["kt"], x["tables"], x["pages"], 128, x["ppb"]), kt_bytes)  # fmt: skip
    bounds_us = rows[-1]["us"]

    def bounds(sign: bool = True) -> object:
        return _launch_bounds(x["q"], x["kt"], x["tables"], x["pages"], 128, x["ppb"], sign)

    row("KT bounds pass (both bounds, Quest's)", lambda: bounds(False), 2 * kt_bytes)
    want = bounds()[0][..., :n_pages]  # (past each sequence's pages: not written)

    def pages_chosen() -> torch.Tensor:
        return predict().sort(-1).values

    chosen = pages_chosen()
    few = batch * KV_HEADS <= _triton.FEW_ROWS
    for variant in VARIANTS_FEW if few else VARIANTS_MANY:
        name = ", ".join(f"{k} {v}" for k, v in variant.items())
        saved = {k: getattr(kt_predict, k) for k in variant}
        for k, v in variant.items():
            setattr(kt_predict, k, v)
        # A variant of the layout packs the same bounds into its own runs.
        xv = inputs(batch, n) if "RUN_BYTES" in variant else x
        try:  # each variant checked against the default, and timed: its bounds pass as the prediction runs it, and
            # the whole prediction (bounds, scores, selection)
            def own_bounds(xv: dict = xv) -> object:
                return _launch_bounds(xv["q"], xv["kt"], xv["tables"], xv["pages"], 128, xv["ppb"],
                                      fold=not (kt_predict.NORMS_IN_SELECT and few))  # fmt: skip

            def own_predict(xv: dict = xv) -> torch.Tensor:
                return predict_pages(xv["q"], xv["kt"], xv["tables"], xv["pages"], 128, TOPK, xv["ppb"])

            got = own_bounds()[0][..., :n_pages]
            if not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
                raise AssertionError(f"bounds differ from the default's by {(got - want).abs().max()}")
            if not torch.equal(own_predict().sort(-1).values, chosen):
                raise AssertionError("the prediction chose other pages than the default")
            row(f"  bounds: {name}", own_bounds, kt_bytes)
            row(f"  prediction: {name}", own_predict, kt_bytes)
            rows[-1]["patch"] = ",".join(f"{PATCH}{k}={v}" for k, v in variant.items())
        except Exception as e:  # noqa: BLE001 (a variant that fails is reported, not fatal)
            print(f"  {name}: {type(e).__name__} {e}")
        finally:
            for k, v in saved.items():
                setattr(kt_predict, k, v)
    warps_default = kt_predict.SELECT_WARPS, kt_predict.SELECT_FEW_WARPS
    for warps in (2, 4, 8):
        kt_predict.SELECT_WARPS = kt_predict.SELECT_FEW_WARPS = warps
        us = graphed(predict)
        rows.append(dict(kernel=f"scores + selection, {warps} warps", batch=batch, tokens=n, us=us - bounds_us,
                         mbytes=select_bytes / 1e6))  # fmt: skip
        print(f"{rows[-1]['kernel']:58s} batch {batch:4d}: {us - bounds_us:8.2f} us (prediction {us:.2f})")
    kt_predict.SELECT_WARPS, kt_predict.SELECT_FEW_WARPS = warps_default
    sel = predict()
    row("sparse_decode (65 pages of 4)",
        lambda: sparse_decode(x["q"], x["k"], x["v"], x["tables"], sel, x["lens"], PS, D**-0.5), kv_bytes)  # fmt: skip

    def chain() -> torch.Tensor:
        store_token(x["k_new"], x["v_new"], x["k"], x["v"], x["tables"], x["lens"], x["kt"], PS)
        return sparse_decode(x["q"], x["k"], x["v"], x["tables"], predict(), x["lens"], PS, D**-0.5)

    row("the layer's attention chain (store, predict, sparse)", chain, kt_bytes + kv_bytes)
    return rows


def copy_bandwidth() -> float:
    """TB/s a device-to-device copy moves (bytes read + written)."""
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median") / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[124, 1])
    p.add_argument("--tokens", type=int, default=2176)
    p.add_argument("--json")
    p.add_argument(
        "--best",
        help="write each batch's fastest prediction variant (a bench_patched.py patch) to BEST-<batch>.txt",
    )
    ns = p.parse_args()
    copy_tbs = copy_bandwidth()
    print(f"copy bandwidth {copy_tbs:.2f} TB/s")
    rows = [r for b in ns.batches for r in rows_for(b, ns.tokens, copy_tbs)]
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"copy_tbs": copy_tbs, "rows": rows}, f, indent=1)
    for batch in ns.batches if ns.best else ():
        timed = [r for r in rows if "patch" in r and r["batch"] == batch]
        best = min(timed, key=lambda r: r["us"], default={"patch": "", "kernel": "none"})
        print(f"fastest prediction variant at batch {batch}: {best['kernel'].strip()}")
        with open(f"{ns.best}-{batch}.txt", "w") as f:
            f.write(best["patch"])


if __name__ == "__main__":
    main()
