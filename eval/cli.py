"""rocket-eval: accuracy of a model with full KV, RocketKV and the baselines on synthetic long-context
tasks, optionally swept over token budgets.

    rocket-eval MODEL --config configs/rocket.yaml niah_single variable_tracking --lengths 4096 8192
    rocket-eval MODEL niah_single niah_multikey --sweep --budgets 256 512 1024 --json sweep.json --plot sweep.png
    rocket-eval MODEL longbench_v2 --dataset LongBench-v2/data.json --config configs/rocket.yaml
    rocket-eval --model MODEL --config Y longbench_v2 --dataset_path data.json --max_output_length 1024  # trtllm-eval's
    rocket-eval "$(rocket-fetch smollm2)" passkey doc_ppl --lengths 2048 4096 --sweep   # real model, real prose
"""

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError
from ..llmapi.llm import LLM
from ..llmapi.llm_args import LlmArgs
from ..models.checkpoint import open_checkpoint
from ..sampling_params import SamplingParams
from ..sparse.token_budget import split
from . import longbench
from .fetch import FetchError
from .fetch import prose as fetch_prose
from .perplexity import TASK as DOC_PPL
from .perplexity import make_documents, perplexity
from .prose import Corpus
from .report import LONGBENCH, write
from .tasks import MULTITURN, PROSE_ONLY, TASKS, Sample, make_conversations, make_samples

ALGORITHMS = ["full", "rocket", "rocket_official", "rocket_mt", "snapkv", "quest", "streamingllm", "topk_oracle"]
# How rocket scores KT pages (--stage2-scoring): TensorRT-LLM's backend (the config's defaults: one bound per channel
# by the sign of the group's query, softmax at 1/sqrt(d)), the official implementation's (that and SparQ's
# temperature; also the `rocket_official` algorithm) or Quest's upper bound (both bounds of every kept channel).
SCORING = {"trtllm": {}, "official": {"stage2_temperature": True}, "quest": {"stage2_bound": "both"}}
OFFICIAL_SCORING = SCORING["official"]
LONGBENCH_MAX_TOKENS = 128  # what LongBench v2's pred.py generates without chain of thought


