"""Perplexity of a text, computed as llama.cpp's `llama-perplexity` does, and the KL divergence of
one run's next-token distributions from a saved base run (`llama-perplexity --kl-divergence`).

The text is tokenized once (BOS first, special tokens not parsed) and cut into chunks of `ctx`
tokens; each chunk is run from an empty cache with its first token replaced by BOS, and only the
second half is scored (positions ctx/2 .. ctx-2 predict the token after them), so every scored
token has at least ctx/2 tokens of context. PPL = exp(mean NLL); its uncertainty is the standard
error of the mean NLL, scaled by PPL, as llama-perplexity prints it.

The KL base keeps, per scored position, the base run's top-`KL_TOP` token ids with their log
probabilities, the log probability of the token that follows and the base's argmax. KL(base ||
this run) is taken over those ids plus one bucket for the rest of the vocabulary (exact when the
base puts all its mass on its top tokens, a lower bound otherwise); llama.cpp stores every logit
instead (GB for a 262k vocabulary)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import G4rtError

#: how many of the base run's most likely tokens a KL base keeps per scored position
KL_TOP = 64


class PerplexityError(G4rtError):
    """The text or the KL base does not fit the run asked for."""


@dataclass
class PerplexityResult:
    ppl: float
    ppl_error: float
    chunks: int
    ctx: int
    scored_tokens: int
    running: list[float] = field(default_factory=list)       # the estimate after each chunk
    kl: Optional[dict] = None                                 # vs a base run, when asked

    def as_dict(self) -> dict:
        out = {"ppl": self.ppl, "ppl_error": self.ppl_error, "chunks": self.chunks, "ctx": self.ctx,
               "scored_tokens": self.scored_tokens, "running": self.running}
        if self.kl is not None:
            out["kl"] = self.kl
        return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of float32 logits as float64 log probabilities."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def chunk_tokens(tokens: list[int], ctx: int, chunks: Optional[int], bos: int) -> list[np.ndarray]:
    """The chunks llama-perplexity runs: ctx tokens each, the first replaced by BOS."""
    if ctx < 8:
        raise PerplexityError(f"--ctx must be at least 8, got {ctx}")
    if len(tokens) < 2 * ctx:
        raise PerplexityError(f"the text has {len(tokens)} tokens; perplexity with a context of {ctx} "
                              f"needs at least {2 * ctx}")
    n = len(tokens) // ctx
    if chunks is not None:
        if chunks < 1:
            raise PerplexityError(f"--chunks must be positive, got {chunks}")
        n = min(n, chunks)
    out = []
    for i in range(n):
        c = np.asarray(tokens[i * ctx:(i + 1) * ctx], dtype=np.int32).copy()
        c[0] = bos
        out.append(c)
    return out


def _kl_row_terms(base: dict, i: int, logp: np.ndarray, target: int) -> tuple[float, bool, float]:
    """(KL(base || run), same argmax, p_run(target) - p_base(target)) at scored position i."""
    ids, base_lp = base["top_ids"][i], base["top_logp"][i].astype(np.float64)
    p = np.exp(base_lp)
    run_lp = logp[ids]
    kl = float(np.sum(p * (base_lp - run_lp)))
    p_rest = max(0.0, 1.0 - float(p.sum()))
    q_rest = max(1e-300, 1.0 - float(np.exp(run_lp).sum()))
    if p_rest > 0.0:
        kl += p_rest * (math.log(p_rest) - math.log(q_rest))
    same = int(np.argmax(logp)) == int(base["argmax"][i])
    dp = math.exp(float(logp[target])) - math.exp(float(base["target_logp"][i]))
    return kl, same, dp


def perplexity(forward: Callable[[np.ndarray], np.ndarray], tokens: list[int], ctx: int, bos: int,
               chunks: Optional[int] = None, kl_base: Optional[dict] = None, save_base: bool = False,
               progress: Optional[Callable[[int, int, float], None]] = None) -> tuple[PerplexityResult, Optional[dict]]:
    """forward(chunk) -> logits [ctx, n_vocab] of one chunk run from an empty cache.

    Returns the result and, with save_base, the KL base of this run (see the module doc).
    progress(chunks done, chunks in all, running PPL) is called after each chunk."""
    runs = chunk_tokens(tokens, ctx, chunks, bos)
    first = ctx // 2
    per_chunk = ctx - first - 1
    if kl_base is not None:
        expected = (int(kl_base["ctx"]), len(runs) * per_chunk)
        if expected != (ctx, len(kl_base["target_logp"])) or not np.array_equal(kl_base["tokens"], np.concatenate(runs)):
            raise PerplexityError(f"the KL base was made with another text, context or chunk count "
                                  f"(it holds {len(kl_base['target_logp'])} scored tokens at ctx "
                                  f"{int(kl_base['ctx'])}; this run scores {expected[1]} at ctx {ctx})")
    nll = nll2 = 0.0
    count = 0
    running: list[float] = []
    kl_terms: list[tuple[float, bool, float]] = []
    saved = {"top_ids": [], "top_logp": [], "target_logp": [], "argmax": []} if save_base else None
    for c, chunk in enumerate(runs):
        logits = forward(chunk)
        if logits.shape[0] != ctx:
            raise PerplexityError(f"the model returned {logits.shape[0]} rows of logits for a {ctx}-token chunk")
        logp = log_softmax(logits[first:ctx - 1])
        targets = chunk[first + 1:ctx]
        lp_t = logp[np.arange(per_chunk), targets]
        nll += float(-lp_t.sum())
        nll2 += float((lp_t * lp_t).sum())
        count += per_chunk
        running.append(math.exp(nll / count))
        if kl_base is not None:
            for j in range(per_chunk):
                kl_terms.append(_kl_row_terms(kl_base, c * per_chunk + j, logp[j], int(targets[j])))
        if saved is not None:
            top = np.argpartition(-logp, KL_TOP - 1, axis=1)[:, :KL_TOP] if logp.shape[1] > KL_TOP \
                else np.tile(np.arange(logp.shape[1]), (per_chunk, 1))
            saved["top_ids"].append(top.astype(np.int32))
            saved["top_logp"].append(np.take_along_axis(logp, top, axis=1).astype(np.float32))
            saved["target_logp"].append(lp_t.astype(np.float64))
            saved["argmax"].append(np.argmax(logp, axis=1).astype(np.int32))
        if progress is not None:
            progress(c + 1, len(runs), running[-1])
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    err = ppl * math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
    result = PerplexityResult(ppl=ppl, ppl_error=err, chunks=len(runs), ctx=ctx, scored_tokens=count,
                              running=running)
    if kl_terms:
        kls = np.array([t[0] for t in kl_terms])
        dps = np.array([t[2] for t in kl_terms])
        result.kl = {"mean_kl": float(kls.mean()),
                     "mean_kl_error": float(kls.std(ddof=1) / math.sqrt(len(kls))) if len(kls) > 1 else 0.0,
                     "max_kl": float(kls.max()), "same_top_p": float(np.mean([t[1] for t in kl_terms])),
                     "mean_delta_p": float(dps.mean()), "rms_delta_p": float(np.sqrt(np.mean(dps * dps)))}
    base = None
    if saved is not None:
        base = {k: np.concatenate(v) for k, v in saved.items()}
        base.update(ctx=np.int64(ctx), tokens=np.concatenate(runs))
    return result, base


def save_kl_base(path: str | Path, base: dict) -> None:
    """Written to exactly `path` (np.savez would append .npz to a name without it, and a later
    --kl-base with the same name would not find the file)."""
    try:
        with open(path, "wb") as f:
            np.savez_compressed(f, **base)
    except OSError as e:
        raise PerplexityError(f"cannot write the KL base {path}: {e}") from None


def load_kl_base(path: str | Path) -> dict:
    try:
        with np.load(path) as z:
            base = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise PerplexityError(f"cannot read the KL base {path}: {e}") from None
    missing = {"top_ids", "top_logp", "target_logp", "argmax", "ctx", "tokens"} - set(base)
    if missing:
        raise PerplexityError(f"{path} is not a g4rt KL base (missing {', '.join(sorted(missing))})")
    return base
