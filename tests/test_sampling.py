"""Sampler: greedy, determinism, the distribution it draws from, and each truncation step."""

from __future__ import annotations

import numpy as np
import pytest

from g4rt.errors import G4rtError
from g4rt.sampling import Sampler, SamplingError


def _freqs(sampler: Sampler, logits, n: int, history=()) -> np.ndarray:
    counts = np.zeros(len(logits))
    for _ in range(n):
        counts[sampler.sample(np.asarray(logits, dtype=np.float32), list(history))] += 1
    return counts / n


def _softmax(x, t=1.0):
    x = np.asarray(x, dtype=np.float64) / t
    e = np.exp(x - x.max())
    return e / e.sum()


def test_greedy_is_first_argmax():
    rng = np.random.default_rng(0)
    s = Sampler()  # temperature 0
    for _ in range(20):
        logits = rng.normal(size=1000).astype(np.float32)
        assert s.sample(logits, []) == int(np.argmax(logits))
    tie = np.array([0.0, 3.0, 1.0, 3.0], dtype=np.float32)
    assert s.sample(tie, []) == 1


def test_same_seed_same_draws():
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=5000).astype(np.float32) * 2 for _ in range(40)]
    opts = dict(temperature=0.9, top_k=50, top_p=0.95, min_p=0.01, repeat_penalty=1.1)
    a, b, c = Sampler(seed=123, **opts), Sampler(seed=123, **opts), Sampler(seed=124, **opts)
    hist_a, hist_b, hist_c = [], [], []
    for lg in logits:
        hist_a.append(a.sample(lg, hist_a))
        hist_b.append(b.sample(lg, hist_b))
        hist_c.append(c.sample(lg, hist_c))
    assert hist_a == hist_b
    assert hist_a != hist_c  # 40 draws over ~50 candidates: a different seed differs


def test_top_k_1_is_argmax():
    rng = np.random.default_rng(2)
    s = Sampler(temperature=1.5, top_k=1, seed=0)
    for _ in range(50):
        logits = rng.normal(size=300).astype(np.float32)
        assert s.sample(logits, []) == int(np.argmax(logits))


def test_frequencies_follow_softmax():
    logits = [1.0, 0.5, 0.0, -0.5, -2.0]
    for t in (1.0, 0.7):
        f = _freqs(Sampler(temperature=t, seed=5), logits, 20000)
        # binomial standard error is <= 0.0035 at n=20000; 0.015 is > 4 sigma
        np.testing.assert_allclose(f, _softmax(logits, t), atol=0.015)


def test_top_k_keeps_the_k_best():
    logits = [3.0, 0.0, 2.0, 1.0, -1.0]
    f = _freqs(Sampler(temperature=1.0, top_k=2, seed=6), logits, 5000)
    assert f[1] == f[3] == f[4] == 0
    np.testing.assert_allclose(f[[0, 2]], _softmax([3.0, 2.0]), atol=0.03)


def test_top_p_keeps_the_smallest_head():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    f = _freqs(Sampler(temperature=1.0, top_p=0.75, seed=7), logits, 4000)
    # 0.5 < 0.75 <= 0.5 + 0.3: the first two stay, renormalised to 5/8 and 3/8
    assert f[2] == f[3] == 0
    np.testing.assert_allclose(f[:2], [0.625, 0.375], atol=0.03)


def test_top_p_on_a_full_vocabulary_matches_a_full_sort():
    # the sampler only sorts the head it needs; compare with sorting everything
    rng = np.random.default_rng(8)
    for scale, top_p in ((1.0, 0.9), (4.0, 0.5), (0.2, 0.99)):
        logits = (rng.normal(size=262144) * scale).astype(np.float32)
        s = Sampler(temperature=1.0, top_p=top_p, seed=0)
        kept = s._top_p(logits, None)
        p = _softmax(logits)
        order = np.lexsort((np.arange(len(p)), -logits))
        n = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1
        assert kept.tolist() == order[:n].tolist()


def test_min_p_cuts_relative_to_the_best():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    f = _freqs(Sampler(temperature=1.0, min_p=0.2, seed=9), logits, 4000)
    # threshold 0.2 * 0.5 = 0.1: the 0.05 token goes
    assert f[3] == 0
    np.testing.assert_allclose(f[:3], np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.03)


