"""rocket-bench sweep: end to end as trtllm-bench measures it, prefill included, one point per concurrency.

    rocket-bench --arch llama-3.1-8b --random-weights sweep --config configs/rocket.yaml --compare dense \\
        --input-len 8192 --output-len 1024 --concurrency 1 4 16 64 max --json e2e-8k.json --plot e2e-8k.png

Each method (a `--config` YAML, named by its file; `--compare dense` adds the dense baseline) loads once and runs
every point. A point keeps `--concurrency` requests in flight (a closed loop, as trtllm-bench's `--concurrency`: a
new request joins the step after one finishes); `max` is the most requests the method's KV pool holds at once.
Prompts are random token ids of exactly `--input-len` (no shared prefix), each generating exactly `--output-len`
tokens (ignore_eos). Per point: output tokens/s per GPU, tokens/s per user (output tokens over each request's first
to last token: 1/TPOT) and end to end (TTFT included), TTFT and TPOT, peak GPU memory, and where the time went:
prefill and decode step seconds, the mean decode batch against the concurrency (idle slots), the decode step
against its byte floor and prefill against its FLOP floor. A concurrency the pool cannot hold at once is left to
`max`'s point (the rest would only queue). `--from-json` merges earlier runs' points (run a
point at a time on a machine with a time limit, then plot them together).
"""

import argparse
import gc
import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
from tqdm.auto import tqdm

from .errors import ConfigError, RequestError
from .llmapi.executor import GenerationResult
from .llmapi.llm import LLM
from .llmapi.llm_args import LlmArgs
from .sampling_params import SamplingParams
from .sweep_report import DENSE, MAX, merge, plot, ratios, row, table

GRAPH_CEILING = 1024  # CUDA-graph batch sizes a sweep may use (captured when first needed)


def concurrency(value: str) -> Union[int, str]:
    if value == MAX:
        return MAX
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a concurrency is an integer >= 1 or 'max'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a concurrency is an integer >= 1 or 'max'")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .bench import ARCHS

    p.add_argument("--model", help="checkpoint folder or .gguf file (or --arch); may also go before 'sweep'")
    p.add_argument("--arch", choices=sorted(ARCHS), help="a public architecture, built without its checkpoint")
    p.add_argument("--random-weights", action="store_true", help="random weights (required with --arch)")
    p.add_argument("--fp8", action="store_true", help="FP8 weights (with --random-weights: quant_algo FP8)")
    p.add_argument("--config", nargs="+", default=[],
                   help="YAML of LLM options, one method each, named by its file (default: dense)")  # fmt: skip
    p.add_argument("--compare", choices=[DENSE], help="also run the dense baseline (same engine, no sparse method)")
    p.add_argument("--input-len", type=int, default=8192, help="prompt tokens (random ids)")
    p.add_argument("--output-len", type=int, default=1024, help="tokens each request generates (ignore_eos)")
    p.add_argument("--concurrency", type=concurrency, nargs="+", default=[1, 4, 16, 64, MAX],
                   help="requests in flight, one point each; 'max': the most the KV pool holds")  # fmt: skip
    p.add_argument("--num-requests", type=int,
                   help="requests per point (default: twice its concurrency, at least 2)")  # fmt: skip
    p.add_argument("--max-num-tokens", type=int,
                   help="a step's token budget (default: the config's, or a prompt beside a full batch)")  # fmt: skip
    p.add_argument("--enable-chunked-prefill", action="store_true", help="prefill prompts in chunks of the budget")
    p.add_argument("--tp-size", type=int, default=1, help="tensor-parallel ranks (GPUs); throughput is per GPU")
    p.add_argument("--seed", type=int, default=0, help="the random prompts' seed")
    p.add_argument("--json", help="write the points and the ratios to this JSON file")
    p.add_argument("--plot", help="draw tokens/s per user against tokens/s per GPU to this image (needs matplotlib)")
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="no run: merge these sweeps' points (a later file's replaces an earlier one's)")  # fmt: skip


