"""Diagnosis of RocketKV's stage-2 gap on the shipped model (EVAL.md): the same page selection with the
KT bounds aggregated over a GQA group three ways: `sum` (what the engine does: the group's bounds
added in raw logits), `softmax` (per head, softmax over pages, then summed) and `max` (per head, max).

    python benchmarks/stage2_aggregation.py sum softmax max
"""

import sys

import rocket_trtllm.kernels.kt_predict as kp
import torch
from rocket_trtllm.eval import SHIPPED_MODEL
from rocket_trtllm.eval.tasks import make_samples

import rocket_trtllm.sparse.quest as quest
from rocket_trtllm import LLM, SamplingParams
from rocket_trtllm.llmapi.llm_args import LlmArgs

LENGTH, SAMPLES, SEED = 2048, 10, 5


def per_head_scores(mode: str, q, kt_min, kt_max, tables, num_pages):  # noqa: ANN001, ANN201
    b, q_heads, d = q.shape
    kv_heads = kt_min.shape[1]
    lo, hi = kp._pages(kt_min, tables).nan_to_num(), kp._pages(kt_max, tables).nan_to_num()
    qg = q.float().view(b, kv_heads, q_heads // kv_heads, d)
    s = torch.einsum("bhgd,bhpd->bhgp", qg.clamp(min=0), hi) + torch.einsum("bhgd,bhpd->bhgp", qg.clamp(max=0), lo)
    s = s.masked_fill(torch.arange(s.shape[-1]) >= num_pages[:, None, None, None], float("-inf"))
    return torch.softmax(s / d**0.5, dim=-1).sum(2) if mode == "softmax" else s.max(2).values


def run(mode: str) -> None:
    if mode != "sum":
        quest.predict_pages_ref = lambda q, lo, hi, t, n, r, k: kp.select_pages_ref(
            per_head_scores(mode, q, lo, hi, t, n), n, k
        )
    for task in ("niah_multikey", "niah_single"):
        sparse = {"algorithm": "quest", "topk": 32, "page_size": 4}
        args = LlmArgs.model_validate({"model": str(SHIPPED_MODEL), "max_num_tokens": LENGTH + 200,
                                       "max_seq_len": LENGTH + 300, "sparse_attention_config": sparse})  # fmt: skip
        with LLM(model=str(SHIPPED_MODEL), llm_args=args) as llm:
            samples = make_samples(task, LENGTH, SAMPLES, SEED, lambda s: len(llm.tokenizer.encode(s)))
            outs = llm.generate([s.prompt for s in samples], SamplingParams(max_tokens=12, temperature=0.0))
            acc = 100 * sum(s.score(o.outputs[0].text) for s, o in zip(samples, outs)) / len(samples)
            print(f"{mode:>8} {task:>14} {LENGTH}: {acc:.0f}%", flush=True)


if __name__ == "__main__":
    for m in sys.argv[1:] or ["sum", "softmax", "max"]:
        run(m)
