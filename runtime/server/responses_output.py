"""Generated text → the Responses API's output items and stream events. One builder serves the
streaming and the whole response alike (the whole one just drops the events), so both give the
same output: Gemma 4's thinking becomes a `reasoning` item, text a `message` item, each tool call a
`function_call` item, in the order the model wrote them."""

from __future__ import annotations

import secrets
import time
from typing import Optional

from .output_text import THINK_CLOSE, THINK_OPEN, Gemma4OutputParser
from .scheduler import DoneEvent


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage_body(u: dict, reasoning_tokens: int) -> dict:
    cached = u["cached_tokens"]
    return {"input_tokens": u["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": cached,
                                     # the prompt's other tokens are prefilled into the slot's cache
                                     "cache_write_tokens": u["prompt_tokens"] - cached},
            "output_tokens": u["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": u["total_tokens"]}


class ResponseBuilder:
    """One response: its echo fields, its output items as they come, and its events (each with its
    `sequence_number`). `start()`, then `push(text)` per text event, then `finish(done)`; each
    returns the events to send."""

    def __init__(self, echo: dict, parse_tools: bool, parse_thinking: bool):
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.echo = echo
        self.parser = Gemma4OutputParser(parse_tools=parse_tools, parse_thinking=parse_thinking)
        self.output: list[dict] = []
        self.open: Optional[dict] = None        # the message or reasoning item text is going to
        self.events: list[dict] = []
        self.seq = 0
        self.in_thought, self.reasoning_tokens = False, 0
        self.body: Optional[dict] = None

    # ---- events ---------------------------------------------------------------------------------
    def _event(self, kind: str, **fields) -> None:
        self.events.append({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1

    def _take(self) -> list[dict]:
        out, self.events = self.events, []
        return out

    def response(self, status: str, usage: Optional[dict] = None, incomplete: Optional[str] = None,
                 error: Optional[dict] = None) -> dict:
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "completed_at": int(time.time()) if status == "completed" else None,
                "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
                **self.echo, "output": list(self.output), "usage": usage}

    def start(self) -> list[dict]:
        self._event("response.created", response=self.response("in_progress"))
        self._event("response.in_progress", response=self.response("in_progress"))
        return self._take()

    # ---- items --------------------------------------------------------------------------------
    def _add(self, item: dict) -> int:
        self.output.append(item)
        index = len(self.output) - 1
        self._event("response.output_item.added", output_index=index, item=_copy(item))
        return index

    def _open(self, kind: str) -> dict:
        """The open item of `kind` ("message" or "reasoning"), closing another first."""
        if self.open is not None and self.open["item"]["type"] == kind:
            return self.open
        self._close("completed")
        if kind == "message":
            item = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {"id": new_id("rs"), "type": "reasoning", "status": "in_progress", "summary": [], "content": []}
            part = {"type": "reasoning_text", "text": ""}
        index = self._add(item)
        self._event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                    part=dict(part))
        self.open = {"item": item, "index": index, "part": part}
        return self.open

    def _text(self, kind: str, text: str) -> None:
        o = self._open(kind)
        o["part"]["text"] += text
        event = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        self._event(event, item_id=o["item"]["id"], output_index=o["index"], content_index=0, delta=text, **extra)

    def _close(self, status: str) -> None:
        o, self.open = self.open, None
        if o is None:
            return
        item, part, index = o["item"], o["part"], o["index"]
        if item["type"] == "message":
            self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                        text=part["text"], logprobs=[])
        else:
            self._event("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0,
                        text=part["text"])
        self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                    part=dict(part))
        item["content"], item["status"] = [part], status
        self._event("response.output_item.done", output_index=index, item=_copy(item))

    def _call(self, call) -> None:
        self._close("completed")
        item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress", "call_id": call.id,
                "name": call.name, "arguments": ""}
        index = self._add(item)
        # the parser hands a call over whole: its arguments come in one delta
        self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                    delta=call.arguments)
        self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                    name=call.name, arguments=call.arguments)
        item["arguments"], item["status"] = call.arguments, "completed"
        self._event("response.output_item.done", output_index=index, item=_copy(item))

    def _deltas(self, deltas) -> None:
        for d in deltas:
            if d.kind == "tool_call":
                self._call(d.tool_call)
            elif d.text:
                self._text("message" if d.kind == "content" else "reasoning", d.text)

    # ---- input ----------------------------------------------------------------------------------
    def push(self, text: str) -> list[dict]:
        # one text event per token: those from the channel's opening to its close are reasoning
        if THINK_OPEN in text:
            self.in_thought = True
        if self.in_thought:
            self.reasoning_tokens += 1
        if THINK_CLOSE in text:
            self.in_thought = False
        self._deltas(self.parser.push(text) if text else [])
        return self._take()

    def finish(self, done: DoneEvent) -> list[dict]:
        """The output's end: the open item closed, and `response.completed` (or `.incomplete` when
        max_output_tokens or the context cut it short) with the whole response."""
        self._deltas(self.parser.finish())
        cut = done.finish_reason == "length"
        if not any(item["type"] in ("message", "function_call") for item in self.output):
            self._open("message")       # an answer with no text is an empty message, as chat's ""
        self._close("incomplete" if cut else "completed")
        usage = usage_body(done.usage, self.reasoning_tokens)
        if cut:
            self.body = self.response("incomplete", usage, incomplete="max_output_tokens")
            self._event("response.incomplete", response=self.body)
        else:
            self.body = self.response("completed", usage)
            self._event("response.completed", response=self.body)
        return self._take()

    def fail(self, message: str) -> list[dict]:
        """A generation that broke off: an `error` event, then `response.failed`."""
        self._close("incomplete")
        self._event("error", code="server_error", message=message, param=None)
        self.body = self.response("failed", error={"code": "server_error", "message": message})
        self._event("response.failed", response=self.body)
        return self._take()


def _copy(item: dict) -> dict:
    """A snapshot of an item for an event (the item itself keeps growing)."""
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(p) for p in out["content"]]
    return out
