"""Time to first token of a conversation's later turns, with and without prefix caching, and the decode step of
RocketKV-MT against dense at the same history (random weights of a public architecture, or any checkpoint).

    python benchmarks/multiturn.py --arch llama-3.1-8b --history 32768 [--json out.json]   # on the GPU
    python benchmarks/multiturn.py --arch llama-3.1-8b --history 131072 --turns 2 --decode-only
    python benchmarks/multiturn.py MODEL --history 2048                                    # anywhere

Turn 1 prefills `--history` tokens; turns 2.. append a 64-token answer and a 32-token question each (after a
first conversation of the same shape, untimed, so that one-time costs such as kernel compiles stay out). Reported:
each turn's TTFT (a 1-token generation) with `enable_block_reuse` on and off, the ratio, and for dense and
rocket_mt the median decode step over `--decode-tokens` tokens after the last turn.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from rocket_trtllm import LLM, KvCacheConfig, SamplingParams
from rocket_trtllm.bench import ARCHS, write_arch

ROCKET_MT = {"algorithm": "rocket_mt", "prompt_budget": 2048, "topk": 64, "page_size": 4, "topr": 1.0}


def turns(history: int, count: int, seed: int = 0) -> list[list[int]]:
    """Each turn's whole prompt: the history, then for every later turn a 64-token answer and a 32-token question."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(10, 250, (history,), generator=gen).tolist()
    out = [prompt]
    for _ in range(count - 1):
        prompt = prompt + torch.randint(10, 250, (96,), generator=gen).tolist()
        out.append(prompt)
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def held() -> None:
    """What the GPU still holds once an LLM has shut down (its weights, pool and graphs are given back)."""
    if torch.cuda.is_available():
        print(f"after shutdown: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated", flush=True)


def ttft(llm: LLM, prompts: list[list[int]]) -> list[float]:
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True, detokenize=False)
    times = []
    for p in prompts:
        sync()
        start = time.perf_counter()
        llm.generate([p], params, use_tqdm=False)
        sync()
        times.append(time.perf_counter() - start)
    return times


def decode_step_ms(llm: LLM, prompt: list[int], tokens: int) -> float:
    llm.generate([prompt], SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True, detokenize=False),
                 use_tqdm=False)  # fmt: skip
    steps = [s["iterLatencyMS"] for s in llm.get_stats() if s["inflightBatchingStats"]["numGenRequests"] == 1
             and not s["inflightBatchingStats"]["numContextRequests"]]  # fmt: skip
    return statistics.median(steps[-tokens // 2 :])


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="checkpoint folder (or use --arch, random weights)")
    p.add_argument("--arch", choices=sorted(ARCHS))
    p.add_argument("--history", type=int, default=32768)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--decode-only", action="store_true", help="skip the TTFT runs (the decode step alone)")
    p.add_argument("--json")
    ns = p.parse_args(argv)
    model = str(write_arch(ns.arch, Path(tempfile.mkdtemp()))) if ns.arch else ns.model
    if model is None:
        p.error("give a MODEL folder or --arch NAME")
    load = "dummy" if ns.arch else "auto"
    prompts = turns(ns.history, ns.turns)
    longest = len(prompts[-1]) + ns.decode_tokens + 64
    common = dict(load_format=load, max_seq_len=longest, max_num_tokens=longest)
    report: dict[str, Any] = {"history": ns.history, "turns": ns.turns}
    for reuse in () if ns.decode_only else (False, True):
        with LLM(model, kv_cache_config=KvCacheConfig(enable_block_reuse=reuse), **common) as llm:
            ttft(llm, turns(ns.history, ns.turns, seed=1))  # another conversation first: one-time costs off the clock
            report[f"ttft_s_reuse_{reuse}"] = ttft(llm, prompts)
        held()
    if not ns.decode_only:
        off, on = report["ttft_s_reuse_False"][1:], report["ttft_s_reuse_True"][1:]
        report["later_turn_ttft_speedup"] = statistics.mean(a / b for a, b in zip(off, on))
    for name, sparse in (("dense", None), ("rocket_mt", ROCKET_MT)):
        with LLM(model, sparse_attention_config=sparse, **common) as llm:
            for prompt in prompts[:-1]:  # the conversation so far, cached
                llm.generate([prompt], SamplingParams(max_tokens=1, ignore_eos=True), use_tqdm=False)
            report[f"decode_ms_{name}"] = decode_step_ms(llm, prompts[-1], ns.decode_tokens)
        held()
    report["rocket_mt_decode_speedup"] = report["decode_ms_dense"] / report["decode_ms_rocket_mt"]
    print(json.dumps(report, indent=2))
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
