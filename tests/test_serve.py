"""rocket-serve on a real uvicorn server on loopback, driven by the official openai client."""

import asyncio
import json
import math
import socket
import threading
import time

import httpx
import pytest
from transformers import AutoTokenizer

from rocket_trtllm import LLM, KvCacheConfig, RocketSparseAttentionConfig, SamplingParams
from rocket_trtllm.serve.soak import local_server

openai = pytest.importorskip("openai")  # the GPU machine's image lacks it; `.[test]` installs it

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(llama_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("chat") / "tiny"
    import shutil

    shutil.copytree(llama_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(model_dir)
    rocket = RocketSparseAttentionConfig(prompt_budget=64, window_size=8, kernel_size=5, topk=4, topr=16)
    llm = LLM(
        str(model_dir),
        dtype="float32",
        max_seq_len=1024,
        kv_cache_config=KvCacheConfig(tokens_per_block=16),
        sparse_attention_config=rocket,
    )
    with local_server(llm, "tiny", api_key="secret") as base:
        yield llm, base.removesuffix("/v1")
    llm.shutdown()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="secret", max_retries=0)


def greedy(llm, prompt, n=12):
    return llm.generate(prompt, SamplingParams(max_tokens=n, temperature=0)).outputs[0]


def wait_blocks_free(llm):
    for _ in range(200):
        if llm.snapshot()["kvBlocksUsed"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"blocks still in use: {llm.snapshot()}")


def test_completion_matches_generate(server, client):
    llm, _ = server
    prompt = "The quick brown fox " * 10
    want = greedy(llm, prompt)
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    assert got.choices[0].text == want.text and got.choices[0].finish_reason == want.finish_reason
    assert got.usage.completion_tokens == len(want.token_ids)
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == want.finish_reason


def test_chat_matches_generate(server, client):
    llm, _ = server
    messages = [{"role": "user", "content": "hello there"}]
    ids = llm.tokenizer.encode(
        llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )
    want = greedy(llm, ids)
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert got.choices[0].message.content == want.text
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True)
    chunks = [c for c in stream if c.choices and c.choices[0].finish_reason is None]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert len(chunks) == len(want.token_ids)  # one chunk per token, whether it adds text or not


def test_models_health_version_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    base = server[1]
    assert httpx.get(base + "/health").text == "ok"
    assert "version" in httpx.get(base + "/version").json()
    text = httpx.get(base + "/metrics").text
    assert "rocket_kv_blocks_used" in text and "rocket_tokens_attended_per_step" in text
    client.completions.create(model="tiny", prompt="one two three", max_tokens=3)
    text = httpx.get(base + "/metrics").text

    def by_kind(name):
        return {k: float(line.split()[1]) for line in text.splitlines() for k in ("prefill", "decode")
                if line.startswith(f'{name}{{kind="{k}"}}')}  # fmt: skip

    seconds, steps = by_kind("rocket_step_seconds_total"), by_kind("rocket_steps_total")
    assert seconds["prefill"] > 0 and seconds["decode"] > 0
    assert steps["prefill"] >= 1 and steps["decode"] >= 1  # 3 tokens: the prefill step's, then decode-only steps


def test_concurrent_streams_batch_together(server):
    llm, base = server
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="secret", max_retries=0)

    async def one(i):
        stream = await client.completions.create(
            model="tiny", prompt=f"client {i} says", max_tokens=24, temperature=0, stream=True
        )
        return "".join([c.choices[0].text async for c in stream])

    async def all_of_them():
        return await asyncio.gather(*(one(i) for i in range(8)))

    texts = asyncio.run(all_of_them())
    assert len(texts) == 8
    metrics = httpx.get(base + "/metrics").text
    max_batch = float(
        next(line.split()[1] for line in metrics.splitlines() if line.startswith("rocket_batch_size_max"))
    )
    assert max_batch > 1
    assert texts[3] == greedy(llm, "client 3 says", 24).text


