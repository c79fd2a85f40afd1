"""Speculative decoding: a drafter proposes the next tokens, the target model checks them all in
one batched pass and keeps the longest acceptable prefix plus one token of its own.

Drafters (all greedy, so every proposal is a point mass q = δ(d)):
- `NgramDrafter` (prompt lookup): the tokens that followed the latest earlier occurrence of the
  context's last n tokens (edits, summaries, code, chat history repeat their input);
- `ModelDrafter`: a smaller model with the target's vocabulary, run greedily k tokens ahead on its
  own engine and KV cache.
- `speculative_mtp.AssistantDrafter`: a Gemma 4 MTP assistant (gemma4-assistant), drafting from
  the target's own hidden state and KV cache.

Verification feeds [last token] + proposals as one batch with all logits. Row i is the target's
distribution after proposal i - 1. Greedy: proposal i is kept while it equals the target's choice.
Sampling: the standard rule (Leviathan et al. 2023; Chen et al. 2023) with q = δ(d): keep d with
probability p(d), else draw from p without d (the normalized max(0, p - q)), so every emitted token
follows the target's own distribution p (the sampler's, after penalties, top-k/p, min-p and
temperature). After the step the target's cache is moved back to the kept tokens: exact because
the sliding rings hold `window + draft_max` rows (Engine.reusable_prefix). Every backend computes
batches of up to ops.ROW_EXACT_MAX rows row-exactly (docs/speculative.md), so greedy speculative
output is token for token plain greedy output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .backends import backend_info
from .engine import Engine, common_prefix, kv_value_bytes
from .errors import G4rtError
from .ops import ROW_EXACT_MAX
from .sampling import Sampler

DEFAULT_DRAFT_MAX = 8
DEFAULT_NGRAM_N = 3
#: Proposals per verification: the last token and the proposals form one row-exact batch.
MAX_DRAFT = ROW_EXACT_MAX - 1


class SpeculativeError(G4rtError):
    """A draft model or speculative setting that cannot work with this target."""


class Drafter(Protocol):
    name: str

    def propose(self, history: Sequence[int], k: int, slot: int = 0) -> list[int]:
        """Up to k tokens that may follow `history` (fewer, or none, when unsure)."""

    def close(self) -> None: ...


class NgramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the last n tokens of the context (n
    from `n` down to `n_min`) and propose what followed it."""

    name = "ngram"

    def __init__(self, n: int = DEFAULT_NGRAM_N, n_min: int = 1):
        if n < 1 or not 1 <= n_min <= n:
            raise SpeculativeError(f"--ngram-n must be >= 1, got {n}")
        self.n, self.n_min = int(n), int(n_min)

    def propose(self, history: Sequence[int], k: int, slot: int = 0) -> list[int]:
        h = np.asarray(history, dtype=np.int64)
        L = len(h)
        for m in range(min(self.n, L - 1), self.n_min - 1, -1):
            tail = h[L - m:]
            # candidate starts i < L - m with h[i:i+m] == tail (the occurrence must end before the tail)
            starts = np.flatnonzero(h[:L - m] == tail[0])
            for j in range(1, m):
                starts = starts[h[starts + j] == tail[j]] if starts.size else starts
            if starts.size:
                s = int(starts[-1]) + m                      # the latest occurrence's continuation
                return [int(t) for t in h[s:min(L, s + k)]]
        return []

    def close(self) -> None:
        pass


class ModelDrafter:
    """A draft model on its own engine: brought to the context (keeping what it already holds),
    then run greedily up to k tokens; it stops early below `p_min` confidence (0 = never)."""

    name = "draft"

    def __init__(self, engine: Engine, p_min: float = 0.0):
        if not 0.0 <= p_min < 1.0:
            raise SpeculativeError(f"--draft-p-min must be in [0, 1), got {p_min}")
        self.engine, self.p_min = engine, float(p_min)
        self._cached: list[list[int]] = [[] for _ in range(engine.slots)]

    def propose(self, history: Sequence[int], k: int, slot: int = 0) -> list[int]:
        eng, cached = self.engine, self._cached[slot]
        history = list(history)
        if len(history) + k > eng.ctx:
            return []
        keep = eng.reusable_prefix(len(cached), min(common_prefix(cached, history), len(history) - 1))
        eng.truncate(keep, slot)
        self._cached[slot] = cached = history[:keep]
        logits = eng.forward(history[keep:], slot=slot)[-1]
        cached.extend(history[keep:])
        out: list[int] = []
        while len(out) < k:
            t = int(np.argmax(logits))
            if self.p_min > 0.0 and _top_probability(logits) < self.p_min:
                break
            out.append(t)
            if len(out) == k:
                break
            logits = eng.forward([t], slot=slot)[-1]
            cached.append(t)
        return out

    def close(self) -> None:
        self.engine.close()


