"""Anthropic Messages requests (`POST /v1/messages`, `/v1/messages/count_tokens`): the request
shapes, validated strictly (a wrong type is a 400 naming the field, an unknown field is ignored),
and their conversion to the internal chat shape the Gemma 4 template renders (the same dicts
chat_prompt builds from OpenAI messages: tool_calls with object arguments, `tool` role results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .media_prompt import pending_part
from .protocol import MAX_STOPS, APIError, _Strict


def _as_blocks(value):
    """A string content is shorthand for one text block. Read as a list before validation, so a
    bad block is named exactly (a str-or-list union would report the str branch first)."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value

# Anthropic's own limits (docs.anthropic.com: tools, extended thinking)
TOOL_NAME = r"^[a-zA-Z0-9_-]{1,128}$"
MIN_THINKING_BUDGET = 1024


# ---- content blocks ------------------------------------------------------------------------
class TextBlock(_Strict):
    type: Literal["text"]
    text: str


class ImageSource(_Strict):
    type: Literal["base64", "url", "file"]
    media_type: Optional[str] = None
    data: Optional[str] = None
    url: Optional[str] = None
    file_id: Optional[str] = None


class ImageBlock(_Strict):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: list[Annotated[Union[TextBlock, ImageBlock], Field(discriminator="type")]] = []
    is_error: bool = False

    _blocks = field_validator("content", mode="before")(_as_blocks)


class ThinkingBlock(_Strict):
    type: Literal["thinking"]
    thinking: str
    signature: Optional[str] = None        # opaque; g4rt's own, never checked


class RedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, RedactedThinkingBlock],
                  Field(discriminator="type")]


class Message(_Strict):
    role: Literal["user", "assistant", "system"]
    content: list[Block]

    _blocks = field_validator("content", mode="before")(_as_blocks)


# ---- tools, tool choice, thinking ----------------------------------------------------------
class Tool(_Strict):
    type: Optional[Literal["custom"]] = None
    name: str = Field(pattern=TOOL_NAME)
    description: Optional[str] = None
    input_schema: dict

    @model_validator(mode="before")
    @classmethod
    def _custom_only(cls, value):
        # Anthropic's server tools (web search, bash, ...) run on Anthropic's side: none here
        if isinstance(value, dict) and value.get("type") not in (None, "custom"):
            raise PydanticCustomError("server_tool", "server tools ({kind}) are not supported; only custom tools "
                                      "with an input_schema", {"kind": str(value.get("type"))[:40]})
        return value


class ToolChoiceAuto(_Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(_Strict):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(_Strict):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(_Strict):
    type: Literal["none"]


ToolChoice = Annotated[Union[ToolChoiceAuto, ToolChoiceAny, ToolChoiceTool, ToolChoiceNone],
                       Field(discriminator="type")]


class ThinkingEnabled(_Strict):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=MIN_THINKING_BUDGET)
    display: Optional[Literal["summarized", "omitted"]] = None


class ThinkingAdaptive(_Strict):
    type: Literal["adaptive"]
    display: Optional[Literal["summarized", "omitted"]] = None


class ThinkingDisabled(_Strict):
    type: Literal["disabled"]


Thinking = Annotated[Union[ThinkingEnabled, ThinkingAdaptive, ThinkingDisabled], Field(discriminator="type")]


# ---- requests ------------------------------------------------------------------------------
class CountTokensRequest(_Strict):
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    system: Optional[list[TextBlock]] = None

    _blocks = field_validator("system", mode="before")(_as_blocks)
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[Thinking] = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: Optional[list[str]] = Field(default=None, max_length=MAX_STOPS)
    temperature: Optional[float] = Field(default=None, ge=0, le=1)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=0)
    # not in Anthropic's API: g4rt's extension (as on its other APIs) so a seeded request samples the same tokens everywhere
    seed: Optional[int] = Field(default=None, ge=0, lt=2**64)
    stream: bool = False
    metadata: Optional[dict] = None        # accepted, not used

    def stops(self) -> list[str]:
        stops = list(self.stop_sequences or [])
        if any(not s for s in stops):
            raise APIError(400, "stop_sequences may not hold an empty string", param="stop_sequences")
        return stops


