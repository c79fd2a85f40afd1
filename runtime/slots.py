"""The engine's sequence slots and the loop that decides their next tokens, shared by
`Model.generate_many` (`g4rt run --batch`) and the server's scheduler.

Each busy slot holds one `SlotRequest`. A step (`SlotLoop.step`) feeds every busy slot its next
prompt chunk or the token decided after its last pass through one `Engine.forward_batch` call:
the running streams' tokens first and the prompt chunks shortest first; the engine packs short
items into shared passes, runs a long chunk alone, and reports each pass as it ends, so a slot
whose prompt is done samples its next token then (a prompt's first token goes out before the
other prompts of the step run). forward_batch is row-exact and cuts prompt chunks as
`Engine.forward` does, so a request's tokens are those it gets decoded alone. With a speculator
the slots step in turn instead, each verifying its drafter's proposals (`Speculator.step`).

The callers add only what is theirs, through callbacks: what a decided token means to them
(text, logprobs, a stop string: `on_token`), what an ended request means (`on_end`), when to
stop one early (`should_stop`: cancelled, timed out), and whether an error fails only its own
request (the server) or goes up to the caller (`generate_many`).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import KW_ONLY, dataclass, field
from typing import Callable, Optional

import numpy as np

from .errors import ContextOverflowError, G4rtError
from .sampling import Sampler

# Why a request ended (SlotLoop's on_end): eog, max_tokens, context_full, stop_string (on_token
# said so), a reason should_stop gave (cancelled, timeout), error, or what end_all was told.


@dataclass(eq=False)
class SlotRequest:
    """One sequence to decode in a slot: its prompt, token budget and sampler, and its progress."""
    ids: list[int]
    max_tokens: int
    sampler: Sampler
    _: KW_ONLY
    # kept by the loop
    pending: list[int] = field(default_factory=list)      # prompt tokens still to feed
    history: list[int] = field(default_factory=list)      # the prompt and the tokens decided so far
    logits: Optional[np.ndarray] = None
    next_tok: Optional[int] = None        # the token decided after the last pass, fed next
    reused: int = 0                       # prompt tokens the slot's cache already held
    generated: int = 0
    started: float = 0.0                  # perf_counter times: in a slot, prompt fed, first token
    prompt_done_at: float = 0.0
    first_token_at: float = 0.0
    prefill_s: float = 0.0                # the time of its passes: prompt chunks,
    decode_s: float = 0.0                 # tokens (and sampling)
    draft_n: int = 0                      # speculation: proposals drafted, accepted
    draft_accepted: int = 0
    # images / audio: the soft tokens of the prompt's rows (engine.MediaRows over `ids`); such a
    # prompt is fed in one Engine.forward of its own (no image block is cut, whatever the chunk)
    media: Optional[object] = None
    cache_key: list[int] = field(default_factory=list)    # media_key of ids, set when it starts


def media_key(ids: list[int], media) -> list[int]:
    """What a slot's cache holds after a prompt with media: its ids with each media row as a
    negative key hashed from its soft tokens, its place in its image block and the block's length
    (a placeholder id says nothing of the image), so a later prompt with the same media at the
    same place reuses those rows, as llama-server keys its cache by the media's hash."""
    key = list(ids)
    if media is None:
        return key
    where = {}
    for b0, b1 in media.blocks:
        for i in range(b0, min(b1, len(key))):
            where[i] = (i - b0, b1 - b0)
    for i in np.flatnonzero(media.take[:len(key)]):
        i = int(i)
        h = hashlib.blake2b(media.embd[i].tobytes(), digest_size=7, person=b"g4rt-media")
        h.update(repr(where.get(i)).encode())
        key[i] = -1 - int.from_bytes(h.digest(), "little")
    return key


def reusable_with_media(keep: int, media) -> int:
    """A reused prefix never ends inside an image block: the cached rows of a block saw the block's
    later rows (bidirectional attention), which the new prompt may not share."""
    if media is not None:
        for b0, b1 in media.blocks:
            if b0 < keep < b1:
                return b0
    return keep