def _top_probability(logits: np.ndarray) -> float:
    x = logits.astype(np.float64)
    return float(1.0 / np.exp(x - x.max()).sum())


# ---- the acceptance rule -----------------------------------------------------------------------
def accept_or_replace(sampler: Sampler, logits: np.ndarray, history: Sequence[int], proposal: int) -> tuple[int, bool]:
    """The target's token at a position where the drafter proposed `proposal` (a point mass):
    (proposal, True) when kept, else (the target's own replacement, False). Greedy keeps it iff it
    is the target's argmax; sampling keeps it with probability p(proposal) and otherwise draws from
    p with the proposal removed, which leaves every emitted token distributed as p."""
    ids, w = sampler.distribution(logits, history)
    if sampler.temperature == 0.0:
        t = int(ids[0])
        return t, t == proposal
    hit = np.flatnonzero(ids == proposal)
    p = float(w[hit[0]] / w.sum()) if hit.size else 0.0
    if p > 0.0 and sampler.rng.random() < p:
        return proposal, True
    if hit.size:
        w = w.copy()
        w[hit[0]] = 0.0
    return sampler.draw(ids, w), False


# ---- statistics ----------------------------------------------------------------------------------
@dataclass
class SpecStats:
    steps: int = 0            # verification passes
    drafted: int = 0          # tokens proposed
    accepted: int = 0         # proposals kept
    emitted: int = 0          # tokens produced by verification passes (kept + the target's own)
    draft_s: float = 0.0
    verify_s: float = 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.emitted / self.steps if self.steps else 0.0

    def summary(self) -> str:
        return (f"speculative: {self.accepted}/{self.drafted} drafted tokens accepted "
                f"({100 * self.acceptance:.0f} %), {self.tokens_per_step:.2f} tokens per verification")

    def as_dict(self) -> dict:
        return dict(draft_n=self.drafted, draft_n_accepted=self.accepted, verify_steps=self.steps,
                    acceptance=round(self.acceptance, 4), tokens_per_step=round(self.tokens_per_step, 3))


# ---- one step ----------------------------------------------------------------------------------
@dataclass
class SpecTurn:
    """One slot's share of a speculative step: `tok` (the last token of `history`, sampled, not
    yet cached), its sampler, and how many tokens it still wants."""
    slot: int
    tok: int
    history: list[int]
    sampler: Sampler
    budget: int = 1 << 30


