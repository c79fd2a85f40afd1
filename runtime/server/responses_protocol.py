"""The OpenAI Responses API's request (`POST /v1/responses`), validated strictly as the other APIs
(a wrong type is a 400 naming the field, an unknown field is ignored), and its input items turned
into the chat-message dicts the chat template renders (the same shape chat_prompt builds, so a
conversation renders to the same tokens through either API)."""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .media_prompt import pending_part
from .protocol import APIError

#: reasoning efforts that turn Gemma 4's thinking on (absent or "none" leaves it off)
THINKING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=256)
    description: Optional[str] = None
    parameters: Optional[dict] = None
    strict: Optional[bool] = None       # echoed; the arguments are not constrained

    @model_validator(mode="before")
    @classmethod
    def _functions_only(cls, v):
        # hosted tools (web_search, file_search, ...) run on OpenAI's side: nothing here runs them
        if isinstance(v, dict) and isinstance(v.get("type"), str) and v["type"] != "function":
            raise PydanticCustomError("unsupported_tool", "tools of type {kind} are not supported here "
                                      "(only 'function' tools)", {"kind": repr(v["type"])})
        return v


class ToolChoiceFunction(_Strict):
    type: Literal["function"]
    name: str


class ToolChoiceAllowed(_Strict):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"] = "auto"
    tools: list[dict]


class ReasoningConfig(_Strict):
    effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh"]] = None
    summary: Optional[Literal["auto", "concise", "detailed"]] = None


class TextFormat(_Strict):
    type: str


class TextConfig(_Strict):
    format: Optional[TextFormat] = None
    verbosity: Optional[Literal["low", "medium", "high"]] = None


class ResponsesRequest(_Strict):
    model: Optional[str] = None
    input: Any = None                   # a string or a list of items: checked by input_items
    instructions: Optional[str] = None
    tools: Optional[list[FunctionTool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], ToolChoiceFunction, ToolChoiceAllowed, None] = None
    parallel_tool_calls: Optional[bool] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=100)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    # not in OpenAI's API: g4rt's sampling extensions, as on /v1/chat/completions
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    seed: Optional[int] = Field(default=None, ge=0, lt=2**64)
    repeat_penalty: Optional[float] = Field(default=None, gt=0, le=10)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    stream: bool = False
    store: bool = True
    previous_response_id: Optional[str] = None
    reasoning: Optional[ReasoningConfig] = None
    text: Optional[TextConfig] = None
    metadata: Optional[dict[str, str]] = None
    user: Optional[str] = None
    truncation: Optional[Literal["auto", "disabled"]] = None
    include: Optional[list[str]] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    background: Optional[bool] = None
    conversation: Any = None
    prompt: Any = None

    def thinking(self) -> bool:
        return self.reasoning is not None and self.reasoning.effort in THINKING_EFFORTS


def check_supported(req: ResponsesRequest) -> None:
    """400s for what the request asks and this server cannot do (rather than silently ignoring it)."""
    fmt = req.text.format.type if req.text and req.text.format else "text"
    if fmt != "text":
        raise APIError(400, f"text.format of type {fmt!r} is not supported: this server has no constrained "
                            f"(JSON) output; use 'text'", param="text.format")
    if req.background:
        raise APIError(400, "background responses are not supported", param="background")
    if req.conversation is not None:
        raise APIError(400, "conversations are not supported (no conversation objects are kept); send the "
                            "items in 'input'", param="conversation")
    if req.prompt is not None:
        raise APIError(400, "reusable prompts are not supported; send 'instructions' and 'input'", param="prompt")
    if req.top_logprobs or "message.output_text.logprobs" in (req.include or []):
        raise APIError(400, "logprobs are not supported on /v1/responses (use /v1/chat/completions)",
                       param="top_logprobs" if req.top_logprobs else "include")


# ---- input items -------------------------------------------------------------------------------

class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Any = None                 # a string or content parts: checked by _content


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: Any = None                  # a string or content parts


class ReasoningText(_Strict):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Strict):
    type: Literal["reasoning"]
    summary: list[ReasoningText] = []
    content: Optional[list[ReasoningText]] = None
    encrypted_content: Optional[str] = None


_ITEMS = {"message": MessageItem, "function_call": FunctionCallItem,
          "function_call_output": FunctionCallOutputItem, "reasoning": ReasoningItem}


def _validate(schema: type[BaseModel], obj: Any, where: str):
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        errs = e.errors(include_url=False)
        loc = ".".join(str(p) for p in errs[0]["loc"])
        param = f"{where}.{loc}" if loc else where
        more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
        raise APIError(400, f"invalid '{param}': {errs[0]['msg']}{more}", param=param) from None


def input_items(value: Any) -> list:
    """The request's `input` as validated items (a string is one user message)."""
    if isinstance(value, str):
        return [MessageItem(role="user", content=value)]
    if not isinstance(value, list):
        what = "missing" if value is None else f"a {type(value).__name__}"
        raise APIError(400, f"'input' must be a string or a list of input items, not {what}", param="input")
    items = []
    for i, obj in enumerate(value):
        where = f"input.{i}"
        if not isinstance(obj, dict):
            raise APIError(400, f"invalid '{where}': an input item must be an object, not "
                                f"{type(obj).__name__}", param=where)
        kind = obj.get("type", "message")
        if kind == "item_reference":
            raise APIError(400, f"'{where}' is an item reference; this server keeps no items to refer to "
                                f"(send the item itself)", param=f"{where}.type")
        if kind not in _ITEMS:
            raise APIError(400, f"'{where}': input items of type {kind!r} are not supported (message, "
                                f"function_call, function_call_output, reasoning)", param=f"{where}.type")
        items.append(_validate(_ITEMS[kind], obj, where))
    return items


