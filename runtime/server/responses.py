"""Scheduler events → OpenAI response bodies and stream chunks (chat and text completions)."""

from __future__ import annotations

import secrets
import time
from typing import Optional

from .output_text import Gemma4OutputParser
from .scheduler import DoneEvent, TokenLogprob


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage_body(u: dict) -> dict:
    return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
            "total_tokens": u["total_tokens"], "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]}}


def timings_body(u: dict, stop_reason: str) -> dict:
    """llama-server's `timings` (its field names), plus g4rt's stop reason and slot."""
    keys = ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
            "predicted_per_second", "time_to_first_token_ms", "slot")
    out = {k: u[k] for k in keys}
    out["cache_n"] = u["cached_tokens"]
    for k in ("draft_n", "draft_n_accepted"):           # with a draft model or prompt lookup
        if k in u:
            out[k] = u[k]
    out["stop_reason"] = stop_reason
    return out


class TokenText:
    """Token ids → the text and bytes logprobs entries show."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def piece(self, tid: int) -> tuple[str, list[int]]:
        raw = self.tokenizer.token_to_piece(tid)
        return raw.decode("utf-8", errors="replace"), list(raw)

    def chat_entry(self, lp: TokenLogprob) -> dict:
        text, raw = self.piece(lp.token)
        top = []
        for t, v in lp.top:
            tt, tb = self.piece(t)
            top.append({"token": tt, "logprob": v, "bytes": tb})
        return {"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top}


class ChatOutput:
    """Accumulates one chat completion: content, reasoning, tool calls, logprobs; `push` and
    `finish` also return the stream deltas of what came in."""

    def __init__(self, tokenizer, parse_tools: bool, parse_thinking: bool, want_logprobs: bool):
        self.parser = Gemma4OutputParser(parse_tools=parse_tools, parse_thinking=parse_thinking)
        self.names = TokenText(tokenizer)
        self.want_logprobs = want_logprobs
        self.content, self.reasoning, self.tool_calls, self.logprobs = [], [], [], []

    def _deltas(self, parts) -> list[dict]:
        out = []
        for d in parts:
            if d.kind == "content" and d.text:
                self.content.append(d.text)
                out.append({"content": d.text})
            elif d.kind == "reasoning" and d.text:
                self.reasoning.append(d.text)
                out.append({"reasoning_content": d.text})
            elif d.kind == "tool_call":
                tc = d.tool_call
                call = {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
                self.tool_calls.append(call)
                out.append({"tool_calls": [{"index": tc.index, **call}]})
        return out

    def push(self, text: str, lps: list[TokenLogprob]) -> tuple[list[dict], list[dict]]:
        entries = [self.names.chat_entry(lp) for lp in lps] if self.want_logprobs else []
        self.logprobs.extend(entries)
        return self._deltas(self.parser.push(text) if text else []), entries

    def finish(self) -> list[dict]:
        return self._deltas(self.parser.finish())

    def finish_reason(self, done: DoneEvent) -> str:
        return "tool_calls" if self.tool_calls else done.finish_reason

    def message(self) -> dict:
        msg: dict = {"role": "assistant", "content": "".join(self.content) if (self.content or not self.tool_calls) else None}
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


def chat_completion(cid: str, model: str, out: ChatOutput, done: DoneEvent,
                    warning: Optional[str] = None) -> dict:
    body = {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": out.message(),
                     "logprobs": {"content": out.logprobs} if out.want_logprobs else None,
                     "finish_reason": out.finish_reason(done)}],
        "usage": usage_body(done.usage), "timings": timings_body(done.usage, done.stop_reason),
    }
    if warning:
        body["warning"] = warning
    return body


def chat_chunk(cid: str, model: str, created: int, delta: dict, finish_reason: Optional[str] = None,
               logprobs: Optional[list] = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta,
                         "logprobs": {"content": logprobs} if logprobs is not None else None,
                         "finish_reason": finish_reason}]}


class CompletionLogprobs:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset."""

    def __init__(self, tokenizer, start_offset: int = 0):
        self.names = TokenText(tokenizer)
        self.offset = start_offset
        self.body = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, lps: list[TokenLogprob]) -> dict:
        part = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for lp in lps:
            text, _ = self.names.piece(lp.token)
            part["tokens"].append(text)
            part["token_logprobs"].append(lp.logprob)
            part["top_logprobs"].append({self.names.piece(t)[0]: v for t, v in lp.top})
            part["text_offset"].append(self.offset)
            self.offset += len(text)
        for k in part:
            self.body[k].extend(part[k])
        return part


def completion_body(cid: str, model: str, text: str, logprobs: Optional[dict], done: DoneEvent) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": done.finish_reason}],
            "usage": usage_body(done.usage), "timings": timings_body(done.usage, done.stop_reason)}


def completion_chunk(cid: str, model: str, created: int, text: str, finish_reason: Optional[str] = None,
                     logprobs: Optional[dict] = None) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}