def media_from(media, start: int):
    """The MediaRows of rows [start, n) of a prompt (after a reused prefix, never inside a block)."""
    if start == 0:
        return media
    return type(media)(embd=media.embd[start:], take=media.take[start:],
                       blocks=tuple((b0 - start, b1 - start) for b0, b1 in media.blocks if b1 > start))


@dataclass(eq=False)
class Slot:
    index: int
    cached: list[int] = field(default_factory=list)     # tokens whose KV the slot holds, in order
    request: Optional[SlotRequest] = None
    last_used: float = 0.0


class SlotLoop:
    """Steps the requests in the engine's slots. Callbacks:

    on_token(request, token, logits) -> bool: a decided token (never an end-of-generation one);
        True ends the request with it ("stop_string").
    on_end(slot, request, reason, error): the request left the slot (error: the exception).
    should_stop(request) -> reason or None: asked of each busy slot at the start of a step.
    on_pass(items): a batched pass of that many items ended.
    isolate_errors: an error fails only its request (reset slot, reason "error"); else it is raised."""

    def __init__(self, engine, is_eog: Callable[[int], bool],
                 on_token: Callable[[SlotRequest, int, np.ndarray], bool],
                 on_end: Callable[[Slot, SlotRequest, str, Optional[BaseException]], None],
                 should_stop: Optional[Callable[[SlotRequest], Optional[str]]] = None,
                 on_pass: Optional[Callable[[int], None]] = None, speculator=None,
                 isolate_errors: bool = True):
        self.engine, self.is_eog = engine, is_eog
        self.on_token, self.on_end, self.should_stop, self.on_pass = on_token, on_end, should_stop, on_pass
        self.speculator = speculator
        self.isolate_errors = isolate_errors
        self.slots = [Slot(i) for i in range(engine.slots)]

    def busy(self) -> list[Slot]:
        return [s for s in self.slots if s.request is not None]

    def free(self) -> list[Slot]:
        return [s for s in self.slots if s.request is None]

    # ---- requests in and out ---------------------------------------------------------------
    def start(self, request: SlotRequest, reuse_prefix: bool) -> Slot:
        """Put a request into a free slot: with reuse_prefix the one whose cached KV shares the
        longest usable prefix with its prompt (least recently used first), else the first free
        slot, from scratch. A slot that fails to start is left reset and free."""
        free = self.free()
        if not free:
            raise G4rtError("every slot is busy")
        best = None
        request.cache_key = media_key(request.ids, request.media)
        try:
            if reuse_prefix:
                keep = -1
                for s in sorted(free, key=lambda s: s.last_used):
                    k = reusable_with_media(self.engine.prefix_to_keep(s.cached, request.cache_key), request.media)
                    if k > keep:
                        best, keep = s, k
                self.engine.truncate(keep, best.index)
            else:
                best, keep = free[0], 0
                self.engine.reset(best.index)
            best.cached = best.cached[:keep]
            best.request = request
            request.reused, request.pending, request.history = keep, list(request.ids[keep:]), list(request.ids)
            request.started = time.perf_counter()
        except Exception:
            if best is not None:
                self._reset(best)
                best.request = None
            raise
        return best

    def end_all(self, reason: str) -> None:
        """End every busy slot's request (the caller stops: interrupted, shutting down)."""
        for slot in self.busy():
            self._end(slot, reason)

    def _end(self, slot: Slot, reason: str, error: Optional[BaseException] = None) -> None:
        request = slot.request
        if request is None:
            return
        slot.request = None
        slot.last_used = time.perf_counter()
        self.on_end(slot, request, reason, error)

    def _reset(self, slot: Slot) -> None:
        self.engine.reset(slot.index)
        slot.cached = []

    def _fail(self, slot: Slot, error: Exception) -> None:
        """The request fails alone: its cache no longer matches a known sequence."""
        self._reset(slot)
        self._end(slot, "error", error)

    # ---- one step --------------------------------------------------------------------------
    def step(self) -> int:
        """One step of every busy slot; returns the rows fed through forward_batch (0: none)."""
        if self.should_stop is not None:
            for slot in self.busy():
                reason = self.should_stop(slot.request)
                if reason is not None:
                    self._end(slot, reason)
        if self.speculator is not None:
            return self._step_speculating(self.busy())
        return self._step_batched(self.busy())

    def _prefill_media(self, slot: Slot) -> None:
        """A prompt with media: the rest of it in one Engine.forward, which keeps each image's
        block in one pass (the others wait this step)."""
        request = slot.request
        start = len(request.ids) - len(request.pending)
        ids = list(request.pending)
        t0 = time.perf_counter()
        try:
            logits = self.engine.forward(ids, slot=slot.index, media=media_from(request.media, start))[-1]
        except BaseException:
            self._reset(slot)
            raise
        self._took(slot, ids, True, logits, time.perf_counter() - t0)
        slot.cached = list(request.cache_key)

    def _step_batched(self, busy: list[Slot]) -> int:
        work: list[tuple[Slot, list[int], bool]] = []      # (slot, ids, is prefill)
        for slot in busy:
            if slot.request.media is not None and slot.request.pending:
                try:
                    self._prefill_media(slot)
                except Exception as e:
                    if not self.isolate_errors:
                        raise
                    self._fail(slot, e)
                continue
            try:
                ids = self._next_input(slot)
            except Exception as e:
                if not self.isolate_errors:
                    raise
                self._fail(slot, e)
                continue
            if ids is not None:
                work.append((slot, ids, bool(slot.request.pending)))
        if not work:
            return 0
        work.sort(key=lambda w: len(w[1]))
        reported: set[int] = set()
        t_last = [time.perf_counter()]

        def on_pass(indexes: list[int], outs: list[np.ndarray]) -> None:
            now = time.perf_counter()
            dt, t_last[0] = now - t_last[0], now
            if self.on_pass is not None:
                self.on_pass(len(indexes))
            for i, logits in zip(indexes, outs):
                reported.add(i)
                self._took(*work[i], logits, dt)

        try:
            self.engine.forward_batch([(slot.index, ids) for slot, ids, _ in work], on_pass=on_pass)
        except Exception as e:      # a failed pass fails the requests not yet through
            if not self.isolate_errors:
                raise
            for i, (slot, _, _) in enumerate(work):
                if i not in reported:
                    self._fail(slot, e)
        return sum(len(ids) for _, ids, _ in work)

    def _next_input(self, slot: Slot) -> Optional[list[int]]:
        """What a slot feeds next: a prompt chunk, or the token decided after its last pass."""
        request = slot.request
        if request.pending:
            return request.pending[:self.engine.prefill_chunk]
        tok, request.next_tok = request.next_tok, None
        return [tok]

    def _took(self, slot: Slot, ids: list[int], prefill: bool, logits: np.ndarray, dt: float) -> None:
        """A pass fed `ids` to the slot: keep its logits, account the time, and once the prompt
        is done decide the next token (request.next_tok, fed in the next step)."""
        request = slot.request
        request.logits = logits
        slot.cached.extend(ids)
        if prefill:
            request.prefill_s += dt
            del request.pending[:len(ids)]
            if not request.pending:
                request.prompt_done_at = time.perf_counter()
        else:
            request.decode_s += dt
        if request.pending:
            return
        try:
            t0 = time.perf_counter()
            tok = request.sampler.sample(request.logits, request.history)
            if not self._decided(slot, tok, request.logits):
                request.decode_s += time.perf_counter() - t0
                request.next_tok = tok
        except Exception as e:      # fails this request, never the loop or the others
            if not self.isolate_errors:
                raise
            self._fail(slot, e)

    def _step_speculating(self, busy: list[Slot]) -> int:
        """One turn of every busy slot: a slot still reading its prompt feeds a chunk (the others
        keep streaming between chunks); each slot with a token to feed drafts, and then every such
        slot's token and proposals are verified in one batched pass (Speculator.verify_many), as
        llama-server verifies its slots' drafts in one decode. Returns the rows verified."""
        spec = self.speculator
        ready: list[tuple[Slot, object]] = []
        for slot in busy:
            try:
                turn = self._speculation_turn(slot)
                if turn is not None:
                    ready.append((slot, turn))
            except Exception as e:       # a failed turn fails its request, never the loop
                self._reset(slot)
                if not self.isolate_errors:
                    raise
                self._end(slot, "error", e)
        if not ready:
            return 0
        t0 = time.perf_counter()
        try:
            drafts = spec.draft_many([t for _, t in ready])     # the slots' drafts in one batch
        except Exception:
            if not self.isolate_errors:
                raise
            drafts = None                # draft slot by slot, so only a failing one fails
        turns: list[tuple[Slot, object, list[int], float]] = []      # slot, SpecTurn, proposals, t0
        for k, (slot, turn) in enumerate(ready):
            try:
                turns.append((slot, turn, drafts[k] if drafts is not None else spec.draft(turn), t0))
            except Exception as e:
                self._reset(slot)
                self._end(slot, "error", e)
        if not turns:
            return 0
        try:
            outs = spec.verify_many([t for _, t, _, _ in turns], [p for _, _, p, _ in turns])
        except Exception as e:          # the pass failed: every request in it fails
            for slot, *_ in turns:
                self._reset(slot)
            if not self.isolate_errors:
                raise
            for slot, *_ in turns:
                self._end(slot, "error", e)
            return 0
        now = time.perf_counter()
        for (slot, turn, proposals, t0), out in zip(turns, outs):
            request = slot.request
            request.decode_s += now - t0
            slot.cached = request.cache_key + request.history[len(request.ids):] + out[:-1]  # + tok, kept proposals
            request.draft_n += len(proposals)
            request.draft_accepted += len(out) - 1
            rows = spec.logits_of[slot.index]
            if not any(self._decided(slot, t, row) for t, row in zip(out[:-1], rows)):
                request.next_tok, request.logits = out[-1], rows[len(out) - 1]
        return sum(len(p) + 1 for _, _, p, _ in turns)

    def _speculation_turn(self, slot: Slot):
        """A slot's part before drafting: a prompt chunk (None while the prompt goes on), then the
        token to feed with its proposals (None when that token ended the request)."""
        from .speculative import SpecTurn
        request, engine = slot.request, self.engine
        if request.pending and request.media is not None:      # the rest of the prompt in one call
            start = len(request.ids) - len(request.pending)
            t0 = time.perf_counter()
            try:
                request.logits = engine.forward(list(request.pending), slot=slot.index,
                                                media=media_from(request.media, start))[-1]
            except BaseException:
                self._reset(slot)
                raise
            request.prefill_s += time.perf_counter() - t0
            slot.cached = list(request.cache_key)
            request.pending = []
            request.prompt_done_at = time.perf_counter()
        elif request.pending:
            chunk = request.pending[:engine.prefill_chunk]
            t0 = time.perf_counter()
            try:
                request.logits = engine.forward(chunk, slot=slot.index)[-1]
            except BaseException:
                self._reset(slot)
                raise
            request.prefill_s += time.perf_counter() - t0
            slot.cached.extend(chunk)
            del request.pending[:len(chunk)]
            if request.pending:
                return None
            request.prompt_done_at = time.perf_counter()
        tok, request.next_tok = (request.next_tok, None) if request.next_tok is not None else \
            (request.sampler.sample(request.logits, request.history), None)
        if self._decided(slot, tok, request.logits):
            return None
        return SpecTurn(slot.index, tok, request.history, request.sampler, request.max_tokens - request.generated)

    def _decided(self, slot: Slot, tok: int, logits: np.ndarray) -> bool:
        """A token was decided for the slot's request; True when the request ended with it."""
        request = slot.request
        if self.is_eog(tok):
            self._end(slot, "eog")
            return True
        request.generated += 1
        request.history.append(tok)
        if request.generated == 1:
            request.first_token_at = time.perf_counter()
        if self.on_token(request, tok, logits):
            self._end(slot, "stop_string")
        elif request.generated >= request.max_tokens:
            self._end(slot, "max_tokens")
        elif len(request.history) - 1 >= self.engine.ctx:      # plain decoding has the rest cached by now
            self._end(slot, "context_full")
        else:
            return False
        return True


