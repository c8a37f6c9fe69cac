"""rocket-bench: prefill time, decode latency and throughput, and peak GPU memory, optionally against
the dense baseline measured in the same run.

    rocket-bench --arch llama-3.1-8b --random-weights --config configs/rocket.yaml \\
        --input-len 131072 --output-len 256 --batch-size 1 --compare dense

Three subcommands: `rocket-bench serve ...` loads a running OpenAI-compatible server (rocket-bench serve -h);
`rocket-bench --model MODEL throughput --dataset D --config Y` is trtllm-bench's offline throughput; and
`rocket-bench --model MODEL sweep --config Y --compare dense` (or `--arch NAME --random-weights sweep ...`) is the
end-to-end sweep over concurrencies, prefill included, of TensorRT-LLM's sparse-attention blog.
"""

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from .errors import ConfigError
from .llmapi.llm import LLM
from .llmapi.llm_args import LlmArgs
from .models.random_checkpoint import save_byte_tokenizer
from .sampling_params import SamplingParams

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.1-8b": (
        "LlamaConfig",
        dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
             rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, rms_norm_eps=1e-5),
    ),
    "llama-3.1-70b": (
        "LlamaConfig",
        dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
             num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=131072,
             rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, rms_norm_eps=1e-5),
    ),
    "mistral-7b": (
        "MistralConfig",
        dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
             rope_theta=1000000.0, sliding_window=None, rms_norm_eps=1e-5),
    ),
    "qwen3-8b": (
        "Qwen3Config",
        dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
             num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
             rope_theta=1000000.0, rms_norm_eps=1e-6, use_sliding_window=False, tie_word_embeddings=False),
    ),
    "qwen2.5-7b": (
        "Qwen2Config",
        dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
             num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
             rope_theta=1000000.0, rms_norm_eps=1e-6, use_sliding_window=False),
    ),
}  # fmt: skip


def write_arch(name: str, root: Path) -> Path:
    """A checkpoint folder with the public architecture's config.json and a byte tokenizer, no weights."""
    import transformers

    cls, kwargs = ARCHS[name]
    cfg = getattr(transformers, cls)(**kwargs, torch_dtype="bfloat16")
    cfg.architectures = [cls.replace("Config", "ForCausalLM")]
    path = root / name
    cfg.save_pretrained(path)
    save_byte_tokenizer(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rocket-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", nargs="?", help="checkpoint folder or .gguf file (or use --arch)")
    p.add_argument("--arch", choices=sorted(ARCHS), help="a public architecture, built without its checkpoint")
    p.add_argument("--random-weights", action="store_true", help="random weights (required with --arch)")
    p.add_argument("--config", help="YAML of LLM options (default: dense)")
    p.add_argument("--compare", choices=["dense"], help="also measure the dense baseline in the same run")
    p.add_argument("--fp8", action="store_true", help="FP8 weights (with --random-weights: quant_algo FP8)")
    p.add_argument("--tp-size", "--tp_size", dest="tp_size", type=int, default=1, help="tensor-parallel ranks (GPUs)")
    p.add_argument("--input-len", type=int, default=32768, help="prompt tokens (random ids)")
    p.add_argument("--output-len", type=int, default=256, help="tokens each request generates (ignore_eos)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--batch-size", type=int, default=1, help="requests decoding together")
    group.add_argument("--max-batch", action="store_true", help="the largest batch whose KV fits in memory")
    p.add_argument("--enable_chunked_prefill", "--enable-chunked-prefill", action="store_true",
                   help="prefill in chunks of --max_num_tokens (default: each prompt in one step)")  # fmt: skip
    p.add_argument("--max_num_tokens", "--max-num-tokens", type=int, default=8192,
                   help="with --enable_chunked_prefill: a step's token budget (default 8192)")  # fmt: skip
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--profile", help="after the run, profile a prefill step and 32 decode steps (torch.profiler) of "
                   "fresh requests and write where each step's time goes to this text file")  # fmt: skip
    p.add_argument("--profile-batch", type=int, default=1, help="how many requests --profile decodes together")
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.model and not args.arch:
        p.error("give a MODEL folder or --arch NAME")
    if args.fp8 and not args.random_weights:
        p.error("--fp8 makes random fp8 weights: add --random-weights (a real FP8 checkpoint needs no flag)")
    if args.profile_batch > args.batch_size and not args.max_batch:
        p.error(f"--profile-batch {args.profile_batch} is more than --batch-size {args.batch_size}: the pool and the "
                "scheduler are sized for the run's batch")  # fmt: skip
    if args.arch and not args.random_weights:
        p.error("--arch builds a model without its checkpoint: add --random-weights")
    if args.input_len < 1 or args.output_len < 2:
        p.error("--input-len must be >= 1 and --output-len >= 2")
    return args


