"""Engine slots (one KV cache per sequence) and exact rewinds (longer sliding rings)."""

from __future__ import annotations

import numpy as np
import pytest

from g4rt.engine import Engine

from server_util import FIXTURES

MODEL = FIXTURES / "models" / "g4-dense-Q4_0.gguf"      # sliding window 16 on five of six layers


def _need():
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is absent (the shared fixtures folder is not beside the project)")


def _backends():
    from g4rt.backends import native_cpu_available
    return ["numpy"] + (["cpu"] if native_cpu_available() else [])


@pytest.mark.parametrize("backend", _backends())
def test_slots_keep_separate_sequences(backend):
    _need()
    e = Engine(MODEL, backend=backend, ctx=96, slots=3)
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, e.config.n_vocab, n).tolist() for n in (40, 25, 33)]
    alone = []
    for s in seqs:
        e.reset(0)
        alone.append(e.forward(s, all_logits=True))
    e.reset(0)
    # interleave the three sequences token by token over slots 0..2
    outs = [[] for _ in seqs]
    for t in range(max(map(len, seqs))):
        for i, s in enumerate(seqs):
            if t < len(s):
                outs[i].append(e.forward([s[t]], slot=i)[-1])
    for i, s in enumerate(seqs):
        assert e.position(i) == len(s)
        np.testing.assert_allclose(np.stack(outs[i]), alone[i], atol=2e-2, rtol=0)
        assert (np.stack(outs[i]).argmax(-1) == alone[i].argmax(-1)).mean() > 0.95
    e.close()


@pytest.mark.parametrize("backend", _backends())
def test_rewind_with_ring_slack_is_exact(backend):
    """A ring 8 rows longer than the window lets a sequence move back 8 positions after the ring
    wrapped, and continue exactly as a fresh prefill of the new sequence does."""
    _need()
    e = Engine(MODEL, backend=backend, ctx=128, slots=2, ring_slack=8)
    rng = np.random.default_rng(2)
    a = rng.integers(0, e.config.n_vocab, 60).tolist()
    b = a[:54] + rng.integers(0, e.config.n_vocab, 10).tolist()     # shares 54 tokens, then differs
    e.forward(a, slot=1)
    keep = e.reusable_prefix(60, 54)
    assert keep == 54
    assert e.reusable_prefix(60, 51) == 0              # 9 back > the 8 rows of slack, after a wrap
    assert e.reusable_prefix(20, 3) == 3               # no ring has wrapped yet (24 rows)
    e.truncate(keep, slot=1)
    got = e.forward(b[keep:], slot=1, all_logits=True)
    want = e.forward(b, slot=0, all_logits=True)[keep:]
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)
    # without slack the same move back would read overwritten rows: the engine refuses it
    e0 = Engine(MODEL, backend=backend, ctx=128)
    assert e0.reusable_prefix(60, 54) == 0
    e.close()
    e0.close()
