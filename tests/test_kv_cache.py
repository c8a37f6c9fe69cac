import random

from rocket_trtllm.runtime.kv_cache import BlockAllocator


def test_blocks_come_in_aligned_runs_of_the_group():
    """A request's blocks are consecutive ids from the start of a wholly free group (the KT layout reads one run per
    group of ids), its growth the successor of its last block; a group one request began is not given to another."""
    alloc = BlockAllocator(32, group=4)
    a = alloc.admit(6, 4)
    b = alloc.admit(3, 2)
    assert a == [0, 1, 2, 3, 4, 5] and b == [8, 9, 10]
    a.append(alloc.take_reserved(a[-1]))
    b.append(alloc.take_reserved(b[-1]))
    assert a[-1] == 6 and b[-1] == 11
    a.append(alloc.take_reserved(a[-1]))
    a.append(alloc.take_reserved(a[-1]))  # 7, then the group after 6's is taken by b: the next whole group
    assert a[-2:] == [7, 12]
    alloc.release(b, 1)
    c = alloc.admit(4, 0)
    assert c == [16, 17, 18, 19]  # the oldest wholly free group (8..11's freed blocks rejoin the list later)


def test_group_one_is_first_in_first_out():
    alloc = BlockAllocator(8)
    a = alloc.admit(3, 0)
    alloc.release(a[1:2], 0)
    assert alloc.admit(6, 0) == [3, 4, 5, 6, 7, 1]


def test_random_churn_never_hands_a_block_out_twice():
    rng = random.Random(0)
    for group in (1, 2, 4, 8):
        alloc = BlockAllocator(61, group=group)  # a partial last group
        held: list[list[int]] = []
        for _ in range(2000):
            if held and (rng.random() < 0.4 or alloc.num_available < 8):
                table = held.pop(rng.randrange(len(held)))
                alloc.release(table, 0)
            else:
                table = alloc.admit(rng.randint(1, 4), 0)
                for _ in range(rng.randint(0, 3)):
                    alloc._reserved += 1  # as admit(now, later) would have promised it
                    table.append(alloc.take_reserved(table[-1]))
                held.append(table)
            owned = [b for t in held for b in t]
            assert len(owned) == len(set(owned)) and alloc.num_used == len(owned) and alloc.num_reserved == 0
