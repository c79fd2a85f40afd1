"""The Anthropic Messages routes: `POST /v1/messages` (whole answers and SSE streams with named
events) and `POST /v1/messages/count_tokens`. Errors take Anthropic's shape through error_shapes
(by path); the API key arrives as `x-api-key`, which the Guard already reads."""

from __future__ import annotations

from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..text.chat_template import ChatTemplateError
from .anthropic_output import MessageOutput, message_body, message_delta, new_id, usage_body
from .anthropic_protocol import CountTokensRequest, MessagesRequest, Prompt, to_prompt
from .error_shapes import anthropic_body
from .protocol import APIError, parse_body
from .runs import Run, collect, sse
from .scheduler import DoneEvent, TextEvent
from .media_prompt import take_media, with_media
from .state import ServerState, sampler_for

PATHS = ("/v1/messages", "/v1/messages/count_tokens")


def prompt_ids(model, prompt: Prompt, state=None):
    """Render and tokenize (in a worker thread: templates and media encoders may take a while):
    (ids, the media rows of its images or None). A prefill is tokenized after the generation
    prompt, so the answer continues it."""
    if not any(m["role"] != "system" for m in prompt.messages):
        raise APIError(400, "'messages' must hold a user message", param="messages")
    media = take_media(prompt.messages, state.config.media) if state is not None else []
    try:
        ids = model.encode_prompt(prompt.messages, chat=True, tools=prompt.tools, **prompt.options)
    except ChatTemplateError as e:
        raise APIError(400, f"the chat template could not render these messages: {e}", param="messages") from None
    if prompt.prefill:
        ids = ids + model.tokenizer.encode(prompt.prefill, add_bos=False, parse_special=False)
    return with_media(state, model, ids, media) if media else (ids, None)


def _matched_stop(run: Run, done: DoneEvent) -> Optional[str]:
    """The stop sequence that ended the answer (Anthropic's `stop_sequence`)."""
    return done.matched_stop


def _output(state: ServerState, req: MessagesRequest, prompt: Prompt) -> MessageOutput:
    return MessageOutput(parse_tools=prompt.tools is not None, parse_thinking=state.thinking,
                         one_tool=bool(getattr(req.tool_choice, "disable_parallel_tool_use", False)),
                         show_thinking=getattr(req.thinking, "display", None) != "omitted")


def register(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request):
        model = state.ready()
        req = parse_body(await request.body(), CountTokensRequest)
        state.check_model(req.model)
        ids, _ = await run_in_threadpool(prompt_ids, model, to_prompt(req), state)
        return {"input_tokens": len(ids)}

    @app.post("/v1/messages")
    async def messages(request: Request):
        model = state.ready()
        req = parse_body(await request.body(), MessagesRequest)
        name = state.check_model(req.model)
        prompt = to_prompt(req)
        stops = req.stops()
        sampler = sampler_for(req.temperature, req.top_k, req.top_p, seed=req.seed)
        ids, media = await run_in_threadpool(prompt_ids, model, prompt, state)
        ids, max_tokens = state.fit(ids, req.max_tokens)
        run = Run(state, request, ids=ids, max_tokens=max_tokens, sampler=sampler, stops=stops, media=media)
        out = _output(state, req, prompt)
        warning = state.base_model_warning()
        headers = {"X-G4rt-Warning": warning} if warning else {}
        run.start()
        mid = new_id("msg")
        if not req.stream:
            try:
                done = await collect(run, lambda ev: out.push(ev.text))
            finally:
                run.close()
            out.finish()
            return JSONResponse(message_body(mid, name, out.blocks, out.stop_reason(done), _matched_stop(run, done),
                                             usage_body(done.usage)), headers=headers)

        async def stream():
            try:
                start = message_body(mid, name, [], None, None, {"input_tokens": len(ids), "output_tokens": 0})
                yield sse({"type": "message_start", "message": start}, event="message_start")
                yield sse({"type": "ping"}, event="ping")
                async for ev in run.events():
                    if isinstance(ev, TextEvent):
                        events = out.push(ev.text)
                    elif isinstance(ev, DoneEvent):
                        events = out.finish() + [
                            message_delta(out.stop_reason(ev), _matched_stop(run, ev), usage_body(ev.usage)),
                            {"type": "message_stop"}]
                    else:
                        events = [anthropic_body(APIError(ev.status, ev.message))]
                    for e in events:
                        yield sse(e, event=e["type"])
            finally:
                run.close()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **headers})
