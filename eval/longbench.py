"""LongBench v2 (Bai et al., 2024): 503 multiple-choice questions over 8k-2M-word contexts, read from
the official JSON (a list of records with _id, domain, sub_domain, difficulty, length, question,
choice_A..choice_D, answer, context). Prompted, truncated and scored as the benchmark's own pred.py
and result.py do: the 0-shot template, the context cut in the middle to fit, the chat template when
the tokenizer has one, the letter read from "The correct answer is (X)", accuracy overall, by
difficulty (easy/hard) and by length (short/medium/long)."""

import json
import re
from pathlib import Path
from typing import Any, Optional

TEMPLATE = """Please read the following text and answer the question below.

<text>
$DOC$
</text>

What is the correct answer to this question: $Q$
Choices:
(A) $C_A$
(B) $C_B$
(C) $C_C$
(D) $C_D$

Format your response as follows: "The correct answer is (insert answer here)"."""

FIELDS = (
    "_id",
    "difficulty",
    "length",
    "question",
    "choice_A",
    "choice_B",
    "choice_C",
    "choice_D",
    "answer",
    "context",
)
ALLOWED = {"difficulty": ("easy", "hard"), "length": ("short", "medium", "long"), "answer": ("A", "B", "C", "D")}
SUBSETS = ("overall", "easy", "hard", "short", "medium", "long")


def load(path: str) -> list[dict[str, Any]]:
    """The records of an official LongBench v2 JSON file, checked field by field."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--dataset {path}: cannot read LongBench v2 JSON: {e}") from e
    if not isinstance(records, list) or not records:
        raise ValueError(f"--dataset {path}: expected a non-empty JSON list of LongBench v2 records")
    for i, r in enumerate(records):
        missing = [f for f in FIELDS if f not in r] if isinstance(r, dict) else list(FIELDS)
        if missing:
            raise ValueError(f"--dataset {path}: record {i} lacks {', '.join(missing)}")
        for field, allowed in ALLOWED.items():
            if r[field] not in allowed:
                raise ValueError(
                    f"--dataset {path}: record {i} ({r['_id']}) has {field}={r[field]!r}; allowed: {', '.join(allowed)}"
                )
    return records


def prompt(record: dict[str, Any], tokenizer: Any, max_tokens: int) -> list[int]:
    """The 0-shot prompt's token ids, its middle cut so that the text is at most `max_tokens` tokens."""
    text = TEMPLATE.replace("$DOC$", record["context"].strip()).replace("$Q$", record["question"].strip())
    for letter in "ABCD":
        text = text.replace(f"$C_{letter}$", record[f"choice_{letter}"].strip())
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) > max_tokens:
        half = max_tokens // 2
        text = tokenizer.decode(ids[:half] + ids[len(ids) - (max_tokens - half) :], skip_special_tokens=True)
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.encode(text)
    messages = [{"role": "user", "content": text}]  # the template writes the special tokens itself
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(chat, add_special_tokens=False)


def extract_answer(response: str) -> Optional[str]:
    """The chosen letter, or None when the response does not state one in the requested form."""
    response = response.replace("*", "")
    match = re.search(r"The correct answer is \(([A-D])\)", response) or re.search(
        r"The correct answer is ([A-D])", response
    )
    return match.group(1) if match else None


def score(records: list[dict[str, Any]], responses: list[str]) -> dict[str, dict[str, float]]:
    """Accuracy (%) and count per subset: overall, easy/hard, short/medium/long (empty subsets left out)."""
    right = {s: [] for s in SUBSETS}
    for r, response in zip(records, responses, strict=True):
        ok = extract_answer(response) == r["answer"]
        for subset in ("overall", r["difficulty"], r["length"]):
            right[subset].append(ok)
    return {s: {"accuracy": 100 * sum(v) / len(v), "samples": len(v)} for s, v in right.items() if v}
