"""Where a serving decode step goes: rocket-serve in this process on loopback, loaded by `rocket-bench serve` (a
closed loop) from another process, and per decode step the wall time, the GPU time of the model (CUDA events),
the CPU time of the engine thread outside the model, and the CPU time of the HTTP server's thread. A step whose
host threads together need more than its GPU time is bound by Python (one GIL for both threads).

    python benchmarks/serve_costs.py MODEL --config configs/rocket-long-context.yaml --load_format dummy \\
        --input-len 8192 --output-len 512 --concurrency 82 --prompts 164

On the CPU the model's time is its wall time in the engine thread (no GPU), e.g. with the shipped model:

    python benchmarks/serve_costs.py eval/model --input-len 256 --output-len 128 --concurrency 32 --prompts 64
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import deque

import torch


def thread_cpu(ident: int) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--config")
    p.add_argument("--load_format", default="auto")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--label", default="server", help="the client's label for this run")
    p.add_argument("--client-json", help="the client's JSON (rocket-bench serve --json): TTFT, TPOT, ITL")
    p.add_argument("--json", help="write the figures here")
    ns = p.parse_args()

    from rocket_trtllm import LLM
    from rocket_trtllm.llmapi.llm_args import LlmArgs
    from rocket_trtllm.serve.soak import HTTP_THREAD, local_server

    seq_len = ns.input_len + ns.output_len + 64
    overrides = dict(max_seq_len=seq_len, max_num_tokens=ns.input_len + 256, load_format=ns.load_format)
    args = LlmArgs.from_yaml(ns.config, model=ns.model, **overrides) if ns.config else LlmArgs(model=ns.model)
    args = args.model_copy(update=overrides)
    if args.kv_cache_config.max_tokens is None and not torch.cuda.is_available():  # the CPU's default pool holds 4
        kv = args.kv_cache_config.model_copy(update={"max_tokens": (ns.concurrency + 4) * seq_len})
        args = args.model_copy(update={"kv_cache_config": kv})
    llm = LLM(model=ns.model, llm_args=args)
    engine = llm.engine
    engine.stats = deque(maxlen=1 << 20)  # every step's stats, not the last 1000
    cuda = engine.device.type == "cuda"
    steps: list[tuple[bool, float, object, object, int]] = []  # (decode-only, model CPU s, CUDA events, batch)
    run = engine.runner.run

    def timed_run(batch, feed=None):  # noqa: ANN001, ANN202
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else [None, None]
        if cuda:
            events[0].record()
        t = time.thread_time()
        out = run(batch, feed)
        cpu_s = time.thread_time() - t  # the engine thread's CPU time in the model (on a GPU: inputs and launches)
        if cuda:
            events[1].record()
        steps.append((not batch.contexts, cpu_s, *events, len(batch.generations)))
        return out

    engine.runner.run = timed_run
    with local_server(llm, "m") as base_url:
        http = next(t.ident for t in threading.enumerate() if t.name == HTTP_THREAD)

        def client(output_len: int, prompts: int, *extra: str) -> None:
            subprocess.run([sys.executable, "-m", "rocket_trtllm.bench", "serve", "--base-url", base_url,
                            "--input-len", str(ns.input_len), "--output-len", str(output_len),
                            "--request-rate", "inf", "--num-prompts", str(prompts), *extra],
                           check=True, capture_output=not extra)  # fmt: skip

        client(32, 4)  # warm-up: compiles the kernels, captures the first graphs
        llm.get_stats()
        steps.clear()
        http0 = thread_cpu(http)
        t0 = time.perf_counter()
        extra = ["--max-concurrency", str(ns.concurrency), "--label", ns.label]
        client(ns.output_len, ns.prompts, *extra, *(["--json", ns.client_json] if ns.client_json else []))
        wall = time.perf_counter() - t0
        http_s = thread_cpu(http) - http0
    stats = llm.get_stats()
    if cuda:
        torch.cuda.synchronize()

    def gpu_ms(step: tuple) -> float:
        return step[2].elapsed_time(step[3]) if cuda else float("nan")

    decode = [st for st in steps if st[0]]
    prefill = [st for st in steps if not st[0]]
    walls = {True: [], False: []}
    for st in stats:
        walls[not st["inflightBatchingStats"]["numContextRequests"]].append(st["iterLatencyMS"])
    figures = {
        "label": ns.label,
        "wall_s": wall,
        "decode_steps": len(decode),
        "decode_mean_batch": statistics.fmean(st[4] for st in decode) if decode else 0,
        "decode_wall_ms_p50": statistics.median(walls[True]) if walls[True] else 0,
        "decode_gpu_ms_p50": statistics.median(map(gpu_ms, decode)) if decode else 0,
        "decode_model_cpu_ms_mean": statistics.fmean(st[1] for st in decode) * 1e3 if decode else 0,
        "decode_wall_s_total": sum(walls[True]) / 1e3,
        "prefill_steps": len(prefill),
        "prefill_wall_ms_mean": statistics.fmean(walls[False]) if walls[False] else 0,
        "prefill_gpu_ms_mean": statistics.fmean(map(gpu_ms, prefill)) if prefill else 0,
        "prefill_model_cpu_ms_mean": statistics.fmean(st[1] for st in prefill) * 1e3 if prefill else 0,
        "prefill_decodes_beside_mean": statistics.fmean(st[4] for st in prefill) if prefill else 0,
        "prefill_wall_s_total": sum(walls[False]) / 1e3,
        "http_cpu_ms_per_decode_step": http_s * 1e3 / max(1, len(decode)),
    }
    print(json.dumps(figures, indent=2))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(figures, f, indent=2)
    llm.shutdown()


if __name__ == "__main__":
    main()