def sparse_config(
    algorithm: str, budget: int, window_size: int = 32, eviction_scope: str = "kv_head", prompt_ratio: int = 8
) -> Optional[dict[str, Any]]:
    """The sparse-attention config spending `budget` tokens of attention per decode step (`window_size`,
    `eviction_scope`: SnapKV's observation window and who shares a choice, for rocket and snapkv; rocket
    keeps `prompt_ratio` x `budget` prompt tokens at prefill)."""
    if algorithm == "full":
        return None
    if algorithm == "rocket_official":
        return {**sparse_config("rocket", budget, window_size, eviction_scope, prompt_ratio), **OFFICIAL_SCORING}
    if algorithm in ("rocket", "rocket_mt"):  # TensorRT-LLM's defaults keep 8x the decode budget after eviction
        return {"algorithm": algorithm, "prompt_budget": prompt_ratio * budget, "topk": budget // 4, "page_size": 4,
                "topr": 1.0, "window_size": window_size, "eviction_scope": eviction_scope}  # fmt: skip
    if algorithm == "snapkv":
        return {"algorithm": "snapkv", "prompt_budget": budget, "window_size": min(window_size, budget // 2),
                "eviction_scope": eviction_scope}  # fmt: skip
    if algorithm == "quest":
        return {"algorithm": "quest", "topk": budget // 16, "page_size": 16}
    if algorithm == "streamingllm":
        return {"algorithm": "streamingllm", "sink_size": 4, "window_size": budget - 4}
    if algorithm == "topk_oracle":
        return {"algorithm": "topk_oracle", "topk": budget}
    raise ValueError(f"unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")


def bytes_config(
    algorithm: str, budget: int, length: int, window_size: int = 32, bounds: int = 1
) -> Optional[dict[str, Any]]:
    """The config whose decode step reads about `budget` tokens' worth of K/V bytes at `length` tokens: RocketKV
    by the official split (token_budget) of the largest budget whose reads fit (`rocket_token_budget`), SnapKV
    keeping `budget` tokens, Quest's attended pages plus its page bounds (one page's fp16 min/max over every
    channel weighs one token of K/V), StreamingLLM's window. The oracle reads every key to choose (it cannot
    match; it stays the upper bound at `budget` tokens). `bounds`: the KT bounds rocket's scoring reads a page."""
    if algorithm in ("rocket", "rocket_mt", "rocket_official"):
        scoring = OFFICIAL_SCORING if algorithm == "rocket_official" else {}
        fitting = rocket_token_budget(budget, length, bounds)
        window = min(window_size, (fitting - 1) // 2)  # token_budget must exceed 2 x window_size
        return {"algorithm": algorithm.removesuffix("_official"), "token_budget": fitting, "token_budget_len": length,
                "window_size": window, **scoring}  # fmt: skip
    if algorithm == "quest":
        return {"algorithm": "quest", "topk": max(1, (budget - length // 16) // 16), "page_size": 16}
    return sparse_config(algorithm, budget, window_size)


def rocket_reads(token_budget: int, length: int, bounds: int = 1) -> float:
    """Tokens of K/V RocketKV's decode step reads at `length` tokens under the split of `token_budget`: the
    attended pages (and the newest, partial one) plus the KT cache's pages, of which the scoring kernel reads
    `bounds` fp8 bounds (1: the sign rule's; 2: Quest's) of the top-r channels: a quarter of a token of bf16 K/V
    per bound at every channel (`decode_read_bytes`)."""
    s = split(length, token_budget, 1)
    topr = min(1.0, s.page_size * token_budget / s.kept)  # the fraction of head_dim the config derives
    return s.topk * s.page_size + s.page_size + s.kept / s.page_size * topr * bounds / 4


def rocket_token_budget(budget: int, length: int, bounds: int = 1) -> int:
    """The largest token_budget whose split reads at most `budget` tokens' worth per step at `length` tokens
    (the official split spends B/2 on attended tokens and B/2 on KT pages at one 16-bit bound of the top-r channels;
    our fp8 KT weighs half that, so equal bytes allow a token_budget a little above the budget)."""
    top = min(4 * budget, max(budget, length))  # past the sequence's length every split keeps everything
    return next((b for b in range(top, 2, -1) if rocket_reads(b, length, bounds) <= budget), 3)


def trtllm_shape(argv: list[str]) -> list[str]:
    """trtllm-eval's `--model M [options] TASK [task options]` as our `M TASK [options]`."""
    for flag in ("--model", "--model_path"):
        if flag in argv[:-1]:
            i = argv.index(flag)
            return [argv[i + 1], *argv[:i], *argv[i + 2 :]]
    return argv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rocket-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", help="checkpoint folder or .gguf file")
    tasks = [*TASKS, MULTITURN, DOC_PPL, LONGBENCH]
    p.add_argument("tasks", nargs="+", choices=tasks, metavar="TASK", help=f"any of {', '.join(tasks)}")
    p.add_argument("--config", help="YAML of LLM options (its sparse_attention_config is the method evaluated)")
    p.add_argument("--tp_size", "--tp-size", dest="tp_size", type=int, help="tensor-parallel ranks (GPUs)")
    p.add_argument("--enable_chunked_prefill", "--enable-chunked-prefill", action="store_true",
                   help="prefill prompts in chunks of max_num_tokens (the YAML's, or 8192)")  # fmt: skip
    p.add_argument("--lengths", type=int, nargs="+", default=[4096], help="prompt lengths in tokens (synthetic tasks)")
    p.add_argument("--dataset", "--dataset_path", dest="dataset",
                   help=f"LongBench v2's data.json (official format), for {LONGBENCH}")  # fmt: skip
    p.add_argument("--max_output_length", type=int, default=LONGBENCH_MAX_TOKENS,
                   help=f"{LONGBENCH}: tokens generated per answer (as trtllm-eval's option)")  # fmt: skip
    p.add_argument("--truncate", "--max_input_length", dest="truncate", type=int, default=128000,
                   help=f"{LONGBENCH} prompts over this many tokens lose the middle of their context")  # fmt: skip
    p.add_argument("--prose", help="real English prose for passkey, doc_ppl and --haystack prose: a text file, one "
                   "paragraph a line (default: the King James Bible, fetched by rocket-fetch prose)")  # fmt: skip
    p.add_argument("--haystack", choices=["filler", "prose"], default="filler",
                   help="what the synthetic tasks hide their facts in (passkey: always prose)")  # fmt: skip
    p.add_argument("--chat-template", choices=["auto", "off"], default="auto",
                   help="auto: prompts go in the user turn of the model's chat template when it has one")  # fmt: skip
    p.add_argument("--ppl-tokens", type=int, default=128, help=f"{DOC_PPL}: the last tokens of each document scored")
    p.add_argument("--samples", type=int, default=20, help="samples per task and length")
    p.add_argument("--seed", type=int, default=0, help="the samples' seed")
    p.add_argument("--max-tokens", type=int, default=48, help="tokens generated per answer")
    p.add_argument("--turns", type=int, default=5, help=f"{MULTITURN}: questions asked in turn about one context")
    p.add_argument("--sweep", action="store_true", help="every --algorithms x --budgets instead of --config's method")
    p.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=ALGORITHMS,
                   help="--sweep: the methods evaluated (full: dense KV)")  # fmt: skip
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024], help="decode token budgets")
    p.add_argument("--window-size", type=int, default=32,
                   help="--sweep: SnapKV's observation window of rocket and snapkv (<= snapkv budget / 2)")  # fmt: skip
    p.add_argument("--eviction-scope", choices=["kv_head", "layer"], default="kv_head",
                   help="--sweep: rocket and snapkv keep tokens per KV head (the paper) or per layer")  # fmt: skip
    p.add_argument("--prompt-ratio", type=int, default=8,
                   help="--sweep: rocket keeps this many times the budget of the prompt at prefill (>= 2)")  # fmt: skip
    p.add_argument("--budget-mode", choices=["nominal", "bytes"], default="nominal",
                   help="--sweep: nominal = each method's own reading of the budget (above); bytes = every method "
                   "reads about the budget's K/V bytes per decode step, RocketKV by the official split (token_budget "
                   "at the longest --lengths)")  # fmt: skip
    p.add_argument("--stage2-scoring", choices=list(SCORING), default="trtllm",
                   help="how rocket and rocket_mt score KT pages: trtllm = one bound per channel by the sign of the "
                   "group's query (TensorRT-LLM's backend, the config's default); official = that with SparQ's "
                   "temperature (the official implementation); quest = both bounds (Quest's upper bound)")  # fmt: skip
    p.add_argument("--json", help="write every result to this JSON file")
    p.add_argument("--markdown", help="write the results table to this file")
    p.add_argument("--plot", help="write accuracy vs budget per algorithm to this image (needs matplotlib)")
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = build_parser()
    ns = p.parse_args(trtllm_shape(sys.argv[1:] if argv is None else list(argv)))
    if min(ns.budgets) < 16 or ns.samples < 1 or min(ns.lengths) < 64 or ns.truncate < 256 or ns.window_size < 1:
        p.error("--budgets must be >= 16, --samples >= 1, --lengths >= 64, --truncate >= 256 and --window-size >= 1")
    if ns.prompt_ratio < 2:
        p.error("--prompt-ratio must be >= 2 (rocket keeps at least twice what it attends)")
    if DOC_PPL in ns.tasks and not 0 < ns.ppl_tokens < min(ns.lengths):
        p.error(f"--ppl-tokens must be in [1, {min(ns.lengths)}) (the shortest document)")
    if LONGBENCH in ns.tasks and not ns.dataset:
        p.error(f"{LONGBENCH} needs --dataset PATH (LongBench v2's data.json)")
    return ns


def needs_prose(ns: argparse.Namespace) -> bool:
    return DOC_PPL in ns.tasks or bool(PROSE_ONLY & set(ns.tasks)) or (ns.haystack == "prose" and bool(
        set(ns.tasks) & {*TASKS, MULTITURN}))  # fmt: skip


def load_prose(ns: argparse.Namespace) -> Optional[Corpus]:
    if not needs_prose(ns):
        return None
    return Corpus.load(Path(ns.prose) if ns.prose else fetch_prose())


def prompt_text(sample: Sample, tokenizer: Any, ns: argparse.Namespace) -> str:
    if ns.chat_template == "auto" and getattr(tokenizer, "chat_template", None):
        return sample.chat_prompt(tokenizer)
    return sample.prompt


def evaluate(
    base: LlmArgs,
    ns: argparse.Namespace,
    label: str,
    budget: Optional[int],
    records: list[dict[str, Any]],
    prose: Optional[Corpus] = None,
) -> list[dict[str, Any]]:
    rows = []
    spent = {"attention_bytes": 0.0, "decode_steps": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0}

    def add(task: str, length: Any, samples: int, accuracy: Optional[float] = None, ppl: Optional[float] = None):
        row = {"algorithm": label, "budget": budget, "task": task, "length": length, "samples": samples}
        row.update({"accuracy": accuracy} if ppl is None else {"perplexity": ppl})
        # What this cell's decode steps read for attention, per sequence and step (every layer), in bytes and
        # in tokens of K/V: the yardstick on which methods at one nominal budget compare.
        now = llm.snapshot()
        steps = now["decode_steps"] - spent["decode_steps"]
        per_step = (now["attention_bytes"] - spent["attention_bytes"]) / steps if steps else 0.0
        row.update(bytes_per_step=per_step, tokens_equivalent_per_step=per_step / llm.engine.token_kv_bytes)
        # The share of this cell's prompt tokens the prefix cache served (later turns of a conversation).
        prompt = now["prompt_tokens"] - spent["prompt_tokens"]
        row["cached_prompt_fraction"] = (now["cached_prompt_tokens"] - spent["cached_prompt_tokens"]) / max(1, prompt)
        spent.update({k: now[k] for k in spent})
        rows.append(row)
        shown = f"{accuracy:.1f}%" if ppl is None else f"perplexity {ppl:.3f}"
        print(f"{label:>13} budget={budget or '-':>5} {task:>18} {length:>7}: {shown}")

    with LLM(model=base.model, llm_args=base) as llm:
        tokenizer = llm.tokenizer
        for task in ns.tasks:
            if task == LONGBENCH:
                limit = min(ns.truncate, llm.engine.max_seq_len - ns.max_output_length)
                prompts = [longbench.prompt(r, tokenizer, limit) for r in records]
                params = SamplingParams(max_tokens=ns.max_output_length, temperature=0.0)
                texts = [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=True)]
                for subset, result in longbench.score(records, texts).items():
                    add(task, subset, result["samples"], accuracy=result["accuracy"])
                continue
            for length in ns.lengths:
                if task == DOC_PPL:
                    docs = make_documents(prose, length, ns.samples, ns.seed, tokenizer.encode, ns.ppl_tokens)
                    scored = llm.score(docs, use_tqdm=True)
                    add(task, length, len(docs), ppl=perplexity([lp for lp, _ in scored], len(docs) * ns.ppl_tokens))
                    continue
                in_prose = prose if task in PROSE_ONLY or ns.haystack == "prose" else None
                if task == MULTITURN:
                    for turn, accuracy in enumerate(multiturn(llm, ns, length, in_prose), 1):
                        name = f"{task}@prose" if in_prose is not None else task
                        add(f"{name}_t{turn}", length, ns.samples, accuracy=accuracy)
                    continue
                samples = make_samples(task, length, ns.samples, ns.seed, lambda s: len(tokenizer.encode(s)), in_prose)
                params = SamplingParams(max_tokens=ns.max_tokens, temperature=0.0)
                outs = llm.generate([prompt_text(s, tokenizer, ns) for s in samples], params, use_tqdm=True)
                scores = [s.score(o.outputs[0].text) for s, o in zip(samples, outs)]
                name = f"{task}@prose" if in_prose is not None and task not in PROSE_ONLY else task
                add(name, length, len(scores), accuracy=100 * sum(scores) / len(scores))
    return rows


def multiturn(llm: LLM, ns: argparse.Namespace, length: int, prose: Optional[Corpus]) -> Iterator[float]:
    """Accuracy of each turn (yielded as it ends) of conversations over one shared context: each turn's prompt
    (token ids) is the previous turn's prompt, the model's answer and the next question, so a prefix cache
    serves all but the new part."""
    tok = llm.tokenizer
    convs = make_conversations(length, ns.samples, ns.seed, ns.turns, lambda s: len(tok.encode(s)), prose)
    params = SamplingParams(max_tokens=ns.max_tokens, temperature=0.0)
    prompts = [tok.encode(c.opening) for c in convs]
    for turn in range(ns.turns):
        outs = llm.generate(prompts, params, use_tqdm=True)
        yield 100 * sum(c.answers[turn] in o.outputs[0].text for c, o in zip(convs, outs)) / len(convs)
        if turn + 1 < ns.turns:
            prompts = [p + list(o.outputs[0].token_ids) + tok.encode(c.follow_ups[turn], add_special_tokens=False)
                       for p, o, c in zip(prompts, outs, convs)]  # fmt: skip


def runs(ns: argparse.Namespace) -> list[tuple[str, Optional[int], LlmArgs]]:
    tp = {"tensor_parallel_size": ns.tp_size} if ns.tp_size else {}
    if ns.enable_chunked_prefill:
        tp["enable_chunked_prefill"] = True
    base = LlmArgs.from_yaml(ns.config, model=ns.model, **tp) if ns.config else LlmArgs(model=ns.model, **tp)
    # Prompts land within 2% of their length; a chat template adds its turn markers.
    turns = ns.turns if MULTITURN in ns.tasks else 1  # each turn adds an answer and a question
    longest = max(ns.lengths) * 11 // 10 + 256 + turns * (ns.max_tokens + 32)
    if LONGBENCH in ns.tasks:
        window = getattr(open_checkpoint(ns.model).config, "max_position_embeddings", None)
        longest = max(longest, min(ns.truncate + 64, window or ns.truncate + 64) + ns.max_output_length)
    steps = base.max_num_tokens if base.enable_chunked_prefill else max(longest, base.max_num_tokens)  # a chunk's
    base = base.model_copy(update={"max_seq_len": max(longest, base.max_seq_len or 0), "max_num_tokens": steps})
    kv = base.kv_cache_config
    if MULTITURN in ns.tasks and kv.max_tokens is None:
        # Every conversation's history stays cached until its next turn (the CPU's default pool holds ~4 prompts;
        # on a GPU this is only an upper bound on what memory gives).
        kv = kv.model_copy(update={"max_tokens": (ns.samples + 1) * longest})
        base = base.model_copy(update={"kv_cache_config": kv})
    if not ns.sweep:
        sparse = base.sparse_attention_config
        return [(sparse.algorithm if sparse else "full", None, base)]
    scoring = SCORING[ns.stage2_scoring]
    out = []
    for algorithm in ns.algorithms:
        for budget in [None] if algorithm == "full" else ns.budgets:
            if ns.budget_mode == "bytes":
                bounds = 2 if scoring.get("stage2_bound") == "both" else 1
                cfg = bytes_config(algorithm, budget or 0, max(ns.lengths), ns.window_size, bounds)
            else:
                cfg = sparse_config(algorithm, budget or 0, ns.window_size, ns.eviction_scope, ns.prompt_ratio)
            if cfg and cfg["algorithm"] in ("rocket", "rocket_mt") and algorithm != "rocket_official":
                cfg.update(scoring)
            # Only what the user set carries over, so each method gets its own defaults (block reuse).
            fields = base.model_dump(exclude_unset=True, exclude={"sparse_attention_config"})
            args = LlmArgs.model_validate({**fields, "sparse_attention_config": cfg})
            out.append((algorithm, budget, args))
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ns = parse_args(argv)
    rows = []
    try:
        records = longbench.load(ns.dataset) if LONGBENCH in ns.tasks else []
        prose = load_prose(ns)
        for label, budget, args in runs(ns):
            rows += evaluate(args, ns, label, budget, records, prose)
            if ns.json:  # after every run, so that an interrupted sweep keeps what it measured
                Path(ns.json).write_text(json.dumps({"args": vars(ns), "results": rows}, indent=2))
    except (ConfigError, ValueError, FetchError) as e:
        sys.exit(f"rocket-eval: {e}")
    write(rows, ns.markdown, ns.plot)


if __name__ == "__main__":
    main()
