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
        return completion(self.answers, self.prompt)


@dataclass
class Query:
    """Facts to hide in a haystack, in the order the text must state them, and what to ask about them."""

    facts: list[str]
    question: str
    answers: list[str]


def completion(answers: list[str], text: str) -> str:
    """The answers as a model should write them: in the order `text` states them."""
    return " " + ", ".join(sorted(answers, key=text.index))


def _key(rng: random.Random) -> str:
    return f"{rng.choice(WORDS)}-{rng.randrange(1000, 9999)}"


def _value(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 9_999_999))


def niah_single(rng: random.Random) -> Query:
    key, value = _key(rng), _value(rng)
    return Query(
        [f"The special magic number for {key} is {value}."], f"What is the special magic number for {key}?", [value]
    )


def niah_multikey(rng: random.Random) -> Query:
    keys = list(dict.fromkeys(_key(rng) for _ in range(4)))
    values = [_value(rng) for _ in keys]
    facts = [f"The special magic number for {k} is {v}." for k, v in zip(keys, values)]
    rng.shuffle(facts)
    target = rng.randrange(len(keys))
    return Query(facts, f"What is the special magic number for {keys[target]}?", [values[target]])


def niah_multivalue(rng: random.Random) -> Query:
    key = _key(rng)
    values = [_value(rng) for _ in range(3)]
    facts = [f"One of the special magic numbers for {key} is {v}." for v in values]
    return Query(facts, f"What are all the special magic numbers for {key}?", values)


def variable_tracking(rng: random.Random) -> Query:
    names = rng.sample(["VAR " + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ", k=4)) for _ in range(8)], 4)
    value = _value(rng)
    facts = [f"{names[0]} = {value}."] + [f"{b} = {a}." for a, b in zip(names, names[1:])]
    return Query(facts, f"Which variables are assigned the value {value}? List them all.", names)


TASKS: dict[str, Callable[[random.Random], Query]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "variable_tracking": variable_tracking,
}


def haystack(queries: list[Query], n_chars: int, rng: random.Random) -> str:
    """Filler of about `n_chars` characters with every query's facts at random sentence boundaries,
    each query's facts in their own order."""
    sentences = (FILLER * (n_chars // len(FILLER) + 1))[:n_chars].split(". ")
    owners = [i for i, q in enumerate(queries) for _ in q.facts]
    rng.shuffle(owners)  # a random interleaving of the queries' fact lists
    spots = sorted(rng.randrange(len(sentences) + 1) for _ in owners)
    pending = [iter(q.facts) for q in queries]
    for offset, (spot, owner) in enumerate(zip(spots, owners)):
        sentences.insert(spot + offset, next(pending[owner]).rstrip("."))
    return ". ".join(sentences)


def prompt(context: str, question: str) -> str:
    return f"Read the text and answer the question.\n\n{context}\n\nQuestion: {question}\nAnswer:"


def generate(task: str, n_chars: int, rng: random.Random) -> Sample:
    """One sample of `task` with about `n_chars` characters of haystack."""
    query = TASKS[task](rng)
    return Sample(task, prompt(haystack([query], n_chars, rng), query.question), query.answers)


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
        small, large = (count_tokens(generate(task, n, random.Random(name)).prompt) for n in (length, 2 * length))
        per_char = max(1e-6, (large - small) / length)
        chars = int(length + (length - small) / per_char)
        if chars < 1:
            raise ValueError(f"{task} needs more than {length} tokens for its question and facts")
        samples.append(generate(task, chars, random.Random(name)))
    return samples
