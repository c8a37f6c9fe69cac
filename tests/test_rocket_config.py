import pytest

from rocket_trtllm import ConfigError, RocketSparseAttentionConfig
from rocket_trtllm.llmapi import RocketSparseAttentionConfig as FromLlmApi
from rocket_trtllm.runtime.kv_cache import ModelShape

DEFAULTS = dict(
    algorithm="rocket",
    seq_len_threshold=None,
    window_size=32,
    kernel_size=63,
    topr=128,
    topk=64,
    prompt_budget=2048,
    page_size=4,
    kt_cache_dtype="float8_e5m2",
)
OURS = dict(
    eviction_scope="kv_head", token_budget=None, token_budget_len=32768, stage2_bound="sign", stage2_temperature=False
)  # fields TensorRT-LLM's class lacks (stage2_bound: "sign" is what its backend computes)


def test_defaults_match_tensorrt_llm():
    assert FromLlmApi is RocketSparseAttentionConfig
    assert RocketSparseAttentionConfig().model_dump() == {**DEFAULTS, **OURS}


@pytest.mark.parametrize(
    "field,value",
    [
        ("window_size", 1),
        ("window_size", 2047),
        ("kernel_size", 1),
        ("kernel_size", 7),
        ("topr", 1),
        ("topr", 64),
        ("topr", 0.5),
        ("topr", 1.0),
        ("topk", 1),
        ("topk", 1024),
        ("prompt_budget", 33),
        ("page_size", 1),
        ("page_size", 16),
        ("kt_cache_dtype", "bfloat16"),
        ("kt_cache_dtype", "float16"),
        ("eviction_scope", "layer"),
        ("seq_len_threshold", 4096),
    ],
)
def test_good_values(field, value):
    assert getattr(RocketSparseAttentionConfig(**{field: value}), field) == value


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("window_size", 0, ">= 1"),
        ("window_size", 2048, "< prompt_budget"),
        ("kernel_size", 0, "odd"),
        ("kernel_size", 64, "odd"),
        ("topr", 0, "float in (0, 1]"),
        ("topr", 1.5, "float in (0, 1]"),
        ("topr", 0.0, "float in (0, 1]"),
        ("topr", "all", "float in (0, 1]"),
        ("topk", 0, ">= 1"),
        ("prompt_budget", 1, ">= 2"),
        ("page_size", 3, "power of two"),
        ("page_size", 0, "power of two"),
        ("kt_cache_dtype", "int8", "float8_e5m2, bfloat16, float16"),
        ("eviction_scope", "head", "'kv_head' or 'layer'"),
        ("seq_len_threshold", 0, ">= 1"),
        ("algorithm", "quest2", "rocket"),
    ],
)
def test_bad_values_name_field_and_allowed(field, value, allowed):
    with pytest.raises(ConfigError) as e:
        RocketSparseAttentionConfig(**{field: value})
    assert e.value.path == field
    assert allowed in str(e.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        RocketSparseAttentionConfig(top_k=8)
    assert e.value.path == "top_k"
    assert "valid keys" in str(e.value) and "topk" in str(e.value)


def test_topr_fraction_resolves_against_head_dim():
    assert RocketSparseAttentionConfig(topr=0.5).topr_channels(128) == 64
    assert RocketSparseAttentionConfig(topr=32).topr_channels(128) == 32


def test_model_checks():
    shape = ModelShape(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64)
    RocketSparseAttentionConfig(topr=128).check_model(shape, tokens_per_block=32)  # TensorRT-LLM: every channel
    assert RocketSparseAttentionConfig(topr=128).topr_channels(64) == 64
    with pytest.raises(ConfigError, match="tokens_per_block"):
        RocketSparseAttentionConfig(topr=64, page_size=64).check_model(shape, tokens_per_block=32)
    RocketSparseAttentionConfig(topr=64).check_model(shape, tokens_per_block=32)