def kept_len(args: LlmArgs, input_len: int) -> int:
    sparse = args.sparse_attention_config
    budget = getattr(sparse, "prompt_budget", None)
    return min(input_len, budget) if budget else input_len


PROFILE_STEPS = 32  # decode steps `--profile` records


def profile_tokens(n: int) -> int:
    """New tokens a profiled request needs: each of the `n` prefill steps also decodes the requests before it, so
    the first one must outlive every prefill, the warm-up and the profiled steps."""
    return n + PROFILE_STEPS + 8


def build_args(model: str, config: Optional[str], ns: argparse.Namespace, batch: int) -> LlmArgs:
    base = LlmArgs.from_yaml(config, model=model) if config else LlmArgs(model=model)
    output = max(ns.output_len, profile_tokens(ns.profile_batch)) if ns.profile else ns.output_len
    seq = ns.input_len + output
    kv = base.kv_cache_config
    chunked = ns.enable_chunked_prefill or base.enable_chunked_prefill
    if batch > 0:  # size the pool to the run (and the profile's requests), so peak memory compares what each needs
        # (a chunked prompt holds its whole prompt's blocks until its last chunk)
        held = max(ns.input_len, kept_len(base, ns.input_len) + output) if chunked else kept_len(base, ns.input_len)
        tokens = batch * (held + output + kv.tokens_per_block)
        kv = kv.model_copy(update={"max_tokens": tokens})
    graphs = base.cuda_graph_config
    update = dict(
        cuda_graph_config=graphs.model_copy(update={"enable_padding": True}) if graphs else None,
        max_seq_len=max(seq, base.max_seq_len or 0),
        # A prompt must fit one step beside the requests already decoding, or none is admitted until they all
        # finish; no more than that, since the pool gets what the largest step's activations leave (a preset's
        # 128k-token steps would take 13 GB from a 32k run's pool). Chunked: the budget asked for.
        max_num_tokens=ns.max_num_tokens if chunked else ns.input_len + (batch if batch > 0 else 2048),
        enable_chunked_prefill=chunked,
        max_batch_size=batch if batch > 0 else base.max_batch_size,  # --max-batch: the scheduler limits it
        kv_cache_config=kv,
        load_format="dummy" if ns.random_weights else "auto",
        tensor_parallel_size=ns.tp_size,
        quant_config=base.quant_config.model_copy(update={"quant_algo": "FP8"}) if ns.fp8 else base.quant_config,
    )
    return base.model_copy(update=update)


