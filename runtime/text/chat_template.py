"""Chat templates: render the model's `tokenizer.chat_template` (untrusted input) safely.

Rendering follows transformers' `apply_chat_template`: jinja2 with trim_blocks/lstrip_blocks,
the loopcontrols extension, a `{% generation %}` block, `tojson`, `raise_exception` and
`strftime_now`, and the variables `messages`, `tools`, `documents`, `add_generation_prompt`,
the special-token texts (`bos_token`, `eos_token`, ...) and any extra options
(e.g. `enable_thinking`).

The template comes from the model file, so it is treated as hostile: it runs in jinja2's
ImmutableSandboxedEnvironment (no access to Python internals, no mutation of the inputs), and
rendering is bounded in time (a line-level trace on the template's own code checks a deadline)
(2 s plus 10 ms per message by default) and in size (every string join, concatenation, repetition, filter and method call is checked
against the output cap before it allocates). Any failure is a ChatTemplateError; there is never
a silent fallback to another format.

Files without a template get the built-in format of their architecture (Gemma 3 or Gemma 4).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.filters
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import G4rtError, MetadataError

#: Gemma 4's thinking channel: the model writes "<|channel>thought\n...<channel|>answer".
THINK_OPEN = "<|channel>"
THINK_CLOSE = "<channel|>"

DEFAULT_TIMEOUT_S = 2.0
PER_MESSAGE_S = 0.01           # extra render time allowed per message
DEFAULT_MAX_OUTPUT = 4 << 20   # characters
MAX_TEMPLATE_SIZE = 1 << 20    # characters of template source
_MAX_INT_ARG = 1 << 20         # an integer argument this large to a filter or method is a bomb


class ChatTemplateError(G4rtError):
    """The chat template could not be compiled or rendered (or broke a safety limit)."""


class _LimitExceeded(Exception):
    pass


def strip_thinking(text: str, trim: bool = True) -> str:
    """Text with every thinking-channel block removed, as Gemma 4's template does to history.

    A block runs from THINK_OPEN to THINK_CLOSE; an unterminated block (generation stopped while
    thinking) is dropped to the end of the text.
    """
    out = []
    for part in text.split(THINK_CLOSE):
        out.append(part.split(THINK_OPEN)[0] if THINK_OPEN in part else part)
    result = "".join(out)
    return result.strip() if trim else result


def split_thinking(text: str) -> tuple[str, str]:
    """(thinking, answer) of a model output: the channel contents (without the channel name line,
    e.g. "thought\\n") and the text outside them (stripped)."""
    thoughts = []
    answer = []
    pos = 0
    while True:
        start = text.find(THINK_OPEN, pos)
        if start < 0:
            answer.append(text[pos:])
            break
        answer.append(text[pos:start])
        end = text.find(THINK_CLOSE, start + len(THINK_OPEN))
        body = text[start + len(THINK_OPEN):] if end < 0 else text[start + len(THINK_OPEN):end]
        name, nl, rest = body.partition("\n")
        thoughts.append(rest if nl and name.strip().isidentifier() else body)
        if end < 0:
            break
        pos = end + len(THINK_CLOSE)
    return "".join(thoughts).strip(), "".join(answer).strip()


# --- the sandbox ------------------------------------------------------------------------------
class _GenerationExtension(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant text with it);
    for rendering, the block is just its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _size(x: Any) -> int:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else 0


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, max_output: int):
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False,
                         extensions=[jinja2.ext.loopcontrols, _GenerationExtension])
        self.max_output = max_output
        self.filters = {name: self._guard(f) for name, f in self.filters.items()}
        self.filters["tojson"] = self._guard(_tojson)
        # format's arguments are values to print, not sizes; its format string is the risk
        self.filters["format"] = self._guard(_format_filter, check_args=False)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt))
        self.globals["strip_thinking"] = strip_thinking
        self.globals["dict"] = _TemplateDict()
        self.globals["namespace"] = _TemplateNamespace

    # sizes --------------------------------------------------------------------------------
    def _check_size(self, n: int) -> None:
        if n > self.max_output:
            raise _LimitExceeded(f"output would exceed {self.max_output} characters")

    def _check_args(self, args, kwargs) -> None:
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > _MAX_INT_ARG:
                raise _LimitExceeded(f"integer argument {a} is too large")

    def _guard(self, f, check_args: bool = True):
        skip = 2 if getattr(f, "jinja_pass_arg", None) is not None else 1

        @functools.wraps(f)  # keeps jinja's pass_context/pass_environment marks
        def guarded(*args, **kwargs):
            # the value (and a context/environment jinja passes first) is data; the options
            # after it are what a bomb would use (center(10**9), indent(10**9), ...)
            if check_args:
                self._check_args(args[skip:], kwargs)
            result = f(*args, **kwargs)
            self._check_size(_size(result))
            return result
        return guarded

    def concat(self, parts) -> str:  # joins template and macro output buffers
        buf, total = [], 0
        for p in parts:
            total += len(p)
            self._check_size(total)
            buf.append(p)
        return "".join(buf)

    def _join(self, seq) -> str:  # the `~` operator
        parts = [str(x) for x in seq]
        self._check_size(sum(map(len, parts)))
        return "".join(parts)

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, k in ((left, right), (right, left)):
                if _size(seq) and isinstance(k, int):
                    self._check_size(_size(seq) * max(k, 0))
        elif operator == "+":
            if _size(left) and _size(right):
                self._check_size(_size(left) + _size(right))
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if left.bit_length() * right > 1 << 16:
                    raise _LimitExceeded("integer power is too large")
            elif isinstance(right, (int, float)) and abs(right) > 1 << 16:
                raise _LimitExceeded("exponent is too large")
        elif operator == "%" and isinstance(left, str):
            _check_format_string(left)
        result = super().call_binop(context, operator, left, right)
        self._check_size(_size(result))
        return result

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        # the sandbox hands out str.format wrapped; the wrapper keeps the bound method
        method = getattr(__obj, "__wrapped__", __obj)
        if isinstance(getattr(method, "__self__", None), (str, bytes)):
            # string methods are where sizes hide: 'a'.ljust(10**9), '{:>999999999}'.format(x)
            __self._check_args(args, kwargs)
            if getattr(method, "__name__", None) in ("format", "format_map"):
                _check_format_string(method.__self__)
        result = super().call(__context, __obj, *args, **kwargs)
        __self._check_size(_size(result))
        return result


def _check_format_string(fmt: str) -> None:
    """Refuse printf/str.format widths and precisions that would allocate before we could check
    the result ('%1000000000s', '{:>1000000000}', '%*s')."""
    if re.search(r"%[^a-zA-Z%]*(\*|\d{7,})", fmt) or re.search(r"\{[^{}]*:[^{}]*\d{7,}", fmt):
        raise _LimitExceeded("format width is too large")


def _format_filter(value, *args, **kwargs):
    _check_format_string(str(value))
    return jinja2.filters.do_format(value, *args, **kwargs)


class _TemplateDict:
    """`dict(...)` for templates without exposing the dict type itself (as transformers)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's namespace() refusing underscore names, a route to Python internals (as transformers)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' tojson: no HTML escaping, unicode kept
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(str(message))


