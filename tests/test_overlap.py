"""The overlap scheduler: a greedy decode step runs ahead of the host's bookkeeping of the step before it. It
must give the tokens the synchronous engine gives, drop the one token a request computes past its end, and
leave no KV block behind. (An abort with a step in flight: tests/test_llm.py::test_abort_returns_blocks.)"""

import pytest

from rocket_trtllm import LLM, KvCacheConfig, RocketSparseAttentionConfig, SamplingParams
from rocket_trtllm import engine as engine_module

PROMPTS = [list(range(3, 40)), [7, 8, 9], [10] * 20, list(range(100, 170))]
ROCKET = RocketSparseAttentionConfig(prompt_budget=24, window_size=4, kernel_size=3, topk=2, page_size=2, topr=8)


def greedy(max_tokens, **kw):
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, **kw)


def run(model, overlap, sparse=None):
    """Every case in one LLM: lengths that end at different steps, stop tokens met mid-way while the others
    go on, a sampled request beside greedy ones (no overlap while it runs), then a prefix-cache round."""
    launched = []
    real = engine_module._Inflight.launch.__func__

    def spy(cls, seqs, *args):
        launched.append(len(seqs))
        return real(cls, seqs, *args)

    kv = KvCacheConfig(tokens_per_block=8, enable_block_reuse=sparse is None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_module._Inflight, "launch", classmethod(spy))
        with LLM(str(model), dtype="float32", kv_cache_config=kv, sparse_attention_config=sparse,
                 disable_overlap_scheduler=not overlap) as llm:  # fmt: skip
            first = llm.generate(PROMPTS, [greedy(m) for m in (5, 17, 9, 12)], use_tqdm=False)
            tokens = [o.outputs[0].token_ids for o in first]
            stops = [greedy(30, stop_token_ids=[t[3]]) for t in tokens]
            stopped = llm.generate(PROMPTS, stops, use_tqdm=False)
            mixed = [greedy(10), SamplingParams(max_tokens=10, temperature=0.8, seed=3), greedy(6), greedy(10)]
            sampled = llm.generate(PROMPTS, mixed, use_tqdm=False)
            again = llm.generate(PROMPTS, [greedy(m) for m in (5, 17, 9, 12)], use_tqdm=False)
            snap = llm.snapshot()
            assert snap["kvBlocksUsed"] == 0 and snap["running"] == 0
    outs = [[(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in r] for r in (first, stopped, sampled, again)]
    return outs, launched


@pytest.mark.parametrize("sparse", [None, ROCKET], ids=["dense", "rocket"])
def test_overlapped_steps_equal_synchronous_ones(llama_dir, sparse):
    synchronous, none = run(llama_dir, False, sparse)
    overlapped, launched = run(llama_dir, True, sparse)
    assert not none and launched  # the steps did overlap, and only when asked
    assert overlapped == synchronous
    first, stopped, _, again = overlapped
    assert [len(t) for t, _ in first] == [5, 17, 9, 12] and again == first
    assert all(reason == "stop" and len(t) == 4 for t, reason in stopped)  # a token past the stop was dropped


def test_steps_overlap_while_requests_wait_for_room(llama_dir):
    """A full batch with requests queued behind it keeps launching each step before the last one lands (it ran
    synchronously whenever anything waited), and gives the synchronous engine's tokens and admission order."""

    def generate(overlap):
        followed = []  # at each launch: requests waiting, and whether a step was still in flight
        real = engine_module._Inflight.launch.__func__
        kv = KvCacheConfig(tokens_per_block=8)
        with LLM(str(llama_dir), dtype="float32", max_batch_size=2, kv_cache_config=kv,
                 disable_overlap_scheduler=not overlap) as llm:  # fmt: skip

            def spy(cls, seqs, *args):
                followed.append((len(llm.engine.scheduler.waiting), llm.engine._inflight is not None))
                return real(cls, seqs, *args)

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(engine_module._Inflight, "launch", classmethod(spy))
                outs = llm.generate(PROMPTS, [greedy(m) for m in (5, 17, 9, 12)], use_tqdm=False)
        return [o.outputs[0].token_ids for o in outs], followed

    synchronous, _ = generate(False)
    overlapped, followed = generate(True)
    assert overlapped == synchronous and [len(t) for t in overlapped] == [5, 17, 9, 12]
    assert any(waiting and in_flight for waiting, in_flight in followed)