class Speculator:
    """Drives a target engine with a drafter: `step` turns one sampled token into that token's
    verified continuation."""

    def __init__(self, target: Engine, drafter: Drafter, draft_max: int = DEFAULT_DRAFT_MAX, draft_min: int = 0):
        if not 1 <= draft_max <= MAX_DRAFT:
            raise SpeculativeError(f"--draft-max must be in 1..{MAX_DRAFT}, got {draft_max}")
        if not 0 <= draft_min <= draft_max:
            raise SpeculativeError(f"--draft-min must be in 0..--draft-max ({draft_max}), got {draft_min}")
        if target.ring_slack < draft_max:
            raise SpeculativeError(f"the target's sliding rings hold {target.ring_slack} extra rows; "
                                   f"drafting {draft_max} tokens ahead needs {draft_max} (load it with ring_slack)")
        self.target, self.drafter = target, drafter
        self.draft_max, self.draft_min = int(draft_max), int(draft_min)
        self.stats = SpecStats()
        # per slot of the last step_many: proposals drafted, and the target's rows (one per fed token)
        self.drafted_of: dict[int, int] = {}
        self.logits_of: dict[int, np.ndarray] = {}

    def step(self, tok: int, history: list[int], sampler: Sampler, slot: int = 0, budget: int = 1 << 30) -> list[int]:
        """`tok` is the last token of `history`, sampled but not yet in the target's cache. Feed it
        with the drafter's proposals, keep what the target accepts and return the tokens that follow
        `tok`: the accepted proposals, then the target's own next token (at least one token). The
        cache then holds history + the accepted proposals (not the returned last token).
        budget: at most this many tokens are wanted (no point drafting past max_tokens)."""
        return self.step_many([SpecTurn(slot, tok, history, sampler, budget)])[0]

    def step_many(self, turns: Sequence["SpecTurn"]) -> list[list[int]]:
        """`step` for several slots at once (distinct slots): each drafts, then every slot's token
        and proposals are verified together in one batched target pass (Engine.forward_batch,
        row-exact: each slot's rows get the bits they get alone, so the tokens are `step`'s).
        Afterwards drafted_of / logits_of describe each slot's turn."""
        return self.verify_many(turns, self.draft_many(turns))

    def verify_many(self, turns: Sequence["SpecTurn"], proposals: Sequence[list[int]]) -> list[list[int]]:
        """The verification half of step_many, for proposals drafted by `draft`."""
        eng = self.target
        t1 = time.perf_counter()
        rows = eng.forward_batch([(t.slot, [t.tok] + p) for t, p in zip(turns, proposals)], all_logits=True)
        t2 = time.perf_counter()
        outs = [self._settle(t, p, r) for t, p, r in zip(turns, proposals, rows)]
        self.drafted_of = {t.slot: len(p) for t, p in zip(turns, proposals)}
        self.logits_of = {t.slot: r for t, r in zip(turns, rows)}
        st = self.stats
        st.verify_s += t2 - t1
        for p, out in zip(proposals, outs):
            if p:
                st.steps += 1
                st.drafted += len(p)
                st.accepted += len(out) - 1
                st.emitted += len(out)
        return outs

    def draft(self, turn: "SpecTurn") -> list[int]:
        """The drafter's proposals for one slot's turn (none when too few would be drafted)."""
        return self.draft_many([turn])[0]

    def draft_many(self, turns: Sequence["SpecTurn"]) -> list[list[int]]:
        """Proposals for several slots' turns: in one batch where the drafter drafts several slots
        together (propose_many: the MTP assistant), else slot by slot."""
        eng = self.target
        t0 = time.perf_counter()
        rooms = [min(self.draft_max, eng.ctx - eng.position(t.slot) - 1, t.budget - 1) for t in turns]
        asks = [(i, (t.history, room, t.slot)) for i, (t, room) in enumerate(zip(turns, rooms))
                if room >= max(1, self.draft_min)]
        many = getattr(self.drafter, "propose_many", None)
        got = many([a for _, a in asks]) if many is not None and len(asks) > 1 else \
            [self.drafter.propose(*a) for _, a in asks]
        out: list[list[int]] = [[] for _ in turns]
        for (i, _), proposals in zip(asks, got):
            proposals = proposals[:max(rooms[i], 0)]
            out[i] = proposals if len(proposals) >= self.draft_min else []
        self.stats.draft_s += time.perf_counter() - t0
        return out

    def _settle(self, turn: "SpecTurn", proposals: list[int], rows: np.ndarray) -> list[int]:
        """Accept or replace each proposal by the target's rows; the cache keeps tok + the kept ones."""
        out: list[int] = []
        seen = list(turn.history)
        for i, d in enumerate(proposals):
            t, kept = accept_or_replace(turn.sampler, rows[i], seen, d)
            out.append(t)
            seen.append(t)
            if not kept:
                break
        else:
            out.append(turn.sampler.sample(rows[len(proposals)], seen))
        eng = self.target
        eng.truncate(eng.position(turn.slot) - len(proposals) - 1 + len(out), turn.slot)
        return out

    def close(self) -> None:
        self.drafter.close()


