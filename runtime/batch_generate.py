"""Many prompts decoded together (`Model.generate_many`, `g4rt run --batch`, `g4rt bench --parallel`).

The engine's S sequence slots each hold one request; every step feeds each active request's next
token (or its next prompt chunk) through one `Engine.forward_batch` call, which shares the weight
reads between them. Requests beyond S wait and take the first slot that frees. A request's tokens
are those it gets decoded alone (forward_batch is row-exact, and prompt chunks are cut as
`Engine.forward` cuts them), so batching changes speed, not output.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .errors import ContextOverflowError, G4rtError
from .sampling import Sampler


@dataclass
class BatchRequest:
    ids: list[int]
    max_tokens: int = 256
    sampler: Sampler = field(default_factory=Sampler)


@dataclass
class BatchResult:
    tokens: list[int] = field(default_factory=list)
    stop_reason: str = ""            # eog, max_tokens, context_full, cancelled
    prompt_tokens: int = 0
    prefill_s: float = 0.0           # from admission to the prompt's last chunk
    decode_s: float = 0.0            # from the first generated token to the end
    text: str = ""                   # filled by Model.generate_many

    @property
    def decode_tps(self) -> float:
        n = max(len(self.tokens) - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class _Active:
    index: int
    request: BatchRequest
    pending: list[int]
    history: list[int]
    result: BatchResult
    logits: Optional[np.ndarray] = None
    started: float = 0.0
    first_token: float = 0.0


@dataclass
class BatchStats:
    steps: int = 0                   # forward_batch calls
    rows: int = 0                    # sequence rows fed in all
    wall_s: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.rows / self.steps if self.steps else 0.0


def generate_batch(engine, is_eog: Callable[[int], bool], requests: list[BatchRequest],
                   on_token: Optional[Callable[[int, int], None]] = None,
                   cancelled: Optional[Callable[[int], bool]] = None,
                   stats: Optional[BatchStats] = None) -> list[BatchResult]:
    """Decode every request, up to engine.slots at a time; results in request order.

    on_token(i, token) is called as request i's tokens are decided; cancelled(i) True ends
    request i at its next step (stop_reason "cancelled") and frees its slot for the others."""
    for i, r in enumerate(requests):
        if not r.ids:
            raise G4rtError(f"request {i}: empty prompt")
        if len(r.ids) > engine.ctx:
            raise ContextOverflowError(f"request {i}: the prompt has {len(r.ids)} tokens but the context "
                                       f"holds {engine.ctx}; use a larger --ctx or a shorter prompt")
    stats = stats if stats is not None else BatchStats()
    results = [BatchResult(prompt_tokens=len(r.ids)) for r in requests]
    waiting = deque(range(len(requests)))
    free = list(range(engine.slots))
    active: dict[int, _Active] = {}
    t_start = time.perf_counter()

    def finish(slot: int, reason: str) -> None:
        a = active.pop(slot)
        a.result.stop_reason = reason
        if a.first_token:
            a.result.decode_s = time.perf_counter() - a.first_token
        free.append(slot)
        free.sort()

    try:
        while waiting or active:
            while waiting and free:
                i = waiting.popleft()
                slot = free.pop(0)
                engine.reset(slot)
                active[slot] = _Active(i, requests[i], list(requests[i].ids), list(requests[i].ids), results[i],
                                       started=time.perf_counter())
            work: list[tuple[int, list[int]]] = []
            for slot in sorted(active):
                a = active[slot]
                if cancelled is not None and cancelled(a.index):
                    finish(slot, "cancelled")
                    continue
                if a.pending:
                    work.append((slot, a.pending[:engine.prefill_chunk]))
                    continue
                tok = a.request.sampler.sample(a.logits, a.history)
                if not a.first_token:
                    a.first_token = time.perf_counter()
                if is_eog(tok):
                    finish(slot, "eog")
                    continue
                a.history.append(tok)
                a.result.tokens.append(tok)
                if on_token is not None:
                    on_token(a.index, tok)
                if len(a.result.tokens) >= a.request.max_tokens:
                    finish(slot, "max_tokens")
                elif len(a.history) - 1 >= engine.ctx:     # plain decoding stops here too
                    finish(slot, "context_full")
                else:
                    work.append((slot, [tok]))
            if not work:
                continue
            outs = engine.forward_batch(work)
            stats.steps += 1
            stats.rows += sum(len(ids) for _, ids in work)
            now = time.perf_counter()
            for (slot, ids), logits in zip(work, outs):
                a = active[slot]
                a.logits = logits
                if a.pending:
                    del a.pending[:len(ids)]
                    if not a.pending:
                        a.result.prefill_s = now - a.started
    finally:
        for slot in list(active):        # interrupted (an error, Ctrl-C): what was decided stays
            finish(slot, "interrupted")
        stats.wall_s = time.perf_counter() - t_start
    return results
