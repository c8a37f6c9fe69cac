"""Chunked prefill: a step's token budget (max_num_tokens) shared by decode tokens and prompt chunks. Every method
gives the same tokens chunked as in one step (float32), eviction keeps the same tokens per layer and head, and
decoding requests get a token at every step while a long prompt prefills."""

import pytest
import torch

from rocket_trtllm import LLM, ConfigError, KvCacheConfig, RequestError, SamplingParams
from rocket_trtllm.sparse import snapkv

KV = KvCacheConfig(tokens_per_block=16)
PROMPTS = [list(range(3, 250)), list(range(40, 80)), [7, 8, 9] * 90, [5 + i % 200 for i in range(97)]]
GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
METHODS = {
    "dense": None,
    "rocket": {"algorithm": "rocket", "prompt_budget": 64, "window_size": 8, "topk": 4, "page_size": 4, "topr": 8},
    "rocket-layer": {
        "algorithm": "rocket",
        "prompt_budget": 64,
        "window_size": 8,
        "topk": 4,
        "topr": 8,
        "eviction_scope": "layer",
    },  # fmt: skip
    "rocket_mt": {
        "algorithm": "rocket_mt",
        "prompt_budget": 64,
        "window_size": 8,
        "topk": 4,
        "page_size": 4,
        "topr": 8,
    },  # fmt: skip
    "snapkv": {"algorithm": "snapkv", "prompt_budget": 64, "window_size": 8},
    "quest": {"algorithm": "quest", "topk": 4, "page_size": 16},
    "streamingllm": {"algorithm": "streamingllm", "sink_size": 4, "window_size": 40},
    "topk_oracle": {"algorithm": "topk_oracle", "topk": 32},
}


def generate(model, sparse, chunked, prompts=PROMPTS, params=GREEDY, **options):
    """Outputs and, per prompt, each stage-1 call's kept indices (per layer, [kv_heads, kept])."""
    kept = []
    choose = snapkv.keep_indices

    def recorded(*args, **kwargs):
        kept.append(choose(*args, **kwargs))
        return kept[-1]

    snapkv.keep_indices = recorded
    try:
        with LLM(str(model), dtype="float32", kv_cache_config=KV, sparse_attention_config=sparse,
                 enable_chunked_prefill=chunked, max_num_tokens=48 if chunked else 512, **options) as llm:  # fmt: skip
            outs = []
            for prompt in prompts:  # one at a time: each prompt's stage-1 calls in order
                outs.append(llm.generate(prompt, params).outputs[0])
            snap = llm.snapshot()
            assert snap["kvBlocksUsed"] == 0 and snap["kvBlocksReserved"] == 0
    finally:
        snapkv.keep_indices = choose
    return outs, kept


@pytest.mark.parametrize("method", METHODS)
def test_chunked_equals_one_step(llama_dir, method):
    whole, kept_whole = generate(llama_dir, METHODS[method], chunked=False)
    chunked, kept_chunked = generate(llama_dir, METHODS[method], chunked=True)
    assert [o.token_ids for o in chunked] == [o.token_ids for o in whole]
    assert len(kept_chunked) == len(kept_whole)
    for a, b in zip(kept_chunked, kept_whole):
        assert torch.equal(a, b)
    if method in ("rocket", "snapkv", "rocket-layer", "rocket_mt"):
        assert kept_whole  # stage 1 ran (prompts past the budget)


def test_prompt_logprobs_and_scoring_through_chunks(llama_dir):
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=2, prompt_logprobs=1)
    rocket = METHODS["rocket"]
    whole, _ = generate(llama_dir, rocket, chunked=False, prompts=PROMPTS[:1], params=params)
    chunked, _ = generate(llama_dir, rocket, chunked=True, prompts=PROMPTS[:1], params=params)
    assert len(chunked[0].prompt_logprobs) == len(PROMPTS[0]) and chunked[0].prompt_logprobs[0] is None
    for a, b in zip(chunked[0].prompt_logprobs[1:] + chunked[0].logprobs, whole[0].prompt_logprobs[1:] +
                    whole[0].logprobs):  # fmt: skip
        assert a.keys() == b.keys()
        assert [x.logprob for x in a.values()] == pytest.approx([x.logprob for x in b.values()], abs=1e-4)
    pairs = [(PROMPTS[0], [11, 12, 13]), (PROMPTS[2], [4, 5])]
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=rocket) as llm:
        want = llm.score(pairs, use_tqdm=False)
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=rocket,
             enable_chunked_prefill=True, max_num_tokens=48) as llm:  # fmt: skip
        got = llm.score(pairs, use_tqdm=False)
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=1e-4)


