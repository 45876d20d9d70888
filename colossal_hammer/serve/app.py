"""The FastAPI app: OpenAI's /v1 endpoints over the engine, the chat page, and errors as OpenAI's JSON.

Nothing a client sends can produce a traceback: request mistakes are 4xx with `param` naming the
field, a failed forward pass is a 500 with the same JSON shape, and the engine keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from . import protocol
from .engine import Chunk, Engine, SamplingParams
from .prompts import chat_prompt_ids, completion_prompt_ids
from .protocol import RequestError

DISCONNECT_POLL_S = 0.25  # how soon a client that left frees its batch row; a check is one cheap receive()


@dataclass
class Served:
    engine: Engine
    tokenizer: object
    model_name: str
    context: int
    api_key: Optional[str] = None
    max_request_bytes: int = 1 << 20


def error_response(e: RequestError) -> Response:
    # ASCII JSON: a message may quote what the client sent, lone surrogates included, which UTF-8 cannot carry
    return Response(json.dumps(e.body()), status_code=e.status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_large = RequestError(f"the request body is larger than this server's limit of {limit} bytes "
                             f"(--max_request_bytes)", None, "request_too_large", status=413)
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    return b"".join(parts)


class Generation:
    """One engine request seen from the event loop: chunks arrive on an asyncio queue."""

    def __init__(self, engine: Engine, prompt_ids, params: SamplingParams):
        loop = asyncio.get_running_loop()
        self.queue: "asyncio.Queue[Chunk]" = asyncio.Queue()
        self.prompt_tokens = len(prompt_ids)

        def sink(chunk: Chunk) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, chunk)
            except RuntimeError:  # the loop is gone (shutdown): nobody listens any more
                self.request.cancel()

        self.request = engine.submit(prompt_ids, params, sink)

    async def chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """The chunks until the finishing one; a client that disconnects cancels the request."""
        try:
            checked = time.monotonic()
            while True:
                try:
                    chunk = await asyncio.wait_for(self.queue.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    chunk = None
                # checked by the clock, not only when no chunk came: a non-streaming client hears nothing
                # until the end, and chunks that keep coming must not hide that it left
                if time.monotonic() - checked >= DISCONNECT_POLL_S:
                    if await request.is_disconnected():
                        return
                    checked = time.monotonic()
                if chunk is None:
                    continue
                yield chunk
                if chunk.finish_reason:
                    return
        finally:
            self.request.cancel()  # a no-op once finished; frees the batch row of a client that left


def build_app(served: Served) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        await asyncio.get_running_loop().run_in_executor(None, served.engine.stop)  # the engine ends with the app

    app = FastAPI(title="colossal_hammer serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.served = served
    engine, tokenizer = served.engine, served.tokenizer

    @app.exception_handler(RequestError)
    async def _request_error(_, e: RequestError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(_, e: HTTPException):
        return error_response(RequestError(str(e.detail), None, None, status=e.status_code))

    @app.exception_handler(Exception)
    async def _server_error(_, e: Exception):
        return error_response(RequestError(f"internal error: {type(e).__name__}", None, None, 500, "server_error"))

    def authorize(request: Request) -> None:
        if served.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {served.api_key}".encode()):
            raise RequestError("missing or wrong API key: send 'Authorization: Bearer <key>' (--api_key)", None,
                               "invalid_api_key", status=401)

    async def parse(request: Request) -> dict:
        authorize(request)
        if not engine.alive:
            raise RequestError(f"the engine stopped: {engine.failure}", None, None, 503, "server_error")
        return protocol.parse_body(await read_body(request, served.max_request_bytes))

    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"status": "error", "error": engine.failure}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": served.model_name, "object": "model", "created": 0,
                                            "owned_by": "colossal_hammer", "max_model_len": served.context}]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files(__package__).joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request)
        options = protocol.common(body, served.model_name)
        messages = protocol.messages(body)
        try:
            ids = chat_prompt_ids(tokenizer, messages)
        except Exception as e:  # noqa: BLE001 - a template's raise_exception() is a request mistake
            raise RequestError(f"the chat template refused the messages: {e}", "messages") from None
        return await respond(request, ids, options, protocol.check_context(len(ids), options.max_tokens,
                                                                           served.context, "messages"), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request)
        options = protocol.common(body, served.model_name)
        for name in ("echo", "suffix"):
            if body.get(name):
                raise RequestError(f"'{name}' is not supported by this server", name, "unsupported_parameter")
        prompt = protocol.prompt(body)
        if isinstance(prompt, str):
            ids = completion_prompt_ids(tokenizer, prompt)
        elif all(0 <= t < len(tokenizer) for t in prompt):
            ids = prompt
        else:
            raise RequestError(f"'prompt' holds token ids outside this vocabulary (0..{len(tokenizer) - 1})",
                               "prompt")
        return await respond(request, ids, options, protocol.check_context(len(ids), options.max_tokens,
                                                                           served.context, "prompt"), chat=False)

    async def respond(request: Request, ids, options: protocol.Common, max_tokens: int, chat: bool):
        params = SamplingParams(max_tokens=max_tokens, temperature=options.temperature, top_p=options.top_p,
                                top_k=options.top_k, stop=options.stop, seed=options.seed)
        generation = Generation(engine, ids, params)
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": served.model_name}
        if options.stream:
            return StreamingResponse(stream(request, generation, head, chat, options.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, last = [], None
        async for chunk in generation.chunks(request):
            text.append(chunk.text)
            last = chunk
        if last is None or last.finish_reason is None:
            return JSONResponse({}, status_code=499)  # the client left; nobody reads this
        if last.error:
            raise RequestError(last.error, None, None, 500, "server_error")
        choice = {"index": 0, "logprobs": None, "finish_reason": last.finish_reason}
        choice.update({"message": {"role": "assistant", "content": "".join(text)}} if chat else
                      {"text": "".join(text)})
        return {**head, "choices": [choice], "usage": usage(generation, last)}

    async def stream(request, generation: Generation, head: dict, chat: bool, include_usage: bool):
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def event(choice_or_none, **extra) -> str:
            body = {**head, "choices": [choice_or_none] if choice_or_none else [], **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def choice(text: str, finish: Optional[str], first: bool = False) -> dict:
            if chat:
                delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        if chat:
            yield event(choice("", None, first=True))
        async for chunk in generation.chunks(request):
            if chunk.error:
                yield f"data: {json.dumps(RequestError(chunk.error, None, None, 500, 'server_error').body())}\n\n"
                break
            if chunk.text:
                yield event(choice(chunk.text, None))
            if chunk.finish_reason:
                yield event(choice("", chunk.finish_reason))
                if include_usage:
                    yield event(None, usage=usage(generation, chunk))
        yield "data: [DONE]\n\n"

    def usage(generation: Generation, last: Chunk) -> dict:
        return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": last.completion_tokens,
                "total_tokens": generation.prompt_tokens + last.completion_tokens}

    return app