def check_arguments(p: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    if ns.from_json:
        return
    if not ns.model and not ns.arch:
        p.error("give a MODEL (--model) or --arch NAME")
    if ns.arch and not ns.random_weights:
        p.error("--arch builds a model without its checkpoint: add --random-weights")
    if ns.fp8 and not ns.random_weights:
        p.error("--fp8 makes random fp8 weights: add --random-weights (a real FP8 checkpoint needs no flag)")
    if ns.input_len < 1 or ns.output_len < 2:
        p.error("--input-len must be >= 1 and --output-len >= 2")
    if ns.num_requests is not None and ns.num_requests < 1:
        p.error("--num-requests must be >= 1")
    names = [method_name(c) for c in ns.config] + ([DENSE] if ns.compare else [])
    if len(set(names)) < len(names):
        p.error(f"each method needs its own name (the config's file name): got {', '.join(names)}")


def method_name(config: Optional[str]) -> str:
    return Path(config).stem if config else DENSE


# ---- one method's LLM --------------------------------------------------------------------------------------------


def method_args(model: str, config: Optional[str], ns: argparse.Namespace) -> LlmArgs:
    """The config's options, with what the sweep fixes: lengths, the step budget, CUDA graphs over every batch a
    point can make, the weights' format."""
    base = LlmArgs.from_yaml(config, model=model) if config else LlmArgs(model=model)
    chunked = ns.enable_chunked_prefill or base.enable_chunked_prefill
    numbers = [c for c in ns.concurrency if c != MAX]
    widest = GRAPH_CEILING if MAX in ns.concurrency else max(numbers)
    if ns.max_num_tokens:
        budget = ns.max_num_tokens
    elif chunked:
        budget = base.max_num_tokens
    else:  # a prompt must fit a step beside the requests decoding, or it waits until they all finish
        budget = max(base.max_num_tokens, ns.input_len + min(widest, base.max_batch_size))
    graphs = base.cuda_graph_config
    if graphs is not None:
        top = max(graphs.max_batch_size, min(widest, base.max_batch_size))
        graphs = graphs.model_copy(update={"enable_padding": True, "max_batch_size": top})
    update = dict(
        max_seq_len=max(ns.input_len + ns.output_len, base.max_seq_len or 0),
        max_num_tokens=budget,
        enable_chunked_prefill=chunked,
        cuda_graph_config=graphs,
        load_format="dummy" if ns.random_weights else base.load_format,
        tensor_parallel_size=ns.tp_size,
        quant_config=base.quant_config.model_copy(update={"quant_algo": "FP8"}) if ns.fp8 else base.quant_config,
    )
    return base.model_copy(update=update)


WARM_SEED = 2**62  # the warm-up's prompts (the points' seeds stay far below): no prefix is shared with a point


def prompt(input_len: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (input_len,), generator=gen).tolist()


def params(output_len: int) -> SamplingParams:
    return SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True, detokenize=False)


