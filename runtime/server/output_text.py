"""Turn Gemma 4's generated text into OpenAI chat-completion message parts.

The server decodes tokens into text pieces (special tokens arrive as their literal text, e.g.
``<|channel>``) and feeds them here, in order, as they are produced:

* `StopMatcher` cuts the stream at the first of the request's ``stop`` strings, holding back
  only the few characters that could still be the start of one.
* `Gemma4OutputParser` splits the stream into ``content``, ``reasoning`` (Gemma's
  ``<|channel>thought\\n...<channel|>`` block) and ``tool_call`` deltas (Gemma's
  ``<|tool_call>call:NAME{ARGS}<tool_call|>``), for streamed and whole responses alike.
* `parse_tool_arguments` reads Gemma's argument syntax (unquoted keys, strings delimited by
  ``<|"|>``) into a Python dict, so it can be re-encoded as the JSON OpenAI clients expect.

Nothing here knows about HTTP or tokens; it is plain text in, plain text/objects out.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass

THINK_OPEN = "<|channel>"
THINK_CLOSE = "<channel|>"
TOOL_OPEN = "<|tool_call>"
TOOL_CLOSE = "<tool_call|>"
STR_DELIM = '<|"|>'

MAX_ARG_DEPTH = 64


def _partial_len(text: str, markers: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers`
    (the part that must wait for more text before we know what it is)."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best


# --- stop strings ---------------------------------------------------------------------------
class StopMatcher:
    """Cuts a text stream before the first occurrence of any stop string.

    `push` returns the text that is safe to show now; the held-back tail is at most one stop
    string long. A found stop is only final once no stop that starts *earlier* can still be
    completing (e.g. stops "abcd" and "c" on "abc..."), so `push` may keep answering
    stopped=False for a few more characters after a later-starting stop appeared; `flush`
    settles that at the end of the stream (check `stopped`/`matched` after it).
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.stopped = False
        self.matched: str | None = None
        self._buf = ""  # received but not yet emitted

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        self._buf += text
        return self._scan(final=False), self.stopped

    def flush(self) -> str:
        if self.stopped:
            return ""
        out = self._scan(final=True)
        if not self.stopped:
            out += self._buf
            self._buf = ""
        return out

    def _scan(self, final: bool) -> str:
        buf = self._buf
        hits = [(buf.find(s), s) for s in self.stops if s in buf]
        # Text from `hold` on may be the start of a stop still arriving.
        hold = len(buf) - _partial_len(buf, self.stops)
        if hits:
            pos, stop = min(hits)
            # An earlier-starting stop can only still appear if it begins before `pos`.
            if final or hold >= pos:
                self.stopped, self.matched, self._buf = True, stop, ""
                return buf[:pos]
        self._buf = buf[hold:]
        return buf[:hold]


# --- tool-call arguments --------------------------------------------------------------------
class ToolCallParseError(ValueError):
    """The text of a tool call is not in Gemma 4's tool-call syntax."""


_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
_WS = re.compile(r"\s*")


