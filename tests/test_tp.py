"""Tensor parallelism on the CPU: two gloo ranks (real processes) against one, token for token in float32."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from rocket_trtllm import LLM, ConfigError, KvCacheConfig, SamplingParams
from rocket_trtllm.models.checkpoint import open_checkpoint
from rocket_trtllm.models.loader import load_model
from rocket_trtllm.models.random_checkpoint import make_tiny_model
from rocket_trtllm.runtime.distributed import Communicator

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="2 ranks need 2 GPUs on a CUDA machine"
)
KV = KvCacheConfig(tokens_per_block=16)
PROMPTS = [list(range(3, 250)), list(range(40, 80)), [7, 8, 9] * 90]
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
METHODS = [
    None,
    {"algorithm": "rocket", "prompt_budget": 64, "window_size": 8, "topk": 4, "page_size": 4, "topr": 8},
    {"algorithm": "rocket", "prompt_budget": 64, "window_size": 8, "topk": 4, "topr": 8, "eviction_scope": "layer"},
    {"algorithm": "rocket_mt", "prompt_budget": 64, "window_size": 8, "topk": 4, "page_size": 4, "topr": 8},
    {"algorithm": "snapkv", "prompt_budget": 64, "window_size": 8},
    {"algorithm": "snapkv", "prompt_budget": 64, "window_size": 8, "eviction_scope": "layer"},
    {"algorithm": "quest", "topk": 4, "page_size": 16},
    {"algorithm": "streamingllm", "sink_size": 4, "window_size": 40},
    {"algorithm": "topk_oracle", "topk": 32},
]


def tokens(model, tp, sparse=None, prompts=PROMPTS, **options):
    with LLM(str(model), dtype="float32", kv_cache_config=KV, sparse_attention_config=sparse,
             tensor_parallel_size=tp, **options) as llm:  # fmt: skip
        out = [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]
        assert llm.snapshot()["kvBlocksUsedPerRank"] == [0] * tp
    return out


@pytest.mark.parametrize("sparse", METHODS, ids=lambda m: "dense" if m is None else "-".join(map(str, m.values()))[:40])
def test_two_ranks_equal_one(llama_dir, sparse):
    assert tokens(llama_dir, 2, sparse) == tokens(llama_dir, 1, sparse)


@pytest.mark.parametrize("sparse", METHODS[:2], ids=["dense", "rocket"])
def test_two_ranks_equal_one_with_chunked_prefill(llama_dir, sparse):
    """Chunks on every rank: each prompt of PROMPTS over several 48-token steps, RocketKV evicting after the last."""
    chunked = dict(enable_chunked_prefill=True, max_num_tokens=48)
    assert tokens(llama_dir, 2, sparse, **chunked) == tokens(llama_dir, 1, sparse)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])  # q/k/v biases; q/k norms
def test_two_ranks_equal_one_other_archs(tiny_models, arch):
    assert tokens(tiny_models[arch], 2) == tokens(tiny_models[arch], 1)


def test_one_kv_head_is_replicated_over_ranks(tmp_path):
    model = make_tiny_model(tmp_path / "mqa", num_key_value_heads=1, vocab_size=301)  # vocab: a padded slice
    streaming = next(
        m for m in METHODS if m and m["algorithm"] == "streamingllm"
    )  # chooses tokens by position only: exact with a query group split over ranks
    assert tokens(model, 2) == tokens(model, 1)
    assert tokens(model, 2, streaming) == tokens(model, 1, streaming)
    with pytest.raises(ConfigError, match="1 KV heads would be replicated over 2 ranks") as e:
        LLM(str(model), sparse_attention_config=METHODS[1], tensor_parallel_size=2)
    assert e.value.path == "tensor_parallel_size"


def test_heads_that_do_not_divide_are_refused(tmp_path):
    model = make_tiny_model(tmp_path / "odd", hidden_size=96, num_attention_heads=6, num_key_value_heads=3)
    with pytest.raises(ConfigError, match="3 KV heads and tensor_parallel_size 2") as e:
        LLM(str(model), tensor_parallel_size=2)
    assert e.value.path == "tensor_parallel_size"


def test_each_rank_loads_its_slice(llama_dir):
    """Rank 1 of 2 holds the second half of q/k/v/gate/up's outputs, of o/down's inputs and of the vocabulary."""
    ckpt = open_checkpoint(str(llama_dir))
    full = load_model(ckpt, torch.float32, torch.device("cpu"))
    half = load_model(ckpt, torch.float32, torch.device("cpu"), comm=Communicator(1, 2))
    a, b = full.model.layers[1], half.model.layers[1]
    rows = a.self_attn.qkv_weight.shape[0] // 2
    q, k = 64 // 2, 32 // 2  # 4 heads and 2 KV heads of 16, halved
    assert torch.equal(b.self_attn.qkv_weight[:q], a.self_attn.qkv_weight[q : 2 * q])
    assert torch.equal(b.self_attn.qkv_weight[q : q + k], a.self_attn.qkv_weight[64 + k : 64 + 2 * k])
    assert b.self_attn.qkv_weight.shape[0] == rows
    assert torch.equal(b.self_attn.o_proj.weight, a.self_attn.o_proj.weight[:, q:])
    assert torch.equal(b.mlp.down_proj.weight, a.mlp.down_proj.weight[:, 64:])
    assert torch.equal(half.lm_head.weight, full.lm_head.weight[150:])
    assert half.shape.num_heads == 2 and half.shape.num_kv_heads == 1


def test_blocks_return_to_zero_after_abort(llama_dir):
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, tensor_parallel_size=2) as llm:
        held, step = threading.Event(), llm.engine.step

        def held_step():  # once the request has 4 tokens the engine idles: it cannot finish before the abort
            if held.is_set():
                time.sleep(0.001)
                return []
            updates = step()
            if any(len(u.seq.output_token_ids) >= 4 for u in updates):
                held.set()
            return updates

        llm.engine.step = held_step
        params = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
        result = llm.generate_async(PROMPTS[0], params, streaming=True)
        assert held.wait(120)
        used = llm.snapshot()["kvBlocksUsedPerRank"]
        assert used[0] > 0 and used[1] == used[0]
        result.abort()
        result.result(timeout=60)
        assert llm.snapshot()["kvBlocksUsedPerRank"] == [0, 0]


def test_a_dead_rank_is_an_error_not_a_hang(llama_dir):
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=KV, tensor_parallel_size=2) as llm:
        [proc] = llm.engine.workers.procs
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        with pytest.raises(RuntimeError, match="tensor-parallel rank 1 exited with code -9"):
            llm.generate(PROMPTS[:1], GREEDY)


def test_workers_exit_when_their_parent_dies(llama_dir):
    script = (
        "import os, signal\n"
        "from rocket_trtllm import LLM\n"
        "if __name__ == '__main__':\n"
        f"    llm = LLM({str(llama_dir)!r}, dtype='float32', tensor_parallel_size=2)\n"
        "    print(llm.engine.workers.pids[0], flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    worker = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 120  # a bound for a hang, not a timing: the worker polls its parent each second
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text()


def children(pid):
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_rocket_serve_tp_size_and_ctrl_c(tmp_path):
    """`rocket-serve --tp_size 2` answers as one rank does; Ctrl-C stops the server and its worker rank."""
    import httpx
    import openai

    with LLM("eval/model", dtype="float32") as llm:
        want = llm.generate(["Once upon a time"], SamplingParams(max_tokens=8, temperature=0))[0].outputs[0].text
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "fp32.yaml"
    config.write_text("dtype: float32\n")
    server = subprocess.Popen([sys.executable, "-m", "rocket_trtllm.serve.cli", "eval/model", "--tp_size", "2",
                               "--config", str(config), "--port", str(port), "--log_level", "warning"])  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600  # a bound for a hang: wait for the server's state, not a time
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none")
        got = client.completions.create(model="model", prompt="Once upon a time", max_tokens=8, temperature=0)
        assert got.choices[0].text == want
        workers = children(server.pid)
        assert len(workers) >= 1
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
        for pid in workers:
            deadline = time.monotonic() + 60  # a bound for a hang: the worker exits once told, or with its parent
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not Path(f"/proc/{pid}").exists()
    finally:
        server.kill()
