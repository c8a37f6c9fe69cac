"""Inter-token latency of decoding requests while a long prompt arrives, with and without chunked prefill.

`--decoding` requests of `--short` prompt tokens decode (greedy, `--new` tokens each); once each has its first token, a
`--long`-token prompt arrives. The engine is stepped here, one step at a time; every step's end is a timestamp, and a
decoding request's inter-token latency is the time between two of its tokens. Run once prefilling the long prompt in
one step and once in chunks (`max_num_tokens` = `--chunk`); prints the latency percentiles, the long prompt's TTFT and
the peak GPU memory, and with `--plot` draws each step's latency over time.

    python benchmarks/experiments/chunked_itl.py MODEL [--config Y] --long 131072 --chunk 8192 --plot itl.png \
        --json out.json
    python benchmarks/experiments/chunked_itl.py --arch llama-3.1-8b --config Y ...  # an architecture, random weights
    python benchmarks/experiments/chunked_itl.py --replot out.json --plot itl.png     # the plot of a saved run
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from rocket_trtllm import LLM, SamplingParams
from rocket_trtllm.bench import ARCHS, write_arch
from rocket_trtllm.llmapi.llm_args import LlmArgs


def run(ns: argparse.Namespace, chunked: bool) -> dict[str, Any]:
    base = LlmArgs.from_yaml(ns.config, model=ns.model) if ns.config else LlmArgs(model=ns.model)
    update = dict(enable_chunked_prefill=chunked, max_seq_len=ns.long + ns.new + 64,
                  max_num_tokens=ns.chunk if chunked else ns.long + ns.decoding,
                  max_batch_size=ns.decoding + 1, load_format=ns.load_format or base.load_format)  # fmt: skip
    llm = LLM(model=ns.model, llm_args=base.model_copy(update=update))
    try:
        return llm._executor.call(lambda engine: measure(engine, ns))
    finally:
        llm.shutdown()


def measure(engine: Any, ns: argparse.Namespace) -> dict[str, Any]:
    vocab = engine.hf_config.vocab_size
    gen = torch.Generator().manual_seed(0)

    def prompt(n: int) -> list[int]:
        return torch.randint(3, min(vocab, 30000), (n,), generator=gen).tolist()

    params = SamplingParams(max_tokens=ns.new, temperature=0.0, ignore_eos=True, detokenize=False)
    decoding = [engine.new_sequence(prompt(ns.short), params) for _ in range(ns.decoding)]
    for seq in decoding:
        engine.add(seq)
    while not all(s.output_token_ids for s in decoding):
        engine.step()
    for _ in range(3):  # a few decode-only steps before the long prompt arrives
        engine.step()
    long = engine.new_sequence(prompt(ns.long), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True,
                                                               detokenize=False))  # fmt: skip
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    engine.add(long)
    steps, seen = [], [len(s.output_token_ids) for s in decoding]
    ttft: Optional[float] = None
    while ttft is None or len(steps) < ns.after + ns.long // ns.chunk + 2:
        engine.step()
        now = time.perf_counter() - start
        got = [len(s.output_token_ids) for s in decoding]
        steps.append({"t": now, "tokens": sum(g - s for g, s in zip(got, seen)), "ctx": engine.stats[-1][
            "inflightBatchingStats"]["numCtxTokens"]})  # fmt: skip
        seen = got
        if ttft is None and long.output_token_ids:
            ttft = now
        if all(s.is_finished for s in decoding):
            break
    # The decoding requests' token times: the ends of the steps that gave them tokens (with the overlap scheduler a
    # call may only land the step before, giving none), and each gap between two of them.
    steps = [s for s in steps if s["tokens"]]
    gaps = [b["t"] - a["t"] for a, b in zip([{"t": 0.0}] + steps, steps)]
    for step, gap in zip(steps, gaps):
        step["gap"] = gap
    ordered = sorted(gaps)
    engine.abort(long)
    for seq in decoding:
        engine.abort(seq)
    return {"ttft_s": ttft, "itl_p50_ms": 1e3 * ordered[len(ordered) // 2],
            "itl_p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "itl_max_ms": 1e3 * max(gaps),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "steps": steps}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="a checkpoint folder (or --arch)")
    p.add_argument("--arch", choices=sorted(ARCHS), help="a public architecture, built with random weights")
    p.add_argument("--config", help="YAML of LLM options (the method; chunking and the step budget are set here)")
    p.add_argument("--load_format", choices=["auto", "dummy"])
    p.add_argument("--decoding", type=int, default=8, help="requests decoding when the long prompt arrives")
    p.add_argument("--short", type=int, default=512, help="their prompts' tokens")
    p.add_argument("--new", type=int, default=2048, help="tokens each of them generates at most")
    p.add_argument("--long", type=int, default=16384, help="the arriving prompt's tokens")
    p.add_argument("--chunk", type=int, default=1024, help="max_num_tokens with chunked prefill")
    p.add_argument("--after", type=int, default=20, help="decode steps measured after the long prompt's last chunk")
    p.add_argument("--plot", help="write each step's latency over time, both runs, to this image (needs matplotlib)")
    p.add_argument("--json")
    p.add_argument("--replot", help="plot a saved --json run instead of running")
    ns = p.parse_args()
    if ns.replot:
        with open(ns.replot) as f:
            saved = json.load(f)
        results = saved["results"]
        ns = argparse.Namespace(**{**saved["args"], "plot": ns.plot, "json": None})
    else:
        if ns.arch:
            ns.model, ns.load_format = str(write_arch(ns.arch, Path(tempfile.mkdtemp()))), "dummy"
        if ns.model is None:
            p.error("give a MODEL folder or --arch NAME")
        results = {name: run(ns, chunked) for name, chunked in (("one step", False), ("chunked", True))}
    for name, r in results.items():
        peak = f", peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""
        print(f"{name:>8}: TTFT {r['ttft_s']:.3f} s, decoding requests' ITL p50 {r['itl_p50_ms']:.1f} ms, p99 "
              f"{r['itl_p99_ms']:.1f} ms, max {r['itl_max_ms']:.1f} ms{peak}")  # fmt: skip
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"args": vars(ns), "results": results}, f, indent=1)
    if ns.plot:
        plot(results, ns)


def plot(results: dict[str, Any], ns: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, r in results.items():  # each gap drawn over the interval it spans
        ax.step([s["t"] for s in r["steps"]], [1e3 * s["gap"] for s in r["steps"]], where="pre", marker=".",
                label=f"{name} (TTFT {r['ttft_s']:.2f} s)")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the long prompt arrived")
    ax.set_ylabel("inter-token latency of the decoding requests (ms)")
    ax.set_title(f"{ns.decoding} requests decoding while a {ns.long}-token prompt prefills")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ns.plot, dpi=120)


if __name__ == "__main__":
    main()
