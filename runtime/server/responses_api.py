"""OpenAI's Responses API: `POST /v1/responses` (whole or streamed as named SSE events), and
`GET` / `DELETE /v1/responses/{id}` for the recent responses kept for `previous_response_id`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..text.chat_template import ChatTemplateError
from .media_prompt import take_media, with_media
from .protocol import APIError, parse_body
from .responses_output import ResponseBuilder
from .responses_protocol import (ResponsesRequest, check_supported, input_items, output_items_as_input,
                                 template_messages, template_tools)
from .responses_store import ResponseStore
from .runs import Run, collect, sse
from .scheduler import DoneEvent, TextEvent
from .state import ServerState, sampler_for

PATHS = ("/v1/responses",)


def _echo(req: ResponsesRequest, model: str) -> dict:
    """The request's settings as the response object repeats them (the SDK's model needs them)."""
    choice = req.tool_choice or "auto"
    if not isinstance(choice, str):
        choice = choice.model_dump()
    tools = [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
              "strict": t.strict} for t in (req.tools or [])]
    effort = req.reasoning.effort if req.reasoning else None
    return {"model": model, "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": effort, "summary": req.reasoning.summary if req.reasoning else None},
            "store": req.store, "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": {"type": "text"}}, "tool_choice": choice, "tools": tools,
            "top_p": 1.0 if req.top_p is None else req.top_p, "truncation": req.truncation or "disabled",
            "user": req.user, "metadata": req.metadata or {}, "background": False}


def _prompt_ids(state, model, messages: list[dict], tools, thinking: bool):
    """(prompt ids, the media rows of its images or None)."""
    kwargs = {"enable_thinking": True} if thinking else {}
    media = take_media(messages, state.config.media)
    try:
        ids = model.encode_prompt(messages, chat=True, tools=tools, **kwargs)
    except ChatTemplateError as e:
        raise APIError(400, f"the chat template could not render these items: {e}", param="input") from None
    return with_media(state, model, ids, media)


def register(app: FastAPI, state: ServerState) -> None:
    store = ResponseStore()

    def stored(rid: str):
        kept = store.get(rid)
        if kept is None:
            raise APIError(404, f"no response with id {rid!r} is kept here (only recent responses made with "
                                f"store: true, in memory until the server restarts)", code="response_not_found")
        return kept

    @app.post("/v1/responses")
    async def create_response(request: Request):
        model = state.ready()
        req = parse_body(await request.body(), ResponsesRequest)
        name = state.check_model(req.model)
        check_supported(req)
        prior = []
        if req.previous_response_id is not None:
            kept = store.get(req.previous_response_id)
            if kept is None:
                raise APIError(400, f"previous_response_id {req.previous_response_id!r} is not kept here: this "
                                    f"server keeps only its recent responses made with store: true, in memory; "
                                    f"send the whole conversation in 'input' instead", param="previous_response_id",
                               code="previous_response_not_found")
            prior = kept[1]
        if req.input is None and not prior:
            raise APIError(400, "'input' is required (a string or a list of input items)", param="input")
        items = prior + (input_items(req.input) if req.input is not None else [])
        messages = template_messages(items, req.instructions)
        if not any(m["role"] != "system" for m in messages):
            raise APIError(400, "'input' must hold at least one item", param="input")
        tools = template_tools(req)
        ids, media = await run_in_threadpool(_prompt_ids, state, model, messages, tools, req.thinking())
        ids, max_tokens = state.fit(ids, req.max_output_tokens)
        sampler = sampler_for(req.temperature, req.top_k, req.top_p, req.min_p, req.repeat_penalty,
                              req.frequency_penalty, req.presence_penalty, req.seed)
        run = Run(state, request, ids=ids, max_tokens=max_tokens, sampler=sampler, stops=[], media=media)
        out = ResponseBuilder(_echo(req, name), parse_tools=tools is not None, parse_thinking=state.thinking)

        def keep():
            if req.store and out.body["status"] != "failed":
                store.put(out.body, items + output_items_as_input(out.body["output"]))

        warning = state.base_model_warning()
        headers = {"X-G4rt-Warning": warning} if warning else {}
        run.start()
        if not req.stream:
            out.start()
            try:
                done = await collect(run, lambda ev: out.push(ev.text))
            finally:
                run.close()
            out.finish(done)
            keep()
            return JSONResponse(out.body, headers=headers)

        async def stream():
            try:
                for e in out.start():
                    yield sse(e, e["type"])
                async for ev in run.events():
                    if isinstance(ev, TextEvent):
                        events = out.push(ev.text)
                    elif isinstance(ev, DoneEvent):
                        events = out.finish(ev)
                        keep()
                    else:
                        events = out.fail(ev.message)
                    for e in events:
                        yield sse(e, e["type"])
            finally:
                run.close()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **headers})

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str):
        return stored(response_id)[0]

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str):
        stored(response_id)
        store.delete(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

