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
        if llm.failure is not None:  # a dead engine: load balancers should take this server out
            return PlainTextResponse(llm.failure, status_code=503)
        return PlainTextResponse("ok")

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        if llm.failure is not None:
            return PlainTextResponse(llm.failure, status_code=503)
        return PlainTextResponse(metrics.render(llm.snapshot()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
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

    def sampling(req: Union[CompletionRequest, ChatCompletionRequest], max_tokens: Optional[int]) -> SamplingParams:
        try:
            return SamplingParams(
                max_tokens=max_tokens if max_tokens is not None else 16,
                temperature=req.temperature,
                top_p=req.top_p,
                seed=req.seed,
                stop=req.stop,
                ignore_eos=req.ignore_eos,
            )
        except RequestError as e:
            raise APIError(400, str(e), param=str(e).split(" ")[0]) from None

    def submit(prompt: Union[str, list[int]], params: SamplingParams, streaming: bool) -> Any:
        if max_queue is not None and llm.queue_depth() >= max_queue:
            metrics.requests["rejected"] += 1
            raise APIError(429, f"the server's queue is full ({max_queue} requests waiting); retry later",
                           kind="requests", code="rate_limit_exceeded")  # fmt: skip
        try:
            return llm.generate_async(prompt, params, streaming=streaming)
        except RequestError as e:
            raise APIError(400, str(e), param="prompt") from None

    def usage(out: Any) -> dict[str, int]:
        p, c = len(out.prompt_token_ids), len(out.outputs[0].token_ids)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def account(out: Any) -> None:
        reason = out.outputs[0].finish_reason
        metrics.requests["error" if reason == "error" else "abort" if reason == "abort" else "ok"] += 1
        metrics.prompt_tokens += len(out.prompt_token_ids)
        metrics.generation_tokens += len(out.outputs[0].token_ids)

    async def stream(result: Any, make_chunk: Any) -> AsyncIterator[str]:
        try:
            # One event per step, text or not (clients time tokens by events); a backlog of steps goes out in one write.
            async for deltas in result.batches():
                yield "".join(f"data: {json.dumps(make_chunk(text, None))}\n\n" for _, text in deltas)
            out = result.output
            if out.outputs[0].finish_reason == "error":  # an error event, as OpenAI's streams end on one
                failure = {"message": f"generation failed: {out.outputs[0].error}", "type": "server_error", "code": 500}
                yield f"data: {json.dumps({'error': failure})}\n\n"
            else:
                yield f"data: {json.dumps(make_chunk('', out.outputs[0].finish_reason, usage(out)))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not result.finished:  # the client went away: free its KV and KT blocks now
                result.abort()
            else:
                account(result.output)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        check_common(req)
        params = sampling(req, req.max_tokens)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise APIError(
                    400, "prompt: send one prompt per request (a string or a list of token ids)", param="prompt"
                )
            prompt = prompt[0]
        result = submit(prompt, params, req.stream)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, reason: Optional[str], use: Optional[dict] = None) -> dict[str, Any]:
            body = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}],
            }
            if use:
                body["usage"] = use
            return body

        if req.stream:
            return StreamingResponse(stream(result, chunk), media_type="text/event-stream")
        out = await result.aresult()
        account(out)
        check_failed(out)
        return chunk(out.outputs[0].text, out.outputs[0].finish_reason, usage(out))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest) -> Any:
        check_common(req)
        params = sampling(req, req.max_completion_tokens or req.max_tokens)
        tokenizer = llm.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", param="messages")
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        try:
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # a template rejecting the conversation is the client's mistake
            raise APIError(400, f"messages: {e}", param="messages") from None
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        result = submit(ids, params, req.stream)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, reason: Optional[str], use: Optional[dict] = None) -> dict[str, Any]:
            body = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": reason}],
            }
            if use:
                body["usage"] = use
            return body

        if req.stream:
            return StreamingResponse(stream(result, chunk), media_type="text/event-stream")
        out = await result.aresult()
        account(out)
        check_failed(out)
        message = {"role": "assistant", "content": out.outputs[0].text}
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": out.outputs[0].finish_reason}],
            "usage": usage(out),
        }

    return app


def check_failed(out: Any) -> None:
    if out.outputs[0].finish_reason == "error":
        raise APIError(500, f"generation failed: {out.outputs[0].error}", "server_error")
