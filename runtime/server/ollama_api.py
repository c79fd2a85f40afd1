"""Ollama's routes (/api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version and the
"Ollama is running" probe at /), so Ollama clients (Open WebUI, Continue, the `ollama` libraries)
work against `g4rt serve`. Prompts go through the same template, sampler and scheduler as the
OpenAI routes; errors are Ollama's `{"error": "..."}` (error_shapes maps /api/ paths)."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .chat_prompt import chat_prompt
from .ollama_models import ModelCard, resolve
from .ollama_protocol import (OllamaChatRequest, OllamaGenerateRequest, OllamaShowRequest, Reply, accept_images,
                              check_format, ndjson, openai_chat, openai_messages, settings_of, think_kwargs,
                              with_images)
from .protocol import APIError, parse_body
from .responses import ChatOutput
from .runs import Run, collect
from .scheduler import DoneEvent, TextEvent
from .state import ServerState

PATHS = ("/", "/api/chat", "/api/generate", "/api/tags", "/api/show", "/api/ps", "/api/version")


def register(app: FastAPI, state: ServerState) -> None:
    cards: dict = {}

    def names() -> tuple[str, ...]:
        return (state.config.model_id, *state.config.aliases)

    def card() -> ModelCard:
        model = state.ready()
        if "card" not in cards:          # once: it stats the file and walks the tensor list
            cards["card"] = ModelCard(model, names(), state.thinking)
        return cards["card"]

    def served(name) -> str:
        """The model name to answer with: the one the client wrote, as Ollama does."""
        if not name:
            raise APIError(400, "model is required", param="model")
        if resolve(name, names()) is None:
            raise APIError(404, f"model '{name}' not found", param="model")
        return name

    @app.api_route("/", methods=["GET", "HEAD"])
    async def probe():
        # Ollama answers its root with this text; clients probe it to find a running server
        return PlainTextResponse("Ollama is running")

    @app.get("/api/version")
    async def version():
        return {"version": __version__}

    @app.get("/api/tags")
    async def tags():
        return card().tags()

    @app.get("/api/ps")
    async def ps():
        return card().ps()

    @app.post("/api/show")
    async def show(request: Request):
        req = parse_body(await request.body(), OllamaShowRequest)
        c = card()
        name = req.model or req.name
        if not name:
            raise APIError(400, "model is required", param="model")
        if resolve(name, names()) is None:
            raise APIError(404, f"model '{name}' not found", param="model")
        return c.show(req.verbose)

    # ---- generation --------------------------------------------------------------------------
    async def answer(request: Request, reply: Reply, ids: list[int], max_tokens: int, settings, *,
                     parse_tools: bool, parse_thinking: bool, top, stream: bool, started: float,
                     context_of=None, headers=None, media=None):
        """Run the job and answer as Ollama: one object, or NDJSON chunks and a last object.
        `context_of(raw text)` adds /api/generate's `context` to the last object."""
        model = state.model
        run = Run(state, request, ids=ids, max_tokens=max_tokens, sampler=settings.sampler, stops=settings.stops,
                  top_logprobs=top, media=media)
        out = ChatOutput(model.tokenizer, parse_tools=parse_tools, parse_thinking=parse_thinking,
                         want_logprobs=top is not None)
        raw: list[str] = []
        submitted = time.perf_counter()
        run.start()

        def last(done: DoneEvent, whole: bool) -> dict:
            body = reply.final(out, done, started, submitted, whole)
            if context_of is not None:
                body["context"] = context_of("".join(raw))
            return body

        if not stream:
            def take(ev):
                raw.append(ev.text)
                out.push(ev.text, ev.logprobs)
            try:
                done = await collect(run, take)
            finally:
                run.close()
            out.finish()
            return JSONResponse(last(done, True), headers=headers)

        async def lines():
            try:
                async for ev in run.events():
                    if isinstance(ev, TextEvent):
                        raw.append(ev.text)
                        part = reply.chunk(*out.push(ev.text, ev.logprobs))
                        if part is not None:
                            yield ndjson(part)
                    elif isinstance(ev, DoneEvent):
                        part = reply.chunk(out.finish(), [])
                        if part is not None:
                            yield ndjson(part)
                        yield ndjson(last(ev, False))
                    else:                   # the client raises ResponseError on an error line
                        yield ndjson({"error": ev.message})
            finally:
                run.close()

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)

    def common(req):
        """(model, name, settings, template kwargs, logprobs) shared by chat and generate."""
        model = state.ready()
        name = served(req.model)
        check_format(req.format)
        settings = settings_of(req.options, model.engine.ctx)
        top = (req.top_logprobs or 0) if req.logprobs else None
        return model, name, settings, top

    @app.post("/api/chat")
    async def chat(request: Request):
        started = time.perf_counter()
        state.ready()
        req = parse_body(await request.body(), OllamaChatRequest)
        model, name, settings, top = common(req)
        kwargs = think_kwargs(req.think, state.thinking, name)
        reply = Reply("chat", name, top is not None)
        if not req.messages:
            return reply.loaded()
        oai = openai_chat(openai_messages(req.messages), req.tools, kwargs)
        ids, media = await run_in_threadpool(chat_prompt, model, oai, state)
        ids, max_tokens = state.fit(ids, settings.max_tokens)
        warning = state.base_model_warning()
        return await answer(request, reply, ids, max_tokens, settings, parse_tools=bool(req.tools),
                            parse_thinking=state.thinking, top=top, stream=req.stream is not False,
                            started=started, headers={"X-G4rt-Warning": warning} if warning else None,
                            media=media)

    @app.post("/api/generate")
    async def generate(request: Request):
        started = time.perf_counter()
        state.ready()
        req = parse_body(await request.body(), OllamaGenerateRequest)
        model, name, settings, top = common(req)
        if req.suffix:
            raise APIError(400, "'suffix' (fill-in-the-middle) is not supported", param="suffix")
        if req.template:
            raise APIError(400, "'template' is not supported: g4rt renders the model's own chat template "
                                "(or none, with raw)", param="template")
        if req.raw and (req.system or req.context):
            raise APIError(400, "raw mode does not support template, system, or context", param="raw")
        kwargs = {} if req.raw else think_kwargs(req.think, state.thinking, name)
        images = accept_images(req.images, "images")
        if images and (req.raw or req.context):
            raise APIError(400, "'images' need the chat template: not with raw or context", param="images")
        reply = Reply("generate", name, top is not None)
        if not req.prompt:
            return reply.loaded()
        tok = model.tokenizer
        context = list(req.context or [])
        bad = [t for t in context if not 0 <= t < tok.n_vocab]
        if bad:
            raise APIError(400, f"'context' token id {bad[0]} is outside the vocabulary (0..{tok.n_vocab - 1})",
                           param="context")
        media = None
        if req.raw:
            ids = await run_in_threadpool(model.encode_prompt, req.prompt, False)
        else:
            turns = ([{"role": "system", "content": req.system}] if req.system else []) + \
                    [{"role": "user", "content": with_images(req.prompt, images)}]
            ids, media = await run_in_threadpool(chat_prompt, model, openai_chat(turns, None, kwargs), state)
            if context and ids and ids[0] == tok.bos_id:
                ids = ids[1:]            # the earlier exchange in `context` already begins with BOS
        ids, max_tokens = state.fit(context + ids, settings.max_tokens)
        prompt_ids = list(ids)

        def context_of(text: str) -> list[int]:
            # as Ollama: the prompt's tokens and the answer's text tokenized again
            return prompt_ids + tok.encode(text, add_bos=False, parse_special=True)

        return await answer(request, reply, ids, max_tokens, settings, parse_tools=False,
                            parse_thinking=state.thinking and not req.raw, top=top,
                            stream=req.stream is not False, started=started,
                            context_of=None if req.raw else context_of, media=media)
