"""The outer ASGI layer every request passes: API key, body size limit, request counting.

A plain ASGI middleware rather than FastAPI's `@app.middleware("http")`: that one wraps the
response in a way that hides client disconnects from streaming responses."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Optional

from .error_shapes import body_for
from .protocol import APIError


class BodyTooLargeError(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the request body is over the {limit} byte limit (--max-body)")
        self.limit = limit


def _error(path: str, status: int, message: str, type_: str, headers: Optional[list] = None):
    body = json.dumps(body_for(path, APIError(status, message, type_, code=str(status)))).encode()
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + \
        (headers or []), body


class Guard:
    OPEN_PATHS = ("/health",)

    def __init__(self, app, api_key: Optional[str], max_body: int, metrics=None, known_paths=frozenset()):
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics
        self.known_paths = known_paths

    def _authorized(self, headers: dict) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get(b"x-api-key", b"").decode("latin-1")
        return secrets.compare_digest(given.encode(), self.api_key.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        status_seen = [0]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
            await send(message)

        async def reply(status, message, type_, extra=None):
            status, headers, body = _error(path, status, message, type_, extra)
            await counting_send({"type": "http.response.start", "status": status, "headers": headers})
            await counting_send({"type": "http.response.body", "body": body})

        try:
            headers = dict(scope.get("headers") or [])
            if (self.api_key and path not in self.OPEN_PATHS and scope.get("method") != "OPTIONS"
                    and not self._authorized(headers)):
                return await reply(401, "invalid or missing API key (send 'Authorization: Bearer KEY' "
                                        "or 'X-Api-Key: KEY')", "authentication_error",
                                   [(b"www-authenticate", b"Bearer")])
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    too_big = int(length) > self.max_body
                except ValueError:
                    return await reply(400, "the Content-Length header is not a number", "invalid_request_error")
                if too_big:
                    return await reply(413, f"the request body ({int(length)} bytes) is over the "
                                            f"{self.max_body} byte limit (--max-body)", "invalid_request_error")
            seen = [0]

            async def limited_receive():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > self.max_body:
                        raise BodyTooLargeError(self.max_body)
                return message

            try:
                await self.app(scope, limited_receive, counting_send)
            except Exception as e:
                # answered here rather than by Starlette's outer error middleware: it is counted,
                # and the client keeps its keep-alive connection
                if status_seen[0]:
                    raise               # the response had begun: nothing valid can follow
                logging.getLogger("g4rt.server").exception("g4rt serve: internal error")
                await reply(500, f"internal error: {type(e).__name__}: {e}", "server_error")
        finally:
            if self.metrics is not None and status_seen[0]:
                endpoint = path if path in self.known_paths else "other"
                self.metrics.record_request(endpoint, status_seen[0])

