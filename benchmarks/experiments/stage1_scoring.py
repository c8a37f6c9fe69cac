"""Stage 1's scoring on the shipped model (docs/log/eval.md): RocketKV as `rocket-eval --sweep` configures it, with
the prefix scored four ways:

- `sum`: the window rows' softmax added up, one choice per KV head (the paper's SnapKV++; the default);
- `layer-sum`: the same scores, one choice per layer (`eviction_scope: layer`);
- `max`, `layer-max`: each query head's strongest window row instead of the rows' total (this probe only).

    python benchmarks/experiments/stage1_scoring.py --variants sum layer-sum max layer-max --seed 1 --samples 40 \\
        --tasks niah_multivalue variable_tracking --json stage1.json
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


def max_scores(q, k, window, kernel, scale, scope):  # noqa: ANN001, ANN201
    """As the engine's, with each query head's window rows reduced by max instead of sum."""
    q_heads, n, d = q.shape
    kv_heads = k.shape[0]
    qw = q[:, n - window :].float().view(kv_heads, q_heads // kv_heads, window, d)
    future = torch.arange(n, device=q.device)[None, :] > (n - window + torch.arange(window, device=q.device))[:, None]
    scores = torch.empty(kv_heads, n - window, device=q.device)
    for h in range(kv_heads):
        logits = torch.einsum("gwd,nd->gwn", qw[h], k[h].float()) * scale
        probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
        scores[h] = probs[..., : n - window].amax(dim=1).sum(dim=0)
    if scope == "layer":
        scores = (scores / scores.sum(dim=-1, keepdim=True)).sum(dim=0, keepdim=True)
    return F.max_pool1d(scores[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", choices=["sum", "layer-sum", "max", "layer-max"],
                   default=["sum", "layer-sum", "max", "layer-max"])  # fmt: skip
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    ns = p.parse_args()
    rows = []
    longest = max(ns.lengths) * 11 // 10 + 48
    greedy = SamplingParams(max_tokens=48, temperature=0.0)
    for variant in ns.variants:
        stage1.window_scores = max_scores if variant.endswith("max") else engine_scores
        scope = "layer" if variant.startswith("layer-") else "kv_head"
        for budget in ns.budgets:
            sparse = sparse_config("rocket", budget, 32, scope)
            args = LlmArgs.model_validate({"model": str(SHIPPED_MODEL), "max_num_tokens": longest,
                                           "max_seq_len": longest, "sparse_attention_config": sparse})  # fmt: skip
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
