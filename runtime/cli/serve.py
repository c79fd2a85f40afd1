"""`g4rt serve`: load a model once and answer OpenAI-style HTTP requests (uvicorn)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from ..errors import G4rtError
from ..server.media_input import MediaPolicy
from .media import MMPROJ_OPTION, budget_options
from .options import (BACKEND_OR_AUTO_CHOICE, PRECISION_OPTION, THREADS_OPTION, placement, placement_options,
                      speculation, speculative_options)


class ServeError(G4rtError):
    """The server could not start or its model could not load."""


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", default=None, envvar="G4RT_API_KEY",
              help="Require 'Authorization: Bearer KEY' (or X-Api-Key) on every endpoint but /health "
                   "(also from $G4RT_API_KEY).")
@click.option("--parallel", "-np", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Sequence slots: requests served at once, each with its own KV cache.")
@click.option("--queue", type=click.IntRange(0), default=64, show_default=True,
              help="Requests that may wait for a slot; past that, 503 with Retry-After.")
@click.option("--ctx", type=click.IntRange(2), default=None, help="Context size per slot, in tokens.")
@click.option("--backend", type=BACKEND_OR_AUTO_CHOICE, default="auto", show_default=True)
@placement_options
@speculative_options
@THREADS_OPTION
@PRECISION_OPTION
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Most seconds one request may take (it then ends with finish_reason 'length').")
@click.option("--truncate", is_flag=True,
              help="Cut prompts longer than the context (oldest tokens first) instead of answering 400.")
@click.option("--max-body", default="1MiB", show_default=True, help="Largest request body (413 above it).")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Allow browser requests from this origin (repeatable; '*' for any). Off by default.")
@click.option("--alias", "aliases", multiple=True, help="Another model name clients may ask for (repeatable).")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr.")
@MMPROJ_OPTION
@budget_options
@click.option("--media-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Let requests name local image / audio files under this folder (off by default).")
@click.option("--allow-remote-media", is_flag=True,
              help="Let requests name http(s) image / audio URLs, fetched by the server (off by default).")
@click.option("--max-media", default="20M", show_default=True, help="Largest image / audio item a request may send.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Scale out on Ray Serve: replicas of the server behind one endpoint (docs/scale-out.md).")
@click.option("--replicas", type=click.IntRange(1), default=None, help="With --ray: model replicas (default 1).")
@click.option("--autoscale", default=None, metavar="MIN,MAX", callback=lambda c, p, v: _autoscale(v),
              help="With --ray: scale between MIN and MAX replicas on the requests in flight.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="With --ray: join this Ray cluster (e.g. 10.0.0.1:6379) instead of starting one here.")
@click.option("--ray-routing", type=click.Choice(["prefix", "pow2"]), default=None,
              help="With --ray: prefix (a conversation stays on the replica with its prompt cache; "
                   "default) or pow2 (Ray's power of two choices).")
def serve(model, host, port, api_key, parallel, queue, ctx, backend, threads, precision, timeout, truncate,
          max_body, cors_origins, aliases, quiet, mmproj, image_min_tokens, image_max_tokens, mmproj_offload, media_dir, allow_remote_media, max_media, use_ray, replicas,
          autoscale, ray_address, ray_routing, **place):
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...).

    The model loads in the background: GET /health answers 503 until it is ready. MODEL defaults
    to the bundled Gemma 3 270M. Ctrl-C or SIGTERM stops the server cleanly."""
    import uvicorn

    from ..memory_plan import parse_size
    from ..server.app import ServerConfig, ServerState, create_app
    from ..server.metrics import ServerMetrics

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    if model is None:
        from ..model.bundled import default_model_path
        model = default_model_path()
    if not Path(model).is_file():
        raise ServeError(f"{model}: no such file")
    load_options = {**placement(place), **speculation(place), "mmproj": mmproj,
                    "image_min_tokens": image_min_tokens, "image_max_tokens": image_max_tokens,
                    "mmproj_offload": mmproj_offload}
    media = MediaPolicy(max_bytes=parse_size(max_media), media_dir=Path(media_dir).absolute() if media_dir else None,
                        allow_remote=allow_remote_media)
    if use_ray:
        from ..server.ray_serve import RaySettings, serve_on_ray
        settings = RaySettings(model=model, ctx=ctx, parallel=parallel, queue=queue, backend=backend, threads=threads,
                               precision=precision, load_options=load_options, media=media,
                               api_key=api_key, timeout_s=timeout, truncate=truncate, max_body=parse_size(max_body),
                               cors_origins=cors_origins, aliases=aliases, replicas=replicas, autoscale=autoscale,
                               routing=ray_routing or "prefix")
        return serve_on_ray(settings, host, port, ray_address, quiet, echo=lambda text: click.echo(text, err=True))
    ray_only = [name for name, value in (("--replicas", replicas), ("--autoscale", autoscale),
                                         ("--ray-address", ray_address), ("--ray-routing", ray_routing)) if value]
    if ray_only:
        raise ServeError(f"{', '.join(ray_only)} only apply with --ray")
    config = ServerConfig(model_id=Path(model).stem, aliases=tuple(aliases) + (Path(model).name,),
                          api_key=api_key or None, max_body=parse_size(max_body), cors_origins=tuple(cors_origins),
                          truncate=truncate, timeout_s=timeout, queue=queue, media=media)
    state = ServerState(config, ServerMetrics(parallel))


    def loader():
        from ..server.state import load_served_model
        m = load_served_model(model, backend=backend, ctx=ctx, threads=threads, slots=parallel,
                              precision=precision, **load_options)
        click.echo(f"g4rt serve: {Path(model).name} on {m.backend_name} ({m.device_name}, precision "
                   f"{m.precision_summary()}); {parallel} slot(s) of {m.engine.ctx} tokens", err=True)
        return m

    app = create_app(state, loader)
    server = _make_server(uvicorn.Config(app, host=host, port=port, log_level="warning" if quiet else "info",
                                         access_log=not quiet, timeout_graceful_shutdown=10, lifespan="on"), state)
    app.state.on_load_error = lambda message: setattr(server, "should_exit", True)
    click.echo(f"g4rt serve: loading {Path(model).name}; serving http://{host}:{port} "
               f"(GET /health is 503 until the model is ready)", err=True)
    try:
        server.run()
    except SystemExit:          # uvicorn exits when it cannot bind; say it as a g4rt error
        pass
    if server.started and not quiet:
        click.echo("g4rt serve: stopped", err=True)
    if state.load_error:
        raise ServeError(f"the model failed to load: {state.load_error}")
    if not server.started:
        raise ServeError(f"could not listen on {host}:{port} (is the port in use?)")


def _autoscale(value):
    """--autoscale MIN,MAX as a pair of replica counts (a usage error when malformed)."""
    if value is None:
        return None
    from ..server.ray_serve import parse_autoscale
    try:
        return parse_autoscale(value)
    except G4rtError as e:
        raise click.BadParameter(str(e)) from None


def _make_server(config, state):
    """uvicorn's server, told to end the running generations first when a signal stops it (they
    end with an error chunk, so no client hangs while uvicorn waits for connections to close)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # not from the signal handler itself: the scheduler's lock may be held right here
            threading.Thread(target=state.shutdown, daemon=True).start()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises the signal after its graceful shutdown (exit status -15); a clean
            # stop on Ctrl-C or SIGTERM is exit status 0 here
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    return Server(config)


__all__ = ["serve"]
