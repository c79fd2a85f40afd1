"""The ingress of a Ray Serve deployment of g4rt: a thin ASGI app that reads each request's body,
forwards it (with its prompt as routing text) to a model replica and streams the replica's
response back as it comes. It answers only `GET /metrics` itself (every replica's counters on
one page); everything else, errors and the API key included, is the replica's own g4rt app.

No Ray import: the deployment (ray_deployments) gives `forward`, which turns Ray's errors into
`Unavailable`, and `metrics_pages`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import AsyncIterator, Awaitable, Callable

from .error_shapes import body_for
from .guard import Guard
from .metrics import CONTENT_TYPE_LATEST
from .protocol import APIError
from .ray_forward import ForwardedRequest, routing_text
from .ray_metrics import merge_pages

log = logging.getLogger("g4rt.server")

#: how long GET /health waits for a replica before it answers 503 (the router holds requests
#: while no replica is up: a health probe must not hang with them)
HEALTH_WAIT_S = 10.0


class Unavailable(Exception):
    """No replica could answer: it died under the request, or the queue is full (503, retry)."""

    def __init__(self, message: str, kind: str = "unavailable_error"):
        super().__init__(message)
        self.message, self.kind = message, kind


Forward = Callable[[ForwardedRequest], AsyncIterator[dict]]


class IngressApp:
    def __init__(self, forward: Forward, metrics_pages: Callable[[], Awaitable[dict]], *, max_body: int,
                 api_key=None):
        self.forward, self.metrics_pages, self.max_body = forward, metrics_pages, max_body
        # the API key guards the page this app answers itself, as the replicas' Guard does theirs
        self.metrics_app = Guard(self._metrics, api_key=api_key, max_body=max_body)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            return await self.metrics_app(scope, receive, send)
        body = await self._read_body(scope, receive)
        if body is None:
            return                                      # the client left while sending
        request = ForwardedRequest(
            method=scope["method"], path=scope["path"], query_string=scope.get("query_string", b""),
            headers=list(scope.get("headers") or []), body=body, client=scope.get("client"),
            scheme=scope.get("scheme", "http"), http_version=scope.get("http_version", "1.1"),
            server=scope.get("server"),
            routing_text=routing_text(body) if scope["method"] == "POST" and len(body) <= self.max_body else None)
        await self._relay(request, receive, send)

    async def _read_body(self, scope, receive):
        """The body, read up to one byte past --max-body (the replica's Guard then answers 413, in
        its API's error shape); empty when Content-Length already says too much (or is not a
        number): the Guard answers from the header."""
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.max_body:
                    return b""
            except ValueError:
                return b""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False) or size > self.max_body:
                return b"".join(chunks)

    async def _relay(self, request: ForwardedRequest, receive, send):
        stream = self.forward(request)
        state = {"started": False, "ended": False, "sse": False}

        async def pump():
            first = True
            while True:
                step = stream.__anext__()
                try:
                    if first and request.path == "/health":
                        message = await asyncio.wait_for(step, HEALTH_WAIT_S)
                    else:
                        message = await step
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise Unavailable(f"no replica answered within {HEALTH_WAIT_S:g} s") from None
                first = False
                if message["type"] == "http.response.start":
                    state["started"] = True
                    ctype = dict(message.get("headers") or []).get(b"content-type", b"")
                    state["sse"] = ctype.startswith(b"text/event-stream")
                elif not message.get("more_body", False):
                    state["ended"] = True
                await send(message)

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass

        pump_task, watch_task = asyncio.ensure_future(pump()), asyncio.ensure_future(watch())
        try:
            await asyncio.wait([pump_task, watch_task], return_when=asyncio.FIRST_COMPLETED)
            if not pump_task.done():
                return                                  # the client left: the finally cancels upstream
            try:
                pump_task.result()
            except Unavailable as e:
                await self._fail(request.path, send, state, e.message, e.kind)
            except Exception as e:                      # a bug or an unexpected Ray error: say so, in shape
                log.exception("g4rt serve (ray): forwarding failed")
                await self._fail(request.path, send, state, f"internal error: {type(e).__name__}: {e}",
                                 "server_error", status=500)
        finally:
            for task in (pump_task, watch_task):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            with contextlib.suppress(Exception):
                await stream.aclose()                   # cancels the replica's side if it still runs

    @staticmethod
    async def _fail(path, send, state, message, kind, status=503):
        if state["ended"]:
            return
        error = APIError(status, message, kind, headers={"Retry-After": "1"} if status == 503 else None)
        if not state["started"]:
            if path == "/health":
                body = json.dumps({"status": "unavailable", "message": message}).encode()
            else:
                body = json.dumps(body_for(path, error)).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        # the response had begun: a stream ends with an error event (as the server's own mid-stream
        # errors do); any other body just ends short, which clients report as a broken response
        tail = b"data: " + json.dumps(body_for(path, error)).encode() + b"\n\n" if state["sse"] else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _metrics(self, scope, receive, send):
        page = merge_pages(await self.metrics_pages()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                                (b"content-length", str(len(page)).encode())]})
        await send({"type": "http.response.body", "body": page, "more_body": False})
