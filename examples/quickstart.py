"""Generate with RocketKV from a local checkpoint, next to the dense baseline.

python examples/quickstart.py                                  # the small long-context model we ship
python examples/quickstart.py /models/Llama-3.1-8B-Instruct    # any supported Hugging Face checkpoint
"""

import argparse
import random

from rocket_trtllm.eval import SHIPPED_MODEL
from rocket_trtllm.eval.tasks import generate

from rocket_trtllm import LLM, RocketSparseAttentionConfig, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=str(SHIPPED_MODEL), help="checkpoint folder (default: ours)")
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    # Needle-in-a-haystack prompts of about 4k tokens: the answers are hidden in the filler.
    samples = [generate(task, 16000, random.Random(i)) for i, task in enumerate(["niah_single", "variable_tracking"])]
    rocket = RocketSparseAttentionConfig(prompt_budget=1024, topk=64, topr=1.0)  # topr 1.0: all 64 channels
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    for name, sparse in (("dense", None), ("rocket", rocket)):
        with LLM(model=args.model, sparse_attention_config=sparse) as llm:
            outputs = llm.generate([s.prompt for s in samples], params)
            stats = llm.snapshot()
        print(
            f"--- {name}: {stats['promptTokensEvicted']} prompt tokens evicted, "
            f"{stats['meanTokensAttendedPerStep']:.0f} tokens attended per decode step"
        )
        for sample, out in zip(samples, outputs):
            print(f"{sample.prompt[-70:]!r} -> {out.outputs[0].text!r} (expected {', '.join(sample.answers)})")


if __name__ == "__main__":
    main()
