"""Synthetic long-context tasks in the style of RULER: a haystack of filler sentences with facts hidden
in it, and a question whose answer is exactly those facts. Every sample is a pure function of
(task, length, seed, index), and its answer can be checked by string match."""

import random
from collections.abc import Callable
from dataclasses import dataclass

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    "Rivers run to the sea and the sea gives back the rain. "
)
WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "maple", "ember", "coral", "falcon", "harbor",
    "lantern", "meadow", "nickel", "orchid", "pepper", "quartz", "saddle", "thistle", "velvet", "willow",
]  # fmt: skip


@dataclass
class Sample:
    task: str
    prompt: str
    answers: list[str]  # every one must appear in the generated text

    def score(self, text: str) -> float:
        """Fraction of the answers found in `text` (1.0 when all are)."""
        return sum(a in text for a in self.answers) / len(self.answers)

    @property
    def target(self) -> str:
        """The reference completion: every answer, in the order the prompt states them."""
        return " " + ", ".join(sorted(self.answers, key=self.prompt.index))


def _key(rng: random.Random) -> str:
    return f"{rng.choice(WORDS)}-{rng.randrange(1000, 9999)}"


def _value(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 9_999_999))


def _haystack(facts: list[str], n_chars: int, rng: random.Random) -> str:
    """Filler of about `n_chars` characters with each fact inserted at a random sentence boundary."""
    sentences = (FILLER * (n_chars // len(FILLER) + 1))[:n_chars].split(". ")
    for fact in facts:
        sentences.insert(rng.randrange(len(sentences) + 1), fact.rstrip("."))
    return ". ".join(sentences)


def niah_single(n_chars: int, rng: random.Random) -> tuple[str, list[str]]:
    key, value = _key(rng), _value(rng)
    facts = [f"The special magic number for {key} is {value}."]
    question = f"What is the special magic number for {key}?"
    return _prompt(_haystack(facts, n_chars, rng), question), [value]


def niah_multikey(n_chars: int, rng: random.Random) -> tuple[str, list[str]]:
    keys = list(dict.fromkeys(_key(rng) for _ in range(4)))
    values = [_value(rng) for _ in keys]
    facts = [f"The special magic number for {k} is {v}." for k, v in zip(keys, values)]
    target = rng.randrange(len(keys))
    question = f"What is the special magic number for {keys[target]}?"
    return _prompt(_haystack(facts, n_chars, rng), question), [values[target]]


def niah_multivalue(n_chars: int, rng: random.Random) -> tuple[str, list[str]]:
    key = _key(rng)
    values = [_value(rng) for _ in range(3)]
    facts = [f"One of the special magic numbers for {key} is {v}." for v in values]
    question = f"What are all the special magic numbers for {key}?"
    return _prompt(_haystack(facts, n_chars, rng), question), values


def variable_tracking(n_chars: int, rng: random.Random) -> tuple[str, list[str]]:
    names = rng.sample(["VAR " + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ", k=4)) for _ in range(8)], 4)
    value = _value(rng)
    facts = [f"{names[0]} = {value}."] + [f"{b} = {a}." for a, b in zip(names, names[1:])]
    # The chain is assigned in order, so insert it in order: sorted positions.
    sentences = _haystack([], n_chars, rng).split(". ")
    spots = sorted(rng.randrange(len(sentences) + 1) for _ in facts)
    for offset, (spot, fact) in enumerate(zip(spots, facts)):
        sentences.insert(spot + offset, fact.rstrip("."))
    question = f"Which variables are assigned the value {value}? List them all."
    return _prompt(". ".join(sentences), question), names


TASKS: dict[str, Callable[[int, random.Random], tuple[str, list[str]]]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "variable_tracking": variable_tracking,
}


def _prompt(context: str, question: str) -> str:
    return f"Read the text and answer the question.\n\n{context}\n\nQuestion: {question}\nAnswer:"


def make_samples(
    task: str, length: int, count: int, seed: int, count_tokens: Callable[[str], int] = len
) -> list[Sample]:
    """`count` samples of `task` whose prompts are about `length` tokens by `count_tokens`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    samples = []
    for i in range(count):
        name = f"{task}/{length}/{seed}/{i}"
        # Tokens grow linearly with the haystack's characters: two probes give the size that
        # lands the prompt on `length` tokens of this tokenizer.
        small, large = (count_tokens(TASKS[task](n, random.Random(name))[0]) for n in (length, 2 * length))
        per_char = max(1e-6, (large - small) / length)
        chars = int(length + (length - small) / per_char)
        if chars < 1:
            raise ValueError(f"{task} needs more than {length} tokens for its question and facts")
        prompt, answers = TASKS[task](chars, random.Random(name))
        samples.append(Sample(task, prompt, answers))
    return samples
