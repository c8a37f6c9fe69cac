"""FP8 checkpoints: rocket-quantize writes ModelOpt's layout, the loader reads it (and compressed-tensors') through
the fp8 linear method, and anything quantized otherwise is refused by name."""

import json
import random
import shutil

import pytest
import torch
from rocket_trtllm.eval import SHIPPED_MODEL
from rocket_trtllm.eval.tasks import generate
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rocket_trtllm import LLM, ConfigError, KvCacheConfig, RocketSparseAttentionConfig, SamplingParams
from rocket_trtllm.models.checkpoint import open_checkpoint
from rocket_trtllm.models.loader import load_model
from rocket_trtllm.models.quant import FP8, fp8_linear_cuda, fp8_linear_ref
from rocket_trtllm.quantize import quantize
from rocket_trtllm.runtime.kv_cache import KVCachePool, ModelShape

LAYER = "model.layers.1.self_attn"


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory):
    return quantize(SHIPPED_MODEL, tmp_path_factory.mktemp("fp8") / "model", kv_cache_fp8=True, calib_prompts=3)


def test_written_checkpoint_round_trips(fp8_model):
    original = load_file(str(SHIPPED_MODEL / "model.safetensors"))
    written = load_file(str(fp8_model / "model.safetensors"))
    w, scale = written[f"{LAYER}.q_proj.weight"], written[f"{LAYER}.q_proj.weight_scale"]
    assert w.dtype == FP8 and scale.shape == () and written[f"{LAYER}.q_proj.input_scale"] > 0
    assert written[f"{LAYER}.k_proj.k_scale"] > 0 and written[f"{LAYER}.v_proj.v_scale"] > 0
    want = original[f"{LAYER}.q_proj.weight"].float()
    assert ((w.float() * scale - want).abs() <= want.abs() / 16 + scale).all()  # e4m3: 3 mantissa bits
    assert torch.equal(written["model.embed_tokens.weight"], original["model.embed_tokens.weight"])  # not quantized
    spec = json.loads((fp8_model / "config.json").read_text())["quantization_config"]
    assert spec == {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                    "exclude_modules": ["lm_head"]}  # fmt: skip
    # Loaded: the fused q/k/v holds the file's fp8 bytes and scales, unchanged.
    model = load_model(open_checkpoint(str(fp8_model)), torch.bfloat16, torch.device("cpu"))
    attn = model.model.layers[1].self_attn
    parts = [written[f"{LAYER}.{p}_proj.weight"] for p in "qkv"]
    assert attn.qkv_weight.dtype == FP8 and torch.equal(attn.qkv_weight.view(torch.uint8),
                                                        torch.cat(parts).view(torch.uint8))  # fmt: skip
    scales = torch.cat([written[f"{LAYER}.{p}_proj.weight_scale"].expand(t.shape[0], 1) for p, t in zip("qkv", parts)])
    assert torch.equal(attn.qkv_scale, scales)


def quickstart(model, sparse=None, kv=None):
    samples = [generate(task, 16000, random.Random(i)) for i, task in enumerate(["niah_single", "variable_tracking"])]
    with LLM(model=str(model), sparse_attention_config=sparse, kv_cache_config=kv or KvCacheConfig()) as llm:
        greedy = SamplingParams(max_tokens=24, temperature=0)  # as the issue asks (the default samples)
        return [o.outputs[0].text for o in llm.generate([s.prompt for s in samples], greedy)]


@pytest.mark.parametrize("sparse", [None, RocketSparseAttentionConfig(prompt_budget=1024, topk=64, topr=1.0)],
                         ids=["dense", "rocket"])  # fmt: skip
def test_fp8_weights_answer_the_quickstart_as_bf16_does(fp8_model, sparse):
    assert quickstart(fp8_model, sparse) == quickstart(SHIPPED_MODEL, sparse)


