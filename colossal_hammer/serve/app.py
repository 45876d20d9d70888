"""The FastAPI app: OpenAI's /v1 endpoints over the engine, the chat page, and errors as OpenAI's JSON.

Nothing a client sends can produce a traceback: request mistakes are 4xx with `param` naming the
field, a failed forward pass is a 500 with the same JSON shape, and the engine keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import AsyncIterator, List, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from . import fields, protocol
from .engine import Chunk, Engine, SamplingParams
from .prompts import chat_prompt_ids, completion_prompt_ids
from .protocol import RequestError
from .replies import Pieces

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


class Mailbox:
    """Chunks from the engine thread to the event loop's queues, with one wake-up of the loop for all that
    arrived since the last: a decode step hands every row its token at once, and a wake-up per row (a
    write to the loop's self-pipe, a GIL hand-over) is work the engine thread and the loop fight over."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items, self.lock, self.scheduled = loop, [], threading.Lock(), False

    def put(self, queue: "asyncio.Queue[Chunk]", chunk: Chunk) -> None:
        with self.lock:
            self.items.append((queue, chunk))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)  # RuntimeError once the loop is gone

    def _deliver(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, chunk in items:
            queue.put_nowait(chunk)


class Generation:
    """One API request seen from the event loop: n choices of each prompt (choice k * n + i is prompt k's i-th),
    whose chunks arrive on an asyncio queue."""

    def __init__(self, engine: Engine, mailbox: Mailbox, prompts, params: List[SamplingParams], n: int = 1):
        self.queue: "asyncio.Queue[Chunk]" = asyncio.Queue()
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.n = n * len(prompts)

        def sink(chunk: Chunk) -> None:
            try:
                mailbox.put(self.queue, chunk)
            except RuntimeError:  # the loop is gone (shutdown): nobody listens any more
                self.cancel()

        self.requests = [r for k, (p, each) in enumerate(zip(prompts, params))
                         for r in engine.submit_choices(p, each, sink, n, first_index=k * n)]

    def cancel(self) -> None:
        for r in self.requests:
            r.cancel()

    async def chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """The chunks until every choice's finishing one; a client that disconnects cancels the request."""
        finished, held = 0, []
        try:
            checked = time.monotonic()
            while True:
                try:  # no timer when a chunk is waiting already
                    chunk = held.pop() if held else self.queue.get_nowait() if not self.queue.empty() else \
                        await asyncio.wait_for(self.queue.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    chunk = None
                # a client that reads slower than the engine decodes gets what piled up as one chunk: fewer
                # events to write when the server is busiest
                while chunk is not None and not chunk.finish_reason and not held and not self.queue.empty():
                    after = self.queue.get_nowait()
                    if after.index == chunk.index and not after.error:
                        chunk = chunk.then(after)
                    else:
                        held.append(after)
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
                    finished += 1
                    if finished == self.n or chunk.error:
                        return
        finally:
            self.cancel()  # a no-op once finished; frees the batch rows of a client that left


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

    @app.get("/favicon.svg")
    @app.get("/favicon.ico")  # browsers ask for this one whatever the page links; an SVG answers it as well
    async def favicon():
        svg = resources.files(__package__).joinpath("static/favicon.svg").read_bytes()
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    def check_ids(ids, param: str) -> None:
        bad = [t for t in ids if not 0 <= t < len(tokenizer)]
        if bad:
            raise RequestError(f"'{param}' holds token id {bad[0]}, outside this vocabulary (0..{len(tokenizer) - 1})",
                               param)

    def sampling(options: protocol.Common, max_tokens: int, **extra) -> SamplingParams:
        check_ids(options.logit_bias, "logit_bias")
        check_ids(options.stop_token_ids, "stop_token_ids")
        return SamplingParams(max_tokens=max_tokens, temperature=options.temperature, top_p=options.top_p,
                              top_k=options.top_k, stop=options.stop, seed=options.seed,
                              presence_penalty=options.presence_penalty, frequency_penalty=options.frequency_penalty,
                              repetition_penalty=options.repetition_penalty, logit_bias=options.logit_bias,
                              stop_token_ids=options.stop_token_ids, min_tokens=options.min_tokens, **extra)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request)
        options = protocol.common(body, served.model_name, fields.CHAT)
        logprobs = protocol.chat_logprobs(body)
        messages = protocol.messages(body)
        try:
            ids = chat_prompt_ids(tokenizer, messages)
        except Exception as e:  # noqa: BLE001 - a template's raise_exception() is a request mistake
            raise RequestError(f"the chat template refused the messages: {e}", "messages") from None
        max_tokens = protocol.check_context(len(ids), options.max_tokens, served.context, "messages")
        params = sampling(options, max_tokens, logprobs=logprobs, grammar=protocol.response_format(body))
        return await respond(request, [ids], options, [params],
                             Chat(logprobs is not None))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request)
        options = protocol.common(body, served.model_name, fields.COMPLETIONS)
        logprobs = protocol.completion_logprobs(body)
        echo = protocol.boolean(body, "echo")
        prompts, texts, params = protocol.prompts(body), [], []
        for k, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                texts.append(prompt)
                prompts[k] = completion_prompt_ids(tokenizer, prompt)
            else:
                check_ids(prompt, "prompt")
                texts.append(tokenizer.decode(prompt, skip_special_tokens=True))
            max_tokens = protocol.check_context(len(prompts[k]), options.max_tokens, served.context, "prompt")
            params.append(sampling(options, max_tokens, logprobs=logprobs,
                                   prompt_logprobs=logprobs if echo and logprobs is not None else None))
        shape = Completion(prompts, texts, options.n, logprobs is not None, echo)
        return await respond(request, prompts, options, params, shape)

    class Chat:
        """Chat's choice shape: a message (or deltas), logprobs.content."""
        name, object = "chatcmpl", "chat.completion"

        def __init__(self, logprobs: bool):
            self.logprobs = logprobs

        def choice(self, index: int, text: str, chunks, finish: Optional[str], first: bool = False,
                   stream: bool = False) -> dict:
            # the role event and the finishing one carry no tokens, so no logprobs
            logprobs = pieces.chat([e for c in chunks for e in c.logprobs]) if self.logprobs and chunks else None
            if stream:
                delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
                return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": finish}

    class Completion:
        """Completions' choice shape: text (after the prompt with echo), the four logprob lists."""
        name, object = "cmpl", "text_completion"

        def __init__(self, prompts, texts, n: int, logprobs: bool, echo: bool):
            self.prompts, self.texts, self.n, self.logprobs, self.echo = prompts, texts, n, logprobs, echo

        def choice(self, index: int, text: str, chunks, finish: Optional[str], first: bool = False,
                   stream: bool = False) -> dict:
            prompt_ids, prompt_text = self.prompts[index // self.n], self.texts[index // self.n]
            echoed = self.echo and first
            shift = len(prompt_text) if self.echo else 0
            logprobs = None
            if self.logprobs:
                entries = [e for c in chunks for e in c.logprobs]
                offsets = [o + shift for c in chunks for o in c.offsets]
                prompt = next((c.prompt_logprobs for c in chunks if c.prompt_logprobs is not None), None)
                if echoed and prompt is not None:
                    entries, offsets = prompt + entries, pieces.prompt_offsets(prompt_ids) + offsets
                logprobs = pieces.completion(entries, offsets, prompt_ids)
            return {"index": index, "text": (prompt_text if echoed else "") + text, "logprobs": logprobs,
                    "finish_reason": finish}

    pieces = Pieces(tokenizer)
    mailboxes: dict = {}  # the running loop's Mailbox (made in it: an app may be served by more than one loop)

    async def respond(request: Request, prompts, options: protocol.Common, params: List[SamplingParams], shape):
        if mailboxes.get("loop") is not asyncio.get_running_loop():
            mailboxes["loop"] = asyncio.get_running_loop()
            mailboxes["box"] = Mailbox(mailboxes["loop"])
        generation = Generation(engine, mailboxes["box"], prompts, params, options.n)
        head = {"id": f"{shape.name}-{uuid.uuid4().hex}", "object": shape.object, "created": int(time.time()),
                "model": served.model_name}
        if options.stream:
            return StreamingResponse(stream(request, generation, head, shape, options.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        got = {i: [] for i in range(generation.n)}
        async for chunk in generation.chunks(request):
            if chunk.error:
                raise RequestError(chunk.error, None, None, 500, "server_error")
            got[chunk.index].append(chunk)
        if not all(c and c[-1].finish_reason for c in got.values()):
            return JSONResponse({}, status_code=499)  # the client left; nobody reads this
        choices = [shape.choice(i, "".join(c.text for c in chunks), chunks, chunks[-1].finish_reason, first=True)
                   for i, chunks in got.items()]
        return {**head, "choices": choices, "usage": usage(generation, got)}

    async def stream(request, generation: Generation, head: dict, shape, include_usage: bool):
        head = {**head, "object": "chat.completion.chunk" if isinstance(shape, Chat) else "text_completion"}
        last = {}

        def event(choice_or_none, **extra) -> str:
            body = {**head, "choices": [choice_or_none] if choice_or_none else [], **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        if isinstance(shape, Chat):
            for i in range(generation.n):
                yield event(shape.choice(i, "", [], None, first=True, stream=True))
        started = set()
        async for chunk in generation.chunks(request):
            if chunk.error:
                yield f"data: {json.dumps(RequestError(chunk.error, None, None, 500, 'server_error').body())}\n\n"
                break
            last[chunk.index] = chunk
            first = isinstance(shape, Completion) and chunk.index not in started
            started.add(chunk.index)
            if chunk.text or chunk.logprobs or first:
                yield event(shape.choice(chunk.index, chunk.text, [chunk], None, first=first, stream=True))
            if chunk.finish_reason:
                yield event(shape.choice(chunk.index, "", [], chunk.finish_reason, stream=True))
        else:
            if include_usage:
                yield event(None, usage=usage(generation, {i: [c] for i, c in last.items()}))
        yield "data: [DONE]\n\n"

    def usage(generation: Generation, got: dict) -> dict:
        completion = sum(chunks[-1].completion_tokens for chunks in got.values() if chunks)
        return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": completion,
                "total_tokens": generation.prompt_tokens + completion}

    return app