# ---- vocabularies --------------------------------------------------------------------------------
def check_same_vocabulary(target, draft) -> None:
    """Refuse a draft whose tokenizer differs from the target's, naming the first difference."""
    if target.n_vocab != draft.n_vocab:
        raise SpeculativeError(f"the draft model's vocabulary has {draft.n_vocab} tokens, the target's "
                               f"{target.n_vocab}: a draft must share the target's vocabulary")
    for name in ("bos_id", "eos_id", "eot_id"):
        a, b = getattr(target, name), getattr(draft, name)
        if a != b:
            raise SpeculativeError(f"the draft model's {name.replace('_id', '')} token is {b}, the target's {a}")
    for i, (a, b) in enumerate(zip(target.tokens, draft.tokens)):
        if a != b:
            raise SpeculativeError(f"the draft model's token {i} is {b!r}, the target's {a!r}: "
                                   "a draft must share the target's vocabulary")
    for i in range(target.n_vocab):
        if target.is_eog(i) != draft.is_eog(i) or target.attr(i) != draft.attr(i):
            raise SpeculativeError(f"token {i} ({target.tokens[i]!r}) is special in one vocabulary and "
                                   "not the other")


# ---- building one --------------------------------------------------------------------------------
def check_draft_fits(f, ctx: int, backend: str, slots: int = 1, ring_slack: int = 0) -> None:
    """Refuse, before loading, a draft model (an open GGUFFile) whose weights and KV cache exceed
    the host RAM still available (a backend on host memory; a GPU backend checks its own memory
    as it loads)."""
    if backend_info(backend).has_device_memory:
        return
    from .memory_plan import available_ram, make_plan
    from .model.config import load_config
    from .model.graph import model_weight_specs
    avail = available_ram()
    if avail is None:
        return
    cfg = load_config(f)
    specs, _ = model_weight_specs(cfg, f)
    plan = make_plan(cfg, specs, ctx, kv_bytes=kv_value_bytes(backend), check=False, device="CPU",
                     model=f"draft model {f.path.name}", ring_slack=ring_slack, slots=slots)
    need = plan.device_total
    if need > avail:
        raise SpeculativeError(f"the draft model {f.path.name} needs {need / 2**30:.2f} GiB at context {ctx} "
                               f"but {avail / 2**30:.2f} GiB of RAM is available; use a smaller draft, "
                               "--spec ngram, or a smaller --ctx")


def create_speculator(target: Engine, target_tokenizer, *, draft=None, spec: str | None = None,
                      draft_max: int = DEFAULT_DRAFT_MAX, draft_min: int = 0, draft_backend: str = "cpu",
                      draft_p_min: float = 0.0, ngram_n: int = DEFAULT_NGRAM_N,
                      threads: int | None = None, precision: str = "auto") -> Speculator:
    """A Speculator for `target` from `--draft PATH` or `--spec ngram` (one of them); a draft
    model runs with the target's --precision (a choice its backend lacks is an error)."""
    if (draft is None) == (spec is None):
        raise SpeculativeError("give a draft model (--draft) or --spec ngram, not both")
    if spec is not None and spec != "ngram":
        raise SpeculativeError(f"unknown --spec {spec!r} (ngram)")
    if spec == "ngram":
        return Speculator(target, NgramDrafter(ngram_n), draft_max, draft_min)
    from .gguf.reader import GGUFFile
    from .text.tokenizer import load_tokenizer
    f = GGUFFile(draft)                 # one header scan for both checks
    check_same_vocabulary(target_tokenizer, load_tokenizer(f))
    if f.architecture == "gemma4-assistant":    # an MTP assistant: drafts from the target's own state
        from .speculative_mtp import AssistantDrafter
        mtp = AssistantDrafter(target, f, draft_p_min)
        try:
            return Speculator(target, mtp, draft_max, draft_min)
        except BaseException:
            mtp.close()
            raise
    check_draft_fits(f, target.ctx, draft_backend, target.slots, draft_max)
    eng = Engine(draft, backend=draft_backend, ctx=target.ctx, slots=target.slots, ring_slack=draft_max,
                 threads=threads or None, precision=precision)
    try:
        return Speculator(target, ModelDrafter(eng, draft_p_min), draft_max, draft_min)
    except BaseException:
        eng.close()
        raise