def compressed_tensors(fp8_model, out):
    """The same weights in llm-compressor's layout: per-channel scales [out, 1], no hf_quant_config.json."""
    shutil.copytree(fp8_model, out)
    (out / "hf_quant_config.json").unlink()
    tensors = load_file(str(out / "model.safetensors"))
    for name in [n for n in tensors if n.endswith(".weight_scale")]:
        rows = tensors[name.removesuffix("_scale")].shape[0]
        tensors[name] = tensors[name].expand(rows, 1).clone()
    save_file({k: v for k, v in tensors.items() if not k.endswith(("input_scale", "k_scale", "v_scale"))},
              str(out / "model.safetensors"))  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    weights = {"num_bits": 8, "type": "float", "strategy": "channel", "dynamic": False, "symmetric": True}
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "float-quantized",
                                     "config_groups": {"group_0": {"weights": weights, "targets": ["Linear"]}},
                                     "ignore": ["lm_head"]}  # fmt: skip
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_compressed_tensors_fp8_loads_and_shards(fp8_model, tmp_path):
    model = compressed_tensors(fp8_model, tmp_path / "ct")
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    prompts = [list(range(3, 200)), list(range(40, 90))]
    outs = {}
    one_gpu = torch.cuda.is_available() and torch.cuda.device_count() < 2  # TP 2 runs on 2 GPUs, or gloo on the CPU
    for tp in (1,) if one_gpu else (1, 2):  # per-channel scales are sliced with their rows
        with LLM(str(model), dtype="float32", tensor_parallel_size=tp) as llm:
            outs[tp] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    # The same KV cache as the copy without k/v scales (the original would store it in fp8).
    with LLM(str(fp8_model), dtype="float32", kv_cache_config=KvCacheConfig(dtype="float32")) as llm:
        per_tensor = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert outs[1] == outs.get(2, outs[1]) == per_tensor


def test_other_quantizations_are_refused(tmp_path):
    model = tmp_path / "gptq"
    shutil.copytree(SHIPPED_MODEL, model)
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="quant_method 'gptq'"):
        LLM(str(model))


def test_fp8_weights_without_a_quantization_config_are_refused(fp8_model, tmp_path):
    model = tmp_path / "bare"
    shutil.copytree(fp8_model, model)
    (model / "hf_quant_config.json").unlink()
    config = json.loads((model / "config.json").read_text())
    del config["quantization_config"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"_proj.weight is stored in float8_e4m3fn .*quantization config \(none\)"):
        LLM(str(model))


def test_a_missing_scale_is_named(fp8_model, tmp_path):
    model = tmp_path / "noscale"
    shutil.copytree(fp8_model, model)
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != f"{LAYER}.o_proj.weight_scale"}
    save_file(tensors, str(model / "model.safetensors"))
    with pytest.raises(ConfigError, match=f"{LAYER}.o_proj.weight_scale"):
        LLM(str(model))


def test_fp8_linear_reference_is_close_to_float():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(7, 64, generator=gen), torch.randn(48, 64, generator=gen)
    scale = w.abs().amax(dim=1, keepdim=True) / 448
    got = fp8_linear_ref(x, (w / scale).to(FP8), scale)
    want = x @ w.t()
    assert (got - want).norm() / want.norm() < 0.05  # e4m3 keeps 3 mantissa bits of each input


@pytest.mark.gpu
def test_fp8_gemm_matches_its_reference():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(37, 256, generator=gen).to("cuda", torch.bfloat16)
    w = torch.randn(384, 256, generator=gen)
    scale = (w.abs().amax(dim=1, keepdim=True) / 448).cuda()
    w8 = (w.cuda() / scale).to(FP8)
    bias = torch.randn(384, generator=gen).to("cuda", torch.bfloat16)
    torch.testing.assert_close(fp8_linear_cuda(x, w8, scale, bias), fp8_linear_ref(x, w8, scale, bias),
                               rtol=2e-2, atol=2e-2)  # fmt: skip


