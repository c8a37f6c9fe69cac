import pytest
import torch

from rocket_trtllm.sparse.stage1 import keep_indices


def keep_indices_plain(q, k, window, kernel, budget, scale):
    """SnapKV++ written out loop by loop, as a reader would check it against the paper."""
    q_heads, n, d = q.shape
    kv_heads = k.shape[0]
    group = q_heads // kv_heads
    kept = []
    for h in range(kv_heads):
        score = [0.0] * (n - window)
        for g in range(group):
            for w in range(window):
                row = n - window + w
                logits = [float(q[h * group + g, row] @ k[h, j]) * scale for j in range(row + 1)]
                probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                for j in range(n - window):
                    score[j] += float(probs[j])
        half = kernel // 2
        pooled = [max(score[max(0, j - half) : j + half + 1]) for j in range(n - window)]
        order = sorted(range(n - window), key=lambda j: (-pooled[j], j))
        kept.append(sorted(order[: budget - window]) + list(range(n - window, n)))
    return torch.tensor(kept)


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
def test_kept_indices_match_plain_reference(q_heads, kv_heads, n, window, kernel, budget):
    gen = torch.Generator().manual_seed(n * 31 + kernel)
    d = 8
    # Quantised scores keep float ties exact in both implementations.
    q = torch.randint(-3, 4, (q_heads, n, d), generator=gen).float()
    k = torch.randint(-3, 4, (kv_heads, n, d), generator=gen).float()
    got = keep_indices(q, k, window, kernel, budget, 0.5)
    want = keep_indices_plain(q.double(), k.double(), window, kernel, budget, 0.5)
    assert got.shape == (kv_heads, budget)
    assert torch.equal(got, want)
    assert all(torch.all(row[1:] > row[:-1]) for row in got)  # original order, no duplicates
