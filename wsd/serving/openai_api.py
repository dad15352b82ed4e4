"""A generate-stage method as an OpenAI-compatible model: `GET /v1/models` and `POST
/v1/chat/completions` (a whole answer, or `stream: true` as server-sent events), so every
harness that talks to an OpenAI endpoint (alpaca_eval, arena-hard-auto, FastChat's judge,
lm-eval's `local-chat-completions`, chat UIs) can evaluate WSD and its baselines.

`max_tokens` is the answer's budget (`generation.max_new_tokens`), `stop` the answer's stop
strings, `temperature`/`top_p` the sampling of the methods that sample. Each answer carries
the method's own account in a vendor field, `wsd`: the tokens it wrote and, for WSD, the
switch (`keep_count`, `switch_position`, the pilot's `draft_tokens` and the base's
`continuation_tokens`). Errors are OpenAI's shape: 400 for settings the method refuses or a
prompt over the context (with the numbers), 401 without the key when one is set, 404 for
another model, 422 for a malformed body. An answer is streamed once it is decided: WSD picks
its switch on the pilot's draft, so its text is not streamed token by token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from wsd.api import Answer, Generator
from wsd.serving.batcher import MicroBatcher

_DISCONNECT_POLL_S = 0.25


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat request that decide an answer here; others are accepted and
    have no effect (a client's `user`, `stream_options`, ...)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    temperature: Optional[float] = Field(None, ge=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    n: int = Field(1, ge=1)

    def options(self) -> dict:
        """The request as the method's decoding options (only what it sets)."""
        options = {}
        budget = self.max_completion_tokens or self.max_tokens
        if budget is not None:
            options["max_new_tokens"] = budget
        if self.stop:
            options["stop_strings"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.top_p is not None:
            options["top_p"] = self.top_p
        return options


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}},
                            status_code=self.status)


class RequireKey:
    """Every request must carry the key as its Bearer key, else 401. Plain ASGI, not FastAPI's
    `@app.middleware("http")`, whose wrapping hides a client's leaving from the endpoint."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not secrets.compare_digest(dict(scope["headers"]).get(b"authorization", b""),
                                                                  self.expected):
            response = APIError(401, "a valid API key is needed (Authorization: Bearer <key>)",
                                "authentication_error", "invalid_api_key").response()
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def account(method: str, answer: Answer, set_aside: dict) -> dict:
    """The vendor field: what the method did to write this answer (and the sampling settings
    a greedy server set aside)."""
    out = {"method": method, "response_tokens": answer.response_tokens, "stop_reason": answer.stop_reason,
           "seconds": answer.seconds}
    if set_aside:
        out["sampling_set_aside"] = set_aside
    if answer.keep_count is not None:
        out.update(keep_count=answer.keep_count, switched=answer.switched,
                   switch_position=answer.keep_count - 1 if answer.switched else None,
                   draft_tokens=answer.draft_tokens, continuation_tokens=answer.continuation_tokens)
    return out


def usage(answer: Answer) -> dict:
    """OpenAI's token counts: `prompt_tokens` as `Answer.prompt_tokens` counts them, the answer's
    tokens as the method counts them (WSD: kept draft + the base's continuation)."""
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.response_tokens,
            "total_tokens": answer.prompt_tokens + answer.response_tokens}


def finish_reason(answer: Answer) -> str:
    return "length" if answer.stop_reason == "length" else "stop"


def create_app(generator: Generator, model_name: str, api_key: str | None, max_batch: int,
               batch_wait_s: float, greedy: bool = False, workers: int = 1) -> FastAPI:
    """The app over `generator` (its models loaded on the first batch; the stage loads them
    before it listens). `api_key`: when set, every request must carry it as its Bearer key.
    `greedy`: every answer greedy, a request's sampling settings set aside (and named in its
    `wsd` field). `workers`: batches decoding at once (see `MicroBatcher`). On vLLM's async
    engine every request runs as its own pipeline instead (`Generator.answer_async`), so vLLM
    schedules requests as they come and a client that leaves has its requests aborted."""
    batcher = MicroBatcher(generator, max_batch, batch_wait_s, workers)
    answer_one = generator.answer_async if generator.answers_per_request() else batcher.answer
    method = generator.entry.name

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title=f"wsd: {model_name}", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError):
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return APIError(422, f"malformed request: {where}", code="malformed_request").response()

    if api_key is not None:
        app.add_middleware(RequireKey, api_key=api_key)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "wsd"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if body.model != model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves {model_name!r}",
                           code="model_not_found")
        if body.n != 1:
            raise APIError(400, f"n must be 1 (one answer per request), got {body.n}")
        options = body.options()
        set_aside = {k: options.pop(k) for k in ("temperature", "top_p") if greedy and k in options}
        try:
            generator.options_config(**options)  # the method's own checks, before the queue
        except ValueError as err:
            raise APIError(400, str(err)) from None
        messages = [m.model_dump() for m in body.messages]
        request_id = f"chatcmpl-{secrets.token_hex(12)}"
        if body.stream:
            return StreamingResponse(_stream(request_id, messages, options, set_aside), media_type="text/event-stream")
        answer = await _answer(request, messages, options)
        return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.response},
                             "finish_reason": finish_reason(answer)}],
                "usage": usage(answer), "wsd": account(method, answer, set_aside)}

    async def _answer(request: Request, messages: list, options: dict) -> Answer:
        """The answer, or nothing if the client leaves first (its request leaves the queue, or
        its pipeline the engines)."""
        task = asyncio.ensure_future(answer_one(messages, **options))
        while not task.done():
            await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                raise APIError(499, "the client disconnected", code="client_disconnected")
        try:
            return task.result()
        except ValueError as err:  # the prompt does not fit the context with its budget
            raise APIError(400, str(err), code="context_length_exceeded") from None

    async def _stream(request_id: str, messages: list, options: dict, set_aside: dict) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format. A client that leaves cancels this
        generator, and with it its queued request or its pipeline."""
        created = int(time.time())

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            payload = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(payload)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        try:
            answer = await answer_one(messages, **options)
        except ValueError as err:
            yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'invalid_request_error'}})}\n\n"
            return
        yield chunk({"content": answer.response})
        yield chunk({}, finish_reason(answer), usage=usage(answer), wsd=account(method, answer, set_aside))
        yield "data: [DONE]\n\n"

    return app
