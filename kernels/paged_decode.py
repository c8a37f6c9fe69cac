"""Decode attention over a paged KV cache: dense (whole sequence) and sparse (selected tokens)."""

import torch


def attend_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    """Exact attention of each query group over its own gathered tokens, in float32.

    q: [batch, kv_heads, group, head_dim]; k, v: [batch, kv_heads, n, head_dim];
    valid: [batch, kv_heads or 1, n] bool -> [batch, kv_heads, group, head_dim] in q's dtype.
    """
    scores = torch.einsum("bhgd,bhnd->bhgn", q.float(), k.float()) * scale
    scores = scores.masked_fill(~valid[:, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhgn,bhnd->bhgd", probs, v.float()).to(q.dtype)


def gather_pages_ref(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """Every token slot of each sequence's blocks, in logical order.

    cache: [num_blocks, kv_heads, block_size, head_dim]; block_tables: [batch, max_blocks]
    -> [batch, kv_heads, max_blocks * block_size, head_dim]
    """
    blocks = cache[block_tables.long()]  # [batch, max_blocks, kv_heads, block_size, head_dim]
    b, nb, h, bs, d = blocks.shape
    return blocks.permute(0, 2, 1, 3, 4).reshape(b, h, nb * bs, d)


def paged_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Dense decode: each sequence's one query over all its cached tokens.

    q: [batch, q_heads, head_dim]; k_cache, v_cache: [num_blocks, kv_heads, block_size, head_dim];
    block_tables: [batch, max_blocks]; cache_lens: [batch] -> [batch, q_heads, head_dim]
    """
    batch, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    k = gather_pages_ref(k_cache, block_tables)
    v = gather_pages_ref(v_cache, block_tables)
    pos = torch.arange(k.shape[2], device=q.device)
    valid = (pos[None, :] < cache_lens[:, None])[:, None, :]
    out = attend_ref(q.view(batch, kv_heads, q_heads // kv_heads, head_dim), k, v, valid, scale)
    return out.reshape(batch, q_heads, head_dim)


def gather_tokens_ref(cache: torch.Tensor, block_tables: torch.Tensor, token_idx: torch.Tensor) -> torch.Tensor:
    """The cached rows at logical token positions, per KV head.

    cache: [num_blocks, kv_heads, block_size, head_dim]; block_tables: [batch, max_blocks];
    token_idx: [batch, kv_heads, n] (any value < max_blocks * block_size) -> [batch, kv_heads, n, head_dim]
    """
    block_size = cache.shape[2]
    token_idx = token_idx.long()
    blocks = torch.gather(block_tables.long(), 1, (token_idx // block_size).flatten(1)).view_as(token_idx)
    heads = torch.arange(cache.shape[1], device=cache.device)[None, :, None]
    return cache[blocks, heads, token_idx % block_size]


def sparse_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    token_idx: torch.Tensor,
    valid: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Sparse decode: each query group attends only to its KV head's selected tokens.

    q: [batch, q_heads, head_dim]; token_idx, valid: [batch, kv_heads, n] -> [batch, q_heads, head_dim]
    """
    batch, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    k = gather_tokens_ref(k_cache, block_tables, token_idx)
    v = gather_tokens_ref(v_cache, block_tables, token_idx)
    out = attend_ref(q.view(batch, kv_heads, q_heads // kv_heads, head_dim), k, v, valid, scale)
    return out.reshape(batch, q_heads, head_dim)
