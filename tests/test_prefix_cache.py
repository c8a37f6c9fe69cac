"""Prefix caching (kv_cache_config.enable_block_reuse): a cached prefix gives the same tokens as computing it, in
float32, across batches, aborts and a pool too small to keep everything; the blocks all come back."""

import time

import pytest
import torch

from rocket_trtllm import LLM, ConfigError, KvCacheConfig, RocketSparseAttentionConfig, SamplingParams
from rocket_trtllm.runtime.attention import causal_attention

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
DOC = list(range(3, 200)) * 2  # 394 shared tokens: 24 full blocks of 16
QUESTIONS = [[250, 251, 252], [260, 261], [270, 271, 272, 273, 274], [280] * 20]


def run(model, reuse, batches, sparse=None, max_tokens=None):
    kv = KvCacheConfig(tokens_per_block=16, enable_block_reuse=reuse, max_tokens=max_tokens)
    with LLM(str(model), dtype="float32", kv_cache_config=kv, sparse_attention_config=sparse) as llm:
        outs = [[o.outputs[0].token_ids for o in llm.generate(batch, GREEDY)] for batch in batches]
        snap = llm.snapshot()
        assert snap["kvBlocksUsed"] == 0 and snap["kvBlocksReserved"] == 0
        llm.reset_prefix_cache()
        assert llm.snapshot()["kvBlocksCached"] == 0
    return outs, snap


@pytest.mark.parametrize("sparse", [None, {"algorithm": "quest", "topk": 4, "page_size": 16},
                                    {"algorithm": "streamingllm", "sink_size": 4, "window_size": 64},
                                    {"algorithm": "topk_oracle", "topk": 64}],
                         ids=["dense", "quest", "streamingllm", "topk_oracle"])  # fmt: skip
def test_cached_prefix_equals_computing_it(llama_dir, sparse):
    batches = [[DOC + QUESTIONS[0]], [DOC + q for q in QUESTIONS], [DOC[:100] + QUESTIONS[1], DOC + QUESTIONS[3]]]
    cached, snap = run(llama_dir, True, batches, sparse)
    assert snap["cached_prompt_tokens"] >= 24 * 16 * 4  # batch 2's four prompts found the document
    assert 0 < snap["prefixCacheHitRate"] <= 1
    assert cached == run(llama_dir, False, batches, sparse)[0]


def test_a_later_turn_reuses_the_answer_too(llama_dir):
    """Turn 2's prompt is turn 1's prompt, its answer and a new question: the answer's full blocks hit too."""
    kv = KvCacheConfig(tokens_per_block=16)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=kv) as llm:
        first = DOC + QUESTIONS[0]
        answer = llm.generate([first], params)[0].outputs[0].token_ids
        before = llm.snapshot()["cached_prompt_tokens"]
        second = first + answer + QUESTIONS[1]
        got = llm.generate([second], GREEDY)[0].outputs[0].token_ids
        reused = llm.snapshot()["cached_prompt_tokens"] - before
    assert reused == (len(first) + len(answer) - 1) // 16 * 16  # every full block of turn 1 (its last token unfed)
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KvCacheConfig(enable_block_reuse=False)) as llm:
        assert llm.generate([second], GREEDY)[0].outputs[0].token_ids == got


def test_lru_eviction_in_a_small_pool(llama_dir):
    """A pool of 40 blocks cannot keep every document: the least recently used cached blocks are reused."""
    docs = [[d] * 300 + QUESTIONS[0] for d in range(4, 9)]  # 5 documents of 19 full blocks each
    batches = [[doc] for doc in docs] + [[docs[-1]], [docs[0]]]  # the last still cached, the first evicted
    cached, snap = run(llama_dir, True, batches, max_tokens=40 * 16)
    assert snap["cached_prompt_tokens"] == 18 * 16  # the last document hit (all but its final block), the first not
    assert cached == run(llama_dir, False, batches, max_tokens=40 * 16)[0]


def test_an_aborted_request_leaves_a_usable_cache(llama_dir):
    kv = KvCacheConfig(tokens_per_block=16)
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=kv) as llm:
        result = llm.generate_async(DOC + QUESTIONS[2], SamplingParams(max_tokens=3000, ignore_eos=True))
        while not result.output.outputs[0].token_ids:  # prefilled: its prompt blocks are cached
            time.sleep(0.01)
        result.abort()
        result.result(timeout=60)
        got = llm.generate([DOC + QUESTIONS[1]], GREEDY)[0].outputs[0].token_ids
        snap = llm.snapshot()
        assert snap["cached_prompt_tokens"] >= 24 * 16 and snap["kvBlocksUsed"] == 0
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KvCacheConfig(enable_block_reuse=False)) as llm:
        assert llm.generate([DOC + QUESTIONS[1]], GREEDY)[0].outputs[0].token_ids == got


