"""The official token-budget split, on a table of (L, budget, head_dim) computed by hand from the formula."""

import math

import pytest

from rocket_trtllm.sparse.token_budget import kept_tokens, official_split, split


@pytest.mark.parametrize(
    "seq_len,budget,head_dim,kept,page,topr",
    [
        # c = 64, alpha = 0.56, 64^0.56 = 10.267: keeps 1596; c2 = 6.23, page min(6, 3) = 3, top-r 128*3/6.23 = 62
        (16384, 256, 128, 1596, 3, 62),
        # c = 512, alpha = 0.74, 512^0.74 = 101.1: keeps 1296; c2 = 5.06, page min(5, 3) = 3, top-r 76
        (131072, 256, 128, 1296, 3, 76),
        # c = 32, alpha = 0.5, 32^0.5 = 5.66: keeps 5793; c2 = 5.66, page min(5, 3) = 3, top-r 68
        (32768, 1024, 128, 5793, 3, 68),
        # c = 8, alpha = 0.38, 8^0.38 = 2.204: keeps 1859; c2 = 3.63, page min(3, 2) = 2, top-r 35
        (4096, 512, 64, 1859, 2, 35),
        # c = 2, alpha = 0.26, 2^0.26 = 1.197: keeps 1710; c2 = 1.67, page min(1, 2) = 1, top-r 64 / 1.67 = 38
        (2048, 1024, 64, 1710, 1, 38),
    ],
)
def test_official_split_equals_the_formula(seq_len, budget, head_dim, kept, page, topr):
    s = official_split(seq_len, budget, head_dim)
    assert (s.kept, s.page_size, s.topr, s.attended) == (kept, page, topr, budget // 2)
    c = seq_len / budget
    assert s.kept == round(seq_len / c ** min(0.2 + 0.06 * math.log2(c), 0.8))


def test_ours_rounds_the_page_to_a_power_of_two():
    s = split(16384, 256, 128)  # official page 3
    assert (s.page_size, s.topr, s.topk) == (2, round(128 * 2 / (1596 / 256)), 64)


def test_a_covering_budget_keeps_everything():
    assert kept_tokens(1000, 1000) == 1000 and kept_tokens(500, 1000) == 500


def test_token_budget_derives_the_fields_and_refuses_them_beside_it():
    from rocket_trtllm import ConfigError, RocketSparseAttentionConfig

    c = RocketSparseAttentionConfig(token_budget=256)  # at 32k: c = 128, keeps 1618, c2 = 6.32, page 3 -> 2
    assert (c.prompt_budget, c.page_size, c.topk) == (1618, 2, 64) and c.topr == pytest.approx(2 / (1618 / 256))
    assert (
        c.prompt_budget_for(131072) == 1296 and c.prompt_budget_for(16384) == 1596 and c.prompt_budget_for(200) == 200
    )
    with pytest.raises(ConfigError, match="cannot be set with token_budget") as e:
        RocketSparseAttentionConfig(token_budget=256, topk=8)
    assert e.value.path == "topk"


def test_token_budget_keeps_l_over_c_alpha_per_request_and_covers_short_prompts(llama_dir):
    from rocket_trtllm import LLM, KvCacheConfig, SamplingParams

    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    prompts = [list(range(3, 250)) * 3]  # 741 tokens
    kv = KvCacheConfig(tokens_per_block=16)
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=kv) as llm:
        dense = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    budgets = {"algorithm": "rocket", "window_size": 8}
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=kv,
             sparse_attention_config={**budgets, "token_budget": 64, "token_budget_len": 741}) as llm:  # fmt: skip
        llm.generate(prompts, params)
        assert llm.snapshot()["lastKeptPromptTokens"] == kept_tokens(741, 64)
    covering = {"algorithm": "rocket", "window_size": 8, "token_budget": 4096}  # c < 1: nothing evicted
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=kv, sparse_attention_config=covering) as llm:
        assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == dense
