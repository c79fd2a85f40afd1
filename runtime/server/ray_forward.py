"""One HTTP request carried from the Ray Serve ingress to a model replica, and played there into
the replica's own g4rt app (the same FastAPI app `g4rt serve` runs), its ASGI messages streamed
back. No Ray import here: the ingress and the replicas wrap these in their deployments.

Why not Ray's HTTP path straight into the model replicas: Ray routes a proxied HTTP request
before its body arrives, so a router could not see the prompt; the ingress reads the body first
and hands the replicas a request whose `routing_text` the prefix-aware router matches."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Optional

#: longest routing text kept: the router's prefix tree holds every routed text (evicted past a
#: budget), and a conversation is told apart from others long before this
ROUTING_TEXT_MAX = 32768


@dataclass
class ForwardedRequest:
    method: str
    path: str
    query_string: bytes = b""
    headers: list = field(default_factory=list)       # [(name bytes, value bytes)], as ASGI
    body: bytes = b""
    client: Optional[tuple] = None
    scheme: str = "http"
    http_version: str = "1.1"
    server: Optional[tuple] = None
    #: the prompt as text (system, messages, input, prompt), for the prefix-aware router; None
    #: for requests that carry none (GET /v1/models, /health, a body that is not JSON)
    routing_text: Optional[str] = None

    def scope(self) -> dict:
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": self.http_version,
                "method": self.method, "scheme": self.scheme, "path": self.path,
                "raw_path": self.path.encode("utf-8", "surrogateescape"), "query_string": self.query_string,
                "root_path": "", "headers": list(self.headers), "client": self.client, "server": self.server}


def _text(value) -> str:
    """The text of a content field in any API's shape: a string, text parts, nested content."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(v) for v in value)
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return value["text"]
        return _text(value.get("content"))
    return ""


def routing_text(body: bytes) -> Optional[str]:
    """The prompt of a generation request's JSON body as one string (OpenAI chat / completions /
    responses, Anthropic messages, Ollama chat / generate): the texts that make up the start of
    the rendered prompt, in their order, each ended by \x1e, so the next turn of a conversation
    extends the previous turn's text (what the router's prefix tree matches). No role names: every
    conversation would then share its first characters, and the router would take unrelated
    short prompts for one conversation."""
    if not body or body[:1] not in (b"{", b" ", b"\n", b"\t", b"\r"):
        return None
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    parts = []
    for key in ("system", "instructions"):
        if obj.get(key) is not None:
            parts.append(_text(obj[key]) + "\x1e")
    for key in ("messages", "input"):
        items = obj.get(key)
        if isinstance(items, str):
            parts.append(items + "\x1e")
        elif isinstance(items, list):
            parts += [_text(m) + "\x1e" for m in items]
    prompt = obj.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str):
        parts.append(prompt)
    elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        parts.append(" ".join(map(str, prompt)))           # token ids: shared ids, shared prefix
    text = "".join(parts)[:ROUTING_TEXT_MAX]
    return text if text.strip("\x1e") else None


async def play(app, request: ForwardedRequest, replica: Optional[str] = None):
    """Run one request through an ASGI app in this process; yield its response messages
    (`http.response.start` / `http.response.body` dicts, picklable). When the consumer stops
    early (the client left: Ray cancels this generator), the app's receive channel answers
    `http.disconnect`, which cancels the generation as a disconnect from uvicorn would."""
    out: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers") or []]
            if replica:
                headers.append((b"x-g4rt-replica", replica.encode()))
            message = {"type": "http.response.start", "status": message["status"], "headers": headers}
        elif message["type"] == "http.response.body":
            message = {"type": "http.response.body", "body": bytes(message.get("body", b"")),
                       "more_body": bool(message.get("more_body", False))}
        else:
            return
        out.put_nowait(message)

    task = asyncio.ensure_future(app(request.scope(), receive, send))
    task.add_done_callback(lambda _: out.put_nowait(None))
    try:
        while True:
            message = await out.get()
            if message is None:
                break
            yield message
        await task                       # an error the app did not answer itself
    finally:
        gone.set()
        if not task.done():
            # the app sees the disconnect and ends the job; give it a moment, never hang on it
            await asyncio.wait([task], timeout=5)
