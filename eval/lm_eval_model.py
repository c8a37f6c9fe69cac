"""lm-eval's model `rocket-trtllm`: every lm-eval task on our engine, RocketKV included.

    rocket-lm-eval --model rocket-trtllm --model_args pretrained=PATH,config=rocket.yaml --tasks TASKS

`rocket-lm-eval` is lm-eval's own command line with this model registered (lm-eval 0.4 finds models
only in modules already imported). From Python, import this module before
`lm_eval.simple_evaluate(model="rocket-trtllm", model_args=...)`.

model_args: `pretrained` (checkpoint folder or .gguf file), `config` (the LLM options YAML that rocket-serve and
rocket-eval take; its sparse_attention_config is the method evaluated), `max_gen_toks` (default
256), and any LLM option (`dtype=float32`, `max_seq_len=...`) overriding the YAML. lm-eval's
`batch_size` and `device` are ignored: the engine batches every request itself and runs on the GPU
when there is one.

loglikelihood scores the continuation through decode steps (`LLM.score`), so a multiple-choice task
measures RocketKV's eviction and sparse decode, not only the dense prefill.
"""

from typing import Any, Optional

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from rocket_trtllm import LLM, SamplingParams


@register_model("rocket-trtllm")
class RocketLM(TemplateLM):
    def __init__(
        self,
        pretrained: str,
        config: Optional[str] = None,
        max_gen_toks: int = 256,
        batch_size: Any = None,
        max_batch_size: Any = None,
        device: Any = None,
        **llm_options: Any,
    ) -> None:
        super().__init__()
        self.pretrained = str(pretrained)
        if config:
            self.llm = LLM.from_yaml(config, model=self.pretrained, **llm_options)
        else:
            self.llm = LLM(model=self.pretrained, **llm_options)
        self.tokenizer = self.llm.tokenizer
        self.max_gen_toks = int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.rstrip("/").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        if add_special_tokens is None:
            return self.tokenizer.encode(string)
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _fit(self, context: list[int], new_tokens: int) -> list[int]:
        # Keep the context's end when it and the new tokens exceed the engine's max_seq_len.
        return context[-max(1, self.llm.max_seq_len - new_tokens) :]

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        pairs = [(self._fit(ctx, len(cont)), cont) for _, ctx, cont in requests]
        results = self.llm.score(pairs, use_tqdm=not disable_tqdm)
        for (key, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        pairs, owners = [], []
        for i, req in enumerate(tqdm(requests, desc="Rolling windows", disable=disable_tqdm)):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(req.args[0], add_special_tokens=False),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.llm.max_seq_len,
                context_len=1,
            )
            for window in map(make_disjoint_window, windows):
                pairs.append(window)
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self.llm.score(pairs, use_tqdm=not disable_tqdm)):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        prompts, params = [], []
        for req in requests:
            context, gen_kwargs = req.args
            prompts.append(self.tok_encode(context))
            params.append(self._sampling_params(dict(gen_kwargs)))
        prompts = [self._fit(ids, p.max_tokens) for ids, p in zip(prompts, params)]
        outputs = self.llm.generate(prompts, params, use_tqdm=not disable_tqdm)
        texts = [o.outputs[0].text for o in outputs]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts

    def _sampling_params(self, gen_kwargs: dict[str, Any]) -> SamplingParams:
        # As lm-eval's HF model: greedy unless the task samples; `until` strings stop (and are cut).
        until = gen_kwargs.pop("until", None) or []
        do_sample = gen_kwargs.pop("do_sample", None)
        temperature = float(gen_kwargs.pop("temperature", 1.0 if do_sample else 0.0))
        return SamplingParams(
            max_tokens=min(int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks)), self.llm.max_seq_len - 1),
            temperature=0.0 if do_sample is False else temperature,
            top_p=float(gen_kwargs.pop("top_p", 1.0)),
            top_k=int(gen_kwargs.pop("top_k", 0)),
            stop=[until] if isinstance(until, str) else list(until),
        )


def main() -> None:
    """`rocket-lm-eval`: lm-eval's command line, with `--model rocket-trtllm` registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