# ---- conversion to the template's messages -------------------------------------------------
def media_part(block: ImageBlock, where: str) -> dict:
    """An image block as a pending template part (media_prompt fetches it): base64 data, or a URL
    where the server allows them."""
    src = block.source
    if src.type == "base64" and src.data:
        return pending_part("image", where, base64=src.data)
    if src.type == "url" and src.url:
        return pending_part("image", where, url=src.url)
    raise APIError(400, f"{where}.source: a {src.type} image source needs "
                        f"{'data' if src.type == 'base64' else 'url'} (file sources are not supported)",
                   param=f"{where}.source")


@dataclass
class Prompt:
    """What the template renders: messages, tool declarations (None: none shown), template
    options, and an assistant prefill the answer continues (Anthropic's last assistant turn)."""
    messages: list[dict]
    tools: Optional[list[dict]]
    options: dict = field(default_factory=dict)
    prefill: str = ""


def thinking_on(req: CountTokensRequest) -> bool:
    return req.thinking is not None and req.thinking.type != "disabled"


def tools_for(req: CountTokensRequest) -> Optional[list[dict]]:
    """The tools as the template's function declarations (the shape OpenAI function tools have
    inside the server), or None: none given, or tool_choice none."""
    if not req.tools or (req.tool_choice is not None and req.tool_choice.type == "none"):
        return None
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                               "parameters": t.input_schema}} for t in req.tools]
    if req.tool_choice is not None and req.tool_choice.type == "tool":
        chosen = [t for t in tools if t["function"]["name"] == req.tool_choice.name]
        if not chosen:
            raise APIError(400, f"tool_choice names {req.tool_choice.name!r}, which is not among the tools",
                           param="tool_choice.name")
        tools = chosen           # the model is shown only the tool it must use
    return tools


def _text_of(blocks: list, where: str) -> str:
    """The text of blocks that may hold only text (and, where media is supported, images)."""
    parts = []
    for j, b in enumerate(blocks):
        if isinstance(b, ImageBlock):
            raise APIError(400, f"{where}.{j}: images are accepted in user messages' content only",
                           param=f"{where}.{j}.type")
        elif not isinstance(b, TextBlock):
            raise APIError(400, f"{where}.{j}: {b.type} blocks are not allowed here (text only)",
                           param=f"{where}.{j}.type")
        else:
            parts.append(b.text)
    return "".join(parts)


def _merged(messages: list[Message]) -> list[tuple[str, list, int]]:
    """(role, blocks, index of the first message) with consecutive same-role messages combined
    into one turn, as Anthropic does; a string content is one text block."""
    out: list[tuple[str, list, int]] = []
    for i, m in enumerate(messages):
        where = f"messages.{i}.content"
        blocks = list(m.content)
        last = i == len(messages) - 1
        if not blocks:
            raise APIError(400, f"{where}: a {m.role} message needs non-empty content", param=where)
        for j, b in enumerate(blocks):
            if isinstance(b, TextBlock) and not b.text and not (last and m.role == "assistant"):
                raise APIError(400, f"{where}.{j}.text: text blocks must be non-empty", param=f"{where}.{j}.text")
        if out and out[-1][0] == m.role:
            if isinstance(out[-1][1][-1], TextBlock) and isinstance(blocks[0], TextBlock):
                out[-1][1].append(TextBlock(type="text", text="\n\n"))   # the turns stay paragraphs
            out[-1][1].extend(blocks)
        else:
            out.append((m.role, blocks, i))
    return out


