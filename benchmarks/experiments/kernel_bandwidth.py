"""Kernel bandwidth on the GPU: dense paged decode vs torch SDPA on contiguous KV, sparse decode and
KT page scoring, each with its bytes moved, achieved bandwidth and ratio to the measured copy bandwidth; then
the FP8 pieces (paged decode over an fp8 cache at each tile shape, per-token quantization), the page selection against
torch's top-k, the decode GEMMs (cuBLAS against the Triton GEMV at every candidate tile, bf16 and fp8), and
RocketKV's scoring and sparse attention at batch 64 and 128 per tile shape.

    python benchmarks/experiments/kernel_bandwidth.py --json out.json      # --only fp8|select|batched|gemv for a part
"""

import argparse
import json
from functools import partial

import torch
from triton.testing import do_bench

from rocket_trtllm.kernels import kt_predict as kt_module
from rocket_trtllm.kernels import layer_ops
from rocket_trtllm.kernels import paged_decode as decode_module
from rocket_trtllm.kernels.cache_update import store_token
from rocket_trtllm.kernels.gemv import Tile, gemv
from rocket_trtllm.kernels.kt_predict import kt_group, kt_page_scores, pack_kt, predict_pages, select_pages
from rocket_trtllm.kernels.paged_decode import paged_decode, sparse_decode
from rocket_trtllm.models.quant import FP8, fp8_linear_cuda, quantize_per_token

KV_HEADS, Q_HEADS, D, BS = 8, 32, 128, 32  # Llama-3.1-8B attention, one layer


def copy_bandwidth() -> float:
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * x.numel() / ms / 1e9  # TB/s, bytes read + written


