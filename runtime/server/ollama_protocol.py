"""Ollama's API shapes (github.com/ollama/ollama docs/api.md, and what the official `ollama`
client sends and parses): request models, their conversion to what the OpenAI routes already
render (the same chat template, tools and sampler), and the answer bodies (NDJSON chunks and the
final object with Ollama's durations in nanoseconds)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal, Optional, Union

from pydantic import Field, ValidationError

from ..sampling import Sampler
from .ollama_models import now
from .protocol import MAX_STOPS, MAX_TOP_LOGPROBS, APIError, ChatRequest, Tool, _Strict
from .scheduler import DoneEvent
from .state import sampler_for


# ---- requests -------------------------------------------------------------------------------
class Options(_Strict):
    """The `options` g4rt runs with; any other Ollama option (mirostat, typical_p, num_gpu,
    num_thread, ...) is ignored, as Ollama ignores options it does not know."""
    temperature: Optional[float] = Field(default=None, ge=0, le=100)
    top_k: Optional[int] = Field(default=None, ge=0, le=2**31)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    num_predict: Optional[int] = None          # <= 0 (Ollama: -1, -2): until the context is full
    num_ctx: Optional[int] = Field(default=None, ge=1)
    seed: Optional[int] = Field(default=None, lt=2**64)    # negative: random, as Ollama's -1
    stop: Union[str, list[str], None] = None
    repeat_penalty: Optional[float] = Field(default=None, gt=0, le=10)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)


class FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: Union[dict, str] = Field(default_factory=dict)   # Ollama sends an object
    index: Optional[int] = None


class ToolCall(_Strict):
    id: Optional[str] = None
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[str] = None
    thinking: Optional[str] = None
    images: Optional[list[str]] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_name: Optional[str] = None
    tool_call_id: Optional[str] = None


class _Generation(_Strict):
    model: Optional[str] = None
    stream: Optional[bool] = None              # None: stream, Ollama's default
    format: Union[str, dict, None] = None
    options: Optional[Options] = None
    keep_alive: Union[str, int, float, None] = None      # accepted; the model stays loaded
    think: Union[bool, str, None] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class OllamaChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)      # none: "load the model"
    tools: Optional[list[Tool]] = None


class OllamaGenerateRequest(_Generation):
    prompt: Optional[str] = None               # none or "": "load the model"
    suffix: Optional[str] = None
    system: Optional[str] = None
    template: Optional[str] = None
    context: Optional[list[int]] = None
    raw: bool = False
    images: Optional[list[str]] = None


class OllamaShowRequest(_Strict):
    model: Optional[str] = None
    name: Optional[str] = None                 # the field's older name
    verbose: bool = False


# ---- checks ---------------------------------------------------------------------------------
def accept_images(images: Optional[list[str]], where: str) -> list[dict]:
    """A message's (or prompt's) base64 images as OpenAI image_url parts (data: URLs), so they take
    the same path as /v1 (media_prompt: decoded, placed before the text as Ollama does)."""
    parts = []
    for k, b64 in enumerate(images or []):
        if not isinstance(b64, str) or not b64:
            raise APIError(400, f"'{where}[{k}]' must be a base64 string", param=where)
        parts.append({"type": "image_url", "image_url": {"url": "data:image/*;base64," + b64}})
    return parts


def with_images(content: Optional[str], images: list[dict]):
    """A message's content with its images first (a plain string when there are none)."""
    if not images:
        return content
    return images + ([{"type": "text", "text": content}] if content else [])


def check_format(fmt) -> None:
    if fmt not in (None, ""):
        kind = "a JSON schema" if isinstance(fmt, dict) else repr(fmt)
        raise APIError(400, f"'format' ({kind}): constrained output (JSON mode, JSON schemas) is not supported "
                            f"by g4rt; leave 'format' out and ask for JSON in the prompt", param="format")


def think_kwargs(think, supported: bool, model: str) -> dict:
    """Chat-template arguments for `think`: True turns Gemma 4's thinking channel on."""
    if isinstance(think, str):
        raise APIError(400, f"think value {think!r} is not supported for this model (true or false)", param="think")
    if not think:
        return {}
    if not supported:
        raise APIError(400, f"{model!r} does not support thinking", param="think")
    return {"enable_thinking": True}


@dataclass
class Settings:
    sampler: Sampler
    max_tokens: Optional[int]                  # None: until the context is full
    stops: list[str]


def settings_of(options: Optional[Options], ctx: int) -> Settings:
    """Sampler, token limit and stops from `options` (through the same sampler_for as every API)."""
    o = options or Options()
    if o.num_ctx is not None and o.num_ctx > ctx:
        raise APIError(400, f"options.num_ctx {o.num_ctx} is larger than this server's context of {ctx} tokens "
                            f"(set when it starts: g4rt serve --ctx N)", param="options.num_ctx")
    stops = [o.stop] if isinstance(o.stop, str) else list(o.stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"'options.stop' has {len(stops)} strings; at most {MAX_STOPS} are allowed",
                       param="options.stop")
    seed = o.seed if o.seed is not None and o.seed >= 0 else None
    sampler = sampler_for(o.temperature, o.top_k, o.top_p, o.min_p, o.repeat_penalty, o.frequency_penalty,
                          o.presence_penalty, seed)
    limit = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
    return Settings(sampler, limit, [s for s in stops if s])


