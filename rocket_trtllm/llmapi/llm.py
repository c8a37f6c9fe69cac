"""LLM: the user's entry point, with TensorRT-LLM's names and call shapes."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from tqdm.auto import tqdm

from ..engine import LLMEngine
from ..errors import RequestError
from ..sampling_params import SamplingParams
from .executor import Executor, GenerationResult
from .llm_args import LlmArgs
from .outputs import RequestOutput

PromptInput = Union[str, list[int]]


class LLM:
    """A model loaded for generation.

    Example::

        with LLM(model="/models/Llama-3.1-8B-Instruct",
                 sparse_attention_config=RocketSparseAttentionConfig(prompt_budget=2048)) as llm:
            out = llm.generate("Hello", SamplingParams(max_tokens=32))
            print(out.outputs[0].text)
    """

    def __init__(self, model: str, tokenizer: Optional[str] = None, **kwargs: Any) -> None:
        self.args = kwargs.pop("llm_args", None) or LlmArgs(model=str(model), tokenizer=tokenizer, **kwargs)
        self.engine = LLMEngine(self.args)
        self.tokenizer = self.engine.tokenizer
        self._executor = Executor(self.engine)

    @classmethod
    def from_yaml(cls, path: Union[str, Path], model: str, **overrides: Any) -> "LLM":
        """Build from TensorRT-LLM's `--config` YAML; keyword arguments override its values."""
        return cls(model=model, llm_args=LlmArgs.from_yaml(path, model=str(model), **overrides))

    @property
    def max_seq_len(self) -> int:
        return self.engine.max_seq_len

    def generate(
        self,
        inputs: Union[PromptInput, Sequence[PromptInput]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
    ) -> Union[RequestOutput, list[RequestOutput]]:
        """Generate for one prompt (returns one RequestOutput) or a list (returns a list).

        A prompt is a string or a list of token ids. Raises RequestError for invalid input before
        any work is done, and RuntimeError if a request failed while running.
        """
        single = not isinstance(inputs, (list, tuple)) or (bool(inputs) and isinstance(inputs[0], int))
        prompts = [inputs] if single else list(inputs)
        if isinstance(sampling_params, (list, tuple)):
            if len(sampling_params) != len(prompts):
                raise RequestError(f"got {len(sampling_params)} SamplingParams for {len(prompts)} prompts")
            params = list(sampling_params)
        else:
            params = [sampling_params or SamplingParams()] * len(prompts)
        prepared = [self._prepare(p, sp) for p, sp in zip(prompts, params)]
        results = [GenerationResult(self._executor, seq, text, streaming=False) for seq, text in prepared]
        self._executor.submit_all(results)
        with tqdm(total=len(results), desc="Processed prompts", disable=not use_tqdm or len(results) < 2) as bar:
            for r in results:
                r.result()
                bar.update(1)
        outputs = [r.output for r in results]
        failed = [o for o in outputs if o.outputs[0].finish_reason == "error"]
        if failed:
            raise RuntimeError(f"request {failed[0].request_id} failed: {failed[0].outputs[0].error}")
        return outputs[0] if single else outputs

    def score(self, requests: Sequence[tuple[list[int], list[int]]], use_tqdm: bool = True) -> list[tuple[float, bool]]:
        """Log-probability of each continuation given its context, and whether greedy decoding makes it.

        requests: (context token ids, continuation token ids) pairs. The context is prefilled and
        each continuation token is fed as the next decode step, so the model scores it with the
        KV cache and sparse attention that generation would use (RocketKV's eviction and page
        selection included). Returns (sum of the continuation's log-probabilities, all argmax).
        """
        seqs, vocab = [], self.engine.hf_config.vocab_size
        for context, continuation in requests:
            if not continuation:
                raise RequestError("a scored continuation must have at least one token")
            if any(not 0 <= t < vocab for t in continuation):
                raise RequestError(f"continuation token ids must be in [0, {vocab})")
            params = SamplingParams(max_tokens=len(continuation), temperature=0.0, ignore_eos=True, detokenize=False)
            seq = self.engine.new_sequence(list(context), params)
            seq.forced_token_ids = list(continuation)
            seqs.append(seq)
        results = [GenerationResult(self._executor, seq, None, streaming=False) for seq in seqs]
        self._executor.submit_all(results)
        with tqdm(total=len(results), desc="Scored requests", disable=not use_tqdm or len(results) < 2) as bar:
            for r in results:
                r.result()
                bar.update(1)
        failed = [s for s in seqs if s.finish_reason == "error"]
        if failed:
            raise RuntimeError(f"request {failed[0].request_id} failed: {failed[0].error}")
        return [(sum(s.forced_logprobs), all(s.forced_greedy)) for s in seqs]

    def generate_async(
        self, inputs: PromptInput, sampling_params: Optional[SamplingParams] = None, streaming: bool = False
    ) -> GenerationResult:
        """Submit one prompt and return at once; `async for ids, text in result` streams it,
        `await result.aresult()` or `result.result()` gives the final RequestOutput."""
        return self._submit(*self._prepare(inputs, sampling_params or SamplingParams()), streaming=streaming)

    def _prepare(self, prompt: PromptInput, params: SamplingParams) -> tuple[Any, ...]:
        if isinstance(prompt, str):
            if not prompt:
                raise RequestError("the prompt is empty")
            ids, text = self.tokenizer.encode(prompt), prompt
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            ids, text = list(prompt), None
        else:
            raise RequestError(f"a prompt is a string or a list of token ids, got {type(prompt).__name__}")
        return self.engine.new_sequence(ids, params), text

    def _submit(self, seq: Any, text: Optional[str], streaming: bool) -> GenerationResult:
        result = GenerationResult(self._executor, seq, text, streaming)
        self._executor.submit(result)
        return result

    def get_stats(self) -> list[dict[str, Any]]:
        """Per-iteration stats since the last call (TensorRT-LLM's field names), oldest first."""
        return self._executor.call(lambda engine: [engine.stats.popleft() for _ in range(len(engine.stats))])

    def snapshot(self) -> dict[str, Any]:
        """Current pool use and RocketKV counters, taken on the engine thread."""
        return self._executor.call(_snapshot)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix block that no running request holds (vLLM's name)."""
        self._executor.call(lambda engine: engine.pool.allocator.clear_cache())

    def queue_depth(self) -> int:
        """Requests submitted and not yet admitted to the running batch (read without the engine thread)."""
        return self._executor.pending() + len(self.engine.scheduler.waiting)

    @property
    def failure(self) -> Optional[str]:
        """Why the engine stopped, once it has died (e.g. a CUDA error); every request since fails with it."""
        return self._executor.failure

    def shutdown(self) -> None:
        self._executor.shutdown()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def _snapshot(engine: LLMEngine) -> dict[str, Any]:
    alloc = engine.pool.allocator
    return {
        "running": len(engine.scheduler.running),
        "waiting": len(engine.scheduler.waiting),
        "kvBlocksUsed": alloc.num_used,
        "kvBlocksFree": alloc.num_free,
        "kvBlocksTotal": alloc.num_blocks,
        "kvBlocksReserved": alloc.num_reserved,
        "kvBlocksCached": alloc.num_cached,
        "prefixCacheHitRate": alloc.hit_blocks / alloc.queried_blocks if alloc.queried_blocks else 0.0,
        "kvBlocksUsedPerRank": engine.blocks_per_rank(),
        **engine.sparse_stats(),
        **engine.totals,
    }
