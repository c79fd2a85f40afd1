"""The OpenAI request shapes the server accepts, validated strictly (a wrong type is a 400, an
unknown field is ignored), and OpenAI's error body."""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error answered as OpenAI's error JSON with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionCall(_Strict):
    name: str
    arguments: Union[str, dict] = "{}"


class ToolCallIn(_Strict):
    id: Optional[str] = None
    type: str = "function"
    function: FunctionCall


class ContentPart(_Strict):
    type: str
    text: Optional[str] = None
    image_url: Union[str, dict, None] = None       # {"url": "data:image/png;base64,..."} (or the bare URL)
    input_audio: Optional[dict] = None             # {"data": base64, "format": "wav"}


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCallIn]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None

    @model_validator(mode="after")
    def _has_content(self) -> "Message":
        # as OpenAI and llama-server: only an assistant turn that calls tools may leave it out
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            need = "content (or tool_calls)" if self.role == "assistant" else "content"
            raise PydanticCustomError("missing_content", "a {role} message needs {need}",
                                      {"role": self.role, "need": need})
        return self


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=256)
    description: Optional[str] = None
    parameters: Optional[dict] = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: dict


class _Sampling(_Strict):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=100)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    seed: Optional[int] = Field(default=None, ge=0, lt=2**64)
    stop: Union[str, list[str], None] = None
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    repeat_penalty: Optional[float] = Field(default=None, gt=0, le=10)
    # OpenAI's {"token id": bias} (-100..100; llama-server's false = never) or llama-server's
    # [[id, bias], ...]; ignore_eos (llama-server): no end-of-generation token is ever chosen
    logit_bias: Union[dict, list, None] = None          # checked by bias(), which names the problem
    ignore_eos: bool = False
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1
    user: Optional[str] = None

    def bias(self, n_vocab: int, eog_ids=()) -> dict[int, float]:
        """logit_bias (and ignore_eos) as {token id: bias}, or an APIError(400) naming the problem."""
        pairs = list(self.logit_bias.items()) if isinstance(self.logit_bias, dict) else list(self.logit_bias or [])
        out: dict[int, float] = {}
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise APIError(400, f"logit_bias entry {pair!r} is not a [token id, bias] pair", param="logit_bias")
            key, value = pair
            if isinstance(key, bool) or isinstance(key, float):
                raise APIError(400, f"logit_bias key {key!r} is not a token id", param="logit_bias")
            try:
                tid = int(key)
            except (TypeError, ValueError):
                raise APIError(400, f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
            if not 0 <= tid < n_vocab:
                raise APIError(400, f"logit_bias names token {tid}; the vocabulary has {n_vocab} tokens (0-{n_vocab - 1})",
                               param="logit_bias")
            if value is True:
                raise APIError(400, f"logit_bias of token {tid} is true; give a number in [-100, 100] or false "
                                    "(never choose it)", param="logit_bias")
            if value is False:
                out[tid] = float("-inf")
            elif not isinstance(value, (int, float)):
                raise APIError(400, f"logit_bias of token {tid} is {value!r}; give a number in [-100, 100] or false",
                               param="logit_bias")
            elif not -100 <= value <= 100:
                raise APIError(400, f"logit_bias of token {tid} is {value}; it must be in [-100, 100]",
                               param="logit_bias")
            else:
                out[tid] = float(value)
        if self.ignore_eos:
            out.update({int(t): float("-inf") for t in eog_ids})
        return out

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS:
            raise APIError(400, f"'stop' has {len(stops)} strings; at most {MAX_STOPS} are allowed", param="stop")
        return [s for s in stops if s]


class ChatRequest(_Sampling):
    messages: list[Message]
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    reasoning_format: Optional[str] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: Optional[str] = None


class TokenizeRequest(_Strict):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(_Strict):
    tokens: list[int]


def _where(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "union[")))


def parse_body(raw: bytes, schema: type[BaseModel]):
    """The request body as `schema`, or an APIError(400) that names the problem."""
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise APIError(400, "the request body nests JSON too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(obj).__name__}")
    try:    # JSON may spell lone UTF-16 surrogates (\ud800), which no tokenizer can encode
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the request holds a string with an unpaired surrogate (\\ud800-\\udfff): "
                            "not valid Unicode text") from None
    except RecursionError:
        raise APIError(400, "the request body nests JSON too deeply") from None
    try:
        return schema.model_validate(obj)
    except RecursionError:
        raise APIError(400, "the request body nests JSON too deeply") from None
    except ValidationError as e:
        errs = e.errors(include_url=False)
        first = errs[0]
        where = _where(first)
        more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
        raise APIError(400, f"invalid '{where}': {first['msg']}{more}", param=where or None) from None
