"""RocketKV-MT, the paper's multi-turn variant: nothing is evicted for good. Each request keeps its whole prompt's
K/V (in blocks the prefix cache shares with the conversation's next turn), and at its prefill SnapKV++ picks the
turn's working set from that whole history with this turn's last queries; decode runs RocketKV's stage 2 over
the working set plus the tokens generated in the turn. The next turn's prompt (history, answer, new question)
finds the history cached, prefills only what is new, and chooses its own working set from everything.

The fields are RocketKV's, `token_budget` included (the official implementation's MT page size is ceil(sqrt(c))
and top-r head_dim * page / c; with `token_budget` ours uses RocketKV's split).
"""

from typing import ClassVar, Literal

from .configs import TokenBudgetFields
from .registry import register_sparse_attention
from .rocket import RocketAttention


class RocketMTSparseAttentionConfig(TokenBudgetFields):
    """RocketKV-MT: RocketKV's fields; the prompt's K/V stay whole for later turns (block reuse allowed)."""

    algorithm: Literal["rocket_mt"] = "rocket_mt"
    evicts_prompt_tokens: ClassVar[bool] = False  # the working set is a copy: the history stays shareable


class RocketMTAttention(RocketAttention):
    keeps_history = True


register_sparse_attention(RocketMTSparseAttentionConfig, RocketMTAttention)
