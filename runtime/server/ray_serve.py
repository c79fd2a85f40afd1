"""`g4rt serve --ray`: the server scaled out on Ray Serve (docs/scale-out.md). N model replicas,
each loading the model once and running the same g4rt app as `g4rt serve`, behind one ingress
that routes by prompt prefix (a conversation stays with its prompt cache) and serves every
replica's metrics on one page. Also a Ray Serve application builder:

    serve run g4rt.server.ray_serve:app model=/models/gemma.gguf replicas=2 parallel=4

Ray is imported only inside the functions that need it: importing this module (the CLI does,
for its options) needs no Ray."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import G4rtError
from .media_input import MediaPolicy
from .state import DEFAULT_MAX_BODY, ServerConfig, load_served_model

APP_NAME = "g4rt"
ROUTINGS = ("prefix", "pow2")
#: requests a replica takes at once, per slot: its slots busy plus as many waiting in its own FIFO
#: (they start the moment a slot frees); the rest wait in Ray's queue, where any replica can take them
QUEUE_FACTOR = 2
#: the local cluster `g4rt serve --ray` starts: replicas pass small messages, not tensors
LOCAL_OBJECT_STORE = 256 << 20


class RayServeError(G4rtError):
    """The Ray deployment could not start, or its settings are wrong."""


class RayMissingError(RayServeError):
    """Ray Serve is not installed."""


def require_ray():
    """(ray, ray.serve), or a one-line error saying how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise RayMissingError(f"--ray needs Ray Serve, which is not installed ({e}): "
                              f"pip install 'g4rt[ray]'") from None
    return ray, serve


