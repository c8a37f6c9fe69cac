"""The real pretrained model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers on the same file."""

import pytest
import torch
from rocket_trtllm.eval.prose import Corpus

from rocket_trtllm import LLM, SamplingParams
from rocket_trtllm.errors import ConfigError
from rocket_trtllm.models.gguf import hf_name, unpermute_rotary


@pytest.fixture(scope="module")
def hf_smollm2(smollm2):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ours(smollm2):
    with LLM(model=str(smollm2), dtype="float32", max_seq_len=4096, max_num_tokens=4096) as llm:
        yield llm


def hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=2)
    return out[0, len(ids) :].tolist()


def test_chat_prompt_matches_transformers(ours, hf_smollm2):
    prompt = ours.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    out = ours.generate(prompt, SamplingParams(max_tokens=16, temperature=0.0))
    ids = ours.tokenizer.encode(prompt)
    expected = hf_greedy(hf_smollm2, ids, 16)
    assert out.outputs[0].token_ids == expected[: len(out.outputs[0].token_ids)]
    assert out.outputs[0].text == "The capital of France is Paris." and out.outputs[0].finish_reason == "stop"


def test_long_prose_prompt_matches_transformers(ours, hf_smollm2, kjv):
    import random

    text = Corpus.load(kjv).excerpt(9000, random.Random(0))
    ids = ours.tokenizer.encode(f"{text}\n\nSummarize the passage above in one sentence:")
    assert 1800 <= len(ids) <= 2400
    out = ours.generate(ids, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    assert out.outputs[0].token_ids == hf_greedy(hf_smollm2, ids, 12)


def test_unsupported_architecture_is_named(tmp_path):
    import gguf

    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match="GGUF architecture 'gpt2' is not supported; supported: llama, qwen2, qwen3"):
        LLM(model=str(path))


def test_other_files_are_refused_by_name(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match="model.bin is a file of a format not loaded here"):
        LLM(model=str(path))


def test_tensor_names_and_rotary_order():
    assert hf_name("blk.7.attn_k.weight") == "model.layers.7.self_attn.k_proj.weight"
    assert hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight" and hf_name("rope_freqs.weight") == ""
    heads, head_dim = 3, 8
    w = torch.randn(heads * head_dim, 5)
    # llama.cpp's converter interleaves the two halves of each head: (h, 2, d/2) -> (h, d/2, 2)
    permuted = w.reshape(heads, 2, head_dim // 2, 5).transpose(1, 2).reshape(w.shape)
    assert torch.equal(unpermute_rotary(permuted, heads), w)