@pytest.mark.parametrize(
    "path,body,status,param",
    [
        ("/v1/completions", b"{not json", 400, None),
        ("/v1/completions", {"model": "tiny"}, 400, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": 5}, 400, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "logprobs": 21}, 400, "logprobs"),
        ("/v1/completions", {"model": "tiny", "prompt": ["x", "y" * 2000]}, 400, "prompt[1]"),
        ("/v1/completions", {"model": "tiny", "prompt": []}, 400, "prompt"),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "nobody", "content": "hi"}]}, 400, "role"),
        (
            "/v1/chat/completions",
            {
                "model": "tiny",
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
                ],
            },
            400,
            "messages[0].content[0]",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
            400,
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 30},
            400,
            "logprobs",
        ),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 5000}, 400, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": "x" * 2000}, 400, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temperature"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 2}, 400, "n"),
        ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "model"),
        ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"model": "tiny", "messages": "hi"}, 400, "messages"),
    ],
)
def test_bad_requests_get_openai_errors(server, path, body, status, param):
    base = server[1]
    headers = {"Authorization": "Bearer secret", "Content-Type": "application/json"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(base + path, content=data, headers=headers)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param:
        assert param in (err["param"] or "") or param in err["message"]
    assert httpx.get(base + "/health").status_code == 200


def test_api_key(server):
    base = server[1]
    assert httpx.get(base + "/v1/models").status_code == 401
    assert httpx.get(base + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()


def test_disconnect_mid_stream_frees_blocks(server):
    llm, base = server
    body = {"model": "tiny", "prompt": "a long story " * 20, "max_tokens": 600, "stream": True, "ignore_eos": True}
    engine, step = llm.engine, llm.engine.step
    reached, gate, held = threading.Event(), threading.Event(), {}

    def held_step():  # the engine thread stops before its step once the request has streamed 4 tokens
        running = engine.scheduler.running
        if running and len(running[0].output_token_ids) >= 4 and not gate.is_set():
            held.update(seq=running[0], blocks=engine.pool.allocator.num_used)
            reached.set()
            gate.wait()
        return step()

    engine.step = held_step
    try:
        with httpx.stream("POST", base + "/v1/completions", json=body, headers={"Authorization": "Bearer secret"}) as r:
            assert r.status_code == 200
            assert reached.wait(60)  # 4 tokens streamed (some may still be held back as partial UTF-8)
        assert held["blocks"] > 0 and not held["seq"].is_finished
        for _ in range(6000):  # the server notices the disconnect and queues the abort (60 s at most)
            if llm._executor._inbox.qsize():
                break
            time.sleep(0.01)
    finally:
        gate.set()
        del engine.step
    wait_blocks_free(llm)
    assert held["seq"].finish_reason == "abort" and len(held["seq"].output_token_ids) < 600
    metrics = httpx.get(base + "/metrics").text
    assert "rocket_kv_blocks_used 0" in metrics


def test_readme_client_example_talks_to_the_shipped_model():
    import subprocess
    import sys
    from pathlib import Path

    from rocket_trtllm.eval import SHIPPED_MODEL

    example = Path(__file__).parents[1] / "examples" / "openai_client.py"
    with LLM(str(SHIPPED_MODEL), max_seq_len=512) as llm, local_server(llm, "model") as base:
        done = subprocess.run([sys.executable, str(example), "--base-url", base], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_dead_engine_answers_500_and_health_503(llama_dir):
    """An engine whose thread died (a CUDA error poisons the context) gets no request hung: each one is answered
    with a server error naming the cause, /health and /metrics with 503, and the server itself stays up."""
    llm = LLM(str(llama_dir), dtype="float32", max_seq_len=256)
    with local_server(llm, "tiny") as base:

        def lost() -> None:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        llm.engine.step = lost
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError, match="illegal memory access"):
            client.completions.create(model="tiny", prompt="hello", max_tokens=4)
        with pytest.raises(openai.APIError, match="illegal memory access"):  # the stream's error event
            list(client.completions.create(model="tiny", prompt="hello", max_tokens=4, stream=True))
        from rocket_trtllm.serve.benchmark import BenchRequest, run_rate

        records, _ = asyncio.run(run_rate(base, "tiny", [BenchRequest([5, 6, 7], 4, 3)] * 2, math.inf, None, True, 0))
        assert [r.ok for r in records] == [False, False] and "illegal memory access" in records[0].error
        root = base.removesuffix("/v1")
        for path in ("/health", "/metrics"):
            r = httpx.get(root + path)
            assert r.status_code == 503 and "engine stopped" in r.text
    llm.shutdown()


def hf_logprobs(model_dir, ids):
    """transformers' log-softmax at every position of `ids` (the model's raw logits)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_completion_logprobs_match_the_engine_streamed_and_whole(server, client):
    llm, _ = server
    prompt = "The quick brown fox " * 10
    want = llm.generate(prompt, SamplingParams(max_tokens=8, temperature=0, logprobs=2)).outputs[0]
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, logprobs=2)
    lp = got.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert lp.token_logprobs == pytest.approx([e[t].logprob for t, e in zip(want.token_ids, want.logprobs)])
    # greedy: each token is its step's best; two alternatives (fewer keys where two tokens read the same: the tiny
    # model's byte tokens decode alone to partial UTF-8)
    assert all(1 <= len(top) <= 2 and max(top.values()) == pytest.approx(tok) for top, tok in
               zip(lp.top_logprobs, lp.token_logprobs))  # fmt: skip
    assert lp.text_offset[0] == len(prompt) and lp.text_offset == sorted(lp.text_offset)
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, logprobs=2,
                                            stream=True))  # fmt: skip
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [x for s in streamed for x in s.token_logprobs] == lp.token_logprobs
    assert [x for s in streamed for x in s.text_offset] == lp.text_offset


def test_echo_with_max_tokens_0_scores_the_prompt(server, client):
    """What lm-eval's local-completions sends for log-likelihoods (echo, logprobs, max_tokens 0 or 1): the prompt's
    own logprobs, the first null, each the model's log-softmax (transformers on the same ids)."""
    llm, base = server
    prompt = "one two three four five six seven"
    ids = llm.tokenizer.encode(prompt)
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0)
    choice = got.choices[0]
    assert choice.text == prompt and choice.finish_reason == "length" and got.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.token_logprobs) == len(ids)
    ref = hf_logprobs(llm.args.model, ids)
    assert lp.token_logprobs[1:] == pytest.approx([ref[i - 1, ids[i]].item() for i in range(1, len(ids))], abs=1e-4)
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])
    # max_tokens 1 (lm-eval's own request): the prompt's logprobs, then the generated token's
    one = client.completions.create(model="tiny", prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0)
    lp1 = one.choices[0].logprobs
    assert len(lp1.token_logprobs) == len(ids) + 1
    assert lp1.token_logprobs[: len(ids)] == pytest.approx(lp.token_logprobs)
    assert one.choices[0].text.startswith(llm.tokenizer.decode(ids))
    wait_blocks_free(llm)


