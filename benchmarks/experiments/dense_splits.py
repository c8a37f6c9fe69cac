"""Dense paged decode over long sequences at small batches, per split rule: one layer of Llama-3.1-8B (bf16 K/V in
shuffled 32-token blocks), each launch replayed in a CUDA graph, against the copy bandwidth. Dense's step at its
largest batch of 128k prompts (5 requests) ran at 1.53x its floor on the H200, against 1.16x at batch 1 and 1.007x at
24 requests of 32k: the programs a launch makes (rows x splits, `SPLIT_PROGRAMS_PER_SM` per SM) were the suspect.

    python benchmarks/experiments/dense_splits.py --json out.json
"""

import argparse
import json
from functools import partial

import torch
from kernel_bandwidth import copy_bandwidth, paged_inputs  # benchmarks/, the script's folder
from triton.testing import do_bench

from rocket_trtllm.kernels import paged_decode as decode_module
from rocket_trtllm.kernels.paged_decode import paged_decode

KV_HEADS, D = 8, 128
CASES = [(5, 131072), (4, 131072), (6, 131072), (1, 131072), (10, 32768), (24, 32768), (2, 131072)]
PER_SM = [1, 2, 3, 4, 6, 8, 16]  # programs a launch aims for, per SM


def graphed(fn) -> float:  # noqa: ANN001
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(5):
            fn()
    return do_bench(graph.replay, warmup=5, rep=100, return_mode="median") / 5 * 1e3


def case_rows(batch: int, n: int, copy_tbs: float) -> list[dict]:
    k, v, tables, lens, q = paged_inputs(batch, n)
    decode = partial(paged_decode, q, k, v, tables, lens, D**-0.5)
    nbytes = 2 * batch * n * KV_HEADS * D * 2
    rows, want = [], None
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for per_sm in PER_SM:
        decode_module.SPLIT_PROGRAMS_PER_SM, decode_module.SPLIT_MAX = per_sm, 1024
        splits = decode_module._num_splits(batch, KV_HEADS, n, 64, sms)
        programs = per_sm * sms
        out = decode().float()
        want = out if want is None else want
        ok = torch.allclose(out, want, atol=2e-2)
        us = graphed(decode)
        rows.append(dict(batch=batch, tokens=n, programs=programs, splits=splits, us=us,
                         vs_copy=nbytes / us / 1e6 / copy_tbs, ok=ok))  # fmt: skip
        print(f"batch {batch:3d} x {n:6d}: target {programs:5d} programs, {splits:3d} splits "
              f"({batch * KV_HEADS * splits:5d} programs): {us:9.1f} us, {nbytes / us / 1e6:5.2f} TB/s "
              f"({rows[-1]['vs_copy']:.2f} of copy){'' if ok else '  MISMATCH'}", flush=True)  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    ns = p.parse_args()
    copy_tbs = copy_bandwidth()
    print(f"copy bandwidth {copy_tbs:.2f} TB/s", flush=True)
    saved = decode_module.SPLIT_PROGRAMS_PER_SM, decode_module.SPLIT_MAX
    rows = []
    for batch, n in CASES:
        rows += case_rows(batch, n, copy_tbs)
        torch.cuda.empty_cache()
    decode_module.SPLIT_PROGRAMS_PER_SM, decode_module.SPLIT_MAX = saved
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"copy_tbs": copy_tbs, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
