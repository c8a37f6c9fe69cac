"""Stage 2's aggregation over a GQA group, on the shipped model (docs/log/eval.md): the same page selection with
the per-query-head KT bounds combined three ways: `softmax` (what the engine does: each head's softmax
over pages, summed), `sum` (the bounds added in raw logits, the engine before the fix) and `max`.

    python benchmarks/experiments/stage2_aggregation.py softmax sum max
"""

import sys

from rocket_trtllm.eval import SHIPPED_MODEL
from rocket_trtllm.eval.tasks import make_samples

import rocket_trtllm.kernels.kt_predict as kp
import rocket_trtllm.sparse.quest as quest
from rocket_trtllm import LLM, SamplingParams
from rocket_trtllm.llmapi.llm_args import LlmArgs

LENGTH, SAMPLES, SEED = 2048, 10, 5


def group_scores(mode: str, q, kt, tables, num_pages, topr, ppb, sign):  # noqa: ANN001, ANN201
    kv_heads = kt.shape[1]
    bounds = kp.kt_head_bounds_ref(q, kt, tables, num_pages, topr, ppb, sign)
    bounds = bounds.view(bounds.shape[0], kv_heads, -1, bounds.shape[-1])
    return bounds.sum(2) if mode == "sum" else bounds.max(2).values


def run(mode: str) -> None:
    if mode != "softmax":
        quest.predict_pages_ref = lambda q, kt, t, n, r, k, ppb, sign, temperature: kp.select_pages_ref(
            group_scores(mode, q, kt, t, n, r, ppb, sign), n, k
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
    for m in sys.argv[1:] or ["softmax", "sum", "max"]:
        run(m)
