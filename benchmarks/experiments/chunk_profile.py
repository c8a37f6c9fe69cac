"""Where a chunked prompt's steps go: a lone prompt prefilled in chunks, each step timed, and the steps named by
`--profile` run under torch's profiler (the top operators by self time on the host and on the device, per step).

    python benchmarks/experiments/chunk_profile.py --arch llama-3.1-8b --config configs/rocket-long-context.yaml \\
        --long 131072 --chunk 8192 --profile 1 2 3
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from rocket_trtllm import LLM, SamplingParams
from rocket_trtllm.bench import ARCHS, write_arch
from rocket_trtllm.llmapi.llm_args import LlmArgs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="a checkpoint folder (or --arch)")
    p.add_argument("--arch", choices=sorted(ARCHS))
    p.add_argument("--config", help="YAML of LLM options")
    p.add_argument("--long", type=int, default=16384, help="the prompt's tokens")
    p.add_argument("--chunk", type=int, default=1024, help="max_num_tokens")
    p.add_argument("--profile", type=int, nargs="*", default=[1, 2], help="steps (from 0) to profile")
    p.add_argument("--top", type=int, default=15, help="operators listed per profiled step")
    ns = p.parse_args()
    load = "auto"
    if ns.arch:
        ns.model, load = str(write_arch(ns.arch, Path(tempfile.mkdtemp()))), "dummy"
    base = LlmArgs.from_yaml(ns.config, model=ns.model) if ns.config else LlmArgs(model=ns.model)
    update = dict(enable_chunked_prefill=True, max_num_tokens=ns.chunk, max_seq_len=ns.long + 64, max_batch_size=2,
                  load_format=load)  # fmt: skip
    llm = LLM(model=ns.model, llm_args=base.model_copy(update=update))
    try:
        llm._executor.call(lambda engine: run(engine, ns))
    finally:
        llm.shutdown()


def run(engine, ns: argparse.Namespace) -> None:  # noqa: ANN001
    cuda = torch.cuda.is_available()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, min(engine.hf_config.vocab_size, 30000), (ns.long,), generator=gen).tolist()
    seq = engine.new_sequence(prompt, SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True, detokenize=False))
    engine.add(seq)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step, total = 0, 0.0
    while not seq.output_token_ids:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        if step in ns.profile:
            with profile(activities=activities) as prof:
                engine.step()
                if cuda:
                    torch.cuda.synchronize()
        else:
            engine.step()
            if cuda:
                torch.cuda.synchronize()
        took = time.perf_counter() - start
        total += took
        retries = torch.cuda.memory_stats().get("num_alloc_retries", 0) if cuda else 0
        print(f"step {step}: {1e3 * took:.1f} ms (chunk of {engine.stats[-1]['inflightBatchingStats']['numCtxTokens']}"
              f" tokens), allocator retries so far {retries}", flush=True)  # fmt: skip
        if step in ns.profile:
            for key in ("self_cpu_time_total",) + (("self_device_time_total",) if cuda else ()):
                print(prof.key_averages().table(sort_by=key, row_limit=ns.top, max_name_column_width=60), flush=True)
        step += 1
    print(f"TTFT {total:.3f} s over {step} steps")
    engine.abort(seq)


if __name__ == "__main__":
    main()
