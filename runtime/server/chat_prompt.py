"""OpenAI chat messages → the model's own chat template → prompt token ids."""

from __future__ import annotations

import json
from typing import Optional

from ..text.chat_template import ChatTemplateError
from .protocol import APIError, ChatRequest, Message

#: Names the template receives from g4rt itself; `chat_template_kwargs` may not replace them.
_RESERVED = {"messages", "tools", "documents", "add_generation_prompt", "bos_token", "eos_token",
             "unk_token", "pad_token"}


def _text(content, where: str) -> str:
    """A message's content as one string (content parts: text only)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text":
            raise APIError(400, f"{where}: content parts of type {part.type!r} are not supported "
                                f"(text only)", param="messages")
        texts.append(part.text or "")
    return "".join(texts)


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


def chat_prompt_ids(model, req: ChatRequest) -> list[int]:
    """Render and tokenize a chat request (in a worker thread: templates may take a while)."""
    if not req.messages:
        raise APIError(400, "'messages' must hold at least one message", param="messages")
    kwargs = dict(req.chat_template_kwargs or {})
    clash = sorted(_RESERVED & set(kwargs))
    if clash:
        raise APIError(400, f"chat_template_kwargs may not set {', '.join(clash)}", param="chat_template_kwargs")
    tools = tools_for(req)
    try:
        return model.encode_prompt(template_messages(req.messages), chat=True, tools=tools, **kwargs)
    except ChatTemplateError as e:
        raise APIError(400, f"the chat template could not render these messages: {e}", param="messages") from None
