"""Generate with RocketKV from a local checkpoint, next to the dense baseline.

python examples/quickstart.py /models/Llama-3.1-8B-Instruct
python examples/quickstart.py            # no checkpoint: a tiny random Llama, on the CPU if no GPU
"""

import argparse
import tempfile
from pathlib import Path

from rocket_trtllm import LLM, KvCacheConfig, RocketSparseAttentionConfig, SamplingParams
from rocket_trtllm.models.random_checkpoint import make_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="Hugging Face checkpoint folder (default: a tiny random Llama)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    model = args.model
    if model is None:
        model = str(make_tiny_model(Path(tempfile.mkdtemp()) / "tiny-llama", "llama"))
        print(f"no checkpoint given: wrote a tiny random Llama to {model}")
        rocket = RocketSparseAttentionConfig(prompt_budget=128, window_size=16, kernel_size=7, topk=8, topr=16)
        kv = KvCacheConfig(tokens_per_block=16)
    else:
        rocket, kv = RocketSparseAttentionConfig(), KvCacheConfig()
    prompts = ["Once upon a time, " * 60, "The capital of France is"]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    for name, sparse in (("dense", None), ("rocket", rocket)):
        with LLM(model=model, sparse_attention_config=sparse, kv_cache_config=kv) as llm:
            outputs = llm.generate(prompts, params)
            stats = llm.snapshot()
        print(
            f"--- {name}: {stats['promptTokensEvicted']} prompt tokens evicted, "
            f"{stats['meanTokensAttendedPerStep']:.0f} tokens attended per decode step"
        )
        for out in outputs:
            print(f"{out.prompt[-40:]!r} -> {out.outputs[0].text!r}")


if __name__ == "__main__":
    main()