class _Deadline:
    """Raise _LimitExceeded inside the template's own code once `seconds` have passed.

    A trace function follows only frames of code compiled from this template (their globals
    hold our environment), so jinja internals and the rest of the process run untraced.
    """

    def __init__(self, env: _Env, seconds: float):
        self.env = env
        self.seconds = seconds
        self.count = 0

    def __enter__(self):
        self.deadline = time.monotonic() + self.seconds
        self.previous = sys.gettrace()
        sys.settrace(self._on_call)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.previous)
        return False

    def _check(self):
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(f"rendering took longer than {self.seconds:g} s")

    def _on_call(self, frame, event, arg):
        if frame.f_globals.get("environment") is self.env:
            self._check()
            return self._on_line
        return None

    def _on_line(self, frame, event, arg):
        self.count += 1
        if not self.count & 127:
            self._check()
        return self._on_line


# --- templates -------------------------------------------------------------------------------
class ChatTemplate:
    """A compiled chat template and the special-token texts it is rendered with."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "",
                 special_tokens: Mapping[str, str] | None = None, name: str = "chat template",
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_output: int = DEFAULT_MAX_OUTPUT):
        if not isinstance(source, str):
            raise ChatTemplateError(f"{name} is not a string")
        if len(source) > MAX_TEMPLATE_SIZE:
            raise ChatTemplateError(f"{name} is {len(source)} characters, over the "
                                    f"{MAX_TEMPLATE_SIZE} limit")
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.special_tokens = dict(special_tokens or {})
        self.timeout_s = timeout_s
        self._env = _Env(max_output)
        try:
            self._template = self._env.from_string(source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"{name} does not compile: {e}") from None
        except (RecursionError, MemoryError) as e:
            raise ChatTemplateError(f"{name} does not compile: {type(e).__name__}") from None
        # the `~` operator calls these module-level helpers directly, not the environment
        glb = self._template.root_render_func.__globals__
        for helper in ("str_join", "markup_join"):
            if helper in glb:
                glb[helper] = self._env._join

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               *, tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None, **opts: Any) -> str:
        """The prompt text for `messages` (each a mapping with 'role' and 'content')."""
        variables = {
            **self.special_tokens,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **opts,
            "messages": _plain_messages(messages),
            "tools": _plain(tools) if tools is not None else None,
            "documents": _plain(documents) if documents is not None else None,
            "add_generation_prompt": bool(add_generation_prompt),
        }
        # The line trace costs ~3x, and real templates scan the history per message (Gemma 4's is
        # quadratic): a long conversation gets more time so that it is never cut off.
        seconds = self.timeout_s + PER_MESSAGE_S * len(variables["messages"])
        try:
            with _Deadline(self._env, seconds):
                return self._template.render(variables)
        except _LimitExceeded as e:
            raise ChatTemplateError(f"{self.name} was stopped: {e}") from None
        except jinja2.exceptions.SecurityError as e:
            raise ChatTemplateError(f"{self.name} tried something the sandbox forbids: {e}") from None
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"{self.name} failed to render: {e}") from None
        except RecursionError:
            raise ChatTemplateError(f"{self.name} recursed too deeply") from None
        except MemoryError:
            raise ChatTemplateError(f"{self.name} ran out of memory") from None
        except Exception as e:  # a template can raise anything its operations raise
            raise ChatTemplateError(f"{self.name} failed to render: {type(e).__name__}: {e}") from None

    def render_prompt(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                      *, add_bos: bool = True, **opts: Any) -> tuple[str, bool]:
        """(text, add_bos): whether the caller should still add BOS when tokenizing `text`.

        Gemma templates write `bos_token` themselves; tokenizing that text with special tokens
        parsed already yields BOS, so adding one more would give two.
        """
        text = self.render(messages, add_generation_prompt, **opts)
        starts_with_bos = bool(self.bos_token) and text.startswith(self.bos_token)
        return text, add_bos and not starts_with_bos


def _plain(value: Any, depth: int = 0) -> Any:
    """A copy made of dicts, lists and scalars only, so the template sees plain data."""
    if depth > 64:
        raise ChatTemplateError("messages are nested too deeply")
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    if isinstance(value, Sequence):
        return [_plain(v, depth + 1) for v in value]
    raise ChatTemplateError(f"messages hold a {type(value).__name__}, which a template cannot use")


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _plain_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Messages as transformers hands them to a template: plain copies, keys whose value is None
    dropped (OpenAI-style `content=None` would otherwise render as "None"), and a message's
    reasoning available under every name templates read it by."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} mappings")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ChatTemplateError(f"message {i} is not a mapping with a string 'role'")
        m = {k: v for k, v in _plain(m).items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_FIELDS if k in m), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


# --- built-in formats for files without a template --------------------------------------------
#: Gemma 3's format (its published template): the system prompt opens the first user turn.
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

#: Gemma 4's format for text conversations, written to render exactly as Gemma 4's published
#: template does for system/user/assistant turns (tool use needs the file's own template).
GEMMA4_TEMPLATE = """{{- bos_token -}}
{%- if tools -%}
    {{- raise_exception('this file has no chat template, and the built-in Gemma 4 format has no tool calling') -}}
{%- endif -%}
{%- set loop_messages = messages -%}
{%- set thinking = enable_thinking is defined and enable_thinking -%}
{%- if thinking or messages[0]['role'] in ['system', 'developer'] -%}
    {{- '<|turn>system\n' -}}
    {%- if thinking -%}{{- '<|think|>\n' -}}{%- endif -%}
    {%- if messages[0]['role'] in ['system', 'developer'] -%}
        {{- messages[0]['content'] | trim -}}
        {%- set loop_messages = messages[1:] -%}
    {%- endif -%}
    {{- '<turn|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {%- if not (role == 'model' and loop.index0 > 0 and loop_messages[loop.index0 - 1]['role'] == 'assistant') -%}
        {{- '<|turn>' + role + '\n' -}}
    {%- endif -%}
    {%- if message['content'] is string -%}
        {{- strip_thinking(message['content']) if role == 'model' else message['content'] | trim -}}
    {%- elif message['content'] is sequence -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {{- strip_thinking(item['text']) if role == 'model' else item['text'] | trim -}}
            {%- elif item['type'] in ['image', 'audio', 'video'] -%}
                {{- '<|' + item['type'] + '|>' -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\n' -}}
    {%- if not thinking -%}{{- '<|channel>thought\n<channel|>' -}}{%- endif -%}
{%- endif -%}
"""

_BUILTIN = {"gemma3": GEMMA3_TEMPLATE, "gemma4": GEMMA4_TEMPLATE, "gemma4_unified": GEMMA4_TEMPLATE}


def load_chat_template(f, tokenizer=None, **limits: Any) -> ChatTemplate:
    """The chat template of a GGUF file (`g4rt.gguf.reader.GGUFFile`), or its architecture's
    built-in format when the file has none. `tokenizer` (a g4rt Tokenizer) supplies the
    special-token texts; without it they are read from the file's vocabulary."""
    if tokenizer is not None:
        tokens, bos, eos, unk, pad = (tokenizer.tokens, tokenizer.bos_id, tokenizer.eos_id,
                                      tokenizer.unk_id, tokenizer.pad_id)
    else:
        tokens = f.get("tokenizer.ggml.tokens", [])
        ids = [f.get(f"tokenizer.ggml.{k}", None)
               for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")]
        bos, eos, unk, pad = ids

    def text(tid) -> str:
        return tokens[tid] if isinstance(tid, int) and 0 <= tid < len(tokens) else ""

    special = {"unk_token": text(unk), "pad_token": text(pad)}
    if f.has("tokenizer.chat_template"):
        source = f.get("tokenizer.chat_template")
        if not isinstance(source, str):
            raise MetadataError("tokenizer.chat_template is not a string")
        name = "the model's chat template"
    else:
        arch = f.get("general.architecture", "")
        if arch not in _BUILTIN:
            raise ChatTemplateError(f"the file has no chat template and g4rt has no built-in "
                                    f"format for architecture {arch!r}")
        source = _BUILTIN[arch]
        name = f"the built-in {arch} chat format"
    return ChatTemplate(source, bos_token=text(bos), eos_token=text(eos), special_tokens=special,
                        name=name, **limits)


_INSTRUCT_NAME = re.compile(r"(?:^|[\s_\-.])(it|instruct|chat|sft|rlhf|dpo)(?:$|[\s_\-.])", re.IGNORECASE)


def is_base_model(f) -> bool:
    """True for a pretrained base model: no chat template in the file and no instruction-tuned
    finetune named in `general.finetune` / `general.name` (e.g. "gemma-3-270m-it"). Such a
    model continues text; a chat prompt makes it echo the conversation rather than answer."""
    if f.has("tokenizer.chat_template"):
        return False
    for key in ("general.finetune", "general.name", "general.basename"):
        value = f.get(key, "")
        if isinstance(value, str) and _INSTRUCT_NAME.search(value):
            return False
    return True


BASE_MODEL_NOTICE = ("this is a pretrained base model (no chat template, no instruction-tuned finetune "
                     "named in the file): chat output will not follow instructions; use plain text "
                     "completion instead (g4rt run without --chat, or /v1/completions on the server)")
