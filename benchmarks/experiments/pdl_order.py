"""Compile the decode step's PDL kernels for sm90 (no GPU needed) and check in their PTX that no global load comes
before `griddepcontrol.wait` (a load hoisted above the wait would read the kernel before's output early). The GEMV
is left out: it loads its first weight tile before the wait on purpose; so do the RMSNorms with their EARLY switch
(their weight), checked with it off and counted with it on.

    python benchmarks/experiments/pdl_order.py
"""

import inspect

from triton import compile as triton_compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from rocket_trtllm.kernels import kt_predict, layer_ops, paged_decode

BF16 = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "x_ptr": "*bf16", "d_ptr": "*bf16", "w_ptr": "*bf16",
        "out_ptr": "*bf16", "lo_ptr": "*fp8e5", "hi_ptr": "*fp8e5", "tables_ptr": "*i32", "lens_ptr": "*i32",
        "pages_ptr": "*i32", "scale": "fp32", "scale_value": "fp32", "eps": "fp32"}  # fmt: skip
KERNELS = [
    (paged_decode._decode_split_kernel, {"pages_ptr": "*i64"},
     dict(G=4, G_PAD=16, D=128, BS=32, BLOCK_N=64, SPARSE=True, PS=4, IEEE=False, DIRECT=False, PDL=True, FIRST=False)),
    (paged_decode._combine_kernel, {"po_ptr": "*fp32"}, dict(D=128, S_PAD=8, PDL=True, FIRST=False)),
    (kt_predict._kt_bounds_kernel, {"kt_ptr": "*fp8e5"},
     dict(G=4, G_PAD=16, D=128, TOPR=128, PPB=8, GROUP=16, BLOCK_P=64, DOT=kt_predict.tl.float16, SIGN=True,
          PER_HEAD=False, PDL=True)),
    (kt_predict._score_select_kernel, {"out_ptr": "*i64"},
     dict(G=4, G_PAD=4, C_PAD=16, BLOCK=1024, K_PAD=128, PER_HEAD=False, PDL=True)),
    (kt_predict._group_scores_kernel, {"bounds_ptr": "*fp32", "out_ptr": "*fp32"},
     dict(G=4, G_PAD=4, C_PAD=16, BLOCK_P=64, NEWEST=True, PER_HEAD=False, PDL=True)),
    (kt_predict._select_kernel, {"scores_ptr": "*fp32", "out_ptr": "*i64"},
     dict(BLOCK=1024, K_PAD=128, ONE_BLOCK=True, PDL=True)),
    (layer_ops._add_rms_norm_kernel, {}, dict(BLOCK=4096, PDL=True, EARLY=0)),
    (layer_ops._quantize_fp8_kernel, {"out_ptr": "*fp8e4nv"}, dict(BLOCK=1024, PDL=True)),
    (layer_ops._argmax_chunks_kernel, {"x_ptr": "*fp32", "val_ptr": "*fp32", "idx_ptr": "*i32"},
     dict(BLOCK=4096, PDL=True)),
    (layer_ops._argmax_rows_kernel, {"val_ptr": "*fp32", "idx_ptr": "*i32", "out_ptr": "*i64"},
     dict(BLOCK=64, PDL=True)),
    (layer_ops._rms_norm_kernel, {}, dict(BLOCK=4096, PDL=True, EARLY=0)),
    (layer_ops._silu_mul_kernel, {}, dict(BLOCK=1024, PDL=True)),
    (layer_ops._rotary_kernel, {}, dict(HALF=64, H_PAD=64, PDL=True)),
]  # fmt: skip


def ptx(fn, types: dict, consts: dict) -> str:
    names = list(inspect.signature(fn.fn).parameters)
    sig = {n: "constexpr" if n in consts else types.get(n, BF16.get(n, "*fp32" if n.endswith("_ptr") else "i32"))
           for n in names}  # fmt: skip
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    return triton_compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]


def main() -> None:
    bad = 0
    for fn, types, consts in KERNELS:
        lines = [line.strip() for line in ptx(fn, types, consts).splitlines()]
        wait = next((i for i, line in enumerate(lines) if "griddepcontrol.wait" in line), None)
        load = next((i for i, line in enumerate(lines) if "ld.global" in line), None)
        ok = wait is not None and (load is None or load > wait)
        bad += not ok
        verdict = "ok" if ok else "LOAD FIRST"
        print(f"{fn.fn.__name__:24s} wait at PTX line {wait}, first global load at {load}: {verdict}")
        if "EARLY" in consts:  # as launched: what it reads before the wait on purpose (weights)
            lines = [line.strip() for line in ptx(fn, types, {**consts, "EARLY": 1}).splitlines()]
            wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
            early = sum("ld.global" in line for line in lines[:wait])
            print(f"{'':24s} with EARLY=1: {early} global loads before the wait (its static inputs)")
    raise SystemExit(bad)


if __name__ == "__main__":
    main()