# ---- conversion -----------------------------------------------------------------------------
def openai_messages(messages: list[Message]) -> list[dict]:
    """Ollama messages as the OpenAI messages chat_prompt renders. Tool results name their tool
    with `tool_name`; without one they answer the previous assistant turn's calls in order."""
    out, pending = [], []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        images = accept_images(m.images, f"{where}.images")
        if m.tool_calls and m.role != "assistant":
            raise APIError(400, f"'{where}.tool_calls': only assistant messages carry tool calls",
                           param=f"{where}.tool_calls")
        if m.content is None and not m.tool_calls and not m.images:
            need = "content (or tool_calls)" if m.role == "assistant" else "content"
            raise APIError(400, f"'{where}.content' is missing: a {m.role} message needs {need}",
                           param=f"{where}.content")
        d: dict = {"role": m.role, "content": with_images(m.content if (m.content is not None or m.tool_calls)
                                                          else "", images)}
        if m.role != "tool":
            pending = []
        if m.tool_calls:
            calls = []
            for j, c in enumerate(m.tool_calls):
                cid = c.id or f"call_{i}_{j}"
                calls.append({"id": cid, "type": "function",
                              "function": {"name": c.function.name, "arguments": c.function.arguments}})
            d["tool_calls"] = calls
            pending = [c["id"] for c in calls]
        if m.thinking:
            d["reasoning_content"] = m.thinking
        if m.role == "tool":
            if m.tool_name:
                d["name"] = m.tool_name
            if m.tool_call_id:
                d["tool_call_id"] = m.tool_call_id
            elif not m.tool_name and pending:
                d["tool_call_id"] = pending.pop(0)
        out.append(d)
    return out


def openai_chat(messages: list[dict], tools: Optional[list[Tool]], template_kwargs: dict) -> ChatRequest:
    """The OpenAI chat request chat_prompt.chat_prompt renders: the same template path as /v1."""
    body = {"messages": messages, "chat_template_kwargs": template_kwargs or None,
            "tools": [t.model_dump(exclude_none=True) for t in tools] if tools else None}
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        raise APIError(400, f"invalid messages: {first['msg']}", param="messages") from None


# ---- answers --------------------------------------------------------------------------------
def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def stats(done: DoneEvent, started: float, submitted: float) -> dict:
    """The last object's fields: done_reason and Ollama's counts and durations (nanoseconds).
    load_duration is the time before the job was submitted (the model is loaded at start-up)."""
    u = done.usage
    return {"done_reason": done.finish_reason, "total_duration": ns(time.perf_counter() - started),
            "load_duration": ns(submitted - started), "prompt_eval_count": u["prompt_tokens"],
            "prompt_eval_duration": ns(u["prompt_ms"] / 1e3), "eval_count": u["completion_tokens"],
            "eval_duration": ns(u["predicted_ms"] / 1e3)}


def tool_call(call: dict, index: int) -> dict:
    """An OpenAI-shaped tool call (arguments a JSON string) in Ollama's shape (an object)."""
    f = call["function"]
    return {"id": call["id"], "function": {"index": index, "name": f["name"], "arguments": json.loads(f["arguments"])}}


def _split(deltas: list[dict]) -> tuple[str, str, list[dict]]:
    content = "".join(d.get("content", "") for d in deltas)
    thinking = "".join(d.get("reasoning_content", "") for d in deltas)
    calls = [tool_call(tc, tc["index"]) for d in deltas for tc in d.get("tool_calls", [])]
    return content, thinking, calls


def message(content: str, thinking: str, calls: list[dict]) -> dict:
    msg: dict = {"role": "assistant", "content": content}
    if thinking:
        msg["thinking"] = thinking
    if calls:
        msg["tool_calls"] = calls
    return msg


class Reply:
    """One /api/chat or /api/generate answer: stream chunks from ChatOutput deltas, and the last
    (or only) object."""

    def __init__(self, kind: Literal["chat", "generate"], model: str, logprobs: bool):
        self.kind, self.model, self.logprobs = kind, model, logprobs

    def _body(self, content: str, thinking: str, calls: list[dict], done: bool) -> dict:
        body: dict = {"model": self.model, "created_at": now()}
        if self.kind == "chat":
            body["message"] = message(content, thinking, calls)
        else:
            body["response"] = content
            if thinking:
                body["thinking"] = thinking
        body["done"] = done
        return body

    def chunk(self, deltas: list[dict], entries: list[dict]) -> Optional[dict]:
        content, thinking, calls = _split(deltas)
        if not (content or thinking or calls or (self.logprobs and entries)):
            return None
        body = self._body(content, thinking, calls, False)
        if self.logprobs:
            body["logprobs"] = entries
        return body

    def final(self, out, done: DoneEvent, started: float, submitted: float, whole: bool) -> dict:
        """The last object: the whole answer when not streaming (`whole`), else empty text."""
        if whole:
            calls = [tool_call(c, k) for k, c in enumerate(out.tool_calls)]
            body = self._body("".join(out.content), "".join(out.reasoning), calls, True)
            if self.logprobs:
                body["logprobs"] = out.logprobs
        else:
            body = self._body("", "", [], True)
        body.update(stats(done, started, submitted))
        return body

    def loaded(self) -> dict:
        """The answer to an empty request, which Ollama uses to load a model."""
        body = self._body("", "", [], True)
        body["done_reason"] = "load"
        return body


def ndjson(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"