def image_part(part: dict, where: str) -> dict:
    """An `input_image` part (`image_url`: a data: URL, or a path / http URL where the server allows
    them) as a pending template part (media_prompt fetches it)."""
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        what = "file_id images are not supported (send image_url)" if part.get("file_id") else \
            "an input_image part needs image_url as a string"
        raise APIError(400, f"'{where}': {what}", param=where)
    return pending_part("image", where, url=url)


def _content(value: Any, where: str) -> Union[str, list[dict]]:
    """A message's (or a tool output's) content: one string when it is all text, as chat_prompt
    joins text parts; template parts when an image is among them."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise APIError(400, f"invalid '{where}': content must be a string or a list of content parts",
                       param=where)
    parts = []
    for k, part in enumerate(value):
        here = f"{where}.{k}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "refusal"):
            key = "refusal" if kind == "refusal" else "text"
            if not isinstance(part.get(key), str):
                raise APIError(400, f"invalid '{here}.{key}': a {kind} part needs '{key}' as a string",
                               param=f"{here}.{key}")
            parts.append({"type": "text", "text": part[key]})
        elif kind == "input_image":
            parts.append(image_part(part, here))
        elif kind in ("input_file", "input_audio"):
            raise APIError(400, f"'{here}': {kind} parts are not supported (text only)", param=here)
        else:
            raise APIError(400, f"invalid '{here}': unknown content part type {kind!r} (input_text, "
                                f"output_text, refusal, input_image)", param=f"{here}.type")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _arguments(call: FunctionCallItem, where: str) -> dict:
    try:
        args = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        raise APIError(400, f"invalid '{where}.arguments': the arguments of {call.name!r} are not JSON",
                       param=f"{where}.arguments") from None
    if not isinstance(args, dict):
        raise APIError(400, f"invalid '{where}.arguments': arguments must be a JSON object",
                       param=f"{where}.arguments")
    return args


def template_messages(items: list, instructions: Optional[str] = None) -> list[dict]:
    """Items → the chat template's message dicts. Function calls join the assistant message before
    them (as one chat message with `tool_calls`, so the template renders them in one model turn),
    outputs become `role: tool` messages, and a reasoning item's text becomes the next assistant
    message's `reasoning_content` (the template shows it only where that message calls tools)."""
    out: list[dict] = [{"role": "system", "content": instructions}] if instructions is not None else []
    call_ids: set[str] = set()
    reasoning: list[str] = []

    def assistant(new: bool) -> dict:
        if new or not out or out[-1]["role"] != "assistant":
            out.append({"role": "assistant", "content": ""})
        if reasoning:
            out[-1]["reasoning_content"] = out[-1].get("reasoning_content", "") + "\n".join(reasoning)
            reasoning.clear()
        return out[-1]

    for i, item in enumerate(items):
        where = f"input.{i}"
        if isinstance(item, MessageItem):
            if item.content is None:
                raise APIError(400, f"invalid '{where}': a {item.role} message needs content",
                               param=f"{where}.content")
            content = _content(item.content, f"{where}.content")
            if item.role == "assistant":
                assistant(new=True)["content"] = content
            else:
                out.append({"role": item.role, "content": content})
        elif isinstance(item, FunctionCallItem):
            msg = assistant(new=False)
            msg.setdefault("tool_calls", []).append(
                {"id": item.call_id, "type": "function",
                 "function": {"name": item.name, "arguments": _arguments(item, where)}})
            call_ids.add(item.call_id)
        elif isinstance(item, FunctionCallOutputItem):
            if item.output is None:
                raise APIError(400, f"invalid '{where}': a function_call_output needs output",
                               param=f"{where}.output")
            if item.call_id not in call_ids:
                raise APIError(400, f"invalid '{where}.call_id': no function_call with call_id "
                                    f"{item.call_id!r} comes before this output", param=f"{where}.call_id")
            out.append({"role": "tool", "tool_call_id": item.call_id,
                        "content": _content(item.output, f"{where}.output")})
        else:       # reasoning: its full text if it has one, else its summary
            texts = [p.text for p in (item.content or item.summary)]
            if any(texts):
                reasoning.append("".join(texts))
    return out


def output_items_as_input(output: list[dict]) -> list:
    """A response's output items as input items (for a stored response's next turn)."""
    return input_items([{k: v for k, v in item.items() if k in ("type", "role", "content", "call_id", "name",
                                                                   "arguments", "summary")}
                        for item in output])


def template_tools(req: ResponsesRequest) -> Optional[list[dict]]:
    """The function tools in the chat template's shape, or None (none given, or tool_choice "none");
    a named function or an allowed_tools list shows the model only those tools."""
    if not req.tools or req.tool_choice == "none":
        return None
    tools = {t.name: {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type", "strict"})}
             for t in req.tools}
    choice = req.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        names = [choice.name]
    elif isinstance(choice, ToolChoiceAllowed):
        names = [t.get("name") for t in choice.tools]
    else:
        return list(tools.values())
    missing = [n for n in names if n not in tools]
    if missing:
        raise APIError(400, f"tool_choice names {missing[0]!r}, which is not among the tools", param="tool_choice")
    return [tools[n] for n in names]
