"""Tensor parallelism's exactness in a low precision: TP=N logits against TP=1's in the same dtype, beside how far
TP=1's own dtype is from float32 (the yardstick: TP=N should be no further from TP=1 than that).

    python benchmarks/experiments/tp_check.py --tp 2 [--dtype bfloat16] [--json out.json]

Uses a random checkpoint of the Llama architecture (small, so it runs on the CPU with gloo too) and the first
token and 15 forced decode steps' logits of a few prompts, dense and RocketKV (where the decode
steps attend to the selected pages only).
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from rocket_trtllm import LLM, KvCacheConfig, SamplingParams
from rocket_trtllm.models.random_checkpoint import make_tiny_model

STEPS = 16
FORCED = list(range(100, 100 + STEPS))  # the continuation every run is fed, so all runs see the same inputs
ROCKET = {"algorithm": "rocket", "prompt_budget": 256, "window_size": 16, "topk": 16, "page_size": 4, "topr": 32}


def logits(model: Path, dtype: str, tp: int, sparse: dict | None, prompts: list[list[int]]) -> torch.Tensor:
    """[prompts, steps, vocab]: the logits of STEPS decode steps, each fed the same forced token in every run."""
    params = SamplingParams(max_tokens=STEPS, temperature=0, ignore_eos=True, return_generation_logits=True)
    with LLM(str(model), dtype=dtype, tensor_parallel_size=tp, sparse_attention_config=sparse,
             kv_cache_config=KvCacheConfig(tokens_per_block=16)) as llm:  # fmt: skip
        results = []
        for prompt in prompts:
            seq = llm.engine.new_sequence(prompt, dataclasses.replace(params))
            seq.forced_token_ids = FORCED
            results.append(llm._submit(seq, None, streaming=False))
        return torch.stack([r.result().outputs[0].generation_logits.float() for r in results])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--json")
    ns = p.parse_args()
    size = dict(hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4,
                num_hidden_layers=4, vocab_size=1000)  # fmt: skip
    model = make_tiny_model(Path(tempfile.mkdtemp()) / "llama", **size)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (100, 700, 1500, 2000)]
    rows = []
    for name, sparse in (("dense", None), ("rocket", ROCKET)):
        exact = logits(model, "float32", 1, sparse, prompts)
        one = logits(model, ns.dtype, 1, sparse, prompts)
        many = logits(model, ns.dtype, ns.tp, sparse, prompts)
        row = {
            "method": name,
            f"tp1_{ns.dtype}_vs_float32": (one - exact).abs().max().item(),
            f"tp{ns.tp}_vs_tp1_{ns.dtype}": (many - one).abs().max().item(),
            f"tp{ns.tp}_{ns.dtype}_vs_float32": (many - exact).abs().max().item(),
            "same_argmax": bool((many.argmax(-1) == one.argmax(-1)).all()),
        }
        rows.append(row)
        print(json.dumps(row))
    if ns.json:
        Path(ns.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
