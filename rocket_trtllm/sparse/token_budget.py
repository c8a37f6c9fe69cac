"""The official RocketKV split of a token budget (NVlabs/RocketKV's definition: the budget is attention's memory
traffic per decode step, in tokens of K/V), from the sequence length L, the budget B and head_dim d:

    c = L / B;  alpha = min(0.2 + 0.06 log2 c, 0.8);  stage 1 keeps L / c^alpha tokens;
    c2 = kept / B;  page = min(floor c2, ceil sqrt c2);  top-r = min(d, max(1, round(d * page / c2)));
    stage 2 attends B / 2 tokens.

Ours differs in one place: the KT cache lives inside KV blocks, so the page size is rounded down to a power of
two (top-r follows the page actually used). `official_split` is the formula as written, `split` ours.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetSplit:
    kept: int  # prompt tokens stage 1 keeps
    page_size: int
    topr: int  # channels scored, of head_dim
    attended: int  # tokens stage 2 attends (topk pages x page_size)

    @property
    def topk(self) -> int:
        """Pages selected per decode step."""
        return max(1, self.attended // self.page_size)


def kept_tokens(seq_len: int, budget: int) -> int:
    """Stage 1's share: L / c^alpha (everything when the budget covers the sequence)."""
    c = seq_len / budget
    if c <= 1:
        return seq_len
    alpha = min(0.2 + 0.06 * math.log2(c), 0.8)
    return max(budget, min(seq_len, round(seq_len / c**alpha)))


def official_split(seq_len: int, budget: int, head_dim: int) -> BudgetSplit:
    kept = kept_tokens(seq_len, budget)
    c2 = kept / budget
    page = max(1, min(math.floor(c2), math.ceil(math.sqrt(c2))))
    return BudgetSplit(kept, page, _topr(head_dim, page, c2), budget // 2)


def split(seq_len: int, budget: int, head_dim: int) -> BudgetSplit:
    """`official_split` with the page size rounded down to a power of two."""
    exact = official_split(seq_len, budget, head_dim)
    page = 1 << (exact.page_size.bit_length() - 1)
    return BudgetSplit(exact.kept, page, _topr(head_dim, page, exact.kept / budget), exact.attended)


def _topr(head_dim: int, page: int, c2: float) -> int:
    return min(head_dim, max(1, round(head_dim * page / c2)))