def pool_capacity(llm: LLM, input_len: int, output_len: int) -> int:
    """The most requests of these lengths the pool (and the scheduler) hold at once."""
    engine = llm.engine
    seq = engine.new_sequence(prompt(input_len, seed=WARM_SEED), params(output_len))
    per_request = engine.scheduler.blocks_needed(seq)
    return max(1, min(engine.pool.allocator.num_blocks // per_request, engine.scheduler.max_batch_size))


def warm_up(llm: LLM, ns: argparse.Namespace) -> None:
    """Every path a point takes once, on prompts of its own: a prompt of the run's length, then decoding."""
    prompts = [prompt(ns.input_len, seed=WARM_SEED + i) for i in range(2)]
    llm.generate(prompts, params(min(8, ns.output_len)), use_tqdm=False)


# ---- one point ---------------------------------------------------------------------------------------------------


def closed_loop(llm: LLM, prompts: list[list[int]], output_len: int, concurrency: int, desc: str) -> list[Any]:
    """Run every prompt with at most `concurrency` in flight, a new one submitted as one finishes (on the engine's
    thread, so that it joins the next step); the finished requests' sequences, in submission order."""
    todo = list(reversed(prompts))
    results: list[Any] = []
    finished = threading.Event()
    lock = threading.Lock()
    done = [0]

    def submit() -> GenerationResult:
        seq = llm.engine.new_sequence(todo.pop(), params(output_len))
        result = GenerationResult(llm._executor, seq, None, streaming=False)
        results.append(result)
        return result

    def on_done(result: Any) -> None:
        with lock:
            done[0] += 1
            more = submit() if todo else None
            if done[0] == len(prompts):
                finished.set()
        if more is not None:
            llm._executor.submit(more)
            more.add_done_callback(on_done)

    with lock:
        first = [submit() for _ in range(min(concurrency, len(prompts)))]
    llm._executor.submit_all(first)  # they meet the same first step
    for result in first:
        result.add_done_callback(on_done)
    with tqdm(total=len(prompts), desc=desc, unit="req", leave=False) as bar:
        while not finished.wait(0.5):
            if llm.failure:
                raise RuntimeError(llm.failure)
            bar.update(done[0] - bar.n)
        bar.update(done[0] - bar.n)
    failed = [r.seq for r in results if r.seq.finish_reason == "error"]
    if failed:
        raise RuntimeError(f"request {failed[0].request_id} failed: {failed[0].error}")
    return [r.seq for r in results]


def run_point(
    llm: LLM, method: str, label: Union[int, str], concurrency: int, ns: argparse.Namespace, device: dict[str, Any]
) -> dict[str, Any]:
    n = ns.num_requests or max(2, 2 * concurrency)
    # Every method meets the same prompts at a point; no two points share one.
    seed = (ns.seed * len(ns.concurrency) + ns.concurrency.index(label)) * 10**6
    prompts = [prompt(ns.input_len, seed + i) for i in range(n)]
    before = llm.snapshot()
    llm._executor.call(lambda engine: engine.totals.update(gpu_peak_bytes=0))
    start = time.perf_counter()
    seqs = closed_loop(llm, prompts, ns.output_len, concurrency, f"{method} c={label}")
    duration = max(s.finish_time for s in seqs) - start
    after = llm.snapshot()
    delta = {k: after[k] - before[k] for k in TOTALS}
    tokens = sum(len(s.output_token_ids) for s in seqs)
    per_user = [(len(s.output_token_ids) - 1) / (s.finish_time - s.first_token_time) for s in seqs]
    e2e = [len(s.output_token_ids) / (s.finish_time - s.arrival_time) for s in seqs]
    ttft = [s.first_token_time - s.arrival_time for s in seqs]
    tpot = [(s.finish_time - s.first_token_time) / (len(s.output_token_ids) - 1) for s in seqs]
    decode_steps = delta["decode_step_count"]
    mean_batch = delta["decode_step_requests"] / decode_steps if decode_steps else 0.0
    # What one request's attention read per decode step, mean over the point's steps that decoded.
    read = delta["attention_bytes"] / delta["decode_steps"] if delta["decode_steps"] else 0.0
    floor_ms = (device["weight_bytes"] + mean_batch * read) / device["copy_bpms"] if device["copy_bpms"] else None
    flops = prefill_flops(llm, ns.input_len) * n
    point = {
        "method": method,
        "concurrency": concurrency,
        "concurrency_arg": label,
        "num_requests": n,
        "input_len": ns.input_len,
        "output_len": ns.output_len,
        "duration_s": duration,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / duration / ns.tp_size,
        "tokens_per_s_per_user": mean(per_user),
        "e2e_tokens_per_s_per_user": mean(e2e),
        "ttft_s": {"mean": mean(ttft), "p99": p99(ttft)},
        "tpot_s": {"mean": mean(tpot), "p99": p99(tpot)},
        "peak_gpu_memory_gib": after["gpu_peak_bytes"] / 2**30 if torch.cuda.is_available() else None,
        # Step seconds by kind: steps that prefill prompts (decoding the rest of the batch beside them), and
        # steps that only decode; the rest of the wall time the engine was between steps.
        "prefill_s": delta["prefill_step_seconds"],
        "decode_s": delta["decode_step_seconds"],
        "between_steps_s": duration - delta["prefill_step_seconds"] - delta["decode_step_seconds"],
        "prefill_steps": delta["prefill_step_count"],
        "decode_steps": decode_steps,
        "prompt_tokens": delta["prompt_tokens"],
        "mean_decode_batch": mean_batch,
        "decode_batch_fill": mean_batch / concurrency,
        "decode_step_ms": delta["decode_step_seconds"] / decode_steps * 1e3 if decode_steps else None,
        "decode_floor_ms": floor_ms,
        "prefill_tflops": flops / delta["prefill_step_seconds"] / 1e12 if delta["prefill_step_seconds"] else None,
        "prefill_floor_s": flops / device["matmul_flops"] if device["matmul_flops"] else None,
        "kept_prompt_tokens": after["lastKeptPromptTokens"],
    }
    return point


TOTALS = ("prefill_step_seconds", "decode_step_seconds", "prefill_step_count", "decode_step_count",
          "decode_step_requests", "decode_steps", "attention_bytes", "prompt_tokens")  # fmt: skip


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def p99(xs: list[float]) -> float:
    from .serve.benchmark import percentile

    return percentile(xs, 99)


def prefill_flops(llm: LLM, n: int) -> float:
    """FLOPs of one n-token prompt's prefill on this rank: the layers' projections (2 per weight a token) and causal
    attention (QK^T and PV over n(n+1)/2 pairs); the LM head computes the last token only."""
    model, shape = llm.engine.model, llm.engine.model.shape
    linear = sum(p.numel() for name, p in model.named_parameters() if ".layers." in name and p.dim() == 2)
    attention = 2 * shape.head_dim * shape.num_heads * n * (n + 1) * shape.num_layers
    return 2.0 * linear * n + attention


def device_ceilings(llm: LLM) -> dict[str, float]:
    """What the floors divide by: bytes a device copy moves per ms, the FLOP/s of a large bf16 matmul, and the bytes
    of weights a decode step reads."""
    from .bench import copy_bandwidth, weight_bytes

    out = {"weight_bytes": weight_bytes(llm), "copy_bpms": 0.0, "matmul_flops": 0.0}
    if torch.cuda.is_available():
        out["copy_bpms"] = copy_bandwidth()
        out["matmul_flops"] = matmul_flops()
    return out


def matmul_flops(n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    end.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3)


def run_method(model: str, config: Optional[str], ns: argparse.Namespace) -> tuple[list[dict[str, Any]], dict]:
    name = method_name(config)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    llm = LLM(model=model, llm_args=method_args(model, config, ns))
    try:
        capacity = pool_capacity(llm, ns.input_len, ns.output_len)
        device = device_ceilings(llm)
        warm_up(llm, ns)
        points, skipped = [], []
        for label in sorted(ns.concurrency, key=lambda c: math.inf if c == MAX else c):
            if label != MAX and label >= capacity and MAX in ns.concurrency:
                skipped.append(label)  # the pool holds no more than `max`'s point: it would queue the rest
                continue
            if label != MAX and label > capacity:
                tqdm.write(f"rocket-bench sweep: {name}'s pool holds {capacity} requests at once, fewer than "
                           f"concurrency {label}: the rest wait in the queue", file=sys.stderr)  # fmt: skip
            points.append(run_point(llm, name, label, capacity if label == MAX else label, ns, device))
            tqdm.write(row(points[-1]))
    finally:
        llm.shutdown()
    del llm
    gc.collect()
    info = {
        "capacity": capacity,
        "skipped_concurrencies": skipped,
        "copy_tb_s": device["copy_bpms"] / 1e9,
        "matmul_tflops": device["matmul_flops"] / 1e12,
    }
    return points, info


def main(ns: argparse.Namespace) -> dict[str, Any]:
    if ns.from_json:
        report = merge(ns.from_json)
    else:
        model = ns.model
        if model is None:
            from .bench import write_arch

            model = str(write_arch(ns.arch, Path(tempfile.mkdtemp())))
        runs = [*ns.config] or ([] if ns.compare else [None])
        runs += [None] if ns.compare else []
        report = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "model": ns.model or ns.arch,
            "input_len": ns.input_len,
            "output_len": ns.output_len,
            "tp_size": ns.tp_size,
            "methods": {},
            "points": [],
        }
        try:
            for config in runs:
                points, info = run_method(model, config, ns)
                report["methods"][method_name(config)] = {"config": config, **info}
                report["points"] += points
        except (ConfigError, RequestError) as e:
            raise SystemExit(f"rocket-bench sweep: {e}") from None
    report["ratios_vs_dense"] = ratios(report["points"])
    print(table(report["points"]))
    for method, r in report["ratios_vs_dense"].items():
        print(f"{method} vs dense: max throughput {r['max_throughput']:.2f}x; tokens/s per user "
              + ", ".join(f"c={c} {v:.2f}x" for c, v in r["tokens_per_s_per_user"].items()))  # fmt: skip
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=2))
    if ns.plot:
        title = f"{report.get('model')}, {report['input_len']}/{report['output_len']}, {report.get('device')}"
        plot(report["points"], ns.plot, title)
    return report
