"""The inference side of `g4rt serve`: one worker thread owns the engine and its sequence slots.

HTTP handlers never touch the model. They submit a `Job` (prompt ids, sampling, stops) and read
`Event`s back through the job's `emit` callback. The worker admits queued jobs into free slots in
arrival order (each to the slot whose cached KV shares the longest usable prefix with its prompt)
and steps every busy slot together through the shared `SlotLoop` (runtime/slots.py): N streams
share the weight reads, a long prompt never freezes the streams already running, and a prompt's
first token goes out right after its own pass. Each slot keeps the KV of its last sequence (the
prompt cache). A cancelled job (client gone, timeout, shutdown) stops at its next step and frees
its slot; a job that fails (its pass, its sampler) fails alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..errors import G4rtError
from ..slots import Slot, SlotLoop, SlotRequest
from ..text.tokenizer import StreamDecoder
from .output_text import StopMatcher


class QueueFullError(G4rtError):
    """Every slot is busy and the wait queue is full."""


class ShuttingDownError(G4rtError):
    """The server is stopping and takes no new work."""


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]          # (token, logprob), best first


@dataclass
class TextEvent:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class DoneEvent:
    finish_reason: str                    # "stop" or "length"
    stop_reason: str                      # g4rt's detail: eog, stop_string, max_tokens, context_full, timeout
    usage: dict
    matched_stop: Optional[str] = None    # the stop string that ended it (stop_reason stop_string)


@dataclass
class ErrorEvent:
    message: str
    status: int = 500


Event = TextEvent | DoneEvent | ErrorEvent


@dataclass(eq=False)
class Job(SlotRequest):
    """A request as the worker runs it: the slot loop's request plus its event channel."""
    emit: Callable[[Event], None]
    stops: list[str] = field(default_factory=list)
    top_logprobs: Optional[int] = None    # None: no logprobs; else alternatives per token
    timeout_s: Optional[float] = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    decoder: Optional[StreamDecoder] = None      # the text of its tokens, set when it starts
    stopper: Optional[StopMatcher] = None

    def cancel(self) -> None:
        self.cancelled.set()


# how a finished job reads in OpenAI's terms: SlotLoop's reason -> (finish_reason, stop_reason)
_FINISHED = {"eog": ("stop", "eog"), "stop_string": ("stop", "stop_string"),
             "max_tokens": ("length", "max_tokens"), "context_full": ("length", "context_full"),
             "timeout": ("length", "timeout")}


def _failure(e: BaseException) -> ErrorEvent:
    msg = str(e) if isinstance(e, G4rtError) else f"{type(e).__name__}: {e}"
    return ErrorEvent(f"generation failed: {msg}", 500)