# ---- many prompts at once (Model.generate_many, g4rt run --batch) ---------------------------
@dataclass
class BatchResult:
    tokens: list[int] = field(default_factory=list)
    stop_reason: str = ""            # eog, max_tokens, context_full, cancelled, interrupted
    prompt_tokens: int = 0
    prefill_s: float = 0.0           # from admission to the prompt's last chunk
    decode_s: float = 0.0            # from the first generated token to the end
    text: str = ""                   # filled by Model.generate_many
    media: str = ""                  # its media, e.g. "1 image (36 tokens)" (Model.generate_many)

    @property
    def decode_tps(self) -> float:
        n = max(len(self.tokens) - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class BatchStats:
    steps: int = 0                   # forward_batch calls
    rows: int = 0                    # sequence rows fed in all
    wall_s: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.rows / self.steps if self.steps else 0.0


def generate_batch(engine, is_eog: Callable[[int], bool], requests: list[SlotRequest],
                   on_token: Optional[Callable[[int, int], None]] = None,
                   cancelled: Optional[Callable[[int], bool]] = None,
                   stats: Optional[BatchStats] = None) -> list[BatchResult]:
    """Decode every request, up to engine.slots at a time, each from a fresh slot (its tokens
    are those it gets alone); results in request order. Requests beyond the slots wait and take
    the first slot that frees.

    on_token(i, token) is called as request i's tokens are decided; cancelled(i) True ends
    request i at its next step (stop_reason "cancelled") and frees its slot for the others.
    An error goes up to the caller; the requests under way end "interrupted"."""
    for i, r in enumerate(requests):
        if not r.ids:
            raise G4rtError(f"request {i}: empty prompt")
        if len(r.ids) > engine.ctx:
            raise ContextOverflowError(f"request {i}: the prompt has {len(r.ids)} tokens but the context "
                                       f"holds {engine.ctx}; use a larger --ctx or a shorter prompt")
    stats = stats if stats is not None else BatchStats()
    results = [BatchResult(prompt_tokens=len(r.ids)) for r in requests]
    index = {r: i for i, r in enumerate(requests)}

    def took(request: SlotRequest, tok: int, logits) -> bool:
        i = index[request]
        results[i].tokens.append(tok)
        if on_token is not None:
            on_token(i, tok)
        return False

    def ended(slot: Slot, request: SlotRequest, reason: str, error) -> None:
        result = results[index[request]]
        result.stop_reason = reason
        if request.prompt_done_at:
            result.prefill_s = request.prompt_done_at - request.started
        if request.first_token_at:
            result.decode_s = time.perf_counter() - request.first_token_at

    def should_stop(request: SlotRequest) -> Optional[str]:
        return "cancelled" if cancelled(index[request]) else None

    loop = SlotLoop(engine, is_eog, took, ended, should_stop if cancelled is not None else None,
                    isolate_errors=False)
    waiting = deque(requests)
    t_start = time.perf_counter()
    try:
        while waiting or loop.busy():
            while waiting and loop.free():
                loop.start(waiting.popleft(), reuse_prefix=False)
            rows = loop.step()
            if rows:
                stats.steps += 1
                stats.rows += rows
    finally:
        loop.end_all("interrupted")      # an error, Ctrl-C: what was decided stays
        stats.wall_s = time.perf_counter() - t_start
    return results
