from pathlib import Path

import pytest

from rocket_trtllm import ConfigError, CudaGraphConfig, KvCacheConfig, LlmArgs, RocketSparseAttentionConfig

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
TRTLLM_DOC_EXAMPLE = """\
backend: pytorch
attn_backend: TRTLLM
sparse_attention_config:
  algorithm: rocket
  kt_cache_dtype: float8_e5m2
  window_size: 32
  prompt_budget: 2048
kv_cache_config:
  enable_block_reuse: false
enable_chunked_prefill: false
"""


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_trtllm_doc_example_loads_unchanged(tmp_path):
    args = LlmArgs.from_yaml(write(tmp_path, TRTLLM_DOC_EXAMPLE), model="/m")
    assert isinstance(args.sparse_attention_config, RocketSparseAttentionConfig)
    assert args.sparse_attention_config.prompt_budget == 2048
    assert args.kv_cache_config.enable_block_reuse is False
    assert args.attn_backend == "TRTLLM" and args.backend == "pytorch"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    args = LlmArgs.from_yaml(path, model="/m")
    assert args.model == "/m"


def test_shipped_configs_exist():
    assert {"rocket.yaml", "dense.yaml", "rocket-long-context.yaml"} <= {p.name for p in CONFIGS}


def test_overrides_win(tmp_path):
    args = LlmArgs.from_yaml(write(tmp_path, "max_batch_size: 8\n"), model="/m", max_batch_size=2)
    assert args.max_batch_size == 2


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "backend: pytorch\nsparse_attention_config:\n  algorithm: [rocket\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: YAML syntax error"):
        LlmArgs.from_yaml(path, model="/m")


def test_wrong_value_names_key_path_line_value_and_allowed(tmp_path):
    text = TRTLLM_DOC_EXAMPLE.replace("window_size: 32", "window_size: 32\n  page_size: 3")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        LlmArgs.from_yaml(path, model="/m")
    msg = str(e.value)
    assert f"{path}:7:" in msg
    assert "sparse_attention_config.page_size" in msg and "power of two" in msg and "got 3" in msg


def test_unknown_nested_key_names_line(tmp_path):
    path = write(tmp_path, "kv_cache_config:\n  enable_block_reuse: false\n  block_size: 64\n")
    with pytest.raises(ConfigError, match=r":3: kv_cache_config.block_size: unknown key 'block_size'; valid keys"):
        LlmArgs.from_yaml(path, model="/m")


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="max_batch: unknown key"):
        LlmArgs(model="/m", max_batch=3)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        LlmArgs.from_yaml(write(tmp_path, "- a\n- b\n"), model="/m")


def test_missing_file_and_missing_model(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        LlmArgs.from_yaml(tmp_path / "nope.yaml", model="/m")
    with pytest.raises(ConfigError, match="model: required"):
        LlmArgs.from_yaml(write(tmp_path, "backend: pytorch\n"))


@pytest.mark.parametrize(
    "kwargs,path,allowed",
    [
        (dict(backend="tensorrt"), "backend", "only the PyTorch backend"),
        (dict(backend="_autodeploy"), "backend", "only the PyTorch backend"),
        (dict(attn_backend="FLASHINFER"), "attn_backend", "TRTLLM, VANILLA"),
        (dict(dtype="int8"), "dtype", "auto, bfloat16, float16, float32"),
        (dict(max_batch_size=0), "max_batch_size", ">= 1"),
        (dict(max_num_tokens=0), "max_num_tokens", ">= 1"),
        (dict(max_seq_len=1), "max_seq_len", ">= 2"),
        (dict(tensor_parallel_size=0), "tensor_parallel_size", ">= 1"),
        (dict(enable_chunked_prefill="sometimes"), "enable_chunked_prefill", "valid boolean"),
        (dict(kv_cache_config={"free_gpu_memory_fraction": 0.0}), "kv_cache_config.free_gpu_memory_fraction", "(0, 1]"),
        (dict(kv_cache_config={"free_gpu_memory_fraction": 1.5}), "kv_cache_config.free_gpu_memory_fraction", "(0, 1]"),
        (dict(kv_cache_config={"max_tokens": 0}), "kv_cache_config.max_tokens", ">= 1"),
        (dict(kv_cache_config={"tokens_per_block": 48}), "kv_cache_config.tokens_per_block", "power of two"),
        (dict(kv_cache_config={"dtype": "int8"}), "kv_cache_config.dtype", "fp8"),
        (dict(kv_cache_config={"enable_block_reuse": "maybe"}), "kv_cache_config.enable_block_reuse", "bool"),
        (dict(cuda_graph_config={"batch_sizes": []}), "cuda_graph_config.batch_sizes", "non-empty"),
        (dict(cuda_graph_config={"max_batch_size": 0}), "cuda_graph_config.max_batch_size", ">= 1"),
        (dict(sparse_attention_config={"topk": 8}), "sparse_attention_config.algorithm", "required"),
        (dict(sparse_attention_config={"algorithm": "h2o"}), "sparse_attention_config.algorithm", "rocket"),
        (dict(sparse_attention_config="rocket"), "sparse_attention_config", "mapping"),
    ],
)
def test_bad_llm_args(kwargs, path, allowed):
    with pytest.raises(ConfigError) as e:
        LlmArgs(model="/m", **kwargs)
    assert e.value.path == path
    assert allowed in str(e.value)


def test_good_llm_args():
    args = LlmArgs(
        model="/m",
        tokenizer="/t",
        attn_backend="vanilla",
        dtype="float32",
        max_batch_size=4,
        max_seq_len=4096,
        max_num_tokens=4096,
        kv_cache_config=KvCacheConfig(max_tokens=1024, tokens_per_block=16, dtype="bfloat16"),
        cuda_graph_config=None,
    )
    assert args.attn_backend == "VANILLA" and args.kv_cache_config.tokens_per_block == 16
    assert args.cuda_graph_config is None and args.sparse_attention_config is None


def test_block_reuse_defaults_off_with_rocket_only_when_not_given():
    assert LlmArgs(model="/m").kv_cache_config.enable_block_reuse is True
    rocket = RocketSparseAttentionConfig()
    assert LlmArgs(model="/m", sparse_attention_config=rocket).kv_cache_config.enable_block_reuse is False
    kv = KvCacheConfig(max_tokens=64)
    assert LlmArgs(model="/m", sparse_attention_config=rocket, kv_cache_config=kv).kv_cache_config.max_tokens == 64


def test_rocket_rejects_block_reuse_takes_chunked_prefill():
    rocket = RocketSparseAttentionConfig()
    with pytest.raises(ConfigError, match="enable_block_reuse: must be false with Rocket"):
        LlmArgs(model="/m", sparse_attention_config=rocket, kv_cache_config=KvCacheConfig(enable_block_reuse=True))
    assert LlmArgs(model="/m", sparse_attention_config=rocket, enable_chunked_prefill=True).enable_chunked_prefill


def test_cuda_graph_capture_sizes():
    assert CudaGraphConfig(max_batch_size=20).capture_sizes(limit=64) == [1, 2, 4, 8, 16]
    assert CudaGraphConfig(batch_sizes=[3, 1, 64]).capture_sizes(limit=8) == [1, 3]
    # A max_batch_size inside the ladder is captured: its full batches replay a graph, not eager launches.
    assert CudaGraphConfig(max_batch_size=256).capture_sizes(limit=82)[-3:] == [72, 80, 82]
    assert CudaGraphConfig(max_batch_size=16).capture_sizes(limit=82)[-1] == 16
