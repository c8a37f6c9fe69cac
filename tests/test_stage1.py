import pytest
import torch

from rocket_trtllm.sparse.stage1 import keep_indices


def keep_indices_plain(q, k, window, kernel, budget, scale, scope):
    """SnapKV++ written out loop by loop, as a reader would check it against the paper (scope "kv_head");
    scope "layer" normalises each KV head's scores to sum to 1 and adds them: one choice for all heads."""
    q_heads, n, d = q.shape
    kv_heads = k.shape[0]
    group = q_heads // kv_heads
    scores = []
    for h in range(kv_heads):
        score = [0.0] * (n - window)
        for g in range(group):
            for w in range(window):
                row = n - window + w
                logits = [float(q[h * group + g, row] @ k[h, j]) * scale for j in range(row + 1)]
                probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                for j in range(n - window):
                    score[j] += float(probs[j])
        scores.append(score)
    if scope == "layer":
        shared = [sum(s[j] / sum(s) for s in scores) for j in range(n - window)]
        scores = [shared] * kv_heads
    kept = []
    half = kernel // 2
    for score in scores:
        pooled = [max(score[max(0, j - half) : j + half + 1]) for j in range(n - window)]
        order = sorted(range(n - window), key=lambda j: (-pooled[j], j))
        kept.append(sorted(order[: budget - window]) + list(range(n - window, n)))
    return torch.tensor(kept)


@pytest.mark.parametrize("scope", ["kv_head", "layer"])
@pytest.mark.parametrize(
    "q_heads,kv_heads,n,window,kernel,budget",
    [
        (4, 4, 37, 4, 1, 12),
        (4, 2, 50, 8, 5, 20),
        (8, 2, 61, 3, 7, 17),
        (6, 1, 45, 5, 3, 30),
        (4, 2, 33, 1, 9, 2),
    ],
)
def test_kept_indices_match_plain_reference(q_heads, kv_heads, n, window, kernel, budget, scope):
    gen = torch.Generator().manual_seed(n * 31 + kernel)
    d = 8
    # Quantised scores keep float ties exact in both implementations.
    q = torch.randint(-3, 4, (q_heads, n, d), generator=gen).float()
    k = torch.randint(-3, 4, (kv_heads, n, d), generator=gen).float()
    got = keep_indices(q, k, window, kernel, budget, 0.5, scope)
    want = keep_indices_plain(q.double(), k.double(), window, kernel, budget, 0.5, scope)
    assert got.shape == (kv_heads, budget)
    assert torch.equal(got, want)
    assert all(torch.all(row[1:] > row[:-1]) for row in got)  # original order, no duplicates


def test_layer_scope_keeps_for_every_head_what_one_head_needs():
    """KV head 0's window looks sharply at key 3, head 1's at keys 20-23. Per KV head, each keeps only its
    own; with one choice per layer, both heads keep key 3 and the best of keys 20-23."""
    n, window, d = 40, 4, 16
    k = torch.zeros(2, n, d)
    k[0, 3, 0] = 1.0
    k[1, 20:24, 1] = 1.0
    q = torch.zeros(2, n, d)
    q[0, n - window :, 0] = 8.0
    q[1, n - window :, 1] = 8.0
    per_head = keep_indices(q, k, window, 1, window + 4, 1.0, "kv_head")
    layer = keep_indices(q, k, window, 1, window + 4, 1.0, "layer")
    assert 3 in per_head[0].tolist() and 3 not in per_head[1].tolist()
    assert set(range(20, 24)) <= set(per_head[1].tolist())
    assert torch.equal(layer[0], layer[1]) and 3 in layer[0].tolist() and 20 in layer[0].tolist()
