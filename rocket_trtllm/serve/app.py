"""OpenAI-compatible HTTP API over one LLM; one engine thread batches every client's requests."""

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import RequestError
from ..llmapi.llm import LLM
from ..sampling_params import SamplingParams
from .choices import Choice, merge_lists, merged
from .metrics import Metrics
from .protocol import ChatCompletionRequest, CompletionRequest


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
    ):
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_response(
    status: int, message: str, kind: str, param: Optional[str] = None, code: Union[int, str, None] = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status if code is None else code}}
    return JSONResponse(body, status_code=status)


class KeyCheck:
    """The API key on /v1/ paths, as plain ASGI: a response passes through untouched (Starlette's `@app.middleware`
    re-streams every chunk of every response through a queue and a task switch of its own)."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            if dict(scope["headers"]).get(b"authorization") != self.expected:
                await error_response(401, "invalid or missing API key", "authentication_error")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(llm: LLM, model_name: str, api_key: Optional[str] = None, max_queue: Optional[int] = None) -> FastAPI:
    """The server. `max_queue`: requests waiting for admission past which new ones get 429 (None: no limit)."""
    app = FastAPI(title="rocket-serve", version=__version__)
    metrics = Metrics()
    app.state.metrics = metrics

    if api_key:
        app.add_middleware(KeyCheck, key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.kind, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = "malformed JSON body" if first["type"] == "json_invalid" else f"{where}: {first['msg']}"
        return error_response(400, message, "invalid_request_error", where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), "invalid_request_error")

    @app.get("/health")
    async def health() -> PlainTextResponse:
        """`ok`, or 503 with the reason once the engine has died."""
        if llm.failure is not None:  # a dead engine: load balancers should take this server out
            return PlainTextResponse(llm.failure, status_code=503)
        return PlainTextResponse("ok")

    @app.get("/version")
    async def version() -> dict[str, str]:
        """The package version."""
        return {"version": __version__}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        """The counters below, in the Prometheus text format (503 once the engine has died)."""
        if llm.failure is not None:
            return PlainTextResponse(llm.failure, status_code=503)
        return PlainTextResponse(metrics.render(llm.snapshot()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The one model served, with its `max_model_len`."""
        card = {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "rocket-trtllm",
                "max_model_len": llm.max_seq_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    def check_common(req: Union[CompletionRequest, ChatCompletionRequest]) -> None:
        if req.model != model_name:
            raise APIError(
                404, f"model {req.model!r} not found; this server has {model_name!r}", "not_found_error", "model"
            )
        if req.n != 1:
            raise APIError(400, "n must be 1: one completion per request is supported", param="n")

    def sampling(
        req: Union[CompletionRequest, ChatCompletionRequest],
        max_tokens: Optional[int],
        logprobs: Optional[int] = None,
        prompt_logprobs: Optional[int] = None,
    ) -> SamplingParams:
        new_tokens = 16 if max_tokens is None else max_tokens
        if new_tokens < 0:
            raise APIError(400, f"max_tokens must be >= 0, got {new_tokens}", param="max_tokens")
        try:
            return SamplingParams(
                max_tokens=max(1, new_tokens),  # 0: the prefill's token is computed and not returned
                temperature=req.temperature,
                top_p=req.top_p,
                seed=req.seed,
                stop=req.stop,
                ignore_eos=req.ignore_eos,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
            )
        except RequestError as e:
            raise APIError(400, str(e), param=str(e).split(" ")[0]) from None

    def submit(prompts: list[Union[str, list[int]]], params: SamplingParams, streaming: bool) -> list[Any]:
        """One engine request per prompt; all or none (a bad prompt aborts the ones submitted before it)."""
        if max_queue is not None and llm.queue_depth() + len(prompts) > max_queue:
            metrics.requests["rejected"] += 1
            raise APIError(429, f"the server's queue is full ({max_queue} requests waiting); retry later",
                           kind="requests", code="rate_limit_exceeded")  # fmt: skip
        results = []
        try:
            for prompt in prompts:
                results.append(llm.generate_async(prompt, params, streaming=streaming))
        except RequestError as e:
            for result in results:
                result.abort()
            where = "prompt" if len(prompts) == 1 else f"prompt[{len(results)}]"
            raise APIError(400, f"{where}: {e}", param=where) from None
        return results

    def usage(choices: list[Choice]) -> dict[str, int]:
        p = sum(len(c.prompt_ids) for c in choices)
        g = sum(c.completion_tokens for c in choices)
        return {"prompt_tokens": p, "completion_tokens": g, "total_tokens": p + g}

    def account(out: Any) -> None:
        reason = out.outputs[0].finish_reason
        metrics.requests["error" if reason == "error" else "abort" if reason == "abort" else "ok"] += 1
        metrics.prompt_tokens += len(out.prompt_token_ids)
        metrics.generation_tokens += len(out.outputs[0].token_ids)

    async def finished(choices: list[Choice]) -> None:
        for c in choices:
            out = await c.result.aresult()
            account(out)
            check_failed(out)

    async def stream(choices: list[Choice], make_chunk: Any) -> AsyncIterator[str]:
        """`make_chunk(choice, text, logprob ids count, finish_reason, usage)` -> one event's body."""
        ended = 0
        try:
            if choices[0].echo:
                yield "".join(f"data: {json.dumps(make_chunk(c, None, 0, None, None))}\n\n" for c in choices)
            # One event per step and choice, text or not (clients time tokens by events); a backlog of steps goes
            # out in one write.
            async for choice, deltas in merged(choices):
                if deltas is not None:
                    if choice.keep_tokens:
                        yield "".join(f"data: {json.dumps(make_chunk(choice, text, len(ids), None, None))}\n\n"
                                      for ids, text in deltas)  # fmt: skip
                    continue
                ended += 1
                out = choice.result.output
                if out.outputs[0].finish_reason == "error":  # an error event, as OpenAI's streams end on one
                    failure = {"message": f"generation failed: {out.outputs[0].error}", "type": "server_error",
                               "code": 500}  # fmt: skip
                    yield f"data: {json.dumps({'error': failure})}\n\n"
                    return
                use = usage(choices) if ended == len(choices) else None
                yield f"data: {json.dumps(make_chunk(choice, '', 0, choice.finish_reason, use))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for c in choices:
                if not c.result.finished:  # the client went away: free its KV and KT blocks now
                    c.result.abort()
                else:
                    account(c.result.output)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        """Text completions (OpenAI's), streamed as server-sent events with `stream: true`."""
        check_common(req)
        echo_lp = req.logprobs if req.echo else None
        params = sampling(req, req.max_tokens, logprobs=req.logprobs, prompt_logprobs=echo_lp)
        prompts = [req.prompt] if isinstance(req.prompt, str) or _token_ids(req.prompt) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt: the list of prompts is empty", param="prompt")
        results = submit(prompts, params, req.stream)
        keep = req.max_tokens != 0
        choices = [Choice(i, r, llm.tokenizer, req.logprobs, req.echo, keep) for i, r in enumerate(results)]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def body(items: list[dict], use: Optional[dict] = None) -> dict[str, Any]:
            out = {"id": rid, "object": "text_completion", "created": created, "model": model_name, "choices": items}
            return {**out, "usage": use} if use else out

        def chunk(c: Choice, text: Optional[str], count: int, reason: Optional[str], use: Optional[dict]) -> dict:
            if text is None:  # the echoed prompt
                text, lp = c.prompt_part()
            else:
                lp = c.tokens_part(count, chat=False) if count else None
            return body([{"index": c.index, "text": text, "finish_reason": reason, "logprobs": lp}], use)

        if req.stream:
            return StreamingResponse(stream(choices, chunk), media_type="text/event-stream")
        await finished(choices)
        items = []
        for c in choices:
            out = c.result.output.outputs[0]
            text, lp = c.prompt_part() if c.echo else ("", None)
            parts = [lp, c.tokens_part(len(out.token_ids), chat=False) if keep else None]
            text += out.text if keep else ""
            lp = merge_lists(parts) if req.logprobs is not None else None
            items.append({"index": c.index, "text": text, "finish_reason": c.finish_reason, "logprobs": lp})
        return body(items, usage(choices))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest) -> Any:
        """Chat completions through the tokenizer's chat template, streamed with `stream: true`."""
        check_common(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        n_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if max_tokens == 0:
            raise APIError(400, "max_tokens must be >= 1 for a chat completion", param="max_tokens")
        params = sampling(req, max_tokens, logprobs=n_logprobs)
        tokenizer = llm.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", param="messages")
        messages = [template_message(m.model_dump(exclude_none=True), i) for i, m in enumerate(req.messages)]
        try:
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # a template rejecting the conversation is the client's mistake
            raise APIError(400, f"messages: {e}", param="messages") from None
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        choice = Choice(0, submit([ids], params, req.stream)[0], tokenizer, n_logprobs, False, True)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(c: Choice, text: Optional[str], count: int, reason: Optional[str], use: Optional[dict]) -> dict:
            item: dict[str, Any] = {"index": 0, "delta": {"role": "assistant", "content": text},
                                    "finish_reason": reason}  # fmt: skip
            if c.n_logprobs is not None:
                item["logprobs"] = {"content": c.tokens_part(count, chat=True) if count else [], "refusal": None}
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": [item]}  # fmt: skip
            return {**body, "usage": use} if use else body

        if req.stream:
            return StreamingResponse(stream([choice], chunk), media_type="text/event-stream")
        await finished([choice])
        out = choice.result.output.outputs[0]
        item = {"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": out.finish_reason}
        if n_logprobs is not None:
            item["logprobs"] = {"content": choice.tokens_part(len(out.token_ids), chat=True), "refusal": None}
        return {"id": rid, "object": "chat.completion", "created": created, "model": model_name, "choices": [item],
                "usage": usage([choice])}  # fmt: skip

    return app


def _token_ids(prompt: Any) -> bool:
    """Whether a completion's `prompt` is one prompt of token ids (not a list of prompts)."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], int)


def template_message(message: dict[str, Any], i: int) -> dict[str, Any]:
    """A chat message as chat templates take it: text parts joined into one string (any other part -> 400 naming
    it), and `developer` (OpenAI's newer name for system instructions) as `system`, which templates know."""
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type")
            if kind != "text" or not isinstance(part.get("text"), str):
                where = f"messages[{i}].content[{j}]"
                what = f"type {kind!r}" if kind != "text" else "a text part without a string 'text'"
                raise APIError(400, f"{where}: {what} is not supported; this model takes text parts only "
                               '({"type": "text", "text": "..."})', param=where)  # fmt: skip
            texts.append(part["text"])
        message = {**message, "content": "\n".join(texts)}
    if message["role"] == "developer":
        message = {**message, "role": "system"}
    return message


def check_failed(out: Any) -> None:
    if out.outputs[0].finish_reason == "error":
        raise APIError(500, f"generation failed: {out.outputs[0].error}", "server_error")
