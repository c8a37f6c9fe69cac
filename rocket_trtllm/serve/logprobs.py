"""Log-probabilities in OpenAI's two response shapes: completions' parallel lists (`tokens`, `token_logprobs`,
`top_logprobs`, `text_offset`) and chat's `content` entries (`token`, `logprob`, `bytes`, `top_logprobs`)."""

from typing import Any, Optional

from ..runtime.sampler import Logprob

Entry = Optional[dict[int, Logprob]]  # one token's {token id: Logprob}, its own first; None for a prompt's first
CONTEXT_TOKENS = 4  # tokens decoded before each one, so that its text keeps its leading space


def token_texts(tokenizer: Any, ids: list[int], before: list[int] = ()) -> list[str]:
    """Each token's text as it reads in its sequence (`before`: the tokens that precede `ids`). A token decoded
    alone loses its leading space under SentencePiece tokenizers; decoded after a few others it keeps it."""
    seq = list(before) + list(ids)
    out = []
    for i in range(len(before), len(seq)):
        window = seq[max(0, i - CONTEXT_TOKENS) : i]
        head = tokenizer.decode(window) if window else ""
        out.append(tokenizer.decode(window + [seq[i]])[len(head) :])
    return out


def _preceding(before: list[int], ids: list[int], i: int) -> list[int]:
    # The tokens decoded before ids[i] when its alternatives' texts are read
    seq = list(before) + ids
    return seq[max(0, len(before) + i - CONTEXT_TOKENS) : len(before) + i]


def _alternatives(tokenizer: Any, entry: dict[int, Logprob], n: int, context: list[int]) -> list[tuple[str, float]]:
    # The n most likely tokens of an entry (which holds them and the chosen token), best first, with their texts.
    ranked = sorted(entry.items(), key=lambda item: item[1].rank)[:n]
    return [(token_texts(tokenizer, [tok], context)[0], lp.logprob) for tok, lp in ranked if lp.rank <= n]


def completion_logprobs(
    tokenizer: Any, ids: list[int], entries: list[Entry], n: int, before: list[int], offset: int
) -> dict[str, Any]:
    """/v1/completions' `logprobs` for tokens `ids` (with their `entries` and `n` alternatives each), preceded by
    `before` in the text, the first one at character `offset` of prompt + completion."""
    texts = token_texts(tokenizer, ids, before)
    offsets, top = [], []
    for i, (text, entry) in enumerate(zip(texts, entries)):
        offsets.append(offset)
        offset += len(text)
        if entry is None:
            top.append(None)
            continue
        alternatives: dict[str, float] = {}
        for piece, lp in _alternatives(tokenizer, entry, n, _preceding(before, ids, i)):
            alternatives.setdefault(piece, lp)  # two tokens reading the same: the likelier one's
        top.append(alternatives)
    token_lps = [None if e is None else e[t].logprob for t, e in zip(ids, entries)]
    return {"tokens": texts, "token_logprobs": token_lps, "top_logprobs": top, "text_offset": offsets}


def chat_logprobs(
    tokenizer: Any, ids: list[int], entries: list[Entry], n: int, before: list[int]
) -> list[dict[str, Any]]:
    """/v1/chat/completions' `logprobs.content` entries for generated tokens `ids`, `n` alternatives each."""
    out = []
    for i, (text, tok, entry) in enumerate(zip(token_texts(tokenizer, ids, before), ids, entries)):
        alternatives = _alternatives(tokenizer, entry, n, _preceding(before, ids, i))
        top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives]
        out.append({"token": text, "logprob": entry[tok].logprob, "bytes": list(text.encode()), "top_logprobs": top})
    return out
