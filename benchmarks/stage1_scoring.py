"""Stage 1's scoring on the shipped model (EVAL.md): RocketKV as `rocket-eval --sweep` configures it, with
the prefix scored one of several ways:

- `sum`: the window rows' softmax added up (SnapKV's vote, the paper's SnapKV++; the default);
- `max`: each query head's strongest window row (`window_reduction: max`);
- `layer-sum`, `layer-max`: as above, but one choice per layer: each KV head's scores normalised to sum
  to 1 and added over the KV heads, so every head keeps the same tokens.

    python benchmarks/stage1_scoring.py --variants sum max layer-max --tasks variable_tracking --json out.json
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from rocket_trtllm.eval import SHIPPED_MODEL
from rocket_trtllm.eval.cli import sparse_config
from rocket_trtllm.eval.tasks import TASKS, make_samples

import rocket_trtllm.sparse.stage1 as stage1
from rocket_trtllm import LLM, SamplingParams
from rocket_trtllm.llmapi.llm_args import LlmArgs

engine_scores = stage1.window_scores


def layer_scores(q, k, window, kernel, scale, reduction):  # noqa: ANN001, ANN201
    """One choice per layer: the KV heads' scores, each normalised to sum to 1, added; pooled after."""
    per_head = engine_scores(q, k, window, 1, scale, reduction)
    shared = (per_head / per_head.sum(-1, keepdim=True)).sum(0, keepdim=True)
    pooled = F.max_pool1d(shared[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
    return pooled.expand_as(per_head)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["sum", "max", "layer-sum", "layer-max"])
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window-size", type=int, default=32)
    p.add_argument("--json", help="write the results here")
    ns = p.parse_args()
    rows = []
    for variant in ns.variants:
        reduction = variant.removeprefix("layer-")
        stage1.window_scores = layer_scores if variant.startswith("layer-") else engine_scores
        for budget in ns.budgets:
            sparse = sparse_config("rocket", budget, ns.window_size, reduction)
            longest = max(ns.lengths) * 11 // 10 + 48
            args = LlmArgs.model_validate({"model": str(SHIPPED_MODEL), "max_num_tokens": longest,
                                           "max_seq_len": longest, "sparse_attention_config": sparse})  # fmt: skip
            greedy = SamplingParams(max_tokens=48, temperature=0.0)
            with LLM(model=str(SHIPPED_MODEL), llm_args=args) as llm:
                for task in ns.tasks:
                    for length in ns.lengths:
                        count = lambda s: len(llm.tokenizer.encode(s))  # noqa: E731
                        samples = make_samples(task, length, ns.samples, ns.seed, count)
                        outs = llm.generate([s.prompt for s in samples], greedy, use_tqdm=False)
                        acc = 100 * sum(s.score(o.outputs[0].text) for s, o in zip(samples, outs)) / len(samples)
                        rows.append({"variant": variant, "budget": budget, "task": task, "length": length,
                                     "accuracy": acc, "samples": len(samples)})  # fmt: skip
                        print(f"{variant:>10} {budget:>5} {task:>18} {length:>6}: {acc:5.1f}", flush=True)
            if ns.json:
                Path(ns.json).write_text(json.dumps({"args": vars(ns), "results": rows}, indent=2))
    print("\nmean over tasks and lengths:")
    for variant in ns.variants:
        means = []
        for budget in ns.budgets:
            accs = [r["accuracy"] for r in rows if r["variant"] == variant and r["budget"] == budget]
            means.append(f"{sum(accs) / len(accs):5.1f}")
        print(f"{variant:>10}: " + " / ".join(means) + f"  (budgets {' / '.join(map(str, ns.budgets))})")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