def test_a_list_of_prompts_gets_one_choice_each(server, client):
    llm, _ = server
    prompts = ["first prompt here", "and the second one", [5, 6, 7, 8]]
    want = [greedy(llm, p, 6).text for p in prompts]
    strings = client.completions.create(model="tiny", prompt=prompts[:2], max_tokens=6, temperature=0)
    assert [c.index for c in strings.choices] == [0, 1] and [c.text for c in strings.choices] == want[:2]
    ids = client.completions.create(model="tiny", prompt=[[5, 6, 7, 8], [5, 6, 7, 8]], max_tokens=6, temperature=0)
    assert [c.text for c in ids.choices] == [want[2]] * 2
    assert ids.usage.prompt_tokens == 8 and ids.usage.completion_tokens == 12
    chunks = list(client.completions.create(model="tiny", prompt=prompts[:2], max_tokens=6, temperature=0,
                                            stream=True))  # fmt: skip
    texts = ["", ""]
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.text
    assert texts == want[:2]
    assert sum(1 for c in chunks for ch in c.choices if ch.finish_reason) == 2
    wait_blocks_free(llm)


def test_chat_logprobs_and_text_parts(server, client):
    llm, _ = server
    plain = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hello\nthere"}]
    parts = [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]},
    ]
    system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello\nthere"}]
    ids = llm.tokenizer.encode(llm.tokenizer.apply_chat_template(system, add_generation_prompt=True, tokenize=False),
                               add_special_tokens=False)  # fmt: skip
    want = llm.generate(ids, SamplingParams(max_tokens=6, temperature=0, logprobs=3)).outputs[0]
    for messages in (plain, parts):
        got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                             logprobs=True, top_logprobs=3)  # fmt: skip
        assert got.choices[0].message.content == want.text
        content = got.choices[0].logprobs.content
        assert [c.logprob for c in content] == pytest.approx([e[t].logprob for t, e in
                                                              zip(want.token_ids, want.logprobs)])  # fmt: skip
        assert all(len(c.top_logprobs) == 3 and c.top_logprobs[0].logprob == pytest.approx(c.logprob) for c in content)
        assert all(bytes(c.bytes) == c.token.encode() for c in content)
    stream = client.chat.completions.create(model="tiny", messages=parts, max_tokens=6, temperature=0, logprobs=True,
                                            stream=True)  # fmt: skip
    entries = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.logprob for e in entries] == pytest.approx([e[t].logprob for t, e in zip(want.token_ids, want.logprobs)])
    assert all(e.top_logprobs == [] for e in entries)