def _assistant(blocks: list, where: str) -> dict:
    texts, calls, thinking = [], [], []
    for j, b in enumerate(blocks):
        if isinstance(b, TextBlock):
            texts.append(b.text)
        elif isinstance(b, ToolUseBlock):
            calls.append({"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input}})
        elif isinstance(b, ThinkingBlock):
            thinking.append(b.thinking)
        elif isinstance(b, RedactedThinkingBlock):
            continue                        # opaque to g4rt: nothing to render
        else:
            raise APIError(400, f"{where}.{j}: an assistant message may not hold {b.type} blocks",
                           param=f"{where}.{j}.type")
    d: dict = {"role": "assistant", "content": "".join(texts)}
    if calls:
        d["tool_calls"] = calls
    if thinking:
        d["reasoning_content"] = "".join(thinking)
    return d


def _user(blocks: list, where: str, calls: list[dict]) -> list[dict]:
    """A user turn: its tool results (as `tool` messages, first, as the template wants them right
    after the assistant's calls), then its text."""
    out, texts = [], []
    ids = {c["id"] for c in calls}
    answered = {b.tool_use_id for b in blocks if isinstance(b, ToolResultBlock)}
    missing = [c["id"] for c in calls if c["id"] not in answered]
    if missing:
        raise APIError(400, f"{where}: tool_use ids {missing} have no tool_result block in the user message "
                            f"right after them", param=where)
    for j, b in enumerate(blocks):
        at = f"{where}.{j}"
        if isinstance(b, ToolResultBlock):
            if b.tool_use_id not in ids:
                raise APIError(400, f"{at}.tool_use_id: {b.tool_use_id!r} answers no tool_use block of the "
                                    f"assistant message just before it", param=f"{at}.tool_use_id")
            if texts:
                raise APIError(400, f"{at}: tool_result blocks must come before any text in a user message",
                               param=at)
            body = _text_of(b.content, f"{at}.content")
            # the template renders a tool message's content as a string value (a mapping would be
            # iterated as parts), so an error result says so in its text
            out.append({"role": "tool", "tool_call_id": b.tool_use_id,
                        "content": f"Error: {body}" if b.is_error else body})
        elif isinstance(b, TextBlock):
            texts.append({"type": "text", "text": b.text})
        elif isinstance(b, ImageBlock):
            texts.append(media_part(b, at))
        else:
            raise APIError(400, f"{at}: a user message may not hold {b.type} blocks", param=f"{at}.type")
    if texts:
        plain = all(p["type"] == "text" for p in texts)
        out.append({"role": "user", "content": "".join(p["text"] for p in texts) if plain else texts})
    return out


def to_prompt(req: CountTokensRequest) -> Prompt:
    """The request as the template's messages, tools and options; a 400 names what is wrong."""
    turns = _merged(req.messages)
    system = [t for t in ["".join(b.text for b in req.system or [])] if t]
    while turns and turns[0][0] == "system":         # leading system messages join `system`
        _, blocks, i = turns.pop(0)
        system.append(_text_of(blocks, f"messages.{i}.content"))
    messages: list[dict] = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    prefill = ""
    calls: list[dict] = []
    for n, (role, blocks, i) in enumerate(turns):
        where = f"messages.{i}.content"
        if role == "assistant":
            d = _assistant(blocks, where)
            calls = d.get("tool_calls", [])
            if n == len(turns) - 1 and not calls:
                # the answer continues this text (prefill); Anthropic refuses trailing whitespace
                if d["content"] != d["content"].rstrip():
                    raise APIError(400, f"{where}: the final assistant content may not end with whitespace",
                                   param=where)
                prefill = d["content"]
                break
            messages.append(d)
        elif role == "user":
            messages.extend(_user(blocks, where, calls))
            calls = []
        else:
            if calls:
                break                       # refused below: results must come right after the calls
            messages.append({"role": "system", "content": _text_of(blocks, where)})
    if calls:
        raise APIError(400, "an assistant message calls tools: send their tool_result blocks in the user "
                            "message right after it", param="messages")
    options = {"enable_thinking": True} if thinking_on(req) else {}
    return Prompt(messages, tools_for(req), options, prefill)
