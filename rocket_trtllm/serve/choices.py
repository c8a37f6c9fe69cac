"""One choice of a completion or chat response: its text and logprobs as they stream, and whole at the end.

A completion request with a list of prompts has one choice per prompt (each its own engine request); their
streams are merged into one event stream, each chunk naming its choice's `index`."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Optional

from .logprobs import chat_logprobs, completion_logprobs


class Choice:
    """A running request seen as choice `index`. `logprobs`: alternatives per token (None: no logprobs);
    `echo`: the prompt comes first (completions); `keep_tokens`: False for max_tokens 0, whose one computed token
    is not returned."""

    def __init__(
        self, index: int, result: Any, tokenizer: Any, logprobs: Optional[int], echo: bool, keep_tokens: bool
    ) -> None:
        self.index, self.result, self.tokenizer = index, result, tokenizer
        self.n_logprobs, self.echo, self.keep_tokens = logprobs, echo, keep_tokens
        out = result.output
        self.prompt_ids = out.prompt_token_ids
        self.prompt_text = out.prompt if out.prompt is not None else tokenizer.decode(self.prompt_ids)
        self.sent = 0  # generated tokens whose logprobs went out
        self.offset = 0 if echo else len(self.prompt_text)  # the next token's character offset in prompt + text

    @property
    def finish_reason(self) -> Optional[str]:
        reason = self.result.output.outputs[0].finish_reason
        return "length" if reason is not None and not self.keep_tokens else reason

    @property
    def completion_tokens(self) -> int:
        return len(self.result.output.outputs[0].token_ids) if self.keep_tokens else 0

    def prompt_part(self) -> tuple[str, Optional[dict]]:
        """The echoed prompt: its text and (completions) logprobs."""
        if self.n_logprobs is None:
            return self.prompt_text, None
        entries = self.result.output.outputs[0].prompt_logprobs
        lp = completion_logprobs(self.tokenizer, self.prompt_ids, entries, self.n_logprobs, [], 0)
        self.offset = sum(map(len, lp["tokens"]))
        return self.prompt_text, lp

    def tokens_part(self, count: int, chat: bool) -> Optional[Any]:
        """Logprobs of the next `count` generated tokens (completions' lists, or chat's content entries)."""
        out = self.result.output.outputs[0]
        ids = out.token_ids[self.sent : self.sent + count]
        before = self.prompt_ids + out.token_ids[: self.sent]
        self.sent += count
        if self.n_logprobs is None or not self.keep_tokens:
            return None
        entries = out.logprobs[self.sent - count : self.sent]
        if chat:
            return chat_logprobs(self.tokenizer, ids, entries, self.n_logprobs, before)
        lp = completion_logprobs(self.tokenizer, ids, entries, self.n_logprobs, before, self.offset)
        self.offset += sum(map(len, lp["tokens"]))
        return lp


def merge_lists(parts: list[Optional[dict]]) -> Optional[dict]:
    """Completions' logprobs of consecutive stretches of tokens as one."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return {key: [v for p in parts for v in p[key]] for key in parts[0]}


async def merged(choices: list[Choice]) -> AsyncIterator[tuple[Choice, Optional[list]]]:
    """(choice, its newest deltas) as any choice's request produces them, then (choice, None) once it ends."""
    if len(choices) == 1:  # no tasks: the request's own stream
        async for deltas in choices[0].result.batches():
            yield choices[0], deltas
        yield choices[0], None
        return
    box: asyncio.Queue = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        async for deltas in choice.result.batches():
            await box.put((choice, deltas))
        await box.put((choice, None))

    tasks = [asyncio.create_task(pump(c)) for c in choices]
    try:
        for _ in range(len(choices)):
            while True:
                choice, deltas = await box.get()
                yield choice, deltas
                if deltas is None:
                    break
    finally:
        for task in tasks:
            task.cancel()
