"""Train the small long-context model that ships in eval/model/: a Llama (GQA, RoPE) with a byte-level
BPE tokenizer, trained from scratch on the synthetic tasks of eval/tasks.py at 256 to 18k tokens, so
that it really retrieves over the 4k-16k prompts rocket-eval measures. One H100, about eight minutes:

    python -m rocket_trtllm.eval.train --config eval/train.yaml --out eval/model

Every batch is a pure function of (seed, step). The learning rate follows a cosine over
max(step / steps, elapsed / time_limit), so a slower device still finishes the schedule.
"""

import argparse
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from .tasks import TASKS, WORDS, Query, completion, generate, haystack, make_samples, prompt

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SPECIAL = ["<s>", "</s>"]
PAD, CONTEXT, ANSWER = 0, 1, 2  # what a training token is (the first one of a prompt, BOS, is PAD)


# The turns of a chat in the one format the model learns (prompt, "\nAnswer:", answer): rocket-serve's chat
# endpoint and rocket-eval's chat prompts then give the model exactly what it was trained on.
CHAT_TEMPLATE = Path(__file__).with_name("model") / "chat_template.jinja"


def build_tokenizer(vocab_size: int, seed: int) -> Any:
    """Byte-level BPE learnt from task text: every string encodes, the task words become single tokens,
    digits always stay one token each (so any number is copied digit by digit)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(f"tokenizer/{seed}")
    corpus = [generate(task, 4000, rng).prompt for task in TASKS for _ in range(50)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    bos = ("<s>", tok.token_to_id("<s>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE.read_text()
    return fast


def key_drill(rng: random.Random) -> list[Query]:
    """Four keyed facts and a question on each, the keys alike in their word, their number or neither:
    the model must read the whole key to answer (niah_multikey's skill)."""
    mode, word, number = rng.randrange(3), rng.choice(WORDS), rng.randrange(1000, 9999)
    keys: list[str] = []
    while len(keys) < 4:
        key = f"{word if mode == 0 else rng.choice(WORDS)}-{number if mode == 1 else rng.randrange(1000, 9999)}"
        keys += [] if key in keys else [key]
    values = [str(rng.randrange(1_000_000, 9_999_999)) for _ in keys]
    facts = [f"The special magic number for {k} is {v}." for k, v in zip(keys, values)]
    rng.shuffle(facts)
    asked = rng.sample(range(4), 4)
    return [
        Query(facts if i == 0 else [], f"What is the special magic number for {keys[j]}?", [values[j]])
        for i, j in enumerate(asked)
    ]


class Batches(torch.utils.data.Dataset):
    """Batch `step`: one prompt length for the whole batch (log-uniform, its ceiling ramping up from
    min_length), about tokens_per_step tokens, padded with EOS. A row is either a sample exactly as
    rocket-eval makes them or, with probability `drill`, a haystack holding the facts of several
    queries (half of them key drills) asked one after the other, each answer ending in EOS: more
    answers to learn from per token."""

    def __init__(self, tokenizer: Any, cfg: dict[str, Any], seed: int) -> None:
        self.tok, self.cfg, self.seed = tokenizer, cfg, seed
        filler = haystack([], 20000, random.Random(0))
        self.per_char = len(tokenizer.encode(filler)) / len(filler)

    def __len__(self) -> int:
        return self.cfg["steps"]

    def length(self, step: int, rng: random.Random) -> int:
        lo, hi = math.log(self.cfg["min_length"]), math.log(self.cfg["max_length"])
        ramp = min(1.0, step / max(1, self.cfg["length_ramp"] * self.cfg["steps"]))
        return int(math.exp(rng.uniform(lo, lo + ramp * (hi - lo))))

    def row(self, length: int, rng: random.Random) -> tuple[list[int], list[int]]:
        if rng.random() < self.cfg["drill"]:
            count, queries = rng.randint(2, max(2, min(8, length // 128))), []
            while len(queries) < count:
                queries += key_drill(rng) if rng.random() < 0.5 else [TASKS[rng.choice(list(TASKS))](rng)]
        else:
            queries = [TASKS[rng.choice(list(TASKS))](rng)]
        count = len(queries)
        parts = [text for q in queries for text in (*q.facts, q.question, *q.answers)]
        filler = length - len(self.tok.encode(" ".join(parts))) - 16 * count  # tokens left for filler
        context = haystack(queries, max(0, int(filler / self.per_char)), rng)
        ids, part = [], []
        for i, q in enumerate(queries):
            asked = prompt(q, context) if i == 0 else f"\n\nQuestion: {q.question}\nAnswer:"
            asked_ids = self.tok.encode(asked, add_special_tokens=i == 0)
            answer = self.tok.encode(completion(q.answers, context), add_special_tokens=False)
            ids += asked_ids + answer + [self.tok.eos_token_id]
            part += [CONTEXT] * len(asked_ids) + [ANSWER] * (len(answer) + 1)
        part[0] = PAD  # BOS is never predicted
        return ids, part

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random(f"train/{self.seed}/{step}")
        length = self.length(step, rng)
        rows = [self.row(length, rng) for _ in range(max(1, self.cfg["tokens_per_step"] // length))]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.tok.eos_token_id, dtype=torch.long)
        part = torch.full((len(rows), width), PAD, dtype=torch.int8)  # what each token is
        for i, (row_ids, row_part) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            part[i, : len(row_part)] = torch.tensor(row_part, dtype=torch.int8)
        return ids, part


def build_model(cfg: dict[str, Any], tokenizer: Any) -> Any:
    import transformers

    m = dict(cfg)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        rope_parameters={"rope_type": "default", "rope_theta": m.pop("rope_theta")},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        **m,
    )
    return transformers.LlamaForCausalLM(config)


def check(model: Any, tokenizer: Any, cfg: dict[str, Any], seed: int, device: str) -> dict[str, float]:
    """Greedy accuracy (%) with full attention on fresh eval samples, per task and length."""
    results = {}
    model.eval()
    for task in TASKS:
        for length in cfg["lengths"]:
            samples = make_samples(task, length, cfg["samples"], seed, lambda s: len(tokenizer.encode(s)))
            score = 0.0
            for s in samples:
                ids = torch.tensor([tokenizer.encode(s.prompt)], device=device)
                with torch.no_grad(), torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
                    out = model.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.eos_token_id)
                score += s.score(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
            results[f"{task}/{length}"] = 100 * score / len(samples)
            print(f"check {task:>18} {length:>6}: {results[f'{task}/{length}']:.0f}%", flush=True)
    return results


def train(cfg: dict[str, Any], out: Path) -> None:
    seed, tcfg = cfg["seed"], cfg["train"]
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer(cfg["tokenizer"]["vocab_size"], seed)
    model = build_model(cfg["model"], tokenizer).to(device)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tokenizer)}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tcfg["lr"], betas=(0.9, 0.95), fused=device == "cuda",
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        Batches(tokenizer, tcfg, seed), batch_size=None, num_workers=tcfg["workers"], prefetch_factor=4,
        pin_memory=device == "cuda",
    )  # fmt: skip
    start, limit = time.perf_counter(), 60 * tcfg["time_limit_minutes"]
    log: list[dict[str, float]] = []
    model.train()
    for step, (ids, part) in enumerate(loader):
        progress = max(step / tcfg["steps"], (time.perf_counter() - start) / limit)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / tcfg["warmup_steps"])
        lr = tcfg["lr"] * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        ids, part = ids.to(device, non_blocking=True), part.to(device, non_blocking=True)
        with torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=ids[:, :-1], use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        answer, context = part[:, 1:] == ANSWER, part[:, 1:] == CONTEXT
        # Each part is averaged on its own: answers are a few tokens among thousands of context ones.
        answer_loss = nll[answer].mean()
        loss = answer_loss + tcfg["context_loss_weight"] * nll[context].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            entry = {"step": step, "length": ids.shape[1], "loss": loss.item(), "answer_loss": answer_loss.item(),
                     "lr": lr, "elapsed_s": time.perf_counter() - start}  # fmt: skip
            log.append(entry)
            print(json.dumps(entry), flush=True)
    trained = {"steps": step, "minutes": (time.perf_counter() - start) / 60}
    print(f"trained {trained['steps']} steps in {trained['minutes']:.1f} min", flush=True)
    results = check(model, tokenizer, cfg["check"], seed + 1, device)
    save(model, tokenizer, out, {"config": cfg, "trained": trained, "check_full_kv": results, "log": log})


def save(model: Any, tokenizer: Any, out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rocket_trtllm.eval.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", default=str(Path(__file__).with_name("train.yaml")))
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config values")
    ns = p.parse_args(argv)
    cfg = yaml.safe_load(Path(ns.config).read_text())
    for item in ns.set:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        cfg[section][name] = yaml.safe_load(value)
    train(cfg, Path(ns.out))


if __name__ == "__main__":
    main()
