import asyncio
import json
import random
import shutil
import weakref

import pytest
import torch
import transformers

from rocket_trtllm import LLM, ConfigError, KvCacheConfig, RequestError, RocketSparseAttentionConfig, SamplingParams
from rocket_trtllm.models.random_checkpoint import ARCHS, make_tiny_model

PROMPTS = ["hello there, general", "a", "The quick brown fox jumps over the lazy dog. " * 3]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def hf_greedy(model_dir, prompt_ids, n, dtype=torch.float32, device="cpu"):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    ids = torch.tensor([prompt_ids], device=device)
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def assert_pool_empty(llm):
    snap = llm.snapshot()
    assert snap["kvBlocksUsed"] == 0 and snap["kvBlocksReserved"] == 0 and snap["running"] == 0


@pytest.fixture(scope="module")
def llama(llama_dir):
    with LLM(str(llama_dir), dtype="float32") as llm:
        yield llm
        assert_pool_empty(llm)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers(tiny_models, arch):
    with LLM(str(tiny_models[arch]), dtype="float32", kv_cache_config=KvCacheConfig(tokens_per_block=8)) as llm:
        outs = llm.generate(PROMPTS, GREEDY)
        for out in outs:
            assert out.finished and out.outputs[0].finish_reason == "length"
            assert out.outputs[0].token_ids == hf_greedy(tiny_models[arch], out.prompt_token_ids, 12)
        assert_pool_empty(llm)


def test_long_prompt_slices_match_transformers(tiny_models, monkeypatch):
    """A long prompt's o_proj and MLP run in token slices (here every prompt is long: 5-token slices), its attention
    output written over its queries; greedy tokens still equal transformers', and RocketKV's stage 1 (which reads
    the last queries, copied out before they are overwritten) keeps what it keeps without slices."""
    from rocket_trtllm.models import llama

    rocket = RocketSparseAttentionConfig(prompt_budget=16, window_size=4, kernel_size=3, topk=2, page_size=2, topr=8)
    prompt = list(range(3, 60))
    with LLM(str(tiny_models["llama"]), dtype="float32", sparse_attention_config=rocket) as llm:
        whole = llm.generate(prompt, GREEDY).outputs[0].token_ids
    monkeypatch.setattr(llama, "CHUNK_TOKENS", 5)
    for arch in ("llama", "qwen2"):
        with LLM(str(tiny_models[arch]), dtype="float32") as llm:
            out = llm.generate(PROMPTS, GREEDY)
            assert [o.outputs[0].token_ids for o in out] == [hf_greedy(tiny_models[arch], o.prompt_token_ids, 12)
                                                             for o in out]  # fmt: skip
    with LLM(str(tiny_models["llama"]), dtype="float32", sparse_attention_config=rocket) as llm:
        assert llm.generate(prompt, GREEDY).outputs[0].token_ids == whole


def test_chunked_steps_mixing_prompts_and_generation_match_transformers(tiny_models, monkeypatch):
    """Two requests at most in flight: the third prompt arrives while the second decodes, so a step holds a prompt
    and a generation token, and (at 5-token slices) the step's norm and projection run in slices."""
    from rocket_trtllm.models import llama

    monkeypatch.setattr(llama, "CHUNK_TOKENS", 5)
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (3, 12, 12)]
    with LLM(str(tiny_models["llama"]), dtype="float32", max_batch_size=2) as llm:
        out = llm.generate(PROMPTS, params)
        assert_pool_empty(llm)
    for o, p in zip(out, params):
        assert o.outputs[0].token_ids == hf_greedy(tiny_models["llama"], o.prompt_token_ids, p.max_tokens)


def test_batched_equals_one_by_one(llama):
    batched = [o.outputs[0].token_ids for o in llama.generate(PROMPTS, GREEDY)]
    single = [llama.generate(p, GREEDY).outputs[0].token_ids for p in PROMPTS]
    assert batched == single


def test_inputs_token_ids_and_per_prompt_params(llama):
    ids = llama.tokenizer.encode("hello")
    params = [SamplingParams(max_tokens=3, temperature=0), SamplingParams(max_tokens=5, temperature=0)]
    outs = llama.generate([ids, "hello"], params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 5]
    assert outs[1].outputs[0].token_ids[:3] == outs[0].outputs[0].token_ids
    assert outs[0].prompt is None and outs[1].prompt == "hello"
    single = llama.generate(ids, params[0])
    assert single.outputs[0].token_ids == outs[0].outputs[0].token_ids