def token_logprobs(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """The chosen token's log-probability under the model's distribution, and the top ones."""
    x = logits.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    alts: list[tuple[int, float]] = []
    if top > 0:
        k = min(top, x.shape[0])
        part = np.argpartition(-x, k - 1)[:k]
        part = part[np.lexsort((part, -x[part]))]
        alts = [(int(t), float(x[t] - lse)) for t in part]
    return TokenLogprob(int(token), float(x[token] - lse), alts)


class Scheduler:
    """Owns the engine on one worker thread; `submit` queues jobs from any thread."""

    def __init__(self, engine, tokenizer, queue_limit: int = 64, metrics=None, speculator=None):
        self.engine, self.tokenizer = engine, tokenizer
        self.speculator = speculator
        self.queue_limit = int(queue_limit)
        self.metrics = metrics
        self.loop = SlotLoop(engine, tokenizer.is_eog, self._on_token, self._on_end, self._should_stop,
                             on_pass=metrics.record_batch if metrics is not None else None,
                             speculator=speculator)
        self.slots = self.loop.slots
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="g4rt-inference", daemon=True)
        self._thread.start()

    # ---- the HTTP side ---------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down")
            if self.busy_slots() == len(self.slots) and len(self._queue) >= self.queue_limit:
                raise QueueFullError(f"all {len(self.slots)} slots are busy and {len(self._queue)} "
                                     f"requests are waiting (--queue {self.queue_limit})")
            self._queue.append(job)
            self._update_gauges()
            self._cv.notify()

    def wake(self) -> None:
        """Let the worker see a cancellation of a job that is still queued."""
        with self._cv:
            self._cv.notify()

    def shutdown(self, message: str = "the server is shutting down", wait: float = 10.0) -> None:
        """Fail queued and running jobs with an error event and stop the worker."""
        with self._cv:
            if self._stopping:
                return
            self._stopping = True
            self._stop_message = message
            self._cv.notify()
        self._thread.join(wait)

    def busy_slots(self) -> int:
        return len(self.loop.busy())

    def slot_info(self) -> list[dict]:
        out = []
        for s in self.slots:
            job = s.request
            out.append({"id": s.index, "state": "processing" if job else "idle", "n_ctx": self.engine.ctx,
                        "cache_tokens": len(s.cached),
                        "prompt_tokens": len(job.ids) if job else 0,
                        "generated_tokens": job.generated if job else 0})
        return out

    # ---- the worker ------------------------------------------------------------------------
    def _update_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.set_load(self.busy_slots(), len(self._queue))

    def _admit(self) -> None:
        """Move queued jobs into free slots, oldest first; drop the ones cancelled while waiting."""
        while self._queue:
            job = self._queue[0]
            if job.cancelled.is_set():
                self._queue.popleft()
                continue
            if not self.loop.free():
                return
            self._queue.popleft()
            try:
                job.decoder = StreamDecoder(self.tokenizer)
                job.stopper = StopMatcher(job.stops)
                self.loop.start(job, reuse_prefix=True)
            except Exception as e:      # a job that cannot start fails alone; the worker goes on
                self._send(job, _failure(e))

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._queue and not self.busy_slots():
                    self._cv.wait()
                if self._stopping:
                    break
                self._admit()
                self._update_gauges()
            self.loop.step()
        with self._cv:
            queued = list(self._queue)
            self._queue.clear()
            self._update_gauges()
        self.loop.end_all("shutdown")
        for job in queued:
            self._send(job, ErrorEvent(self._stop_message, 503))

    def _should_stop(self, job: Job) -> Optional[str]:
        if job.cancelled.is_set():
            return "cancelled"
        if job.timeout_s is not None and time.perf_counter() - job.submitted > job.timeout_s:
            return "timeout"
        return None

    def _send(self, job: Job, event: Event) -> None:
        try:
            job.emit(event)
        except Exception:      # the client's event loop is gone: nobody is listening any more
            job.cancel()

    def _on_token(self, job: Job, tok: int, logits: np.ndarray) -> bool:
        """Hand one decided token to the client; True when it completes a stop string."""
        lp = [token_logprobs(logits, tok, job.top_logprobs)] if job.top_logprobs is not None else []
        text, stopped = job.stopper.push(job.decoder.push(tok))
        if text or lp:
            self._send(job, TextEvent(text, lp))
        return stopped

    def _on_end(self, slot: Slot, job: Job, reason: str, error: Optional[BaseException]) -> None:
        if reason == "error":
            self._send(job, _failure(error))
        elif reason == "shutdown":
            self._send(job, ErrorEvent(self._stop_message, 503))
        elif reason in _FINISHED:
            self._finish(slot, job, *_FINISHED[reason])
        # cancelled: nobody waits for an answer
        with self._cv:
            self._update_gauges()

    def _finish(self, slot: Slot, job: Job, finish_reason: str, stop_reason: str) -> None:
        if job.stopper is not None and not job.stopper.stopped:
            # the end of the stream: bytes of a split character and held-back text come out now
            text, stopped = job.stopper.push(job.decoder.flush())
            if not stopped:
                text += job.stopper.flush()      # may still settle a stop that was arriving
            if text:
                self._send(job, TextEvent(text))
            if job.stopper.stopped:
                finish_reason, stop_reason = "stop", "stop_string"
        prompt_n = len(job.ids) - job.reused
        first_token_s = job.first_token_at - job.submitted if job.first_token_at else 0.0
        usage = {
            "prompt_tokens": len(job.ids), "completion_tokens": job.generated,
            "total_tokens": len(job.ids) + job.generated, "cached_tokens": job.reused,
            "prompt_n": prompt_n, "prompt_ms": job.prefill_s * 1e3,
            "prompt_per_second": prompt_n / job.prefill_s if job.prefill_s > 0 else 0.0,
            "predicted_n": job.generated, "predicted_ms": job.decode_s * 1e3,
            "predicted_per_second": (max(job.generated - 1, 0) / job.decode_s) if job.decode_s > 0 else 0.0,
            "time_to_first_token_ms": first_token_s * 1e3, "slot": slot.index,
        }
        if self.speculator is not None:      # llama-server's names
            usage.update(draft_n=job.draft_n, draft_n_accepted=job.draft_accepted)
        if self.metrics is not None:
            self.metrics.record_generation(usage)
        matched = job.stopper.matched if (stop_reason == "stop_string" and job.stopper is not None) else None
        self._send(job, DoneEvent(finish_reason, stop_reason, usage, matched))