class _ArgParser:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def fail(self, what: str):
        near = self.s[self.i:self.i + 20]
        raise ToolCallParseError(f"{what} at offset {self.i} (near {near!r})")

    def ws(self):
        self.i = _WS.match(self.s, self.i).end()

    def eat(self, tok: str) -> bool:
        if self.s.startswith(tok, self.i):
            self.i += len(tok)
            return True
        return False

    def string(self) -> str:
        # The caller has consumed the opening delimiter; no escapes exist in this syntax.
        end = self.s.find(STR_DELIM, self.i)
        if end < 0:
            self.fail("unterminated string")
        out = self.s[self.i:end]
        self.i = end + len(STR_DELIM)
        return out

    def key(self) -> str:
        if self.eat(STR_DELIM):
            return self.string()
        start = self.i
        while self.i < len(self.s) and self.s[self.i] not in ':{}[],' \
                and not self.s.startswith(STR_DELIM, self.i):
            self.i += 1
        k = self.s[start:self.i].strip()
        if not k:
            self.i = start
            self.fail("expected a key")
        return k

    def value(self, depth: int):
        self.ws()
        if self.eat(STR_DELIM):
            return self.string()
        if self.eat("{"):
            return self.container(depth + 1, "}", self.pair, {})
        if self.eat("["):
            return self.container(depth + 1, "]", self.value, [])
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.eat(word):
                return val
        m = _NUMBER.match(self.s, self.i)
        if not m:
            self.fail("expected a value")
        self.i = m.end()
        return float(m[0]) if m[1] or m[2] else int(m[0])

    def pair(self, depth: int):
        self.ws()
        k = self.key()
        self.ws()
        if not self.eat(":"):
            self.fail(f"expected ':' after key {k!r}")
        return k, self.value(depth)

    def container(self, depth: int, close: str, item, out):
        # `{` or `[` already consumed; items separated by ',', no trailing comma.
        if depth > MAX_ARG_DEPTH:
            self.fail(f"arguments nested deeper than {MAX_ARG_DEPTH}")
        self.ws()
        if self.eat(close):
            return out
        while True:
            v = item(depth)
            if isinstance(out, dict):
                out[v[0]] = v[1]
            else:
                out.append(v)
            self.ws()
            if self.eat(close):
                return out
            if not self.eat(","):
                self.fail(f"expected ',' or {close!r}")


def parse_tool_arguments(body: str) -> dict:
    """The arguments of a Gemma 4 tool call as a dict.

    `body` is the ARGS text INCLUDING its outer braces, e.g. ``{city:<|"|>Paris<|"|>,days:3}``;
    surrounding whitespace is allowed, anything else after the closing brace is an error.
    Raises ToolCallParseError on malformed input (also on trailing commas and bare-word values).
    """
    p = _ArgParser(body)
    p.ws()
    if not p.eat("{"):
        p.fail("expected '{'")
    out = p.container(1, "}", p.pair, {})
    p.ws()
    if p.i != len(body):
        p.fail("unexpected text after the arguments")
    return out


# --- tool calls and deltas ------------------------------------------------------------------
_ID_CHARS = string.ascii_letters + string.digits


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


@dataclass
class ToolCall:
    index: int      # position among this output's tool calls: 0, 1, 2, ...
    id: str
    name: str
    arguments: str  # JSON text of the arguments object


@dataclass
class Delta:
    kind: str  # "content", "reasoning" or "tool_call"
    text: str = ""
    tool_call: ToolCall | None = None


_CALL_HEAD = re.compile(r"\s*call:\s*([\w\-.]+)")
# A channel name is one word, maybe followed by spaces; anything else means the model started
# reasoning without a name line, and that text is reasoning, not dropped.
_CHANNEL_NAME = re.compile(r"[\w\-.]*[ \t\r]*")

_CONTENT, _THINK_NAME, _THINK, _TOOL = range(4)