def run_one(name: str, llm_args: LlmArgs, ns: argparse.Namespace, batch: int, copy_bpms: float) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
    llm = LLM(model=llm_args.model, llm_args=llm_args)
    try:
        if batch <= 0:  # --max-batch: what the pool can hold
            per_request = llm.engine.pool.blocks_for(kept_len(llm_args, ns.input_len) + ns.output_len)
            batch = max(1, llm.engine.pool.allocator.num_blocks // per_request)
            llm.engine.scheduler.max_batch_size = batch
        prompts = random_prompts(batch, ns.input_len, seed=0)
        params = SamplingParams(max_tokens=ns.output_len, temperature=0.0, ignore_eos=True, detokenize=False)
        # Warm up every path the run takes: a prompt past the eviction budget, and a few decode steps; its own
        # tokens, so that no prompt of the run finds it in the prefix cache (the dense run may have one). Chunked, a
        # prompt of the run's length for every method: the same chunks, so the same attention shapes (cuDNN builds
        # a graph per new shape: 3.3 ms a call on a 128k prompt's second chunk on the H200, docs/log/benchmarks.md).
        warm_len = ns.input_len if llm_args.enable_chunked_prefill else kept_len(llm_args, ns.input_len) + 512
        warm = random_prompts(1, min(ns.input_len, warm_len), seed=1)[0]
        llm.generate(warm, SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False), use_tqdm=False)
        llm.get_stats()
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        total = time.perf_counter() - start
        stats = llm.get_stats()
        snap = llm.snapshot()
        runner = llm.engine.runner
        # Per request, what its attention read each step (attended K/V plus KT pages), as the engine counts it.
        step_bytes = {"weights": weight_bytes(llm), "per_request": snap["meanAttentionBytesPerStep"]}
        if ns.profile:
            profiled = random_prompts(ns.profile_batch, ns.input_len, seed=2)  # unseen: no prefix-cache hits
            write_profile(llm, profiled, f"{ns.profile}.{name}.txt" if ns.compare else ns.profile)
    finally:
        llm.shutdown()
    prefill_steps = [s for s in stats if s["inflightBatchingStats"]["numContextRequests"]]
    decode_steps = [s for s in stats if not s["inflightBatchingStats"]["numContextRequests"]]
    # Decode speed at the largest batch that decoded together (all of them, unless the pool could
    # not hold every request at once); the median skips the CUDA-graph captures.
    decoded = max((s["inflightBatchingStats"]["numGenRequests"] for s in decode_steps), default=0)
    decode = [s["iterLatencyMS"] for s in decode_steps if s["inflightBatchingStats"]["numGenRequests"] == decoded]
    decode_ms = statistics.median(decode) if decode else 0.0

    def peak(steps: list[dict[str, Any]]) -> Optional[float]:
        return max((s["gpuPeakMemUsage"] for s in steps), default=0) / 2**30 if cuda else None

    decoded_bytes = decoded * step_bytes["per_request"] + step_bytes["weights"]
    graphed = runner.graph_bucket(decoded) > 0  # never on the CPU
    if runner.graph_sizes and not graphed:
        print(
            f"rocket-bench: {name} decoded {decoded} requests a step, which no CUDA graph covers (captured: up to "
            f"{runner.graph_sizes[-1]}): its decode steps ran eagerly; see cuda_graph_config",
            file=sys.stderr,
        )
    result = {
        "config": name,
        "batch_size": batch,
        "decode_batch": decoded,
        "input_len": ns.input_len,
        "output_len": ns.output_len,
        "prefill_s": sum(s["iterLatencyMS"] for s in prefill_steps) / 1e3,
        "decode_ms_per_step": decode_ms,  # median over full-batch decode steps
        "decode_graphs": graphed,  # whether those steps replayed a CUDA graph
        "decode_tokens_per_s": decoded * 1e3 / decode_ms if decode_ms else 0.0,
        "end_to_end_s": total,
        # What one full-batch decode step must read (weights once, KV attended, KT scored) over the
        # measured copy bandwidth: the step's floor, and how far the measured step is from it.
        "decode_floor_ms": decoded_bytes / copy_bpms if copy_bpms else None,
        "kept_prompt_tokens": snap["lastKeptPromptTokens"],
        "tokens_attended_per_step": snap["meanTokensAttendedPerStep"],
        # Peaks while serving the run (weights, KV pool, activations), not while loading.
        "peak_gpu_memory_gib": peak(stats) if cuda else None,
        "peak_prefill_gib": peak(prefill_steps),
        "peak_decode_gib": peak(decode_steps),
    }
    del llm
    gc.collect()
    return result


def random_prompts(n: int, length: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (length,), generator=gen).tolist() for _ in range(n)]


def write_profile(llm: LLM, prompts: list[list[int]], path: str, steps: int = PROFILE_STEPS) -> None:
    """Profile requests over `prompts` on the engine thread, the first (prefill) step and then `steps` decode steps
    of all of them together, and write the summary: wall time per step, the GPU's busy time in it, and the kernels
    and host functions that take the time."""
    from torch.profiler import ProfilerActivity, profile

    def run(engine: Any) -> tuple[Any, float, Any, float, int, int]:
        params = SamplingParams(max_tokens=profile_tokens(len(prompts)), temperature=0.0, ignore_eos=True,
                                detokenize=False)  # fmt: skip
        seqs = [engine.new_sequence(p[: engine.max_seq_len - params.max_tokens], params) for p in prompts]
        for seq in seqs:
            engine.add(seq)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prefill:
            start = time.perf_counter()
            engine.step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            prefill_s = time.perf_counter() - start
        while min(len(seq.output_token_ids) for seq in seqs) < 4:  # the other prefills, graph warm-up outside
            engine.step()
        decoding = len(engine.scheduler.running)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                engine.step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        for seq in seqs:
            engine.abort(seq)
        return prof, wall, prefill, prefill_s, decoding, seqs[0].prompt_len

    prof, wall, prefill, prefill_s, decoding, prompt_len = llm._executor.call(run)
    events = prof.key_averages()
    device_us = sum(e.self_device_time_total for e in events) / steps
    step_ms = wall / steps * 1e3
    busy = f"; GPU kernel time per step: {device_us / 1e3:.3f} ms" if torch.cuda.is_available() else ""
    lines = [f"{steps} decode steps, batch {decoding}, {prompt_len}-token prompts (a prefill step below)",
             f"wall per step: {step_ms:.3f} ms{busy}", "",
             "By GPU time:", events.table(sort_by="self_device_time_total", row_limit=25), "",
             "By host time:", events.table(sort_by="self_cpu_time_total", row_limit=25), "",
             f"The first prefill step: {prefill_s:.3f} s", "By GPU time:",
             prefill.key_averages().table(sort_by="self_device_time_total", row_limit=30), "",
             "By host time:", prefill.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)]  # fmt: skip
    Path(path).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:2]))


