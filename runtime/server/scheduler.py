"""The inference side of `g4rt serve`: one worker thread owns the engine and its sequence slots.

HTTP handlers never touch the model. They submit a `Job` (prompt ids, sampling, stops) and read
`Event`s back through the job's `emit` callback. The worker admits queued jobs into free slots in
arrival order (each to the slot whose cached KV shares the longest usable prefix with its prompt)
and steps every busy slot together: Engine.forward_batch feeds each slot its next prompt chunk or
its next token in shared passes, so N streams share the weight reads and a long prompt never
freezes the streams already running. (With speculative decoding, slots step in turn.) Each slot keeps the KV of its last sequence (the prompt
cache). A cancelled job (client gone, timeout, shutdown) stops at its next step and frees its slot.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..errors import G4rtError
from ..sampling import Sampler
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


@dataclass
class ErrorEvent:
    message: str
    status: int = 500


Event = TextEvent | DoneEvent | ErrorEvent


@dataclass
class Job:
    ids: list[int]
    max_tokens: int
    sampler: Sampler
    emit: Callable[[Event], None]
    stops: list[str] = field(default_factory=list)
    top_logprobs: Optional[int] = None    # None: no logprobs; else alternatives per token
    timeout_s: Optional[float] = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    # worker-side state
    submitted: float = field(default_factory=time.perf_counter)
    pending: list[int] = field(default_factory=list)
    history: list[int] = field(default_factory=list)
    logits: Optional[np.ndarray] = None
    reused: int = 0
    generated: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: float = 0.0
    next_tok: Optional[int] = None        # the token decided after the last pass, fed next
    draft_n: int = 0
    draft_accepted: int = 0

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Slot:
    index: int
    cached: list[int] = field(default_factory=list)     # tokens whose KV the slot holds, in order
    job: Optional[Job] = None
    last_used: float = 0.0
    decoder: Optional[StreamDecoder] = None
    stopper: Optional[StopMatcher] = None


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
        self.slots = [Slot(i) for i in range(engine.slots)]
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
        return sum(s.job is not None for s in self.slots)

    def slot_info(self) -> list[dict]:
        out = []
        for s in self.slots:
            job = s.job
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
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            self._queue.popleft()
            try:
                best, keep = None, -1
                for s in sorted(free, key=lambda s: s.last_used):
                    k = self.engine.prefix_to_keep(s.cached, job.ids)
                    if k > keep:
                        best, keep = s, k
                self._start(best, job, keep)
            except Exception as e:      # a job that cannot start fails alone; the worker goes on
                if best is not None:
                    self._reset(best)
                    best.job = None
                msg = str(e) if isinstance(e, G4rtError) else f"{type(e).__name__}: {e}"
                self._send(job, ErrorEvent(f"generation failed: {msg}", 500))

    def _start(self, slot: Slot, job: Job, keep: int) -> None:
        self.engine.truncate(keep, slot.index)
        slot.cached = slot.cached[:keep]
        slot.job = job
        slot.decoder = StreamDecoder(self.tokenizer)
        slot.stopper = StopMatcher(job.stops)
        job.reused, job.pending, job.history = keep, list(job.ids[keep:]), list(job.ids)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._queue and all(s.job is None for s in self.slots):
                    self._cv.wait()
                if self._stopping:
                    break
                self._admit()
                self._update_gauges()
                active = [s for s in self.slots if s.job is not None]
            if self.speculator is None:
                self._step_all(active)
            else:
                for slot in active:
                    try:
                        self._step(slot)
                    except Exception as e:       # a failed step fails its job, never the worker
                        self._fail(slot, e)
        with self._cv:
            jobs = [s.job for s in self.slots if s.job is not None] + list(self._queue)
            self._queue.clear()
            for s in self.slots:
                s.job = None
            self._update_gauges()
        for job in jobs:
            self._send(job, ErrorEvent(self._stop_message, 503))

    def _fail(self, slot: Slot, e: Exception) -> None:
        self._reset(slot)
        msg = str(e) if isinstance(e, G4rtError) else f"{type(e).__name__}: {e}"
        self._end(slot, ErrorEvent(f"generation failed: {msg}", 500))

    def _step_all(self, active: list[Slot]) -> None:
        """One step of every busy slot through Engine.forward_batch: each slot's next prompt
        chunk or its next token. The running streams' tokens go first and the prompt chunks
        shortest first; the engine packs short items into shared passes and runs a long chunk
        alone, and reports each pass as it ends, so a slot's next token (a prompt's first one
        included) is sampled and sent then, not after the other prompts of the step. Row-exact
        batching keeps every stream's tokens those it gets alone."""
        work: list[tuple[Slot, list[int], bool]] = []      # (slot, ids, is prefill)
        for slot in active:
            try:
                ids = self._next_input(slot)
            except Exception as e:
                self._fail(slot, e)
                continue
            if ids is not None:
                work.append((slot, ids, bool(slot.job.pending)))
        if not work:
            return
        work.sort(key=lambda w: len(w[1]))
        reported: set[int] = set()
        t_last = [time.perf_counter()]

        def on_pass(indexes: list[int], outs: list[np.ndarray]) -> None:
            now = time.perf_counter()
            dt, t_last[0] = now - t_last[0], now
            if self.metrics is not None:
                self.metrics.record_batch(len(indexes))
            for i, logits in zip(indexes, outs):
                reported.add(i)
                self._took(*work[i], logits, dt)

        try:
            self.engine.forward_batch([(slot.index, ids) for slot, ids, _ in work], on_pass=on_pass)
        except Exception as e:      # a failed pass fails the jobs not yet through, never the worker
            for i, (slot, _, _) in enumerate(work):
                if i not in reported:
                    self._fail(slot, e)

    def _took(self, slot: Slot, ids: list[int], prefill: bool, logits: np.ndarray, dt: float) -> None:
        """A pass fed `ids` to the slot: keep its logits, account the time, and once the prompt
        is done decide the next token (job.next_tok, fed in the next step)."""
        job = slot.job
        job.logits = logits
        slot.cached.extend(ids)
        if prefill:
            job.prefill_s += dt
            del job.pending[:len(ids)]
        else:
            job.decode_s += dt
        if job.pending:
            return
        try:
            t0 = time.perf_counter()
            tok = job.sampler.sample(job.logits, job.history)
            if not self._emit(slot, tok, job.logits):
                job.decode_s += time.perf_counter() - t0
                job.next_tok = tok
        except Exception as e:      # fails this job, never the worker or the others
            self._fail(slot, e)

    def _next_input(self, slot: Slot) -> Optional[list[int]]:
        """What a slot feeds next: a prompt chunk, or the token decided after its last pass
        (None when the job ended instead)."""
        job = slot.job
        if job.cancelled.is_set():
            self._end(slot, None)
            return None
        if job.timeout_s is not None and time.perf_counter() - job.submitted > job.timeout_s:
            self._finish(slot, "length", "timeout")
            return None
        if job.pending:
            return job.pending[:self.engine.prefill_chunk]
        tok, job.next_tok = job.next_tok, None
        return [tok]

    def _reset(self, slot: Slot) -> None:
        self.engine.reset(slot.index)
        slot.cached = []

    def _send(self, job: Job, event: Event) -> None:
        try:
            job.emit(event)
        except Exception:      # the client's event loop is gone: nobody is listening any more
            job.cancel()

    def _end(self, slot: Slot, event: Optional[Event]) -> None:
        job = slot.job
        slot.job, slot.decoder, slot.stopper = None, None, None
        slot.last_used = time.perf_counter()
        if job is not None and event is not None:
            self._send(job, event)
        with self._cv:
            self._update_gauges()

    def _finish(self, slot: Slot, finish_reason: str, stop_reason: str) -> None:
        job = slot.job
        if slot.stopper is not None and not slot.stopper.stopped:
            # the end of the stream: bytes of a split character and held-back text come out now
            text, stopped = slot.stopper.push(slot.decoder.flush())
            if not stopped:
                text += slot.stopper.flush()      # may still settle a stop that was arriving
            if text:
                self._send(job, TextEvent(text))
            if slot.stopper.stopped:
                finish_reason, stop_reason = "stop", "stop_string"
        prompt_n = len(job.ids) - job.reused
        usage = {
            "prompt_tokens": len(job.ids), "completion_tokens": job.generated,
            "total_tokens": len(job.ids) + job.generated, "cached_tokens": job.reused,
            "prompt_n": prompt_n, "prompt_ms": job.prefill_s * 1e3,
            "prompt_per_second": prompt_n / job.prefill_s if job.prefill_s > 0 else 0.0,
            "predicted_n": job.generated, "predicted_ms": job.decode_s * 1e3,
            "predicted_per_second": (max(job.generated - 1, 0) / job.decode_s) if job.decode_s > 0 else 0.0,
            "time_to_first_token_ms": job.first_token_s * 1e3, "slot": slot.index,
        }
        if self.speculator is not None:      # llama-server's names
            usage.update(draft_n=job.draft_n, draft_n_accepted=job.draft_accepted)
        if self.metrics is not None:
            self.metrics.record_generation(usage)
        self._end(slot, DoneEvent(finish_reason, stop_reason, usage))

    def _step(self, slot: Slot) -> None:
        job, eng, i = slot.job, self.engine, slot.index
        if job.cancelled.is_set():
            self._end(slot, None)
            return
        if job.timeout_s is not None and time.perf_counter() - job.submitted > job.timeout_s:
            self._finish(slot, "length", "timeout")
            return
        if job.pending:
            # one prefill chunk per turn: the other slots keep streaming between chunks
            chunk = job.pending[:eng.prefill_chunk]
            t0 = time.perf_counter()
            try:
                job.logits = eng.forward(chunk, slot=i)[-1]
            except BaseException:
                self._reset(slot)
                raise
            job.prefill_s += time.perf_counter() - t0
            slot.cached.extend(chunk)
            del job.pending[:len(chunk)]
            if job.pending:
                return
        t0 = time.perf_counter()
        tok, job.next_tok = (job.next_tok, None) if job.next_tok is not None else \
            (job.sampler.sample(job.logits, job.history), None)
        if self._emit(slot, tok, job.logits):
            return
        spec = self.speculator
        try:
            if spec is None:
                job.logits = eng.forward([tok], slot=i)[-1]
                slot.cached.append(tok)
            else:
                out = spec.step(tok, job.history, job.sampler, slot=i, budget=job.max_tokens - job.generated)
                slot.cached = job.history + out[:-1]      # the cache: tok and the kept proposals
                job.draft_n += spec.last_drafted
                job.draft_accepted += len(out) - 1
                rows = spec.last_logits
                for t, row in zip(out[:-1], rows):
                    if self._emit(slot, t, row):
                        return
                job.next_tok, job.logits = out[-1], rows[len(out) - 1]
        except BaseException:
            self._reset(slot)
            raise
        finally:
            job.decode_s += time.perf_counter() - t0

    def _emit(self, slot: Slot, tok: int, logits: np.ndarray) -> bool:
        """Hand one decided token to the client; True when the job ended with it."""
        job = slot.job
        if self.tokenizer.is_eog(tok):
            self._finish(slot, "stop", "eog")
            return True
        job.generated += 1
        job.history.append(tok)
        if job.generated == 1:
            job.first_token_s = time.perf_counter() - job.submitted
        lp = [token_logprobs(logits, tok, job.top_logprobs)] if job.top_logprobs is not None else []
        text, stopped = slot.stopper.push(slot.decoder.push(tok))
        if text or lp:
            self._send(job, TextEvent(text, lp))
        if stopped:
            self._finish(slot, "stop", "stop_string")
        elif job.generated >= job.max_tokens:
            self._finish(slot, "length", "max_tokens")
        elif len(job.history) - 1 >= self.engine.ctx:      # plain decoding has the rest cached by now
            self._finish(slot, "length", "context_full")
        else:
            return False
        return True
