"""The HTTP side of `g4rt serve`: FastAPI routes in OpenAI's shapes over a `Scheduler`.

Handlers validate, render the chat template and tokenize (in a thread: templates are bounded but
may take a while), then submit a job and turn its events into a response or an SSE stream. A
watcher per request cancels the job when the client disconnects."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..text.chat_template import BASE_MODEL_NOTICE, is_base_model
from ..errors import G4rtError
from ..sampling import Sampler, SamplingError
from .chat_prompt import chat_prompt_ids, tools_for
from .guard import BodyTooLargeError, Guard
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .protocol import APIError, ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, parse_body
from .responses import (ChatOutput, CompletionLogprobs, chat_chunk, chat_completion, completion_body,
                        completion_chunk, new_id, timings_body, usage_body)
from .scheduler import DoneEvent, ErrorEvent, Job, QueueFullError, Scheduler, ShuttingDownError, TextEvent

log = logging.getLogger("g4rt.server")

DEFAULT_MAX_BODY = 1 << 20


@dataclass
class ServerConfig:
    model_id: str = "g4rt"
    aliases: tuple[str, ...] = ()
    api_key: Optional[str] = None
    max_body: int = DEFAULT_MAX_BODY
    cors_origins: tuple[str, ...] = ()
    truncate: bool = False
    timeout_s: Optional[float] = None
    queue: int = 64
    retry_after_s: int = 1


@dataclass
class ServerState:
    """What the routes share: the loaded model (None while loading) and its scheduler."""
    config: ServerConfig
    metrics: ServerMetrics
    model: object = None
    scheduler: Optional[Scheduler] = None
    load_error: Optional[str] = None
    base_model: bool = False
    thinking: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    _warned_base: bool = False

    def attach(self, model) -> None:
        """The model is loaded: start its scheduler and answer requests."""
        try:
            self.base_model = is_base_model(model.engine.file)
        except (AttributeError, G4rtError):
            self.base_model = False
        # Gemma 4's thinking channel is only parsed where the vocabulary has its markers
        self.thinking = model._think_ids[0] is not None and model._think_ids[1] is not None
        self.scheduler = Scheduler(model.engine, model.tokenizer, self.config.queue, self.metrics,
                                   speculator=getattr(model, "speculator", None))
        self.model = model
        if self.base_model:
            log.warning("g4rt serve: %s", BASE_MODEL_NOTICE)

    def shutdown(self, message: str = "the server is shutting down") -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(message)

    def ready(self):
        if self.model is None:
            if self.load_error:
                raise APIError(503, f"the model failed to load: {self.load_error}", "unavailable_error")
            raise APIError(503, "the model is still loading", "unavailable_error",
                           headers={"Retry-After": "5"})
        return self.model

    def check_model(self, name: Optional[str]) -> str:
        known = (self.config.model_id, *self.config.aliases)
        if name is None or name in known:
            return self.config.model_id
        raise APIError(404, f"the model {name!r} does not exist here; this server serves "
                            f"{', '.join(repr(k) for k in known)} (GET /v1/models)",
                       param="model", code="model_not_found")

    def fit(self, ids: list[int], max_tokens: Optional[int]) -> tuple[list[int], int]:
        """(prompt ids, max tokens) that fit the context: a prompt over it is a 400 (or, with
        --truncate, loses its oldest tokens after the first); max_tokens is clipped to the room."""
        ctx = self.model.engine.ctx
        n = len(ids)
        if n == 0:
            raise APIError(400, "the prompt is empty", param="prompt")
        if n >= ctx:
            if not self.config.truncate:
                raise APIError(400, f"the prompt has {n} tokens, {n - ctx + 1} more than the context of {ctx} "
                                    f"allows (at most {ctx - 1}, to leave room for an answer); shorten it, "
                                    f"start the server with a larger --ctx, or with --truncate",
                               code="exceed_context_size_error")
            keep = max(1, ctx - min(max_tokens or ctx // 4, ctx // 2) - 1)
            ids = ids[:1] + ids[n - keep + 1:]
            log.info("truncated a %d-token prompt to %d tokens", n, len(ids))
        room = ctx - len(ids)
        return ids, min(max_tokens or room, room)

    def base_model_warning(self) -> Optional[str]:
        if not self.base_model:
            return None
        if not self._warned_base:
            self._warned_base = True
            log.warning("g4rt serve: /v1/chat/completions on a base model: %s", BASE_MODEL_NOTICE)
        return BASE_MODEL_NOTICE


def _sampler(req) -> Sampler:
    try:
        return Sampler(temperature=1.0 if req.temperature is None else req.temperature,
                       top_k=req.top_k or 0, top_p=1.0 if req.top_p is None else req.top_p,
                       min_p=req.min_p or 0.0,
                       repeat_penalty=1.0 if req.repeat_penalty is None else req.repeat_penalty,
                       frequency_penalty=req.frequency_penalty or 0.0,
                       presence_penalty=req.presence_penalty or 0.0, seed=req.seed)
    except SamplingError as e:
        raise APIError(400, str(e)) from None


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def _stream_end(last: dict, done: DoneEvent, include_usage: bool) -> list[bytes]:
    """A stream's last chunk (with the timings), the usage chunk if asked for, and [DONE]."""
    last["timings"] = timings_body(done.usage, done.stop_reason)
    out = [_sse(last)]
    if include_usage:
        out.append(_sse({"id": last["id"], "object": last["object"], "created": last["created"],
                         "model": last["model"], "choices": [], "usage": usage_body(done.usage)}))
    out.append(b"data: [DONE]\n\n")
    return out


