"""Generated Gemma 4 text → Anthropic Messages content blocks, response bodies and stream events.

One `MessageOutput` serves both the streaming and the whole answer: the text pieces go through
the Gemma 4 parser (output_text), each run of one kind of delta becomes a block in the order the
model wrote them (thinking, text, tool_use), and `push` / `finish` return the stream events of
what came in, so the streamed blocks are the whole answer's blocks by construction."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import string
from typing import Optional

from .output_text import Gemma4OutputParser
from .scheduler import DoneEvent

_ID_CHARS = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """Anthropic's id style: msg_..., toolu_..."""
    return prefix + "_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


def signature(thinking: str) -> str:
    """The thinking block's opaque `signature`: a digest of its text, so clients that require one
    can send the block back; g4rt never checks it."""
    return base64.b64encode(hashlib.sha256(b"g4rt-thinking-v1:" + thinking.encode()).digest()).decode()


class MessageOutput:
    """Accumulates one answer's content blocks; `push` and `finish` return its stream events
    (content_block_start / _delta / _stop dicts)."""

    def __init__(self, parse_tools: bool, parse_thinking: bool, one_tool: bool = False, show_thinking: bool = True):
        self.parser = Gemma4OutputParser(parse_tools=parse_tools, parse_thinking=parse_thinking)
        self.one_tool, self.show_thinking = one_tool, show_thinking
        self.blocks: list[dict] = []
        self._open: Optional[str] = None        # the kind of the last block while it may grow

    @property
    def tool_uses(self) -> list[dict]:
        return [b for b in self.blocks if b["type"] == "tool_use"]

    def _close(self, events: list[dict]) -> None:
        if self._open is None:
            return
        index, block = len(self.blocks) - 1, self.blocks[-1]
        if block["type"] == "thinking":
            block["signature"] = signature(block["thinking"])
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "signature_delta", "signature": block["signature"]}})
        events.append({"type": "content_block_stop", "index": index})
        self._open = None

    def _start(self, block: dict, events: list[dict]) -> int:
        self._close(events)
        self.blocks.append(block)
        start = dict(block, input={}) if block["type"] == "tool_use" else dict(block)
        events.append({"type": "content_block_start", "index": len(self.blocks) - 1, "content_block": start})
        return len(self.blocks) - 1

    def _text(self, kind: str, text: str, events: list[dict]) -> None:
        btype, key, dtype = (("text", "text", "text_delta") if kind == "content"
                             else ("thinking", "thinking", "thinking_delta"))
        if self._open != btype:
            empty = {"type": "text", "text": ""} if btype == "text" else {"type": "thinking", "thinking": "",
                                                                            "signature": ""}
            self._start(empty, events)
            self._open = btype
        if btype == "thinking" and not self.show_thinking:
            return                              # display: omitted keeps the block, not its text
        self.blocks[-1][key] += text
        events.append({"type": "content_block_delta", "index": len(self.blocks) - 1,
                       "delta": {"type": dtype, key: text}})

    def _events(self, deltas) -> list[dict]:
        events: list[dict] = []
        for d in deltas:
            if d.kind in ("content", "reasoning") and d.text:
                self._text(d.kind, d.text, events)
            elif d.kind == "tool_call":
                if self.one_tool and self.tool_uses:
                    continue                    # disable_parallel_tool_use: the first call only
                tc = d.tool_call
                index = self._start({"type": "tool_use", "id": new_id("toolu"), "name": tc.name,
                                     "input": json.loads(tc.arguments)}, events)
                events.append({"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta", "partial_json": tc.arguments}})
                events.append({"type": "content_block_stop", "index": index})
        return events

    def push(self, text: str) -> list[dict]:
        return self._events(self.parser.push(text)) if text else []

    def finish(self) -> list[dict]:
        events = self._events(self.parser.finish())
        self._close(events)
        return events

    def stop_reason(self, done: DoneEvent) -> str:
        if self.tool_uses:
            return "tool_use"
        return {"stop_string": "stop_sequence", "max_tokens": "max_tokens", "timeout": "max_tokens",
                "context_full": "model_context_window_exceeded"}.get(done.stop_reason, "end_turn")


def usage_body(u: dict) -> dict:
    """Anthropic's usage: input_tokens excludes the prompt tokens read from the prompt cache,
    which are counted in cache_read_input_tokens (their sum is the whole prompt)."""
    return {"input_tokens": u["prompt_tokens"] - u["cached_tokens"], "output_tokens": u["completion_tokens"],
            "cache_read_input_tokens": u["cached_tokens"], "cache_creation_input_tokens": 0}


def message_body(mid: str, model: str, content: list[dict], stop_reason: Optional[str],
                 stop_sequence: Optional[str], usage: dict) -> dict:
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}


def message_delta(stop_reason: str, stop_sequence: Optional[str], usage: dict) -> dict:
    """The stream's closing usage: cumulative totals, which the SDK's accumulator writes over
    message_start's (whose cache split is not known yet)."""
    return {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": usage}
