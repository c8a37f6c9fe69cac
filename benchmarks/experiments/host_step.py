"""The engine's host time per decode step outside the model (scheduling, bookkeeping, stats, the overlap scheduler's
checks) at a large batch, on any machine: a tiny random RocketKV model, so the model's own time is small and taken out
(the runner's `run` is timed and subtracted).

    python benchmarks/experiments/host_step.py --requests 256 --steps 200
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rocket_trtllm import LLM, KvCacheConfig, RocketSparseAttentionConfig, SamplingParams
from rocket_trtllm.llmapi.executor import GenerationResult
from rocket_trtllm.models.random_checkpoint import make_tiny_model


def host_times(llm: LLM, steps: int) -> list[float]:
    """Seconds of each of `steps` engine steps spent outside the model, on the engine's thread."""

    def run(engine) -> list[float]:  # noqa: ANN001
        inner, spent, host = engine.runner.run, [], []

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            spent.append(time.perf_counter() - start)
            return out

        engine.runner.run = timed
        try:
            for _ in range(steps):
                before, start = len(spent), time.perf_counter()
                engine.step()
                host.append(time.perf_counter() - start - sum(spent[before:]))
        finally:
            engine.runner.run = inner
        return host

    return llm._executor.call(run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=256, help="requests decoding together")
    p.add_argument("--steps", type=int, default=200, help="decode steps timed")
    ns = p.parse_args()
    model = make_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    sparse = RocketSparseAttentionConfig(prompt_budget=32, window_size=8, kernel_size=5, topk=4, page_size=4)
    new = ns.steps + 20
    pool = KvCacheConfig(tokens_per_block=16, max_tokens=ns.requests * (96 + new))
    with LLM(str(model), dtype="float32", max_num_tokens=8192, max_seq_len=64 + new, sparse_attention_config=sparse,
             kv_cache_config=pool) as llm:  # fmt: skip
        params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True, detokenize=False)
        gen = torch.Generator().manual_seed(0)
        results = [GenerationResult(llm._executor, llm.engine.new_sequence(torch.randint(0, 256, (64,), generator=gen)
                                                                           .tolist(), params), None, False)
                   for _ in range(ns.requests)]  # fmt: skip
        llm._executor.submit_all(results)
        while not all(len(r.seq.output_token_ids) > 5 for r in results):  # every prompt prefilled: decode only
            time.sleep(0.05)
        host = host_times(llm, ns.steps)
        for r in results:
            r.abort()
    print(f"{ns.requests} requests: host time a decode step outside the model, median "
          f"{statistics.median(host) * 1e3:.3f} ms, mean {statistics.mean(host) * 1e3:.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