def test_truncation_comes_before_temperature():
    # llama.cpp's order: min_p judges the untempered distribution. At T=1 token 1 has 2/3 of
    # token 0's probability (kept by min_p=0.5); at T=0.2 it would have 0.13 (cut), but it stays.
    logits = np.log([0.6, 0.4])
    f = _freqs(Sampler(temperature=0.2, min_p=0.5, seed=10), logits, 4000)
    expected = _softmax(logits, 0.2)[1]  # ~0.116
    assert abs(f[1] - expected) < 0.03


def test_repeat_penalty():
    s = Sampler(repeat_penalty=1.2)
    # a positive logit is divided: 2.0 / 1.2 = 1.67 < 1.9
    assert s.sample(np.array([2.0, 1.9, -1.0], dtype=np.float32), [0]) == 1
    # a negative one is multiplied: -1.0 * 1.2 = -1.2 < -1.1
    assert s.sample(np.array([-1.0, -1.1], dtype=np.float32), [0]) == 1
    # only the last repeat_last_n tokens count, and each distinct token once
    assert s.sample(np.array([2.0, 1.9, 0.0], dtype=np.float32), [0] + [2] * 64) == 0
    assert s.sample(np.array([2.0, 1.9, 0.0], dtype=np.float32), [0, 0, 0, 0]) == 1
    assert Sampler(repeat_penalty=1.2, repeat_last_n=-1).sample(
        np.array([2.0, 1.9, 0.0], dtype=np.float32), [0] + [2] * 64) == 1
    assert Sampler(repeat_penalty=1.2, repeat_last_n=0).sample(
        np.array([2.0, 1.9], dtype=np.float32), [0]) == 0


def test_masked_logits_are_never_drawn():
    logits = np.array([-np.inf, 0.0, -np.inf, 0.0], dtype=np.float32)
    f = _freqs(Sampler(temperature=1.0, seed=11), logits, 500)
    assert f[0] == f[2] == 0


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0),
                                    dict(top_p=1.5), dict(min_p=2.0), dict(repeat_penalty=0.0),
                                    dict(repeat_last_n=-2)])
def test_bad_parameters(kwargs):
    with pytest.raises(SamplingError):
        Sampler(**kwargs)
    assert issubclass(SamplingError, G4rtError)


def test_bad_logits():
    with pytest.raises(SamplingError):
        Sampler(temperature=1.0).sample(np.array([np.nan, 1.0], dtype=np.float32), [])
    with pytest.raises(SamplingError):
        Sampler(temperature=1.0).sample(np.full(3, -np.inf, dtype=np.float32), [])
    with pytest.raises(SamplingError):
        Sampler().sample(np.zeros((2, 2), dtype=np.float32), [])


def test_logit_bias_comes_first_and_bans_with_minus_infinity():
    """llama.cpp's chain starts with the logit bias: a banned token is never drawn, greedy or not;
    a bias shifts the token before the penalties judge it; a bias past the vocabulary or one that
    leaves nothing to choose is an error."""
    logits = np.array([3.0, 2.0, 1.0, 0.5], np.float32)
    assert Sampler(logit_bias={0: float("-inf")}).sample(logits) == 1
    assert Sampler(logit_bias={3: 10.0}).sample(logits) == 3
    s = Sampler(temperature=1.0, seed=3, logit_bias={0: float("-inf"), 1: float("-inf")})
    assert {s.sample(logits) for _ in range(300)} == {2, 3}
    # the bias applies before the repeat penalty: (2 + 2) / 2 = 2 < 3
    assert Sampler(repeat_penalty=2.0, logit_bias={1: 2.0}).sample(logits, history=[1]) == 0
    assert Sampler(repeat_penalty=2.0, logit_bias={1: 5.0}).sample(logits, history=[1]) == 1   # 7 / 2 = 3.5
    with pytest.raises(SamplingError, match="past the vocabulary"):
        Sampler(logit_bias={9: 1.0}).sample(logits)
    with pytest.raises(SamplingError, match="no token"):
        Sampler(logit_bias={i: float("-inf") for i in range(4)}).sample(logits)
    with pytest.raises(SamplingError, match="token ids are >= 0"):
        Sampler(logit_bias={-1: 1.0})