def copy_bandwidth() -> float:
    """Bytes per millisecond a device-to-device copy moves (read + write)."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    y.copy_(x)
    start.record()
    for _ in range(20):
        y.copy_(x)
    end.record()
    end.synchronize()
    return 2 * 20 * x.numel() / start.elapsed_time(end)


def weight_bytes(llm: LLM) -> float:
    """Weight bytes a decode step reads: all but the embedding table (a lookup), the tied head included."""
    model = llm.engine.model
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    if model.tie_word_embeddings:
        weights += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    return float(weights)


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["config", "batch_size", "decode_batch", "prefill_s", "decode_ms_per_step", "decode_floor_ms",
            "decode_tokens_per_s", "peak_prefill_gib", "peak_decode_gib", "kept_prompt_tokens",
            "tokens_attended_per_step"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def subcommand(argv: list[str]) -> Optional[tuple[str, dict[str, Any], list[str]]]:
    """(name, the options given before it, the subcommand's own arguments) when `argv` names a subcommand."""
    at = next((i for i, a in enumerate(argv) if a in SUBCOMMANDS), None)
    if at is None:
        return None
    before = argparse.ArgumentParser(add_help=False)
    before.add_argument("--model", "--model_path", dest="model")
    if argv[at] == "sweep":  # a public architecture too
        before.add_argument("--arch", choices=sorted(ARCHS))
        before.add_argument("--random-weights", action="store_true", default=None)
    known, unknown = before.parse_known_args(argv[:at])
    if unknown:
        allowed = "--model MODEL" + (", --arch NAME, --random-weights" if argv[at] == "sweep" else "")
        raise SystemExit(f"rocket-bench: before '{argv[at]}' only {allowed} go, got {' '.join(unknown)}")
    return argv[at], {k: v for k, v in vars(known).items() if v is not None}, argv[at + 1 :]


SUBCOMMANDS = ("serve", "throughput", "sweep")


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `rocket-bench NAME` (its flags; the docs' CLI reference reads it too)."""
    p = argparse.ArgumentParser(prog=f"rocket-bench {name}", formatter_class=argparse.RawDescriptionHelpFormatter)
    if name == "serve":
        from .serve import benchmark

        p.description = benchmark.__doc__
        benchmark.add_arguments(p)
    elif name == "throughput":
        from . import throughput

        p.description = throughput.__doc__
        throughput.add_arguments(p)
    else:
        from . import sweep

        p.description = sweep.__doc__
        sweep.add_arguments(p)
    return p


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    picked = subcommand(argv)
    if picked is not None:
        name, given, rest = picked
        p = subcommand_parser(name)
        if name == "serve":
            from .serve import benchmark

            sub = p.parse_args(rest)
            sub.model = sub.model or given.get("model")
            benchmark.main(sub)
        elif name == "throughput":
            from . import throughput

            if "model" not in given:
                p.error("give the model before the subcommand: rocket-bench --model MODEL throughput ...")
            throughput.main(given["model"], p.parse_args(rest))
        else:
            from . import sweep

            p.set_defaults(**given)
            sub = p.parse_args(rest)
            sweep.check_arguments(p, sub)
            sweep.main(sub)
        return
    ns = parse_args(argv)
    copy_bpms = copy_bandwidth() if torch.cuda.is_available() else 0.0
    model = ns.model or str(write_arch(ns.arch, Path(tempfile.mkdtemp())))
    batch = 0 if ns.max_batch else ns.batch_size
    runs = [(Path(ns.config).stem if ns.config else "dense", ns.config)]
    if ns.compare == "dense":
        runs.append(("dense", None))
    rows = []
    try:
        for name, config in runs:
            rows.append(run_one(name, build_args(model, config, ns, batch), ns, batch, copy_bpms))
    except ConfigError as e:
        sys.exit(f"rocket-bench: {e}")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "runs": rows}
    if copy_bpms:
        out["copy_tb_s"] = copy_bpms / 1e9
    if len(rows) == 2:
        a, b = rows
        out["ratios_vs_dense"] = {
            "decode_tokens_per_s": a["decode_tokens_per_s"] / b["decode_tokens_per_s"],
            "decode_ms_per_step": a["decode_ms_per_step"] / b["decode_ms_per_step"],
            "prefill_s": a["prefill_s"] / b["prefill_s"],
            "peak_gpu_memory": (a["peak_gpu_memory_gib"] / b["peak_gpu_memory_gib"])
            if b["peak_gpu_memory_gib"]
            else None,
        }
    print(table(rows))
    if "ratios_vs_dense" in out:
        print("ratios vs dense:", json.dumps(out["ratios_vs_dense"]))
    if ns.json:
        Path(ns.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
