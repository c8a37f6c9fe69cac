import pytest
import torch

from rocket_trtllm.sparse.stage1 import keep_indices


def keep_indices_plain(q, k, window, kernel, budget, scale, reduction):
    """SnapKV++ written out loop by loop, as a reader would check it against the paper (reduction "sum";
    "max" takes each query head's largest window row instead of their total)."""
    q_heads, n, d = q.shape
    kv_heads = k.shape[0]
    group = q_heads // kv_heads
    kept = []
    for h in range(kv_heads):
        score = [0.0] * (n - window)
        for g in range(group):
            head = [0.0] * (n - window)
            for w in range(window):
                row = n - window + w
                logits = [float(q[h * group + g, row] @ k[h, j]) * scale for j in range(row + 1)]
                probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                for j in range(n - window):
                    p = float(probs[j])
                    head[j] = max(head[j], p) if reduction == "max" else head[j] + p
            for j in range(n - window):
                score[j] += head[j]
        half = kernel // 2
        pooled = [max(score[max(0, j - half) : j + half + 1]) for j in range(n - window)]
        order = sorted(range(n - window), key=lambda j: (-pooled[j], j))
        kept.append(sorted(order[: budget - window]) + list(range(n - window, n)))
    return torch.tensor(kept)


@pytest.mark.parametrize("reduction", ["max", "sum"])
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
def test_kept_indices_match_plain_reference(q_heads, kv_heads, n, window, kernel, budget, reduction):
    gen = torch.Generator().manual_seed(n * 31 + kernel)
    d = 8
    # Quantised scores keep float ties exact in both implementations.
    q = torch.randint(-3, 4, (q_heads, n, d), generator=gen).float()
    k = torch.randint(-3, 4, (kv_heads, n, d), generator=gen).float()
    got = keep_indices(q, k, window, kernel, budget, 0.5, reduction)
    want = keep_indices_plain(q.double(), k.double(), window, kernel, budget, 0.5, reduction)
    assert got.shape == (kv_heads, budget)
    assert torch.equal(got, want)
    assert all(torch.all(row[1:] > row[:-1]) for row in got)  # original order, no duplicates


def test_max_keeps_the_key_one_window_row_needs():
    """One window row looks sharply at key 3 (a hop of a chain only that row asks about); the seven
    other rows share their attention among keys 10-13. Summed, those four outweigh key 3 and fill the
    four prefix slots; with max, key 3 (0.93 of its row) beats them (about 0.25 of each row)."""
    n, window, d = 40, 8, 16
    k = torch.zeros(1, n, d)
    k[0, 3, 0] = 1.0
    k[0, 10:14, 1] = 1.0
    q = torch.zeros(1, n, d)
    q[0, n - window, 0] = 6.0  # the one row for key 3: about 0.94 of its softmax
    q[0, n - window + 1 :, 1] = 6.0  # the other rows: about 0.24 on each of keys 10-13
    kept = {r: set(keep_indices(q, k, window, 1, window + 4, 1.0, r)[0].tolist()) for r in ("max", "sum")}
    assert 3 in kept["max"] and 3 not in kept["sum"]