def test_sampling_with_seed_is_reproducible(llama):
    p = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    a = llama.generate("seeded", p).outputs[0].token_ids
    b = llama.generate("seeded", p).outputs[0].token_ids
    c = llama.generate("seeded", SamplingParams(max_tokens=16, temperature=1.0, seed=8, ignore_eos=True))
    assert a == b and a != c.outputs[0].token_ids


def test_unseeded_requests_leave_the_global_generator_alone(llama):
    torch.manual_seed(0)
    want = torch.rand(4)
    torch.manual_seed(0)
    llama.generate(["unseeded", "twice"], SamplingParams(max_tokens=4, temperature=1.0, ignore_eos=True))
    assert torch.equal(torch.rand(4), want)  # torch.seed() per request reseeded it


def test_stop_token_ids_and_stop_strings(llama):
    full = llama.generate("stop test", GREEDY).outputs[0]
    stop_id = full.token_ids[4]
    out = llama.generate("stop test", SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop_id]))
    first = full.token_ids.index(stop_id)
    assert out.outputs[0].token_ids == full.token_ids[: first + 1] and out.outputs[0].finish_reason == "stop"
    text = full.text
    stop = text[len(text) // 2 : len(text) // 2 + 1]
    if stop.strip() and "\ufffd" not in stop:
        out = llama.generate("stop test", SamplingParams(max_tokens=12, temperature=0, stop=stop, ignore_eos=True))
        assert out.outputs[0].text == text[: text.index(stop)] and out.outputs[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "prompt,params,match",
    [
        ("", SamplingParams(), "empty"),
        ([[]], SamplingParams(), "empty"),
        ("x" * 5000, SamplingParams(), "exceeds max_seq_len"),
        ([999999], SamplingParams(), r"token ids must be in \[0, 300\)"),
        (3.5, SamplingParams(), "string or a list of token ids"),
    ],
)
def test_bad_prompts_raise_before_work(llama, prompt, params, match):
    with pytest.raises(RequestError, match=match):
        llama.generate(prompt, params)
    assert llama.generate("still ok", GREEDY).outputs[0].finish_reason == "length"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_tokens=0), "max_tokens must be an integer >= 1"),
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be >= 0"),
    ],
)
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(RequestError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["sampled", "greedy"])
def test_abort_returns_blocks(llama, temperature):
    """Greedy, the overlap scheduler has the next step in flight when the abort lands: the request keeps the
    tokens it was sent (those a whole run gives), drops the one in flight, and its blocks go back at once."""
    params = SamplingParams(max_tokens=2000, ignore_eos=True, temperature=temperature)

    async def run():
        result = llama.generate_async("abort me", params, streaming=True)
        n = 0
        async for ids, _ in result:
            n += len(ids)
            if n >= 3:
                result.abort()
        return await result.aresult()

    out = asyncio.run(run()).outputs[0]
    assert out.finish_reason == "abort" and 3 <= len(out.token_ids) < 2000
    assert_pool_empty(llama)
    if temperature == 0.0:
        whole = SamplingParams(max_tokens=len(out.token_ids), temperature=0, ignore_eos=True)
        assert out.token_ids == llama.generate("abort me", whole).outputs[0].token_ids


def test_streaming_yields_every_token(llama):
    async def run():
        result = llama.generate_async("stream", GREEDY, streaming=True)
        tokens, text = [], ""
        async for ids, delta in result:
            tokens += ids
            text += delta
        return tokens, text, result.output

    tokens, text, final = asyncio.run(run())
    assert tokens == final.outputs[0].token_ids and text == final.outputs[0].text
    assert tokens == llama.generate("stream", GREEDY).outputs[0].token_ids


def test_streams_wake_their_loop_once_a_step_and_a_backlog_comes_in_one_batch(llama):
    n, tokens = 4, 16
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)

    async def drain(result):
        return [ids async for ids, _ in result]

    async def run():
        loop = asyncio.get_running_loop()
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counted(*args):
            nonlocal wakeups
            wakeups += 1
            return real(*args)

        loop.call_soon_threadsafe = counted
        results = [llama.generate_async(f"stream {i}", params, streaming=True) for i in range(n)]
        streamed = await asyncio.gather(*(drain(r) for r in results[1:]))  # read as the tokens come
        loop.call_soon_threadsafe = real  # (to_thread below hands its result back through it)
        await asyncio.to_thread(results[0].result)  # finished before anyone reads it: all of it waits
        backlog = [deltas async for deltas in results[0].batches()]
        return wakeups, streamed, backlog

    llama.get_stats()  # from here on, one entry per engine step
    wakeups, streamed, backlog = asyncio.run(run())
    steps = len(llama.get_stats())
    assert all(len(sum(ids, [])) == tokens for ids in streamed)
    # A step's deltas for every stream of a loop go in one hand-over: at most one wake-up a step, not one per
    # token of each stream (3 x 16 here; the old code woke the loop 52 times in about 20 steps).
    assert wakeups <= steps
    assert len(backlog) == 1 and sum(len(ids) for ids, _ in backlog[0]) == tokens


