"""The HTTP side of `g4rt serve`: one FastAPI app over a `Scheduler`, with a module per API
(OpenAI in openai_api, ...). Handlers validate, render the chat template and tokenize (in a thread:
templates are bounded but may take a while), then submit a job and turn its events into a response
or a stream. A watcher per request (runs.Run) cancels the job when the client disconnects.
Errors are answered in the shape of the API the path belongs to (error_shapes)."""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import G4rtError
from . import anthropic_api, ollama_api, openai_api, responses_api
from .error_shapes import error_response
from .guard import BodyTooLargeError, Guard
from .metrics import CONTENT_TYPE_LATEST
from .protocol import APIError
from .state import DEFAULT_MAX_BODY, ServerConfig, ServerState  # noqa: F401  (re-exported for callers)

log = logging.getLogger("g4rt.server")

#: every API's routes; each module has `register(app, state)` and `PATHS` (for the request metrics)
API_MODULES = (openai_api, responses_api, anthropic_api, ollama_api)


def create_app(state: ServerState, loader: Optional[Callable[[], object]] = None) -> FastAPI:
    """The ASGI app. `loader` (if given) loads the model in a thread at start-up; until it is
    done /health answers 503 and every other endpoint a 503 "still loading"."""

    async def lifespan(app):
        if loader is not None and state.model is None:
            def load():
                try:
                    state.attach(loader())
                    log.warning("g4rt serve: model loaded, ready")
                except BaseException as e:          # reported by /health and the serve command
                    state.load_error = str(e) if isinstance(e, G4rtError) else f"{type(e).__name__}: {e}"
                    log.error("g4rt serve: the model failed to load: %s", state.load_error)
                    if app.state.on_load_error is not None:
                        app.state.on_load_error(state.load_error)
            threading.Thread(target=load, name="g4rt-load", daemon=True).start()
        yield
        state.shutdown()

    app = FastAPI(title="g4rt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.on_load_error = None

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(request.url.path, e)

    @app.exception_handler(BodyTooLargeError)
    async def too_large(request: Request, e: BodyTooLargeError):
        return error_response(request.url.path, APIError(413, str(e)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error_response(request.url.path, APIError(e.status_code, message))

    @app.exception_handler(G4rtError)
    async def g4rt_error(request: Request, e: G4rtError):
        return error_response(request.url.path, APIError(400, str(e)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("g4rt serve: internal error")
        return error_response(request.url.path,
                              APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

    # ---- status ------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if state.model is not None:
            return {"status": "ok"}
        if state.load_error:
            return JSONResponse({"status": "error", "message": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/slots")
    async def slots():
        state.ready()
        return state.scheduler.slot_info()

    for api in API_MODULES:
        api.register(app, state)

    known = {"/health", "/metrics", "/slots"}.union(*(api.PATHS for api in API_MODULES))
    app.add_middleware(Guard, api_key=state.config.api_key, max_body=state.config.max_body, metrics=state.metrics,
                       known_paths=frozenset(known))
    if state.config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(state.config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    return app
