"""What every API's routes share: the server's configuration, the loaded model and its scheduler,
the checks each generation request goes through (model name, context fit), and the sampler."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from ..errors import G4rtError
from ..sampling import Sampler, SamplingError
from ..text.chat_template import BASE_MODEL_NOTICE, is_base_model
from .media_input import MediaPolicy
from .metrics import ServerMetrics
from .protocol import APIError
from .scheduler import Scheduler

log = logging.getLogger("g4rt.server")

DEFAULT_MAX_BODY = 1 << 20


@dataclass
class ServerConfig:
    model_id: str = "g4rt"
    aliases: tuple[str, ...] = ()
    api_key: Optional[str] = None
    max_body: int = DEFAULT_MAX_BODY
    cors_origins: tuple[str, ...] = ()
    truncate: bool = False
    timeout_s: Optional[float] = None
    queue: int = 64
    retry_after_s: int = 1
    media: MediaPolicy = field(default_factory=MediaPolicy)     # what image / audio references may name


@dataclass
class ServerState:
    """What the routes share: the loaded model (None while loading) and its scheduler."""
    config: ServerConfig
    metrics: ServerMetrics
    model: object = None
    scheduler: Optional[Scheduler] = None
    load_error: Optional[str] = None
    base_model: bool = False
    thinking: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    media_lock: threading.Lock = field(default_factory=threading.Lock)
    _warned_base: bool = False

    def attach(self, model) -> None:
        """The model is loaded: start its scheduler and answer requests."""
        try:
            self.base_model = is_base_model(model.engine.file)
        except (AttributeError, G4rtError):
            self.base_model = False
        # Gemma 4's thinking channel is only parsed where the vocabulary has its markers
        self.thinking = model._think_ids[0] is not None and model._think_ids[1] is not None
        self.scheduler = Scheduler(model.engine, model.tokenizer, self.config.queue, self.metrics,
                                   speculator=getattr(model, "speculator", None))
        self.model = model
        if self.base_model:
            log.warning("g4rt serve: %s", BASE_MODEL_NOTICE)

    def shutdown(self, message: str = "the server is shutting down") -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(message)

    def ready(self):
        if self.model is None:
            if self.load_error:
                raise APIError(503, f"the model failed to load: {self.load_error}", "unavailable_error")
            raise APIError(503, "the model is still loading", "unavailable_error",
                           headers={"Retry-After": "5"})
        return self.model

    def check_model(self, name: Optional[str]) -> str:
        known = (self.config.model_id, *self.config.aliases)
        if name is None or name in known:
            return self.config.model_id
        raise APIError(404, f"the model {name!r} does not exist here; this server serves "
                            f"{', '.join(repr(k) for k in known)} (GET /v1/models)",
                       param="model", code="model_not_found")

    def fit(self, ids: list[int], max_tokens: Optional[int]) -> tuple[list[int], int]:
        """(prompt ids, max tokens) that fit the context: a prompt over it is a 400 (or, with
        --truncate, loses its oldest tokens after the first); max_tokens is clipped to the room."""
        ctx = self.model.engine.ctx
        n = len(ids)
        if n == 0:
            raise APIError(400, "the prompt is empty", param="prompt")
        if n >= ctx:
            if not self.config.truncate:
                raise APIError(400, f"the prompt has {n} tokens, {n - ctx + 1} more than the context of {ctx} "
                                    f"allows (at most {ctx - 1}, to leave room for an answer); shorten it, "
                                    f"start the server with a larger --ctx, or with --truncate",
                               code="exceed_context_size_error")
            keep = max(1, ctx - min(max_tokens or ctx // 4, ctx // 2) - 1)
            ids = ids[:1] + ids[n - keep + 1:]
            log.info("truncated a %d-token prompt to %d tokens", n, len(ids))
        room = ctx - len(ids)
        return ids, min(max_tokens or room, room)

    def base_model_warning(self) -> Optional[str]:
        if not self.base_model:
            return None
        if not self._warned_base:
            self._warned_base = True
            log.warning("g4rt serve: /v1/chat/completions on a base model: %s", BASE_MODEL_NOTICE)
        return BASE_MODEL_NOTICE



def sampler_for(temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                min_p: Optional[float] = None, repeat_penalty: Optional[float] = None,
                frequency_penalty: Optional[float] = None, presence_penalty: Optional[float] = None,
                seed: Optional[int] = None, logit_bias: Optional[dict[int, float]] = None) -> Sampler:
    """One sampler from any API's sampling fields (None = the default); a bad combination is a 400.
    Every API goes through here, so the same values and seed give the same tokens on each."""
    try:
        return Sampler(temperature=1.0 if temperature is None else temperature,
                       top_k=top_k or 0, top_p=1.0 if top_p is None else top_p,
                       min_p=min_p or 0.0,
                       repeat_penalty=1.0 if repeat_penalty is None else repeat_penalty,
                       frequency_penalty=frequency_penalty or 0.0,
                       presence_penalty=presence_penalty or 0.0, seed=seed, logit_bias=logit_bias)
    except SamplingError as e:
        raise APIError(400, str(e)) from None


def load_served_model(path, *, backend: str, ctx: Optional[int], threads: Optional[int], slots: int,
                      precision: str, **options):
    """The model as `g4rt serve` loads it, locally or on a Ray replica: sliding rings one prefill
    chunk longer than the window (as llama.cpp's SWA cache), so the next chat turn can move back
    past the previous answer and keep the shared prefix. options: placement, speculation, mmproj."""
    from ..engine import CHAT_RING_SLACK
    from ..generation import load
    return load(path, backend=backend, ctx=ctx, threads=threads, slots=slots, precision=precision,
                ring_slack=CHAT_RING_SLACK, **options)
