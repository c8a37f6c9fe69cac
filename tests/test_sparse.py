"""RocketKV and the baselines end to end on a tiny random model, in float32."""

import pytest
import torch

from rocket_trtllm import LLM, KvCacheConfig, RocketSparseAttentionConfig, SamplingParams
from rocket_trtllm.sparse import algorithms

LONG = "The quick brown fox jumps over the lazy dog while 7 owls count 42 stars. " * 6  # 444 tokens
PROMPTS = [LONG, "short prompt", LONG[:201]]
KV = KvCacheConfig(tokens_per_block=16)


def run(model_dir, sparse, prompts=PROMPTS, max_tokens=16, logits=False):
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, return_generation_logits=logits)
    with LLM(str(model_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=sparse) as llm:
        outs = llm.generate(prompts, params)
        snap = llm.snapshot()
        assert snap["kvBlocksUsed"] == 0 and snap["kvBlocksReserved"] == 0
    return [o.outputs[0] for o in outs]


@pytest.fixture(scope="module")
def dense(llama_dir):
    return run(llama_dir, None, logits=True)


def test_full_budget_rocket_equals_dense(llama_dir, dense):
    rocket = RocketSparseAttentionConfig(prompt_budget=1024, topk=128, page_size=4, topr=16)
    for r, d in zip(run(llama_dir, rocket, logits=True), dense):
        assert r.token_ids == d.token_ids
        assert torch.allclose(r.generation_logits, d.generation_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scope", ["kv_head", "layer"])
def test_rocket_with_full_page_budget_equals_snapkv(llama_dir, scope):
    # Stage 2 covering everything kept leaves stage 1 alone: RocketKV must then be SnapKV exactly.
    stage1 = dict(prompt_budget=64, window_size=8, kernel_size=7, eviction_scope=scope)
    rocket = run(llama_dir, RocketSparseAttentionConfig(topk=64, topr=16, **stage1))
    snapkv = run(llama_dir, {"algorithm": "snapkv", **stage1})
    assert [r.token_ids for r in rocket] == [s.token_ids for s in snapkv]


def test_rocket_with_whole_prompt_kept_equals_quest(llama_dir):
    """Nothing evicted, RocketKV is Quest's page selection: with Quest's bound, and with its own (the sign rule's)
    when Quest is given that; topr past head_dim (16 here) means every channel, as in TensorRT-LLM."""
    for bound, topr in (("both", 16), ("sign", 128)):
        rocket = RocketSparseAttentionConfig(prompt_budget=1024, topk=6, page_size=8, topr=topr,
                                             kt_cache_dtype="float16", stage2_bound=bound)  # fmt: skip
        quest = {"algorithm": "quest", "topk": 6, "page_size": 8, "kt_cache_dtype": "float16", "stage2_bound": bound}
        assert [r.token_ids for r in run(llama_dir, rocket)] == [q.token_ids for q in run(llama_dir, quest)]


def test_eviction_frees_blocks_per_layer_budget(llama_dir):
    budget = 64
    prompt = (LONG * 2)[: 8 * budget]
    rocket = RocketSparseAttentionConfig(prompt_budget=budget, window_size=8, topk=4, topr=8)
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=rocket) as llm:
        llm.get_stats()
        llm.generate(prompt, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
        first = llm.get_stats()[0]
        # After prefill: the budget's 64 tokens in 16-token blocks; the dense cache would hold 32 blocks.
        assert first["kvCacheStats"]["usedNumBlocks"] == 4
        sparse = first["sparseAttentionStats"]
        assert sparse["lastKeptPromptTokens"] == budget and sparse["promptTokensEvicted"] == 7 * budget
        assert sparse["ktBlocksUsed"] == 4
        params = SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)
        result = llm.generate_async(prompt, params)
        while not llm.snapshot()["running"]:
            pass
        result.abort()
        assert result.result(timeout=30).outputs[0].finish_reason == "abort"
        snap = llm.snapshot()
        assert snap["kvBlocksUsed"] == 0 and snap["ktBlocksUsed"] == 0 and snap["kvBlocksReserved"] == 0


def test_sparse_decode_attends_to_the_budget(llama_dir):
    rocket = RocketSparseAttentionConfig(prompt_budget=1024, topk=8, page_size=4, topr=8)
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=rocket) as llm:
        llm.generate(LONG, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
        mean = llm.snapshot()["meanTokensAttendedPerStep"]
    assert 8 * 4 < mean <= 8 * 4 + 4


@pytest.mark.parametrize(
    "yaml_body",
    [
        "algorithm: rocket\n  prompt_budget: 128\n  window_size: 8\n  topk: 8\n  topr: 0.5",
        "algorithm: snapkv\n  prompt_budget: 128\n  window_size: 8",
        "algorithm: quest\n  topk: 4",
        "algorithm: streamingllm\n  sink_size: 4\n  window_size: 60",
        "algorithm: topk_oracle\n  topk: 64",
    ],
)
def test_every_algorithm_runs_from_yaml(llama_dir, tmp_path, yaml_body):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"backend: pytorch\nsparse_attention_config:\n  {yaml_body}\nkv_cache_config:\n  tokens_per_block: 16\n"
    )
    with LLM.from_yaml(path, model=str(llama_dir), dtype="float32") as llm:
        outs = llm.generate(PROMPTS, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
        assert all(len(o.outputs[0].token_ids) == 6 for o in outs)
        assert llm.snapshot()["kvBlocksUsed"] == 0


def test_registry_lists_every_baseline():
    assert set(algorithms()) == {"rocket", "rocket_mt", "snapkv", "quest", "streamingllm", "topk_oracle"}


def test_tensorrt_llm_yaml_runs_on_a_head_dim_64_model():
    """configs/rocket.yaml is TensorRT-LLM's documented example (topr at its default 128): on the shipped model
    (head_dim 64) it means every channel, as TensorRT-LLM reads it, and generates."""
    from pathlib import Path

    from rocket_trtllm.eval import SHIPPED_MODEL

    config = Path(__file__).parents[1] / "configs" / "rocket.yaml"
    with LLM.from_yaml(config, model=str(SHIPPED_MODEL), max_seq_len=4096) as llm:
        assert llm.engine.backend.topr == llm.engine.model.shape.head_dim == 64
        out = llm.generate(
            [3 + i % 500 for i in range(3000)], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
        )
        assert len(out.outputs[0].token_ids) == 4 and llm.snapshot()["lastKeptPromptTokens"] == 2048


def test_rocket_through_kernels_equals_torch_path(llama_dir):
    # Triton's interpreter on the CPU (conftest), the compiled kernels on a GPU.
    rocket = RocketSparseAttentionConfig(prompt_budget=128, window_size=8, topk=6, topr=8, page_size=4)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, return_generation_logits=True)
    outs = []
    for kernels in (False, True):
        with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=rocket) as llm:
            llm.engine.backend.use_kernels = kernels
            outs.append(llm.generate(PROMPTS[:2], params))
    for a, b in zip(*outs):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert torch.allclose(a.outputs[0].generation_logits, b.outputs[0].generation_logits, atol=1e-4)