def test_full_pool_makes_requests_wait_and_oversized_requests_fail(llama_dir):
    # 4 blocks of 8 tokens: one 20-token request at a time.
    kv = KvCacheConfig(max_tokens=32, tokens_per_block=8)
    with LLM(str(llama_dir), dtype="float32", kv_cache_config=kv) as llm:
        params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
        outs = llm.generate(["0123456789"] * 3, params)
        assert all(len(o.outputs[0].token_ids) == 10 for o in outs)
        assert len({tuple(o.outputs[0].token_ids) for o in outs}) == 1
        stats = llm.get_stats()
        assert max(s["numQueuedRequests"] for s in stats) >= 1
        assert max(s["numActiveRequests"] for s in stats) <= 2
        with pytest.raises(RequestError, match="whole pool has 4"):
            llm.generate("x" * 30, params)
        assert llm.generate("ok", params).outputs[0].finish_reason == "length"
        assert_pool_empty(llm)


def test_failed_step_fails_its_requests_and_returns_blocks(llama_dir, monkeypatch):
    with LLM(str(llama_dir), dtype="float32") as llm:
        calls = {"n": 0}
        real = llm.engine.backend.decode

        def flaky(layer, q, meta):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected")
            return real(layer, q, meta)

        monkeypatch.setattr(llm.engine.backend, "decode", flaky)
        with pytest.raises(RuntimeError, match="injected"):
            llm.generate("fail", GREEDY)
        assert_pool_empty(llm)
        assert llm.generate("recover", GREEDY).outputs[0].finish_reason == "length"


def test_shutdown_gives_the_memory_back(llama_dir):
    with LLM(model=str(llama_dir)) as llm:
        llm.generate("hello", SamplingParams(max_tokens=3))
        weight = weakref.ref(llm.engine.model.lm_head.weight)
        pool = weakref.ref(llm.engine.pool.k)
    assert weight() is None and pool() is None  # the LLM object itself is still alive
    assert llm.snapshot()["kvBlocksUsed"] == 0 and llm.get_stats()  # the last stats stay readable


def test_get_stats_reports_blocks(llama):
    llama.get_stats()
    llama.generate(PROMPTS, GREEDY)
    stats = llama.get_stats()
    assert [s["iter"] for s in stats] == sorted(s["iter"] for s in stats) and len(stats) >= 12
    kv = stats[0]["kvCacheStats"]
    assert kv["usedNumBlocks"] > 0 and kv["usedNumBlocks"] + kv["freeNumBlocks"] == kv["maxNumBlocks"]
    assert kv["tokensPerBlock"] == 32
    assert stats[0]["inflightBatchingStats"]["numContextRequests"] == 3


def test_sharded_checkpoint_and_its_errors(tmp_path):
    path = make_tiny_model(tmp_path / "sharded", "qwen2")
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="60KB", safe_serialization=True)
    (tmp_path / "sharded" / "model.safetensors").unlink(missing_ok=True)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    with LLM(str(path), dtype="float32") as llm:
        out = llm.generate(PROMPTS[0], GREEDY)
    assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12)
    shard = sorted(set(index["weight_map"].values()))[0]
    (path / shard).unlink()
    with pytest.raises(ConfigError, match=f"names {shard}"):
        LLM(str(path))


def test_checkpoint_errors(tmp_path, llama_dir):
    with pytest.raises(ConfigError, match="no config.json"):
        LLM(str(tmp_path))
    bad = tmp_path / "noweights"
    shutil.copytree(llama_dir, bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no \\*.safetensors"):
        LLM(str(bad))
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (bad / "config.json").write_text(json.dumps(cfg))
    shutil.copy(llama_dir / "model.safetensors", bad)
    with pytest.raises(ConfigError, match="unsupported architecture.*LlamaForCausalLM"):
        LLM(str(bad))


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_on_gpu_close_to_transformers(tiny_models, arch):
    # Tiny random models have near-tied logits, so bf16 rounding (ours fuses ops, rounding less often)
    # can flip a greedy token. The check: our bf16 logits are as close to transformers' float32 ones
    # as transformers' own bf16 logits are, at every step of the same token sequence.
    path = tiny_models[arch]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, return_generation_logits=True)
    with LLM(str(path), dtype="bfloat16") as llm:
        outs = llm.generate(PROMPTS, params)
    load = transformers.AutoModelForCausalLM.from_pretrained
    models = {dt: load(path, dtype=dt).cuda() for dt in (torch.float32, torch.bfloat16)}
    for o in outs:
        ids = torch.tensor([o.prompt_token_ids + o.outputs[0].token_ids[:-1]], device="cuda")
        n = len(o.outputs[0].token_ids)
        ref, hf_bf16 = (models[dt](ids).logits[0, -n:].float().cpu() for dt in (torch.float32, torch.bfloat16))
        ours = o.outputs[0].generation_logits
        assert (ours - ref).abs().max() <= 2 * (hf_bf16 - ref).abs().max() + 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("sparse", [None, {"algorithm": "rocket", "prompt_budget": 64, "window_size": 8,
                                           "topk": 4, "topr": 16}])  # fmt: skip