@pytest.mark.parametrize("rows,n,k,bias", [(1, 40, 512, False), (3, 24, 300, True), (16, 16, 1024, False)])
@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "wide"])
@pytest.mark.parametrize("dot", [True, False], ids=["dot", "rows"])
@pytest.mark.parametrize("prefetch", [1, 2], ids=["one-tile-early", "two-tiles-early"])
def test_gemv_matches_its_reference(rows, n, k, bias, fp8, dot, prefetch, monkeypatch):
    """The decode GEMM (weight-only FP8, or weights in the activations' dtype) against its float32 reference, in
    float32 (the interpreter's dots are exact there), on ragged sizes: channels past a tile, K past a 512-wide
    one (or within the first of two tiles loaded before the wait), the bias; both inner loops (the dot over 16
    rows, one row per program)."""
    from rocket_trtllm.kernels import gemv as gemv_module
    from rocket_trtllm.kernels.gemv import Tile, gemv, gemv_ref

    monkeypatch.setattr(gemv_module, "PREFETCH_TILES", prefetch)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, k, generator=gen).to(device)
    w = torch.randn(n, k, generator=gen)
    w = ((w * 100).to(FP8) if fp8 else w).to(device)
    scale = (torch.rand(n, 1, generator=gen) / 100).to(device) if fp8 else None
    b = torch.randn(n, generator=gen).to(device) if bias else None
    tile = Tile(16, 512, 4, 2, dot) if dot else Tile(8, 256, 4, 2, dot)
    torch.testing.assert_close(gemv(x, w, scale, b, tile), gemv_ref(x, w, scale, b), rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
def test_gemv_on_gpu_at_llama_shapes():
    """bf16 rows at Llama-3.1-8B's projection shapes, through the linear methods as decode calls them: fp8 and
    bf16 weights."""
    from rocket_trtllm.kernels.gemv import gemv_ref
    from rocket_trtllm.models.quant import Fp8, Unquantized

    gen = torch.Generator().manual_seed(0)
    for rows, k, n in [(1, 4096, 6144), (7, 14336, 4096), (16, 4096, 28672), (1, 4096, 128256)]:
        x = torch.randn(rows, k, generator=gen).to("cuda", torch.bfloat16)
        w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(FP8).cuda()
        scale = (torch.rand(n, 1, generator=gen) / 1e4).cuda()
        torch.testing.assert_close(Fp8().apply(x, w, None, scale), gemv_ref(x, w, scale), rtol=2e-2, atol=2e-2)
        wide = (w.float() * scale).bfloat16()
        torch.testing.assert_close(Unquantized().apply(x, wide, None, None), gemv_ref(x, wide), rtol=2e-2,
                                   atol=2e-2)  # fmt: skip


@pytest.mark.parametrize("sparse", [None, RocketSparseAttentionConfig(prompt_budget=1024, topk=64, topr=1.0)],
                         ids=["dense", "rocket"])  # fmt: skip
def test_fp8_kv_cache_answers_the_quickstart_as_bf16_does(fp8_model, sparse):
    want = quickstart(SHIPPED_MODEL, sparse)
    assert quickstart(SHIPPED_MODEL, sparse, KvCacheConfig(dtype="fp8")) == want  # scales 1.0
    with LLM(model=str(fp8_model)) as llm:  # kv_cache_quant_algo FP8: auto is fp8, with the checkpoint's scales
        pool = llm.engine.pool
        assert pool.k.dtype == torch.float8_e4m3fn and pool.k_scale[0] != 1.0 and pool.v_scale[1] != 1.0
    assert quickstart(fp8_model, sparse) == want
    elem = {d: KVCachePool.bytes_per_block(ModelShape(2, 4, 2, 16), 32, d) for d in (torch.bfloat16, FP8)}
    assert elem[FP8] * 2 == elem[torch.bfloat16]  # the pool holds twice the tokens in the same bytes


def test_random_fp8_weights_for_benchmarks(llama_dir):
    """quant_config FP8 with random weights: fp8 projections whose dequantized weights are N(0, 0.02)-sized;
    asked of a real checkpoint it is refused (the checkpoint's files say how it is quantized)."""
    from rocket_trtllm import QuantConfig

    with LLM(str(llama_dir), load_format="dummy", quant_config=QuantConfig(quant_algo="FP8")) as llm:
        attn = llm.engine.model.model.layers[0].self_attn
        assert attn.qkv_weight.dtype == FP8
        assert not attn.qkv_weight.float().isnan().any()  # CUDA casts past-range values to NaN: saturated first
        std = (attn.qkv_weight.float() * attn.qkv_scale).std().item()
        assert 0.015 < std < 0.025
        assert (
            len(llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True))[0].outputs[0].token_ids) == 4
        )
    # An FP8 KV cache over random weights: no checkpoint to read K/V scales from, so 1.0 (as TensorRT-LLM).
    with LLM(str(llama_dir), load_format="dummy", kv_cache_config=KvCacheConfig(dtype="fp8")) as llm:
        assert llm.engine.pool.k.dtype == FP8 and llm.engine.pool.k_scale[0] == 1.0
        out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True))[0].outputs[0]
        assert len(out.token_ids) == 4
    with pytest.raises(ConfigError, match="random weights only") as e:
        LLM(str(llama_dir), quant_config={"quant_algo": "FP8"})
    assert e.value.path == "quant_config.quant_algo"
