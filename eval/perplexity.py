"""Long-document perplexity: the log-likelihood of the last tokens of real documents, scored through
`LLM.score` so that the context is prefilled (and evicted) and every scored token is a decode step (with
the method's sparse attention), as generation would run it."""

import math
import random
from collections.abc import Callable

from .prose import Corpus

TASK = "doc_ppl"


def make_documents(
    prose: Corpus, length: int, count: int, seed: int, encode: Callable[[str], list[int]], scored: int
) -> list[tuple[list[int], list[int]]]:
    """`count` (context, continuation) pairs: documents of `length` tokens whose last `scored` are scored."""
    if not 0 < scored < length:
        raise ValueError(f"the scored tokens ({scored}) must be fewer than the document's {length}")
    docs = [prose.document(length, random.Random(f"{TASK}/{length}/{seed}/{i}"), encode) for i in range(count)]
    return [(ids[:-scored], ids[-scored:]) for ids in docs]


def perplexity(logprob_sums: list[float], tokens: int) -> float:
    """exp of the mean negative log-likelihood per scored token, over every document."""
    return math.exp(-sum(logprob_sums) / tokens)
