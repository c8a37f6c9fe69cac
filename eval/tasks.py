"""Long-context retrieval tasks in the style of RULER: a haystack with facts hidden in it, and a question
whose answer is exactly those facts. The haystack is filler sentences (synthetic), or real English prose
(`prose.py`; `passkey` always, the others with `haystack="prose"`). Every sample is a pure function of
(task, length, seed, index, prose), and its answer can be checked by string match."""

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from .prose import Corpus

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
    cue: str = ""  # how the answer starts: the end of the prompt, after the chat template's assistant turn opens

    def score(self, text: str) -> float:
        """Fraction of the answers found in `text` (1.0 when all are)."""
        return sum(a in text for a in self.answers) / len(self.answers)

    def chat_prompt(self, tokenizer: Any) -> str:
        """The prompt as the user turn of the tokenizer's chat template, ready for the assistant's answer."""
        message = self.prompt[: self.prompt.rindex(ANSWER_CUE)]
        turn = tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
        )
        return turn + self.cue

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
    cue: str = ""
    instruction: str = "Read the text and answer the question."


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


# The usual passkey-retrieval instruction (a small model finds the key far more often when told first).
PASSKEY_INSTRUCTION = (
    "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the pass key there."
)


def passkey(rng: random.Random) -> Query:
    key = str(rng.randrange(10_000, 99_999))
    facts = [f"The pass key is {key}. Remember it. {key} is the pass key."]
    return Query(facts, "What is the pass key?", [key], cue="The pass key is", instruction=PASSKEY_INSTRUCTION)


TASKS: dict[str, Callable[[random.Random], Query]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "variable_tracking": variable_tracking,
    "passkey": passkey,
}
PROSE_ONLY = {"passkey"}  # tasks whose haystack is always real prose


def haystack(queries: list[Query], n_chars: int, rng: random.Random, prose: Optional[Corpus] = None) -> str:
    """About `n_chars` characters of filler (or of `prose`) with every query's facts at random sentence
    boundaries, each query's facts in their own order."""
    if prose is not None:
        text = prose.excerpt(n_chars, rng)
    else:
        text = (FILLER * (n_chars // len(FILLER) + 1))[:n_chars]
    sentences = text.split(". ")
    owners = [i for i, q in enumerate(queries) for _ in q.facts]
    rng.shuffle(owners)  # a random interleaving of the queries' fact lists
    spots = sorted(rng.randrange(len(sentences) + 1) for _ in owners)
    pending = [iter(q.facts) for q in queries]
    for offset, (spot, owner) in enumerate(zip(spots, owners)):
        sentences.insert(spot + offset, next(pending[owner]).rstrip("."))
    return ". ".join(sentences)


ANSWER_CUE = "\nAnswer:"


def prompt(query: Query, context: str) -> str:
    cue = f" {query.cue}" if query.cue else ""
    return f"{query.instruction}\n\n{context}\n\nQuestion: {query.question}{ANSWER_CUE}{cue}"


def generate(task: str, n_chars: int, rng: random.Random, prose: Optional[Corpus] = None) -> Sample:
    """One sample of `task` with about `n_chars` characters of haystack (of `prose` when given)."""
    query = TASKS[task](rng)
    text = prompt(query, haystack([query], n_chars, rng, prose))
    return Sample(task, text, query.answers, query.cue)


def make_samples(
    task: str,
    length: int,
    count: int,
    seed: int,
    count_tokens: Callable[[str], int] = len,
    prose: Optional[Corpus] = None,
) -> list[Sample]:
    """`count` samples of `task` whose prompts are about `length` tokens by `count_tokens`, the haystack
    from `prose` when given (required by the prose-only tasks)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task in PROSE_ONLY and prose is None:
        raise ValueError(f"{task} needs real prose for its haystack (rocket-fetch prose, or --prose FILE)")
    return [
        sized(
            length,
            count_tokens,
            lambda n, name=f"{task}/{length}/{seed}/{i}": generate(task, n, random.Random(name), prose),
            lambda sample: sample.prompt,
            task,
        )
        for i in range(count)
    ]


T = TypeVar("T")


def sized(length: int, count_tokens: Callable[[str], int], build: Callable[[int], T], text: Callable[[T], str],
          what: str) -> T:  # fmt: skip
    """`build(n_chars)` for the haystack size whose `text` is about `length` tokens by `count_tokens`.

    Tokens grow linearly with the haystack's characters: two probes give the size that lands the prompt on
    `length` tokens of this tokenizer; prose is denser in some passages than others, so a few corrections
    land within 2%."""
    small, large = (count_tokens(text(build(n))) for n in (length, 2 * length))
    per_char = max(1e-6, (large - small) / length)
    chars = int(length + (length - small) / per_char)
    for _ in range(4):
        if chars < 1:
            raise ValueError(f"{what} needs more than {length} tokens for its question and facts")
        item = build(chars)
        error = length - count_tokens(text(item))
        if abs(error) <= length // 50:
            break
        chars += int(error / per_char)
    return item


# ---- multi-turn: one shared context, a question per turn (SCBench's shared-context multi-turn retrieval) ----

MULTITURN = "multiturn"


@dataclass
class Conversation:
    """A context with one fact per turn; turn t asks for fact t. Each turn's prompt is the whole conversation
    so far: `opening` (instruction, context, question 1), then for every later turn the model's own answer and
    `follow_ups[t - 1]`."""

    opening: str
    follow_ups: list[str]
    answers: list[str]  # turn t's answer must appear in its generated text

    @property
    def turns(self) -> int:
        return len(self.answers)


def conversation(n_chars: int, rng: random.Random, turns: int, prose: Optional[Corpus] = None) -> Conversation:
    keys = list(dict.fromkeys(_key(rng) for _ in range(turns)))
    while len(keys) < turns:  # a repeated key would make two turns one question
        keys = list(dict.fromkeys(keys + [_key(rng)]))
    values = [_value(rng) for _ in keys]
    facts = [f"The special magic number for {k} is {v}." for k, v in zip(keys, values)]
    rng.shuffle(facts)
    asks = [f"What is the special magic number for {k}?" for k in keys]
    # In prose (for pretrained models) each answer starts with a cue to complete, as passkey's does.
    cues = [f" The special magic number for {k} is" if prose is not None else "" for k in keys]
    query = Query(facts, asks[0], [values[0]], cue=cues[0].strip())
    opening = prompt(query, haystack([query], n_chars, rng, prose))
    return Conversation(opening, [f"\nQuestion: {q}{ANSWER_CUE}{c}" for q, c in zip(asks[1:], cues[1:])], values)


def make_conversations(
    length: int,
    count: int,
    seed: int,
    turns: int,
    count_tokens: Callable[[str], int] = len,
    prose: Optional[Corpus] = None,
) -> list[Conversation]:
    """`count` conversations whose first turn is about `length` tokens by `count_tokens`."""
    return [
        sized(
            length,
            count_tokens,
            lambda n, name=f"{MULTITURN}/{length}/{seed}/{i}/{turns}": conversation(
                n, random.Random(name), turns, prose
            ),
            lambda c: c.opening,
            MULTITURN,
        )  # fmt: skip
        for i in range(count)
    ]