def parse_autoscale(text: str) -> tuple[int, int]:
    """'MIN,MAX' replicas (0 ≤ MIN ≤ MAX, MAX ≥ 1)."""
    parts = str(text).split(",")
    try:
        lo, hi = (int(p.strip()) for p in parts)
    except ValueError:
        raise RayServeError(f"autoscale {text!r}: expected MIN,MAX replica counts, e.g. 1,4") from None
    if lo < 0 or hi < 1 or lo > hi:
        raise RayServeError(f"autoscale {text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return lo, hi


@dataclass
class RaySettings:
    """What a deployment needs: the model and how each replica loads it (as `g4rt serve`), the
    server's options, and the scale-out's."""
    model: str
    ctx: Optional[int] = None
    parallel: int = 1
    queue: int = 64
    backend: str = "auto"
    threads: Optional[int] = None
    precision: str = "auto"
    load_options: dict = field(default_factory=dict)     # placement, speculation, mmproj: as serve's
    api_key: Optional[str] = None
    timeout_s: Optional[float] = None
    truncate: bool = False
    max_body: int = DEFAULT_MAX_BODY
    cors_origins: tuple = ()
    aliases: tuple = ()
    #: what a request's image / audio references may name (--media-dir, --allow-remote-media,
    #: --max-media): each replica parses the media with it, as `g4rt serve` does
    media: MediaPolicy = field(default_factory=MediaPolicy)
    replicas: Optional[int] = None                        # default 1 (without autoscale)
    autoscale: Optional[tuple] = None                     # (min, max) replicas
    routing: str = "prefix"
    queue_factor: int = QUEUE_FACTOR
    replica_cpus: Optional[float] = None                  # default: --threads, else 1
    replica_gpus: float = 0
    ingress_replicas: int = 1
    app_name: str = APP_NAME

    def __post_init__(self):
        self.model = str(Path(self.model).expanduser().absolute())
        if self.replicas is not None and self.autoscale is not None:
            raise RayServeError("give a replica count or autoscaling bounds, not both")
        self.replicas = 1 if self.replicas is None else self.replicas
        if self.routing not in ROUTINGS:
            raise RayServeError(f"routing {self.routing!r}: one of {', '.join(ROUTINGS)}")
        for name, low in (("parallel", 1), ("replicas", 1), ("queue_factor", 1), ("ingress_replicas", 1),
                          ("queue", 0)):
            if getattr(self, name) < low:
                raise RayServeError(f"{name} must be at least {low}, not {getattr(self, name)}")
        if self.autoscale is not None:
            self.autoscale = parse_autoscale(",".join(map(str, self.autoscale)))

    @property
    def max_ongoing(self) -> int:
        return self.parallel * self.queue_factor

    @property
    def num_cpus(self) -> float:
        return self.replica_cpus if self.replica_cpus is not None else (self.threads or 1)

    def server_config(self) -> ServerConfig:
        name = Path(self.model).name
        return ServerConfig(model_id=Path(self.model).stem, aliases=tuple(self.aliases) + (name,),
                            api_key=self.api_key or None, max_body=self.max_body, cors_origins=tuple(self.cors_origins),
                            truncate=self.truncate, timeout_s=self.timeout_s, media=self.media,
                            # Ray sends a replica at most max_ongoing requests: its own FIFO holds the
                            # ones past its slots, never more, so it never answers "busy" itself
                            queue=self.max_ongoing - self.parallel)

    def load(self):
        """The model as `g4rt serve` loads it (on the replica's node)."""
        if not Path(self.model).is_file():
            raise RayServeError(f"{self.model}: no such file on node {socket.gethostname()} (every node "
                                f"needs the model at this path; docs/scale-out.md)")
        return load_served_model(self.model, backend=self.backend, ctx=self.ctx, threads=self.threads,
                                 slots=self.parallel, precision=self.precision, **self.load_options)


def model_deployment_options(s: RaySettings) -> dict:
    """Ray Serve options of the model replicas."""
    opts = {"max_ongoing_requests": s.max_ongoing,
            # past this many waiting (per ingress replica) a request is answered 503 + Retry-After;
            # Ray takes no 0 (--queue 0): one may wait
            "max_queued_requests": max(s.queue, 1),
            "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.replica_gpus},
            "health_check_period_s": 10, "health_check_timeout_s": 30,
            "graceful_shutdown_timeout_s": 30 if s.timeout_s is None else max(30, s.timeout_s)}
    if s.autoscale is not None:
        lo, hi = s.autoscale
        opts["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "initial_replicas": max(lo, 1),
                                      # one request per slot is a full replica
                                      "target_ongoing_requests": s.parallel,
                                      "upscale_delay_s": 30, "downscale_delay_s": 600}
    else:
        opts["num_replicas"] = s.replicas
    if s.routing == "prefix":
        opts["request_router_config"] = {
            "request_router_class": "g4rt.server.ray_routing.G4rtPrefixRouter",
            "request_router_kwargs": {
                # prompt affinity while the busiest candidate has at most parallel-1 requests
                # more than the idlest; past that, power of two choices
                "imbalanced_threshold": s.parallel - 1, "match_rate_threshold": 0.1,
                "do_eviction": True, "eviction_threshold_chars": 2_000_000,
                "eviction_target_chars": 1_600_000, "eviction_interval_secs": 30}}
    return opts


def build_app(s: RaySettings):
    """The Ray Serve application: ingress → model replicas, and the metrics board."""
    require_ray()
    from .ray_deployments import G4rtIngress, G4rtMetrics, G4rtModel
    if s.routing == "prefix":
        try:            # here, where it is one clear error, rather than in each ingress's router
            importlib.import_module(f"{__package__}.ray_routing")
        except ImportError as e:
            raise RayServeError(f"prefix routing needs Ray's PrefixCacheAffinityRouter, which this Ray does not "
                                f"have ({e}); use --ray-routing pow2 (routing=pow2)") from None
    board = G4rtMetrics.bind()
    model = G4rtModel.options(**model_deployment_options(s)).bind(s, board)
    return G4rtIngress.options(num_replicas=s.ingress_replicas, ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=4096).bind(model, board, s)


# ---- `serve run g4rt.server.ray_serve:app key=value ...` --------------------------------------

def _flag(v) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("1", "true", "yes", "on"):
        return True
    if str(v).lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a yes/no value: {v!r}")


def _names(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else tuple(x for x in str(v).split(",") if x)


def _size(v) -> int:
    from ..memory_plan import parse_size
    return v if isinstance(v, int) else parse_size(str(v))


_ARGS = {"ctx": int, "parallel": int, "queue": int, "backend": str, "threads": int, "precision": str,
         "api_key": str, "timeout": float, "truncate": _flag, "max_body": _size, "cors_origin": _names,
         "alias": _names, "replicas": int, "autoscale": parse_autoscale, "routing": str, "queue_factor": int,
         "replica_cpus": float, "replica_gpus": float, "ingress_replicas": int}
_LOAD_ARGS = {"gpu_layers": int, "cpu_moe": _flag, "n_cpu_moe": int, "draft": str, "spec": str, "draft_max": int,
              "draft_min": int, "draft_backend": str, "draft_p_min": float, "ngram_n": int, "mmproj": str,
              "image_min_tokens": int, "image_max_tokens": int, "mmproj_offload": _flag}
_RENAMED = {"timeout": "timeout_s", "cors_origin": "cors_origins", "alias": "aliases"}
#: the media policy's arguments (as serve's --media-dir, --allow-remote-media, --max-media)
_MEDIA_ARGS = {"media_dir": lambda v: Path(str(v)).expanduser().absolute(), "allow_remote_media": _flag,
               "max_media": _size}
_MEDIA_FIELDS = {"media_dir": "media_dir", "allow_remote_media": "allow_remote", "max_media": "max_bytes"}


def settings_from_args(args: dict) -> RaySettings:
    """RaySettings from a builder's arguments (strings from the command line, or typed values
    from a config file's `args:`); keys as the `g4rt serve` options, with _ or -."""
    args = {str(k).replace("-", "_"): v for k, v in dict(args or {}).items()}
    if not args.get("model"):
        raise RayServeError("the g4rt application needs model=PATH (the GGUF file, at that path on every node)")
    kw, load, media = {"model": str(args.pop("model"))}, {}, {}
    for key, value in args.items():
        convert = _ARGS.get(key) or _LOAD_ARGS.get(key) or _MEDIA_ARGS.get(key)
        if convert is None:
            raise RayServeError(f"unknown argument {key!r}; known: model, "
                                f"{', '.join(sorted([*_ARGS, *_LOAD_ARGS, *_MEDIA_ARGS]))}")
        try:
            value = convert(value)
        except (ValueError, TypeError, G4rtError) as e:
            raise RayServeError(f"argument {key}={value!r}: {e}") from None
        if key in _MEDIA_ARGS:
            media[_MEDIA_FIELDS[key]] = value
        else:
            (load if key in _LOAD_ARGS else kw)[_RENAMED.get(key, key)] = value
    return RaySettings(**kw, load_options=load, media=MediaPolicy(**media))


def app(args: dict):
    """Ray Serve application builder (`serve run g4rt.server.ray_serve:app model=PATH ...`)."""
    return build_app(settings_from_args(args))


# ---- `g4rt serve --ray` -----------------------------------------------------------------------

def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def serve_on_ray(s: RaySettings, host: str, port: int, address: Optional[str] = None, quiet: bool = False,
                 echo: Callable[[str], None] = _stderr) -> None:
    """Start (or join, with `address`) a Ray cluster, deploy the application, serve until SIGINT
    or SIGTERM, then take the application down (and the cluster, when this command started it)."""
    ray, serve = require_ray()
    local = address is None and not os.environ.get("RAY_ADDRESS")
    try:
        if local:
            ray.init(include_dashboard=False, log_to_driver=not quiet, object_store_memory=LOCAL_OBJECT_STORE)
        else:
            ray.init(address=address, log_to_driver=not quiet)
    except Exception as e:               # Ray raises ConnectionError, ValueError, RuntimeError ...
        # a cluster with token authentication (Ray's default for clusters it starts itself) only
        # takes clients that say so: Ray never assumes it for an explicit address
        hint = "" if local or os.environ.get("RAY_AUTH_MODE") else \
            " (if the cluster uses token authentication: RAY_AUTH_MODE=token and its token in ~/.ray/auth_token)"
        raise RayServeError(f"could not {'start' if local else 'connect to'} Ray"
                            f"{'' if local else ' at ' + str(address or os.environ['RAY_ADDRESS'])}: "
                            f"{_first_line(e)}{hint}") from None
    stop, deploying = threading.Event(), [True]

    def on_signal(*_):
        stop.set()
        if deploying[0]:                # still waiting for the replicas: give up on them now
            deploying[0] = False
            raise KeyboardInterrupt
    # ours from here to the end, shutdown included: Ray's own SIGTERM handler aborts the process
    # (exit 134), and a second Ctrl-C must not cut the application's removal short
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": host, "port": port})
        count = f"{s.autoscale[0]}-{s.autoscale[1]} (autoscaled)" if s.autoscale else str(s.replicas)
        echo(f"g4rt serve --ray: deploying {Path(s.model).name}: {count} replica(s) of {s.parallel} slot(s), "
             f"{s.routing} routing; waiting for the replicas to load")
        try:
            serve.run(build_app(s), name=s.app_name, route_prefix="/", blocking=False)
        except RuntimeError as e:
            raise RayServeError(f"the deployment failed: {_failure(serve, s.app_name) or _first_line(e)} "
                                f"(the replicas' logs: /tmp/ray/session_latest/logs/serve/)") from None
        deploying[0] = False
        if not stop.is_set():
            echo(f"g4rt serve --ray: serving http://{host}:{port} (Ctrl-C stops)")
        while not stop.wait(1.0):
            pass
    finally:
        try:
            if local:
                serve.shutdown()
            else:
                serve.delete(s.app_name)        # the cluster, and its other applications, stay
        finally:
            ray.shutdown()
            for sig, handler in old.items():
                signal.signal(sig, handler)
    if not quiet:
        echo("g4rt serve --ray: stopped")


def _failure(serve, app_name: str) -> Optional[str]:
    """Why a deployment failed, in one line: the last line of its message (a replica's
    constructor traceback ends with the exception, e.g. the model missing on a node)."""
    try:
        deployments = serve.status().applications[app_name].deployments
    except Exception:                   # noqa: BLE001  (the status is a courtesy; the error stands)
        return None
    for name, d in deployments.items():
        lines = [line.strip() for line in (d.message or "").splitlines() if line.strip()]
        if str(d.status).endswith("DEPLOY_FAILED") and lines:
            return f"{name}: {lines[-1].removeprefix('g4rt.server.ray_serve.')}"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["RaySettings", "RayServeError", "RayMissingError", "app", "build_app", "model_deployment_options",
           "parse_autoscale", "require_ray", "serve_on_ray", "settings_from_args"]
