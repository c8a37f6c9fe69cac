"""Random-weight checkpoints written with transformers' save_pretrained, with a byte-level tokenizer:
the tests' tiny models, the quickstart's demo model, and rocket-bench's `--random-weights`."""

from pathlib import Path

import torch

ARCHS = ("llama", "mistral", "qwen2", "qwen3")

COMMON = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    bos_token_id=256,
    eos_token_id=257,
)


def save_byte_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({"<s>": 256, "</s>": 257})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


def make_tiny_model(path: Path, arch: str = "llama", seed: int = 0, **overrides: object) -> Path:
    """Write a random `arch` checkpoint (tiny unless `overrides` say otherwise) and its tokenizer to `path`."""
    import transformers

    kw = dict(COMMON, **overrides)
    if arch == "llama":
        cfg = transformers.LlamaConfig(
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256,
            },
            tie_word_embeddings=True,
            **kw,
        )
    elif arch == "mistral":
        cfg = transformers.MistralConfig(sliding_window=None, **kw)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(tie_word_embeddings=True, **kw)
    else:
        cfg = transformers.Qwen3Config(head_dim=32, **kw)
    cls = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(
        arch, "Qwen3ForCausalLM"
    )
    torch.manual_seed(seed)
    model = getattr(transformers, cls)(cfg).float()
    with torch.no_grad():  # random init is small; widen it so attention patterns are not flat
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.2)
    model.save_pretrained(path, safe_serialization=True)
    save_byte_tokenizer(path)
    return path