class Gemma4OutputParser:
    """Splits Gemma 4 output text, pushed in pieces of any size, into deltas.

    Nothing is lost or duplicated whatever the split: the concatenated deltas are the input
    less the markers, channel-name lines and the whitespace that opens the answer after a
    thinking block. Text is held back only while it may still be (part of) a marker; a tool
    call is held whole until `<tool_call|>`. A tool call that does not parse comes out as
    content, markers included. A `<tool_call|>` inside a string argument is not supported
    (the call ends there and, unparsable, becomes content).
    """

    def __init__(self, parse_tools: bool = True, parse_thinking: bool = True):
        self._openers = ([THINK_OPEN] if parse_thinking else []) + ([TOOL_OPEN] if parse_tools else [])
        self._state = _CONTENT
        self._buf = ""
        self._strip_lead = False  # just left a thinking block: drop the answer's leading space
        self._n_calls = 0
        self._out: list[Delta] = []

    def push(self, text: str) -> list[Delta]:
        self._buf += text
        while self._step():
            pass
        return self._take()

    def finish(self) -> list[Delta]:
        """Deltas for whatever is still held; call once, at the end of the output."""
        buf, self._buf = self._buf, ""
        if self._state == _CONTENT:
            self._content(buf)
        elif self._state == _THINK_NAME:
            # An unterminated block that never got past its name says nothing.
            if not _CHANNEL_NAME.fullmatch(buf):
                self._emit("reasoning", buf)
        elif self._state == _THINK:
            self._emit("reasoning", buf)
        else:
            self._content(TOOL_OPEN + buf)
        self._state = _CONTENT
        return self._take()

    # One step of the state machine; False when it needs more text.
    def _step(self) -> bool:
        buf = self._buf
        if self._state == _CONTENT:
            found = [(buf.find(m), m) for m in self._openers if m in buf]
            if not found:
                keep = _partial_len(buf, self._openers)
                self._content(buf[:len(buf) - keep])
                self._buf = buf[len(buf) - keep:]
                return False
            pos, marker = min(found)
            self._content(buf[:pos])
            self._buf = buf[pos + len(marker):]
            self._state = _THINK_NAME if marker == THINK_OPEN else _TOOL
            self._strip_lead = False
            return True

        if self._state == _THINK_NAME:
            nl, close = buf.find("\n"), buf.find(THINK_CLOSE)
            ends = [e for e in (nl, close) if e >= 0]
            end = min(ends) if ends else len(buf) - _partial_len(buf, [THINK_CLOSE])
            if not _CHANNEL_NAME.fullmatch(buf[:end]):
                self._state = _THINK  # no name line: all of it is reasoning
            elif not ends:
                return False
            elif end == nl:
                self._buf, self._state = buf[nl + 1:], _THINK
            else:  # closed before any newline: empty block, drop the name
                self._buf, self._state = buf[close + len(THINK_CLOSE):], _CONTENT
                self._strip_lead = True
            return True

        if self._state == _THINK:
            close = buf.find(THINK_CLOSE)
            if close < 0:
                keep = _partial_len(buf, [THINK_CLOSE])
                self._emit("reasoning", buf[:len(buf) - keep])
                self._buf = buf[len(buf) - keep:]
                return False
            self._emit("reasoning", buf[:close])
            self._buf, self._state = buf[close + len(THINK_CLOSE):], _CONTENT
            self._strip_lead = True
            return True

        # _TOOL: wait for the whole call, then parse it.
        close = buf.find(TOOL_CLOSE)
        if close < 0:
            return False
        raw = buf[:close]
        self._buf, self._state = buf[close + len(TOOL_CLOSE):], _CONTENT
        call = self._parse_call(raw)
        if call is None:
            self._content(TOOL_OPEN + raw + TOOL_CLOSE)
        else:
            self._out.append(Delta("tool_call", tool_call=call))
        return True

    def _parse_call(self, raw: str) -> ToolCall | None:
        m = _CALL_HEAD.match(raw)
        if not m:
            return None
        try:
            args = parse_tool_arguments(raw[m.end():])
        except ToolCallParseError:
            return None
        call = ToolCall(self._n_calls, new_call_id(), m[1], json.dumps(args, ensure_ascii=False))
        self._n_calls += 1
        return call

    def _content(self, text: str):
        if self._strip_lead:
            text = text.lstrip()
            self._strip_lead = not text  # keep stripping until the answer really starts
        self._emit("content", text)

    def _emit(self, kind: str, text: str):
        if text:
            self._out.append(Delta(kind, text))

    def _take(self) -> list[Delta]:
        out, self._out = self._out, []
        return out


def parse_complete(text: str, parse_tools: bool = True,
                   parse_thinking: bool = True) -> tuple[str, str, list[ToolCall]]:
    """(content, reasoning, tool_calls) of a whole output, as the streamed deltas would give."""
    p = Gemma4OutputParser(parse_tools, parse_thinking)
    deltas = p.push(text) + p.finish()
    content = "".join(d.text for d in deltas if d.kind == "content")
    reasoning = "".join(d.text for d in deltas if d.kind == "reasoning")
    return content, reasoning, [d.tool_call for d in deltas if d.kind == "tool_call"]