def test_cuda_graph_decode_matches_eager(llama_dir, sparse):
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    outs = []
    graphs = {"batch_sizes": [1, 2, 4], "enable_padding": True}
    # Eager, graphs, and graphs fed by the overlap scheduler (each step's tokens read on the device).
    for config, sync in ((None, True), (graphs, True), (graphs, False)):
        with LLM(str(llama_dir), dtype="float32", cuda_graph_config=config, sparse_attention_config=sparse,
                 disable_overlap_scheduler=sync) as llm:  # fmt: skip
            outs.append([o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)])
            if config:
                assert llm.engine.runner.graphs  # the padded batch of 3 ran as the 4-graph
            assert_pool_empty(llm)
    assert outs[0] == outs[1] == outs[2]


def test_score_matches_transformers_logprobs(llama, llama_dir):
    # Each continuation token goes through a decode step; the sum of its log-probabilities and the
    # greedy flag must be what the full forward pass of transformers gives.
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    context = llama.tokenizer.encode(PROMPTS[2])
    greedy = llama.generate(context, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    requests = [(context, greedy.outputs[0].token_ids), (context, [5, 9, 11, 2]), (context[:3], [7])]
    got = llama.score(requests)
    for (ctx, cont), (logprob, is_greedy) in zip(requests, got):
        logits = model(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1]
        want = torch.log_softmax(logits, -1)[torch.arange(len(cont)), torch.tensor(cont)]
        assert logprob == pytest.approx(want.sum().item(), abs=1e-3)
        assert is_greedy == bool((logits.argmax(-1) == torch.tensor(cont)).all())
    assert got[0][1] and not got[1][1]
    with pytest.raises(RequestError, match="at least one token"):
        llama.score([(context, [])])
    assert_pool_empty(llama)


@pytest.mark.parametrize("seed", [0, 1])
def test_incremental_detokenization_equals_decoding_everything(seed):
    """Text streamed token by token from a small window adds up to decoding all the tokens at once, also
    through byte-level tokens that split UTF-8 characters (held back until complete) and special tokens."""
    from transformers import AutoTokenizer

    from rocket_trtllm.llmapi.executor import GenerationResult
    from rocket_trtllm.runtime.sequence import Sequence

    tok = AutoTokenizer.from_pretrained("eval/model")
    words = tok.encode("naïve café — 東京 ünïcödé 🚀 rocket " * 4, add_special_tokens=False)
    rng = random.Random(seed)
    ids = [rng.choice(words) if rng.random() < 0.7 else rng.randrange(len(tok)) for _ in range(300)]
    result = GenerationResult(None, Sequence(0, [1], SamplingParams()), None, streaming=True)
    text = "".join(result._new_text(tok, ids[: i + 1], final=i == len(ids) - 1) for i in range(len(ids)))
    assert text == tok.decode(ids, skip_special_tokens=True)


def test_dead_engine_fails_requests_instead_of_hanging(llama_dir):
    """An engine step that raises outside a request's own failure (a CUDA error poisons the whole context) ends
    the engine thread: the request in flight, every later one and every engine call fail with the cause."""
    with LLM(str(llama_dir), dtype="float32") as llm:

        def lost() -> None:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        llm.engine.step = lost
        out = llm.generate_async("hello", GREEDY).result(timeout=60)
        assert out.outputs[0].finish_reason == "error" and "illegal memory access" in out.outputs[0].error
        assert llm.failure.startswith("engine stopped: RuntimeError")
        with pytest.raises(RuntimeError, match="engine stopped"):
            llm.generate(["again"], GREEDY)
        with pytest.raises(RuntimeError, match="engine stopped"):
            llm.snapshot()