def test_decoding_continues_while_a_long_prompt_prefills(llama_dir):
    """Each step serves every decoding request first and fills the rest of its budget with the prompt's chunks; a
    chunked RocketKV prompt holds its whole prompt's blocks until its last chunk, then what stage 1 kept."""
    rocket = dict(METHODS["rocket"])
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=rocket,
             enable_chunked_prefill=True, max_num_tokens=40) as llm:  # fmt: skip
        engine = llm.engine
        decoding = [engine.new_sequence(list(range(10 + i, 30 + i)), SamplingParams(max_tokens=60, ignore_eos=True,
                                                                                   temperature=0))
                    for i in range(3)]  # fmt: skip
        for seq in decoding:
            engine.add(seq)
        while not all(s.output_token_ids for s in decoding):
            engine.step()
        long = engine.new_sequence(list(range(3, 250)), SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
        engine.add(long)
        steps, blocks = [], []
        while not long.output_token_ids:
            before = [len(s.output_token_ids) for s in decoding]
            engine.step()
            stats = engine.stats[-1]["inflightBatchingStats"]
            steps.append((stats["numCtxTokens"], stats["numGenRequests"]))
            assert [len(s.output_token_ids) for s in decoding] == [b + 1 for b in before]  # a token each, every step
            blocks.append(len(long.block_table))
        assert [ctx for ctx, _ in steps] == [37] * 6 + [25]  # 247 tokens in what 3 decodes leave of 40
        assert all(gen == 3 for _, gen in steps)
        assert set(blocks[:-1]) == {-(-247 // 16)} and blocks[-1] == -(-64 // 16)  # whole prompt, then the kept 64
        while engine.has_work:
            engine.step()
        assert engine.pool.allocator.num_used == 0 and engine.pool.allocator.num_reserved == 0


def test_prefix_cache_chunks_start_after_the_cached_prefix(llama_dir):
    for sparse in (None, METHODS["rocket_mt"]):
        prompts = [list(range(3, 200)), list(range(3, 180)) + [9, 9, 9]]
        with LLM(str(llama_dir), dtype="float32", kv_cache_config=KvCacheConfig(tokens_per_block=16),
                 sparse_attention_config=sparse) as llm:  # fmt: skip
            want = [llm.generate(p, GREEDY).outputs[0].token_ids for p in prompts]
        with LLM(str(llama_dir), dtype="float32", kv_cache_config=KvCacheConfig(tokens_per_block=16),
                 sparse_attention_config=sparse, enable_chunked_prefill=True, max_num_tokens=40) as llm:  # fmt: skip
            got = [llm.generate(p, GREEDY).outputs[0].token_ids for p in prompts]
            assert llm.snapshot()["cached_prompt_tokens"] == 176  # 11 blocks of the first prompt's
        assert got == want


def test_limits(llama_dir):
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, max_num_tokens=64) as llm:
        with pytest.raises(RequestError, match="enable_chunked_prefill"):
            llm.generate(list(range(3, 200)), GREEDY)
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, max_num_tokens=64,
             enable_chunked_prefill=True) as llm:  # fmt: skip
        assert len(llm.generate(list(range(3, 200)), GREEDY).outputs[0].token_ids) == 10
    with pytest.raises(ConfigError, match="max_num_tokens"):
        LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=METHODS["rocket"],
            enable_chunked_prefill=True, max_num_tokens=8)  # fmt: skip