def test_score_goes_through_sparse_decode(llama_dir):
    # LLM.score feeds the continuation as decode steps: a covering budget scores like dense, a small
    # one does not (its decode steps attend to the kept, selected pages only).
    def scores(sparse):
        with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=sparse) as llm:
            context = llm.tokenizer.encode(LONG)
            return [lp for lp, _ in llm.score([(context, list(range(10, 26))), (context[:50], [3, 4, 5])])]

    dense = scores(None)
    full = scores(RocketSparseAttentionConfig(prompt_budget=1024, topk=128, page_size=4, topr=16))
    small = scores(
        RocketSparseAttentionConfig(prompt_budget=64, window_size=8, kernel_size=3, topk=4, page_size=4, topr=8)
    )
    assert full == pytest.approx(dense, abs=1e-4)
    assert abs(small[0] - dense[0]) > 1e-2


# tiny llama: 2 layers, 2 KV heads of 16 channels, float32 -> one token's K/V over every layer is 512 bytes
BYTE_CASES = [
    (None, 100 * 512),
    ({"algorithm": "snapkv", "prompt_budget": 64, "window_size": 8}, 100 * 512),  # dense over what it kept
    # 4 pages of 4 + the newest page's 4 tokens, and 25 pages' fp8 bound the sign rule picks of the 8 top-r channels
    # (2 layers, 2 KV heads)
    ({"algorithm": "rocket", "topk": 4, "page_size": 4, "topr": 8}, 20 * 512 + 25 * 1 * 2 * 2 * 8 * 1),
    # Quest's bound reads both
    (
        {"algorithm": "rocket", "topk": 4, "page_size": 4, "topr": 8, "stage2_bound": "both"},
        20 * 512 + 25 * 2 * 2 * 2 * 8 * 1,
    ),
    # 2 pages of 16 + the newest page's 4 tokens, and 7 pages' float16 min and max of every channel
    ({"algorithm": "quest", "topk": 2, "page_size": 16}, 36 * 512 + 7 * 2 * 2 * 2 * 16 * 2),
    ({"algorithm": "topk_oracle", "topk": 10}, 10 * 512 + 100 * 256),  # and every key, to choose
    ({"algorithm": "streamingllm", "sink_size": 4, "window_size": 12}, 16 * 512),
]