class _Run:
    """One submitted job seen from the event loop: its events, and its cancellation when the
    client goes away (a watcher reads the ASGI channel for `http.disconnect`, which a plain
    `await request.is_disconnected()` would miss while the handler waits on the model)."""

    def __init__(self, state: ServerState, request: Request, **job):
        self.state, self.request = state, request
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.job = Job(emit=self._emit, timeout_s=state.config.timeout_s, **job)
        self.watcher: Optional[asyncio.Task] = None
        self.done = False

    def _emit(self, event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def start(self) -> None:
        try:
            self.state.scheduler.submit(self.job)
        except QueueFullError as e:
            raise APIError(503, f"the server is busy: {e}; retry later", "server_busy_error",
                           headers={"Retry-After": str(self.state.config.retry_after_s)}) from None
        except ShuttingDownError as e:
            raise APIError(503, str(e), "unavailable_error") from None
        self.watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                if not self.done:
                    self.cancel()
                    self.queue.put_nowait(None)     # wake the handler: nobody waits for the answer
                return

    def cancel(self) -> None:
        self.job.cancel()
        self.state.scheduler.wake()

    async def events(self):
        while True:
            event = await self.queue.get()
            if event is None:
                return
            if isinstance(event, (DoneEvent, ErrorEvent)):
                self.done = True
            yield event
            if self.done:
                return

    def close(self) -> None:
        if not self.done:
            self.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


def create_app(state: ServerState, loader: Optional[Callable[[], object]] = None) -> FastAPI:
    """The ASGI app. `loader` (if given) loads the model in a thread at start-up; until it is
    done /health answers 503 and every other endpoint a 503 "still loading"."""

    async def lifespan(app):
        if loader is not None and state.model is None:
            def load():
                try:
                    state.attach(loader())
                    log.warning("g4rt serve: model loaded, ready")
                except BaseException as e:          # reported by /health and the serve command
                    state.load_error = str(e) if isinstance(e, G4rtError) else f"{type(e).__name__}: {e}"
                    log.error("g4rt serve: the model failed to load: %s", state.load_error)
                    if app.state.on_load_error is not None:
                        app.state.on_load_error(state.load_error)
            threading.Thread(target=load, name="g4rt-load", daemon=True).start()
        yield
        state.shutdown()

    app = FastAPI(title="g4rt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.on_load_error = None

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(BodyTooLargeError)
    async def too_large(request, e: BodyTooLargeError):
        return JSONResponse(APIError(413, str(e)).body(), status_code=413)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(APIError(e.status_code, message).body(), status_code=e.status_code)

    @app.exception_handler(G4rtError)
    async def g4rt_error(request, e: G4rtError):
        return JSONResponse(APIError(400, str(e)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request, e: Exception):
        log.exception("g4rt serve: internal error")
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error").body(),
                            status_code=500)

    # ---- status ------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if state.model is not None:
            return {"status": "ok"}
        if state.load_error:
            return JSONResponse({"status": "error", "message": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/slots")
    async def slots():
        state.ready()
        return state.scheduler.slot_info()

    @app.get("/v1/models")
    async def models():
        data = [{"id": name, "object": "model", "created": state.created, "owned_by": "g4rt"}
                for name in (state.config.model_id, *state.config.aliases)]
        if state.model is not None:
            eng = state.model.engine
            data[0]["meta"] = {"n_ctx": eng.ctx, "n_vocab": eng.config.n_vocab, "slots": eng.slots,
                               "backend": state.model.backend_name, "precision": state.model.precision,
                               "precision_summary": state.model.precision_summary()}
        return {"object": "list", "data": data}

    # ---- tokens ------------------------------------------------------------------------------
    @app.post("/tokenize")
    async def tokenize(request: Request):
        model = state.ready()
        req = parse_body(await request.body(), TokenizeRequest)
        tok = model.tokenizer
        ids = await run_in_threadpool(tok.encode, req.content, req.add_special and tok.add_bos, True)
        if not req.with_pieces:
            return {"tokens": ids}
        return {"tokens": [{"id": t, "piece": tok.token_to_piece(t).decode("utf-8", "replace")} for t in ids]}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        model = state.ready()
        req = parse_body(await request.body(), DetokenizeRequest)
        n = model.tokenizer.n_vocab
        bad = [t for t in req.tokens if not 0 <= t < n]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{n - 1})", param="tokens")
        return {"content": model.tokenizer.decode(req.tokens)}

    # ---- generation --------------------------------------------------------------------------
    async def _generation_request(request: Request, schema):
        """(model, validated request, model id to answer with) for the generation endpoints."""
        model = state.ready()
        req = parse_body(await request.body(), schema)
        name = state.check_model(req.model)
        if req.n != 1:
            raise APIError(400, f"n={req.n} is not supported (one choice per request)", param="n")
        return model, req, name

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        model, req, name = await _generation_request(request, ChatRequest)
        ids = await run_in_threadpool(chat_prompt_ids, model, req)
        ids, max_tokens = state.fit(ids, req.max_completion_tokens or req.max_tokens)
        top = (req.top_logprobs or 0) if req.logprobs else None
        run = _Run(state, request, ids=ids, max_tokens=max_tokens, sampler=_sampler(req), stops=req.stops(),
                   top_logprobs=top)
        out = ChatOutput(model.tokenizer, parse_tools=tools_for(req) is not None, parse_thinking=state.thinking,
                         want_logprobs=req.logprobs)
        warning = state.base_model_warning()
        headers = {"X-G4rt-Warning": warning} if warning else {}
        run.start()
        cid = new_id("chatcmpl")
        if not req.stream:
            try:
                done = await _collect(run, lambda ev: out.push(ev.text, ev.logprobs))
            finally:
                run.close()
            out.finish()
            return JSONResponse(chat_completion(cid, name, out, done, warning), headers=headers)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream():
            created = int(time.time())
            try:
                yield _sse(chat_chunk(cid, name, created, {"role": "assistant", "content": ""}))
                async for ev in run.events():
                    if isinstance(ev, TextEvent):
                        deltas, entries = out.push(ev.text, ev.logprobs)
                        if not deltas and entries:
                            deltas = [{"content": ""}]
                        for k, delta in enumerate(deltas):
                            lp = entries if (k == 0 and req.logprobs) else ([] if req.logprobs else None)
                            yield _sse(chat_chunk(cid, name, created, delta, logprobs=lp))
                    elif isinstance(ev, DoneEvent):
                        for delta in out.finish():
                            yield _sse(chat_chunk(cid, name, created, delta))
                        last = chat_chunk(cid, name, created, {}, finish_reason=out.finish_reason(ev))
                        for part in _stream_end(last, ev, include_usage):
                            yield part
                    else:
                        yield _sse(APIError(ev.status, ev.message, "server_error").body())
            finally:
                run.close()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **headers})

    @app.post("/v1/completions")
    async def completions(request: Request):
        model, req, name = await _generation_request(request, CompletionRequest)
        if req.suffix:
            raise APIError(400, "'suffix' (fill-in-the-middle) is not supported", param="suffix")
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, f"{len(prompt)} prompts in one request; send one per request", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = await run_in_threadpool(model.encode_prompt, prompt, False)
            prompt_text = prompt
        else:
            n = model.tokenizer.n_vocab
            bad = [t for t in prompt if not 0 <= t < n]
            if bad:
                raise APIError(400, f"prompt token id {bad[0]} is outside the vocabulary (0..{n - 1})", param="prompt")
            ids = list(prompt)
            prompt_text = model.tokenizer.decode(ids) if req.echo else ""
        ids, max_tokens = state.fit(ids, req.max_tokens if req.max_tokens is not None else 16)
        run = _Run(state, request, ids=ids, max_tokens=max_tokens, sampler=_sampler(req), stops=req.stops(),
                   top_logprobs=req.logprobs)
        echo = prompt_text if req.echo else ""
        lps = CompletionLogprobs(model.tokenizer, len(echo)) if req.logprobs is not None else None
        run.start()
        cid = new_id("cmpl")
        if not req.stream:
            texts = [echo]

            def take(ev):
                texts.append(ev.text)
                if lps is not None:
                    lps.add(ev.logprobs)
            try:
                done = await _collect(run, take)
            finally:
                run.close()
            return completion_body(cid, name, "".join(texts), lps.body if lps else None, done)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream():
            created = int(time.time())
            try:
                if echo:
                    yield _sse(completion_chunk(cid, name, created, echo))
                async for ev in run.events():
                    if isinstance(ev, TextEvent):
                        part = lps.add(ev.logprobs) if lps is not None else None
                        yield _sse(completion_chunk(cid, name, created, ev.text, logprobs=part))
                    elif isinstance(ev, DoneEvent):
                        last = completion_chunk(cid, name, created, "", finish_reason=ev.finish_reason)
                        for part in _stream_end(last, ev, include_usage):
                            yield part
                    else:
                        yield _sse(APIError(ev.status, ev.message, "server_error").body())
            finally:
                run.close()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    app.add_middleware(Guard, api_key=state.config.api_key, max_body=state.config.max_body, metrics=state.metrics)
    if state.config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(state.config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    return app


async def _collect(run: _Run, take) -> DoneEvent:
    """Wait for a non-streaming job: feed its text events to `take`, return its DoneEvent."""
    async for ev in run.events():
        if isinstance(ev, TextEvent):
            take(ev)
        elif isinstance(ev, DoneEvent):
            return ev
        else:
            raise APIError(ev.status, ev.message, "server_error")
    raise APIError(499, "the client closed the request", "cancelled")