def test_rocket_with_block_reuse_is_still_refused(llama_dir):
    with pytest.raises(ConfigError, match="must be false") as e:
        LLM(str(llama_dir), kv_cache_config=KvCacheConfig(enable_block_reuse=True),
            sparse_attention_config=RocketSparseAttentionConfig())  # fmt: skip
    assert e.value.path == "kv_cache_config.enable_block_reuse"


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="2 ranks need 2 GPUs on a CUDA machine"
)
def test_two_ranks_share_the_cache_decisions(llama_dir):
    batches = [[DOC + QUESTIONS[0]], [DOC + q for q in QUESTIONS[1:]]]
    kv = KvCacheConfig(tokens_per_block=16)
    outs = {}
    for tp in (1, 2):
        with LLM(str(llama_dir), dtype="float32", kv_cache_config=kv, tensor_parallel_size=tp) as llm:
            outs[tp] = [[o.outputs[0].token_ids for o in llm.generate(b, GREEDY)] for b in batches]
            assert llm.snapshot()["cached_prompt_tokens"] >= 24 * 16 * 3
    assert outs[1] == outs[2]


MT = {"algorithm": "rocket_mt", "prompt_budget": 64, "window_size": 8, "topk": 4, "page_size": 4, "topr": 8}


def conversation(model, reuse, sparse, turns=3):
    """Turn t's prompt: the document, every earlier question and answer, and question t (>= window tokens)."""
    kv = KvCacheConfig(tokens_per_block=16, enable_block_reuse=reuse)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    answers, prompt = [], list(DOC)
    with LLM(str(model), dtype="float32", kv_cache_config=kv, sparse_attention_config=sparse) as llm:
        for t in range(turns):
            prompt = prompt + [290 + t] * 10
            answer = llm.generate([prompt], params)[0].outputs[0].token_ids
            answers.append(answer)
            prompt = prompt + answer
        snap = llm.snapshot()
        assert snap["kvBlocksUsed"] == 0 and snap["kvBlocksReserved"] == 0
        llm.reset_prefix_cache()
        assert llm.snapshot()["kvBlocksCached"] == 0
    return answers, snap["cached_prompt_tokens"]


def test_rocket_mt_with_the_prefix_cache_equals_without(llama_dir):
    """Each turn chooses its working set from the whole history; with the history cached the choice and the
    tokens are the same as computing it again."""
    cached, reused = conversation(llama_dir, True, MT)
    assert reused >= 2 * 24 * 16  # turns 2 and 3 found the document (and more)
    assert cached == conversation(llama_dir, False, MT)[0]


def test_rocket_mt_with_a_covering_budget_equals_dense(llama_dir):
    covering = dict(MT, prompt_budget=4096, topk=1024)
    assert conversation(llama_dir, True, covering)[0] == conversation(llama_dir, True, None)[0]


@pytest.mark.parametrize("n, m", [(7, 7), (5, 40), (1, 33)])
def test_causal_attention_after_a_cached_prefix_matches_a_reference(n, m):
    gen = torch.Generator().manual_seed(n * m)
    q = torch.randn(6, n, 16, generator=gen)
    k, v = torch.randn(2, m, 16, generator=gen), torch.randn(2, m, 16, generator=gen)
    out = torch.empty(6, n, 16)
    causal_attention(q, k, v, 0.25, out)
    kh, vh = k.repeat_interleave(3, 0), v.repeat_interleave(3, 0)
    scores = (q @ kh.transpose(1, 2)) * 0.25  # query i is token m - n + i and sees keys 0..m - n + i
    visible = torch.arange(m)[None, :] <= (m - n + torch.arange(n))[:, None]
    expected = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ vh
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("n, m", [(2048, 6144), (100, 6144), (4096, 4096), (300, 1000), (8192, 24576)])
def test_causal_attention_on_the_gpu(n, m):
    """bf16 on CUDA (SDPA's flash kernels for a whole prompt; after a prefix, a chunk of >= 256 queries in two parts
    merged by log-sum-exp, fewer with an explicit mask) against float32."""
    gen = torch.Generator().manual_seed(n)
    q = torch.randn(32, n, 128, generator=gen)
    k, v = torch.randn(8, m, 128, generator=gen), torch.randn(8, m, 128, generator=gen)
    out = torch.empty(32, n, 128, device="cuda", dtype=torch.bfloat16)
    causal_attention(q.cuda().bfloat16(), k.cuda().bfloat16(), v.cuda().bfloat16(), 128**-0.5, out)
    kh, vh = k.cuda().repeat_interleave(4, 0), v.cuda().repeat_interleave(4, 0)
    visible = torch.arange(m, device="cuda")[None, :] <= (m - n + torch.arange(n, device="cuda"))[:, None]
    scores = (q.cuda() @ kh.transpose(1, 2)) * 128**-0.5
    expected = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ vh
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