def paged_inputs(batch: int, n: int) -> tuple[torch.Tensor, ...]:
    """One layer's bf16 K/V cache of `batch` sequences of `n` tokens in shuffled 32-token blocks, their block
    tables and lengths, and a query per sequence."""
    blocks = batch * n // BS
    k = torch.randn(blocks, KV_HEADS, BS, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    tables = torch.randperm(blocks, device="cuda").view(batch, -1).int()
    lens = torch.full((batch,), n, device="cuda", dtype=torch.int32)
    q = torch.randn(batch, Q_HEADS, D, device="cuda", dtype=torch.bfloat16)
    return k, v, tables, lens, q


def random_kt(blocks: int, ppb: int) -> torch.Tensor:
    """Random fp8 KT bounds of `blocks` KV blocks in the KT layout."""
    lo = torch.randn(blocks, KV_HEADS, ppb, D, device="cuda")
    return pack_kt(lo.to(torch.float8_e5m2), (lo + 1).to(torch.float8_e5m2), kt_group(ppb, 1))


def case(batch: int, n: int, copy_tbs: float) -> list[dict]:
    blocks = batch * n // BS
    k, v, tables, lens, q = paged_inputs(batch, n)
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
    kt = random_kt(blocks, ppb)
    n_pages = torch.full((batch,), n // 4, device="cuda", dtype=torch.int32)
    kt_bytes = batch * KV_HEADS * (n // 4) * 64  # one fp8 bound of 64 top-r channels a page
    row("kt_page_scores fp8, top-r 64 (triton)", lambda: kt_page_scores(q, kt, tables, n_pages, 64, ppb), kt_bytes)
    # One layer's whole decode attention as a CUDA graph replays it (no launch overhead): write the
    # new K/V (and its KT page), then dense attention, or predict + top-k + sparse attention.
    k_new, v_new = torch.randn_like(q[:, :KV_HEADS]), torch.randn_like(q[:, :KV_HEADS])

    def dense_layer():
        store_token(k_new, v_new, k, v, tables, lens)
        return paged_decode(q, k, v, tables, lens, scale)

    def rocket_layer():
        store_token(k_new, v_new, k, v, tables, lens, kt, 4)
        sel = predict_pages(q, kt, tables, n_pages, 64, 64, ppb)
        return sparse_decode(q, k, v, tables, sel, lens, 4, scale)

    row("dense decode layer (graph)", graphed(dense_layer), kv_bytes)
    sparse_bytes = kt_bytes + 2 * batch * KV_HEADS * 260 * D * 2
    row("rocket decode layer, every page scored (graph)", graphed(rocket_layer), sparse_bytes)
    return rows


def batched_rows(copy_tbs: float) -> list[dict]:
    """RocketKV's decode attention at large batches after eviction (2304 tokens: 2048 kept + 256 generated), the
    regime of the 32k largest-batch run: KT scoring (top-r 128, the preset's) per scoring tile width, and sparse
    attention over 65 pages of 4 per (tokens per tile, stages)."""
    rows = []
    row = partial(timed_row, rows, copy_tbs)
    n, ps = 2304, 4
    tiles_default, block_p_default = decode_module.TILES[2], kt_module._BLOCK_P
    for batch in (64, 128):
        blocks = batch * n // BS
        k, v, tables, lens, q = paged_inputs(batch, n)
        kt = random_kt(blocks, BS // ps)
        n_pages = torch.full((batch,), n // ps, device="cuda", dtype=torch.int32)
        pages = torch.rand(batch, KV_HEADS, n // ps, device="cuda").argsort(-1)[..., :65].contiguous()
        shape = dict(batch=batch, tokens=n)
        for block_p in (32, 64, 128):
            kt_module._BLOCK_P = block_p
            row(f"kt_page_scores fp8, top-r 128, {block_p} pages a tile", partial(kt_page_scores, q, kt,
                tables, n_pages, 128, BS // ps), batch * KV_HEADS * (n // ps) * D, **shape)  # fmt: skip
        kt_module._BLOCK_P = block_p_default
        for tiles in [(16, 2), (32, 2), (64, 2), (64, 3), (128, 2)]:
            decode_module.TILES[2] = tiles
            row(f"sparse_decode 65 pages x 4, {tiles[0]} tokens x {tiles[1]} stages",
                partial(sparse_decode, q, k, v, tables, pages, lens, ps, D**-0.5),
                2 * batch * KV_HEADS * 65 * ps * D * 2, **shape)  # fmt: skip
        decode_module.TILES[2] = tiles_default
        del k, v
        torch.cuda.empty_cache()
    return rows


def timed_row(rows: list, copy_tbs: float, name: str, fn, nbytes: int, **extra) -> None:  # noqa: ANN001
    ms = do_bench(graphed(fn), warmup=25, rep=200, return_mode="median")
    rows.append(dict(kernel=name, ms=ms, mbytes=nbytes / 1e6, tb_s=nbytes / ms / 1e9,
                     vs_copy=nbytes / ms / 1e9 / copy_tbs, **extra))  # fmt: skip


def fp8_rows(copy_tbs: float) -> list[dict]:
    rows = []
    row = partial(timed_row, rows, copy_tbs)
    n = 131072  # one layer of a 128k sequence, batch 1
    blocks = n // BS
    k = torch.randn(blocks, KV_HEADS, BS, D, device="cuda").to(FP8)
    v = torch.randn_like(k, dtype=torch.float32).to(FP8)
    tables = torch.randperm(blocks, device="cuda").view(1, -1).int()
    lens = torch.full((1,), n, device="cuda", dtype=torch.int32)
    q = torch.randn(1, Q_HEADS, D, device="cuda", dtype=torch.bfloat16)
    default = decode_module.TILES[1]
    for tiles in [(64, 2), (64, 3), (128, 2), (128, 3), (128, 4), (256, 2)]:
        decode_module.TILES[1] = tiles
        name = f"paged_decode fp8 KV, {tiles[0]} tokens x {tiles[1]} stages"
        row(name, partial(paged_decode, q, k, v, tables, lens, 1.0), 2 * n * KV_HEADS * D, batch=1, tokens=n)
    decode_module.TILES[1] = default
    for m in (1, 16):
        kdim, ndim = 4096, 28672
        x = torch.randn(m, kdim, device="cuda", dtype=torch.bfloat16)
        shape = dict(batch=m, tokens=f"{kdim}x{ndim}")
        row("quantize rows (triton)", partial(layer_ops.quantize_fp8_rows, x), 3 * m * kdim, **shape)
        row("quantize rows (torch)", partial(quantize_per_token, x), 3 * m * kdim, **shape)
    return rows


def select_rows(copy_tbs: float) -> list[dict]:
    rows = []
    row = partial(timed_row, rows, copy_tbs)
    default_warps = kt_module.SELECT_WARPS
    for pages in [576, 1024, 4096]:  # RocketKV's kept 2048 + generated tokens at page 4; larger tables
        scores = torch.randn(1, KV_HEADS, pages, device="cuda")
        num = torch.full((1,), pages, device="cuda", dtype=torch.int32)
        shape = dict(batch=1, tokens=pages * 4)
        for warps in (1, 2, 4):
            kt_module.SELECT_WARPS = warps
            row(f"select 65 pages (triton, {warps} warps)", partial(select_pages, scores, num, 65),
                scores.numel() * 4, **shape)  # fmt: skip
        kt_module.SELECT_WARPS = default_warps
        row("select 65 pages (torch.topk)", partial(torch.topk, scores, 65, -1, sorted=False), scores.numel() * 4,
            **shape)  # fmt: skip
    # RocketKV's sparse attention at batch 1 (65 pages of 4 tokens a KV head): split over programs and combined,
    # or one program per KV head writing the output (SPLIT_MIN_TOKENS past the 260 tokens).
    k, v, tables, lens, q = paged_inputs(1, 2304)
    sel = torch.rand(1, KV_HEADS, 2304 // 4, device="cuda").argsort(-1)[..., :65].contiguous()
    default_min = decode_module.SPLIT_MIN_TOKENS
    for label, least in (("splits + combine", default_min), ("one split", 1 << 20)):
        decode_module.SPLIT_MIN_TOKENS = least
        row(f"sparse_decode 65 pages x 4, {label}", partial(sparse_decode, q, k, v, tables, sel, lens, 4, D**-0.5),
            2 * KV_HEADS * 65 * 4 * D * 2, batch=1, tokens=2304)  # fmt: skip
    decode_module.SPLIT_MIN_TOKENS = default_min
    # Many sequences (the decode-heavy serving run's ~82, the 32k largest batch's 124): today's selection against
    # the one of the 2026-11-23 serving run (every row searched in passes over its pages, one warp).
    for batch in (82, 124):
        for pages in (640, 1024):
            scores = torch.randn(batch, KV_HEADS, pages, device="cuda")
            num = torch.full((batch,), pages, device="cuda", dtype=torch.int32)
            shape = dict(batch=batch, tokens=pages * 4)
            row("select 65 pages (triton)", partial(select_pages, scores, num, 65), scores.numel() * 4, **shape)
            row("select 65 pages (triton, passes, 1 warp)", partial(select_in_passes, scores, num, 65),
                scores.numel() * 4, **shape)  # fmt: skip
    return rows


def select_in_passes(scores: torch.Tensor, num_pages: torch.Tensor, k: int) -> torch.Tensor:
    """`select_pages` as it ran before rows were held in registers: bisection passes over each row, one warp."""
    batch, heads, pages = scores.shape
    out = torch.empty(batch, heads, k, device=scores.device, dtype=torch.int64)
    kt_module._select_kernel[(batch, heads)](
        scores, num_pages, out, scores.stride(0), scores.stride(1), out.stride(0), out.stride(1), k,
        BLOCK=min(1024, kt_module.triton.next_power_of_2(pages)), K_PAD=kt_module.triton.next_power_of_2(k),
        ONE_BLOCK=False, num_warps=1, PDL=False,
    )  # fmt: skip
    return out


# Llama-3.1-8B's projections at decode (K, N, uses per step): q/k/v, o, gate/up, down, lm_head.
PROJECTIONS = [(4096, 6144, 32), (4096, 4096, 32), (4096, 28672, 32), (14336, 4096, 32), (4096, 128256, 1)]
TILES = [Tile(16, 256, 4, 4), Tile(16, 512, 4, 4), Tile(16, 512, 4, 3), Tile(16, 1024, 4, 3), Tile(32, 256, 4, 4),
         Tile(32, 512, 8, 3), Tile(64, 256, 8, 3), Tile(64, 128, 4, 4)]  # fmt: skip
ROW_TILES = [Tile(2, 1024, 4, 3, False), Tile(4, 512, 4, 3, False), Tile(8, 512, 4, 3, False),
             Tile(8, 1024, 8, 3, False), Tile(16, 256, 4, 3, False), Tile(16, 512, 8, 3, False),
             Tile(32, 256, 8, 2, False)]  # fmt: skip
MORE_ROW_TILES = [Tile(1, 2048, 4, 3, False), Tile(2, 2048, 4, 2, False), Tile(2, 1024, 8, 3, False),
                  Tile(2, 512, 4, 4, False), Tile(4, 1024, 4, 3, False), Tile(4, 1024, 8, 2, False)]  # fmt: skip


def gemm_rows(copy_tbs: float, one_row: bool = False) -> tuple[list[dict], dict]:
    """Decode GEMMs at Llama-3.1-8B's shapes: cuBLAS (bf16 F.linear; fp8 quantize + _scaled_mm) against the
    Triton GEMV at every candidate tile. Each timing replays 20 calls in one CUDA graph over enough weight copies
    that they do not stay in L2 (a model's next projection is another weight); returns the rows and, per
    (weight dtype, rows), the tile with the least time over a decode step's projections. `one_row`: one activation
    row only, more row tiles, and the best tile of each projection too."""
    rows, step, per_shape = [], {}, {}
    for m in (1,) if one_row else (1, 4, 16):
        for wdtype in ("bf16", "fp8"):
            for kdim, ndim, uses in PROJECTIONS:
                nbytes = kdim * ndim * (2 if wdtype == "bf16" else 1)
                copies = max(1, -(-(200 << 20) // nbytes))
                x = torch.randn(m, kdim, device="cuda", dtype=torch.bfloat16)
                ws = [torch.randn(ndim, kdim, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
                scale = torch.full((ndim, 1), 0.02 / 448 * 4, device="cuda")
                if wdtype == "fp8":
                    ws = [(w.float() / scale).clamp(-448, 448).to(FP8) for w in ws]
                base = ((lambda w, x=x: torch.nn.functional.linear(x, w)) if wdtype == "bf16"
                        else (lambda w, x=x, s=scale: fp8_linear_cuda(x, w, s)))  # fmt: skip
                shape = dict(batch=m, tokens=f"{kdim}x{ndim}", weights=wdtype)
                cands = [("cuBLAS" if wdtype == "bf16" else "quantize + _scaled_mm", None, base)]
                for tile in ROW_TILES + MORE_ROW_TILES if one_row else TILES + (ROW_TILES if m == 1 else []):
                    fn = partial(gemv, x, scale=scale if wdtype == "fp8" else None, tile=tile)
                    cands.append((f"gemv {tile.block_n}x{tile.block_k} w{tile.warps} s{tile.stages}"
                                  f"{'' if tile.dot else ' rows'}", tile, lambda w, fn=fn: fn(w)))  # fmt: skip
                for name, tile, fn in cands:
                    ms = do_bench(graphed_many(fn, ws, 20), warmup=5, rep=40, return_mode="median") / 20
                    rows.append(dict(kernel=f"GEMM {name}", ms=ms, mbytes=nbytes / 1e6, tb_s=nbytes / ms / 1e9,
                                     vs_copy=nbytes / ms / 1e9 / copy_tbs, **shape))  # fmt: skip
                    key = (wdtype, m, name)
                    step[key] = (tile, step.get(key, (tile, 0.0))[1] + ms * uses)
                    where = f"{wdtype} rows={m} {kdim}x{ndim}"
                    if tile is not None and (where not in per_shape or ms < per_shape[where]["ms"]):
                        per_shape[where] = dict(best=name, tile=repr(tile), ms=ms, vs_copy=nbytes / ms / 1e9 / copy_tbs)
                del ws
                torch.cuda.empty_cache()
    best = {}
    for (wdtype, m, name), (tile, ms) in step.items():
        if (wdtype, m) not in best or ms < best[wdtype, m][2]:
            best[wdtype, m] = (name, tile, ms)
    summary = {f"{w} rows={m}": dict(best=name, tile=repr(tile), step_ms=ms,
                                     baseline_step_ms=step[(w, m, "cuBLAS" if w == "bf16" else
                                                            "quantize + _scaled_mm")][1])
               for (w, m), (name, tile, ms) in best.items()}  # fmt: skip
    return rows, {**summary, **(per_shape if one_row else {})}


def graphed_many(fn, weights: list, calls: int):  # noqa: ANN001, ANN201
    for w in weights:
        fn(w)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(weights[i % len(weights)])
    return graph.replay


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
    p.add_argument("--only", choices=["fp8", "select", "batched", "gemv"],
                   help="fp8: FP8, selection, GEMM rows; batched: RocketKV attention at batch 64, 128; gemv: one-row "
                        "GEMV tiles per projection")  # fmt: skip
    args = p.parse_args()
    copy_tbs = copy_bandwidth()
    rows, best = [], {}
    if args.only is None:  # (1, 2304) and (64, 2304): a RocketKV sequence after eviction (2048 kept + 256 generated)
        for batch, n in [(1, 2304), (64, 2304), (1, 32768), (1, 131072), (8, 32768), (32, 8192)]:
            rows += case(batch, n, copy_tbs)
            torch.cuda.empty_cache()
    if args.only in (None, "batched"):
        rows += batched_rows(copy_tbs)
    if args.only in (None, "fp8"):
        rows += fp8_rows(copy_tbs)
    if args.only not in ("batched", "gemv"):
        rows += select_rows(copy_tbs)
    if args.only == "gemv":  # one row: every row tile, and each projection's best
        gemms, best = gemm_rows(copy_tbs, one_row=True)
        rows += gemms
    if args.only in (None, "fp8"):
        gemms, best = gemm_rows(copy_tbs)
        rows += gemms
    print(f"device: {torch.cuda.get_device_name()}, copy bandwidth {copy_tbs:.2f} TB/s (read + write)")
    print("| kernel | batch | tokens | ms | MB moved | TB/s | vs copy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['batch']} | {r['tokens']} | {r['ms']:.4f} | {r['mbytes']:.1f} | "
              f"{r['tb_s']:.2f} | {r['vs_copy']:.2f} |")  # fmt: skip
    print("Best GEMV tile per weight dtype and rows, by a decode step's projection time:")
    for key, b in best.items():
        if "step_ms" in b:
            print(f"  {key}: {b['best']} ({b['tile']}) {b['step_ms']:.3f} ms vs {b['baseline_step_ms']:.3f} ms cuBLAS")
        else:  # one projection
            print(f"  {key}: {b['best']} ({b['tile']}) {b['ms'] * 1e3:.1f} us, {b['vs_copy']:.2f} of copy")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_tb_s": copy_tbs, "rows": rows,
                       "best_gemv": best}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
