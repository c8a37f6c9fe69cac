"""rocket-bench throughput: offline throughput over a trtllm-bench JSONL dataset, in trtllm-bench's shape.

    rocket-bench --model MODEL throughput --dataset requests.jsonl --config configs/rocket.yaml

Each line: {"task_id": ..., "prompt": "..." or "input_ids": [...], "output_tokens": N}. Every request is
submitted at once and generates exactly its output_tokens (ignore_eos), as trtllm-bench does.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .llmapi.llm import LLM
from .llmapi.llm_args import LlmArgs
from .sampling_params import SamplingParams
from .serve.benchmark import dataset_requests


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="trtllm-bench JSONL: prompt or input_ids, and output_tokens")
    p.add_argument("--config", "--extra_llm_api_options", dest="config", help="YAML of LLM options")
    p.add_argument("--num_requests", "--num-requests", dest="num_requests", type=int, help="first N requests only")
    p.add_argument("--tp", "--tp_size", dest="tensor_parallel_size", type=int, help="tensor-parallel ranks")
    p.add_argument("--max_batch_size", type=int, help="most requests in flight (LlmArgs.max_batch_size)")
    p.add_argument("--max_num_tokens", type=int, help="a step's token budget (LlmArgs.max_num_tokens)")
    p.add_argument("--report_json", "--json", dest="json", help="write the report to this JSON file")


def main(model: str, ns: argparse.Namespace) -> dict[str, Any]:
    try:
        requests = dataset_requests(ns.dataset, ns.num_requests)
        overrides = {
            k: getattr(ns, k) for k in ("max_batch_size", "max_num_tokens", "tensor_parallel_size") if getattr(ns, k)
        }
        args = (
            LlmArgs.from_yaml(ns.config, model=model, **overrides) if ns.config else LlmArgs(model=model, **overrides)
        )
        with LLM(model=model, llm_args=args) as llm:
            prompts = [r.prompt if isinstance(r.prompt, list) else llm.tokenizer.encode(r.prompt) for r in requests]
            longest = max(len(p) for p in prompts)
            if longest > llm.engine.scheduler.max_num_tokens:
                raise ConfigError(f"the dataset's longest prompt has {longest} tokens; raise it", "max_num_tokens")
            params = [SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True) for r in requests]
            start = time.perf_counter()
            outputs = llm.generate(prompts, params)
            seconds = time.perf_counter() - start
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"rocket-bench throughput: {e}") from None
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    prompt_tokens = sum(len(p) for p in prompts)
    report = {
        "model": model,
        "dataset": ns.dataset,
        "num_requests": len(requests),
        "total_input_tokens": prompt_tokens,
        "total_output_tokens": generated,
        "total_latency_s": seconds,
        "request_throughput": len(requests) / seconds,
        "output_throughput": generated / seconds,
        "total_token_throughput": (prompt_tokens + generated) / seconds,
    }
    for key, value in report.items():
        print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=2))
    return report
