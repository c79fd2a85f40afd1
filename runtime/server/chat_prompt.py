"""OpenAI chat messages → the model's own chat template → prompt token ids."""

from __future__ import annotations

import json
from typing import Optional

from ..text.chat_template import ChatTemplateError
from .media_prompt import pending_part, take_media, with_media
from .protocol import APIError, ChatRequest, Message

#: Names the template receives from g4rt itself; `chat_template_kwargs` may not replace them.
_RESERVED = {"messages", "tools", "documents", "add_generation_prompt", "bos_token", "eos_token",
             "unk_token", "pad_token"}


def _text(content, where: str):
    """A message's content as one string (text parts joined), or as template parts when it holds
    images (`image_url`) or audio (`input_audio`): those become pending media parts
    (media_prompt.take_media fetches them)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for k, part in enumerate(content):
        here = f"{where}.content[{k}]"
        if part.type == "text":
            parts.append({"type": "text", "text": part.text or ""})
        elif part.type == "image_url":
            url = part.image_url.get("url") if isinstance(part.image_url, dict) else part.image_url
            if not isinstance(url, str):
                raise APIError(400, f"{here}: an image_url part needs image_url.url", param="messages")
            parts.append(pending_part("image", here, url=url))
        elif part.type == "input_audio":
            data = (part.input_audio or {}).get("data")
            if not isinstance(data, str):
                raise APIError(400, f"{here}: an input_audio part needs input_audio.data (base64)", param="messages")
            parts.append(pending_part("audio", here, base64=data))
        else:
            raise APIError(400, f"{here}: content parts of type {part.type!r} are not supported "
                                f"(text, image_url, input_audio)", param="messages")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def template_messages(messages: list[Message]) -> list[dict]:
    """Plain dicts in the shape chat templates expect (tool-call arguments as objects)."""
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        d: dict = {"role": m.role, "content": _text(m.content, where)}
        if m.tool_calls:
            if m.role != "assistant":
                raise APIError(400, f"{where}: only assistant messages carry tool_calls", param="messages")
            calls = []
            for c in m.tool_calls:
                args = c.function.arguments
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except ValueError:
                        raise APIError(400, f"{where}: tool call {c.function.name!r} has arguments that "
                                            f"are not JSON", param="messages") from None
                if not isinstance(args, dict):
                    raise APIError(400, f"{where}: tool call arguments must be a JSON object", param="messages")
                calls.append({"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": args}})
            d["tool_calls"] = calls
        for key in ("name", "tool_call_id", "reasoning_content"):
            value = getattr(m, key)
            if value is not None:
                d[key] = value
        out.append(d)
    return out


def tools_for(req: ChatRequest) -> Optional[list[dict]]:
    """The tool declarations to render, or None (none given, or tool_choice "none")."""
    if not req.tools or req.tool_choice == "none":
        return None
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    if req.tool_choice is not None and not isinstance(req.tool_choice, str):
        name = req.tool_choice.function.get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise APIError(400, f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
        tools = chosen           # the model is shown only the tool it must use
    return tools


def chat_prompt(model, req: ChatRequest, state=None):
    """Render and tokenize a chat request (in a worker thread: templates and media encoders may
    take a while): (prompt ids, the media rows of its images / audio or None)."""
    if not req.messages:
        raise APIError(400, "'messages' must hold at least one message", param="messages")
    kwargs = dict(req.chat_template_kwargs or {})
    clash = sorted(_RESERVED & set(kwargs))
    if clash:
        raise APIError(400, f"chat_template_kwargs may not set {', '.join(clash)}", param="chat_template_kwargs")
    tools = tools_for(req)
    messages = template_messages(req.messages)
    if state is None:
        if any(isinstance(m["content"], list) for m in messages):
            raise APIError(400, "images and audio are not accepted here", param="messages")
        items = []
    else:
        items = take_media(messages, state.config.media)
    try:
        ids = model.encode_prompt(messages, chat=True, tools=tools, **kwargs)
    except ChatTemplateError as e:
        raise APIError(400, f"the chat template could not render these messages: {e}", param="messages") from None
    return with_media(state, model, ids, items) if items else (ids, None)

