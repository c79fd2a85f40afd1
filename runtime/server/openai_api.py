"""The OpenAI-compatible routes (llama-server's shapes): chat and text completions, models,
tokenize / detokenize."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .chat_prompt import chat_prompt, tools_for
from .protocol import APIError, ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, parse_body
from .responses import (ChatOutput, CompletionLogprobs, chat_chunk, chat_completion, completion_body,
                        completion_chunk, new_id, timings_body, usage_body)
from .runs import Run, collect, sse
from .scheduler import DoneEvent, TextEvent
from .state import ServerState, sampler_for

PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize")


def sampler_of(req, tokenizer):
    return sampler_for(req.temperature, req.top_k, req.top_p, req.min_p, req.repeat_penalty,
                       req.frequency_penalty, req.presence_penalty, req.seed,
                       logit_bias=req.bias(tokenizer.n_vocab, tokenizer.eog_ids))


def _stream_end(last: dict, done: DoneEvent, include_usage: bool) -> list[bytes]:
    """A stream's last chunk (with the timings), the usage chunk if asked for, and [DONE]."""
    last["timings"] = timings_body(done.usage, done.stop_reason)
    out = [sse(last)]
    if include_usage:
        out.append(sse({"id": last["id"], "object": last["object"], "created": last["created"],
                         "model": last["model"], "choices": [], "usage": usage_body(done.usage)}))
    out.append(b"data: [DONE]\n\n")
    return out



def register(app: FastAPI, state: ServerState) -> None:
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
        ids, media = await run_in_threadpool(chat_prompt, model, req, state)
        ids, max_tokens = state.fit(ids, req.max_completion_tokens or req.max_tokens)
        top = (req.top_logprobs or 0) if req.logprobs else None
        run = Run(state, request, ids=ids, max_tokens=max_tokens, sampler=sampler_of(req, model.tokenizer), stops=req.stops(),
                  top_logprobs=top, media=media)
        out = ChatOutput(model.tokenizer, parse_tools=tools_for(req) is not None, parse_thinking=state.thinking,
                         want_logprobs=req.logprobs)
        warning = state.base_model_warning()
        headers = {"X-G4rt-Warning": warning} if warning else {}
        run.start()
        cid = new_id("chatcmpl")
        if not req.stream:
            try:
                done = await collect(run, lambda ev: out.push(ev.text, ev.logprobs))
            finally:
                run.close()
            out.finish()
            return JSONResponse(chat_completion(cid, name, out, done, warning), headers=headers)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream():
            created = int(time.time())
            try:
                yield sse(chat_chunk(cid, name, created, {"role": "assistant", "content": ""}))
                async for ev in run.events():
                    if isinstance(ev, TextEvent):
                        deltas, entries = out.push(ev.text, ev.logprobs)
                        if not deltas and entries:
                            deltas = [{"content": ""}]
                        for k, delta in enumerate(deltas):
                            lp = entries if (k == 0 and req.logprobs) else ([] if req.logprobs else None)
                            yield sse(chat_chunk(cid, name, created, delta, logprobs=lp))
                    elif isinstance(ev, DoneEvent):
                        for delta in out.finish():
                            yield sse(chat_chunk(cid, name, created, delta))
                        last = chat_chunk(cid, name, created, {}, finish_reason=out.finish_reason(ev))
                        for part in _stream_end(last, ev, include_usage):
                            yield part
                    else:
                        yield sse(APIError(ev.status, ev.message, "server_error").body())
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
        run = Run(state, request, ids=ids, max_tokens=max_tokens, sampler=sampler_of(req, model.tokenizer), stops=req.stops(),
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
                done = await collect(run, take)
            finally:
                run.close()
            return completion_body(cid, name, "".join(texts), lps.body if lps else None, done)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream():
            created = int(time.time())
            try:
                if echo:
                    yield sse(completion_chunk(cid, name, created, echo))
                async for ev in run.events():
                    if isinstance(ev, TextEvent):
                        part = lps.add(ev.logprobs) if lps is not None else None
                        yield sse(completion_chunk(cid, name, created, ev.text, logprobs=part))
                    elif isinstance(ev, DoneEvent):
                        last = completion_chunk(cid, name, created, "", finish_reason=ev.finish_reason)
                        for part in _stream_end(last, ev, include_usage):
                            yield part
                    else:
                        yield sse(APIError(ev.status, ev.message, "server_error").body())
            finally:
                run.close()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
