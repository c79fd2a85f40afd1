"""Each API answers errors in its own clients' shape: OpenAI's `{"error": {...}}` (chat, completions,
responses), Anthropic's `{"type": "error", "error": {"type", "message"}}` (/v1/messages) and Ollama's
`{"error": "message"}` (/api/...). The official clients read these to raise their own exceptions,
so a wrong shape turns a clear 400 into an opaque one."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from .protocol import APIError

#: Anthropic's error types by HTTP status (docs.anthropic.com "Errors")
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    500: "api_error", 503: "overloaded_error", 529: "overloaded_error"}


def anthropic_body(e: APIError) -> dict:
    kind = _ANTHROPIC_TYPES.get(e.status, "invalid_request_error" if e.status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": e.message}}


def ollama_body(e: APIError) -> dict:
    return {"error": e.message}


def openai_body(e: APIError) -> dict:
    return e.body()


def body_for(path: str, e: APIError) -> dict:
    """The error body for a request to `path`."""
    if path.startswith("/v1/messages"):
        return anthropic_body(e)
    if path.startswith("/api/"):
        return ollama_body(e)
    return openai_body(e)


def error_response(path: str, e: APIError) -> JSONResponse:
    return JSONResponse(body_for(path, e), status_code=e.status, headers=e.headers)
