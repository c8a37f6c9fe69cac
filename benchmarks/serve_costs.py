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
import socket
import statistics
import subprocess
import sys
import threading
import time

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
    p.add_argument("--json", help="write the figures here")
    ns = p.parse_args()

    import uvicorn

    from rocket_trtllm import LLM
    from rocket_trtllm.llmapi.llm_args import LlmArgs
    from rocket_trtllm.serve.app import create_app

    seq_len = ns.input_len + ns.output_len + 64
    overrides = dict(max_seq_len=seq_len, max_num_tokens=ns.input_len + 256, load_format=ns.load_format)
    args = LlmArgs.from_yaml(ns.config, model=ns.model, **overrides) if ns.config else LlmArgs(model=ns.model)
    args = args.model_copy(update=overrides)
    if args.kv_cache_config.max_tokens is None and not torch.cuda.is_available():  # the CPU's default pool holds 4
        kv = args.kv_cache_config.model_copy(update={"max_tokens": (ns.concurrency + 4) * seq_len})
        args = args.model_copy(update={"kv_cache_config": kv})
    llm = LLM(model=ns.model, llm_args=args)
    engine = llm.engine
    cuda = engine.device.type == "cuda"
    steps: list[tuple[float, object, object, int]] = []  # decode steps: (model CPU s, start and end events, batch)
    run = engine.runner.run
    model_cpu = [0.0]  # the engine thread's CPU time in the model, every step

    def timed_run(batch, feed=None):  # noqa: ANN001, ANN202
        decode = not batch.contexts
        start = torch.cuda.Event(enable_timing=True) if cuda and decode else None
        if start is not None:
            start.record()
        t = time.thread_time()
        out = run(batch, feed)
        cpu_s = time.thread_time() - t  # this thread's CPU time in the model (its launches, on the GPU)
        model_cpu[0] += cpu_s
        if decode:
            end = None
            if cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
            steps.append((cpu_s, start, end, len(batch.generations)))
        return out

    engine.runner.run = timed_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(llm, "m"), host="127.0.0.1", port=port, log_level="warning"))
    idents: dict[str, int] = {}

    def serve() -> None:
        idents["http"] = threading.get_ident()
        server.run()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    bench = [sys.executable, "-m", "rocket_trtllm.bench", "serve", "--base-url", f"http://127.0.0.1:{port}/v1",
             "--input-len", str(ns.input_len), "--output-len", str(ns.output_len), "--request-rate", "inf"]  # fmt: skip
    subprocess.run([*bench, "--num-prompts", "4"], check=True, capture_output=True)  # warm-up
    engine_ident = llm._executor._thread.ident
    llm.get_stats()
    steps.clear()
    model_cpu[0] = 0.0
    cpu0 = {"engine": thread_cpu(engine_ident), "http": thread_cpu(idents["http"])}
    t0 = time.perf_counter()
    subprocess.run([*bench, "--num-prompts", str(ns.prompts), "--max-concurrency", str(ns.concurrency)], check=True)
    wall = time.perf_counter() - t0
    cpu = {k: thread_cpu(engine_ident if k == "engine" else idents["http"]) - v for k, v in cpu0.items()}
    stats = llm.get_stats()
    if cuda:
        torch.cuda.synchronize()
    decode_stats = [s for s in stats if not s["inflightBatchingStats"]["numContextRequests"]]
    prefill_s = sum(s["iterLatencyMS"] for s in stats if s["inflightBatchingStats"]["numContextRequests"]) / 1e3
    n = max(1, len(steps))
    gpu_ms = [a.elapsed_time(b) for _, a, b, _ in steps] if cuda else []
    model_cpu_s = model_cpu[0]
    figures = {
        "decode_steps": len(steps),
        "mean_batch": statistics.fmean(b for *_, b in steps) if steps else 0,
        "wall_s": wall,
        "prefill_step_s": prefill_s,
        "decode_step_ms_p50": statistics.median(s["iterLatencyMS"] for s in decode_stats) if decode_stats else 0,
        "gpu_ms_per_decode_step_p50": statistics.median(gpu_ms) if gpu_ms else None,
        "engine_model_cpu_ms_per_decode_step": statistics.fmean(c for c, *_ in steps) * 1e3 if steps else 0,
        "engine_cpu_ms_per_step_outside_model": (cpu["engine"] - model_cpu_s) * 1e3 / n,
        "http_cpu_ms_per_step": cpu["http"] * 1e3 / n,
        "note": "per decode step; CPU times over the whole run (prefill steps' host work included)",
    }
    print(json.dumps(figures, indent=2))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(figures, f, indent=2)
    server.should_exit = True
    thread.join(timeout=10)
    llm.shutdown()


if __name__ == "__main__":
    main()