@pytest.mark.parametrize(
    ("sparse", "expected"), BYTE_CASES, ids=lambda c: c["algorithm"] if isinstance(c, dict) else ""
)
def test_decode_read_bytes_by_hand(llama_dir, sparse, expected):
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, sparse_attention_config=sparse) as llm:
        backend = llm.engine.backend
        assert backend.token_kv_bytes == 512 and backend.decode_read_bytes(100) == expected
        llm.generate(LONG[:150], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
        snap = llm.snapshot()
    assert snap["meanAttentionBytesPerStep"] > 0
    assert snap["meanAttentionTokensEquivalentPerStep"] * 512 == pytest.approx(snap["meanAttentionBytesPerStep"])
    if sparse is None:
        assert snap["meanAttentionTokensEquivalentPerStep"] == snap["meanTokensAttendedPerStep"]


def test_official_stage2_scoring_with_a_covering_budget_equals_dense(llama_dir, dense):
    rocket = RocketSparseAttentionConfig(prompt_budget=1024, topk=128, page_size=4, topr=8, stage2_bound="sign",
                                         stage2_temperature=True)  # fmt: skip
    assert [r.token_ids for r in run(llama_dir, rocket)] == [d.token_ids for d in dense]
    small = RocketSparseAttentionConfig(prompt_budget=64, window_size=8, topk=4, page_size=4, topr=8,
                                        stage2_bound="sign", stage2_temperature=True)  # fmt: skip
    assert all(len(r.token_ids) == 16 for r in run(llama_dir, small))


def test_stage1_reads_the_prompt_queries_not_the_attention_output(llama_dir, monkeypatch):
    """A prompt's attention output is written over its queries; stage 1 must see the queries the layer computed
    (the observation window, copied out before attention), for every layer."""
    from rocket_trtllm.kernels.layer_ops import rotary_ref
    from rocket_trtllm.runtime.attention import AttentionBackend
    from rocket_trtllm.sparse.snapkv import SnapKVAttention

    entered, windows = {}, {}
    forward, compress = AttentionBackend.forward, SnapKVAttention.compress_prompt

    def record_forward(self, layer, q, k, v, meta, rope=None):
        entered[layer] = q.clone() if rope is None else rotary_ref(q, *rope)  # the backend rotates q
        return forward(self, layer, q, k, v, meta, rope)

    def record_compress(self, layer, q, k, v):
        windows[layer] = q.clone()
        return compress(self, layer, q, k, v)

    monkeypatch.setattr(AttentionBackend, "forward", record_forward)
    monkeypatch.setattr(SnapKVAttention, "compress_prompt", record_compress)
    sparse = RocketSparseAttentionConfig(prompt_budget=24, window_size=6, kernel_size=3, topk=2, page_size=2, topr=8)
    with LLM(str(llama_dir), dtype="float32", sparse_attention_config=sparse) as llm:
        llm.generate(list(range(3, 80)), SamplingParams(max_tokens=1, temperature=0))
    assert windows and set(windows) == set(entered)
    for layer, window in windows.items():
        assert window.shape[1] == 6 and torch.allclose(window, entered[layer][-6:].transpose(0, 1), atol=1e-6)
