"""Token sampling, in llama.cpp's default order: logit bias -> penalties -> top_k -> top_p ->
min_p -> temperature -> draw.

As in llama.cpp, the truncations (top_k, top_p, min_p) come before the temperature, so top_p and
min_p judge the untempered distribution. Temperature 0 is greedy: the first highest logit after
the repetition penalty. numpy only; a seeded Sampler draws the same tokens for the same inputs.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .errors import G4rtError


class SamplingError(G4rtError):
    """Sampling parameters or logits that cannot be sampled from."""


class Sampler:
    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 seed: int | None = None, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 logit_bias: Mapping[int, float] | None = None):
        if not np.isfinite(temperature) or temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {temperature}")
        if top_k < 0:
            raise SamplingError(f"top_k must be >= 0 (0 = off), got {top_k}")
        if not 0.0 < top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {top_p}")
        if not 0.0 <= min_p <= 1.0:
            raise SamplingError(f"min_p must be in [0, 1], got {min_p}")
        if not np.isfinite(repeat_penalty) or repeat_penalty <= 0:
            raise SamplingError(f"repeat_penalty must be > 0, got {repeat_penalty}")
        if repeat_last_n < -1:
            raise SamplingError(f"repeat_last_n must be >= -1 (-1 = whole history), got {repeat_last_n}")
        for name, v in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
            if not np.isfinite(v) or not -2.0 <= v <= 2.0:
                raise SamplingError(f"{name} must be in [-2, 2], got {v}")
        self.frequency_penalty = float(frequency_penalty)
        self.presence_penalty = float(presence_penalty)
        if seed is not None and not 0 <= int(seed) < 2**64:
            raise SamplingError(f"seed must be in [0, 2^64), got {seed}")
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.min_p = float(min_p)
        self.repeat_penalty = float(repeat_penalty)
        self.repeat_last_n = int(repeat_last_n)
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))
        # OpenAI's / llama-server's logit_bias: added to a token's logit first (-inf: never chosen)
        bias = dict(logit_bias or {})
        for tid, b in bias.items():
            if int(tid) < 0:
                raise SamplingError(f"logit_bias names token {tid}; token ids are >= 0")
            if np.isnan(b) or b == np.inf:
                raise SamplingError(f"logit_bias of token {tid} is {b}; give a number or -inf (never)")
        self._bias_ids = np.array(sorted(int(t) for t in bias), dtype=np.int64)
        self._bias = np.array([bias[t] for t in sorted(bias, key=int)], dtype=np.float32)

    @property
    def logit_bias(self) -> dict[int, float]:
        return {int(t): float(b) for t, b in zip(self._bias_ids, self._bias)}

    def _biased(self, logits: np.ndarray) -> np.ndarray:
        if not self._bias_ids.size:
            return logits
        if self._bias_ids[-1] >= logits.shape[0]:
            raise SamplingError(f"logit_bias names token {int(self._bias_ids[-1])}, past the vocabulary of "
                                f"{logits.shape[0]} tokens")
        out = logits.copy()
        out[self._bias_ids] += self._bias
        return out

    def _penalize(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """llama.cpp's penalties over the last `repeat_last_n` tokens: every distinct one has its
        logit divided by the repeat penalty if positive (multiplied if not), then lowered by
        frequency_penalty x its count plus presence_penalty (OpenAI's definitions)."""
        if ((self.repeat_penalty == 1.0 and self.frequency_penalty == 0.0 and self.presence_penalty == 0.0)
                or self.repeat_last_n == 0 or len(history) == 0):
            return logits
        recent = history if self.repeat_last_n < 0 else history[-self.repeat_last_n:]
        ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
        keep = (ids >= 0) & (ids < logits.shape[0])
        ids, counts = ids[keep], counts[keep]
        if ids.size == 0:
            return logits
        out = logits.copy()
        v = out[ids]
        if self.repeat_penalty != 1.0:
            v = np.where(v <= 0, v * self.repeat_penalty, v / self.repeat_penalty)
        out[ids] = v - (counts * self.frequency_penalty + self.presence_penalty).astype(np.float32)
        return out

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """One token id from `logits` (float32[n_vocab]); `history` holds the ids so far."""
        return self.draw(*self.distribution(logits, history))

    def distribution(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """What `sample` draws from: candidate ids, highest logit first, and their unnormalized
        weights (float64). Greedy (temperature 0) is one candidate of weight 1."""
        logits = np.asarray(logits)
        if logits.ndim != 1 or logits.shape[0] == 0:
            raise SamplingError(f"logits must be a non-empty vector, got shape {logits.shape}")
        logits = self._penalize(self._biased(logits.astype(np.float32, copy=False)), history)
        if np.isnan(logits).any():
            raise SamplingError("logits contain NaN")
        if self.temperature == 0.0:
            if self._bias_ids.size and not np.isfinite(logits.max()):
                raise SamplingError("logit_bias leaves no token that can be chosen")
            return np.array([int(np.argmax(logits))]), np.ones(1)  # first of equal maxima
        if not np.isfinite(logits.max()):
            raise SamplingError("no finite logit to sample from")

        # candidates, highest logit first; equal logits keep the lower id first
        n = logits.shape[0]
        if 0 < self.top_k < n:
            part = np.argpartition(-logits, self.top_k - 1)[: self.top_k]
            ids = part[np.lexsort((part, -logits[part]))]
        else:
            ids = None  # sorted lazily: top_p only needs the head of the order
        if self.top_p < 1.0:
            ids = self._top_p(logits, ids)
        if ids is None:
            ids = np.arange(n)
        cand = logits[ids].astype(np.float64)
        if self.min_p > 0.0:
            keep = cand >= cand.max() + np.log(self.min_p)
            ids, cand = ids[keep], cand[keep]
        cand = cand / self.temperature
        return ids, np.exp(cand - cand.max())

    def draw(self, ids: np.ndarray, weights: np.ndarray) -> int:
        """One of `ids` with probability proportional to `weights` (the seeded generator; greedy
        draws nothing from it)."""
        if self.temperature == 0.0:
            return int(ids[0])
        cdf = np.cumsum(weights)
        r = self.rng.random() * cdf[-1]
        k = int(np.searchsorted(cdf, r, side="right"))
        return int(ids[min(k, len(ids) - 1)])

    def _top_p(self, logits: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
        """The fewest highest-probability candidates whose probabilities sum to >= top_p."""
        if ids is None:
            ids = np.arange(logits.shape[0])
            sorted_ = False
        else:
            sorted_ = True
        x = logits[ids].astype(np.float64)
        p = np.exp(x - x.max())
        p /= p.sum()
        n = len(ids)
        m = n if sorted_ else min(n, 256)
        while True:
            # unsorted ids are arange(n), so a stable sort on -x puts equal logits lower id first
            if sorted_ or m >= n:
                head = np.arange(n) if sorted_ else np.argsort(-x, kind="stable")
            else:
                # the largest m probabilities, in order; grows until they hold top_p of the mass
                part = np.sort(np.argpartition(-x, m - 1)[:m])
                head = part[np.argsort(-x[part], kind="stable")]
            cum = np.cumsum(p[head])
            if cum[-1] >= self.top_p or len(head) == n:
                last = int(np.searchsorted(cum, self.top_p, side="left")) + 1
                return ids[head[: min(last, len(head))]]
            m *= 8
