"""The MTP assistant's K proposals against llama.cpp's draft-mtp (issue 26).

tests/data/assistant/<target>-assistant.llama.json holds what llama.cpp's own speculative loop
proposed (scripts/llama_mtp_proposals.cpp, recorded by scripts/make_assistant_llama_ref.py: F32
KV, flash attention off, p_min 0, K = 4, drafts at every position from the prompt's end on, past
the window), with each step's top-8 logits of llama.cpp's assistant and the target hidden state
it started from; `.llama-exact-gelu.json` the same from the same llama.cpp with one change, ggml's
CPU GELU computed exactly. g4rt's `AssistantDrafter.propose` on the same target states (numpy
reference and the native CPU, exact activations, f32 KV) is compared with both.

Measured (see docs/speculative.md): stock ggml-cpu computes GELU from an fp16 table
(GGML_GELU_FP16 in ggml-cpu/vec.h: input and output rounded to fp16). That puts llama.cpp's F32
target hidden state 4e-3 .. 5e-2 away from the float64 reference and its assistant logits 2e-3 ..
3.4 away by the 4th draft step (each step feeds back an unnormalised projected hidden state, which
amplifies). With the GELU exact, the hidden state is within 1.2e-4 and llama.cpp's proposals are
g4rt's on every recorded draft. So:
  - against the exact-GELU build: every proposal of every draft equal, no exception;
  - against stock llama.cpp: the first proposal of every draft equal, every later one up to the
    first step where they differ, and a difference accepted only where the float64 reference's
    top-2 margin there (the tokens fed so far being the same on both sides) is below the error
    stock llama.cpp shows at that step on the drafts where the two agree (its own recorded top
    logits against the reference); each one is printed with both numbers, and at least 85 % of
    the drafts must agree in full.
CI has no llama.cpp: the test reads the recorded JSON only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES

DATA = Path(__file__).parent / "data" / "assistant"
MODELS = FIXTURES / "models"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
TARGETS = ["g4-dense-untied-F32", "g4-edge-F32"]
#: the largest llama.cpp logit error (vs the float64 reference) the comparison tolerates at a step
LLAMA_ERROR_CAP = 5.0
#: llama.cpp's target hidden state against g4rt's (the same state: measured up to 5e-2)
HIDDEN_BAR = 0.1
BUILDS = ["llama", "llama-exact-gelu"]
NEED_CC = pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")


def _rec(stem, build="llama"):
    return json.loads((DATA / f"{stem}-assistant.{build}.json").read_text())


def _reference_steps(eng, drafter, case, k):
    """The reference's logits per draft step along its own argmax chain."""
    hist, P = case["history"], case["pos0"]
    eng.reset()
    eng.forward(hist[:P])
    h, tok, rows = eng.hidden_state(), int(hist[P]), []
    h0 = h
    for _ in range(k):
        lg, h = drafter.step(tok, h, P)
        tok = int(np.argmax(lg))
        rows.append(lg.astype(np.float64))
    return rows, h0


def _proposals(rec, backend):
    from g4rt.engine import Engine
    from g4rt.speculative_mtp import AssistantDrafter
    opts = {} if backend == "numpy" else dict(precision="exact", kv_dtype="f32")
    eng = Engine(MODELS / rec["target"], backend=backend, ctx=256, **opts)
    d = AssistantDrafter(eng, DATA / rec["assistant"])
    try:
        out = []
        for c in rec["cases"]:
            eng.reset()
            eng.forward(c["history"][:c["pos0"]])
            out.append(d.propose(c["history"], rec["k"]))
        return out
    finally:
        d.close()
        eng.close()


@pytest.fixture(scope="module")
def reference():
    """Per target and build: the reference's logits of every recorded draft's steps (numpy)."""
    from g4rt.engine import Engine
    from g4rt.speculative_mtp import AssistantDrafter
    if not MODELS.is_dir():
        pytest.skip(f"{FIXTURES} is absent (the fixture targets)")
    out = {}
    for stem in TARGETS:
        for build in BUILDS:
            rec = _rec(stem, build)
            eng = Engine(MODELS / rec["target"], backend="numpy", ctx=256)
            d = AssistantDrafter(eng, DATA / rec["assistant"])
            try:
                out[stem, build] = [_reference_steps(eng, d, c, rec["k"]) for c in rec["cases"]]
            finally:
                d.close()
                eng.close()
    return out


def _llama_error(rec, ref):
    """Per draft step: the largest |llama.cpp logit - reference logit| over llama.cpp's recorded
    top-8, on the drafts where llama.cpp's proposals equal the reference's argmax chain."""
    err = np.zeros(rec["k"])
    for c, (rows, _) in zip(rec["cases"], ref):
        if c["proposals"] != [int(np.argmax(r)) for r in rows]:
            continue
        for s, t in enumerate(c["top"]):
            err[s] = max(err[s], float(np.abs(rows[s][t["ids"]] - np.array(t["logits"])).max()))
    return err


def _check_recording(rec, ref):
    assert rec["k"] == 4 and len(rec["cases"]) >= 40
    assert max(c["pos0"] for c in rec["cases"]) > 2 * 16           # past the window (16 / 8)
    assert min(c["pos0"] for c in rec["cases"]) < 16
    for c, (_, h0) in zip(rec["cases"], ref):
        assert c["history"][:len(rec["prompts"][c["prompt"]])] == rec["prompts"][c["prompt"]]
        assert np.abs(h0 - np.array(c["hidden"])).max() <= HIDDEN_BAR, c["pos0"]


@pytest.mark.parametrize("backend", ["numpy", pytest.param("cpu", marks=NEED_CC)])
@pytest.mark.parametrize("stem", TARGETS)
def test_proposals_equal_llama_cpp_with_an_exact_gelu(stem, backend, reference):
    """llama.cpp's draft-mtp with ggml-cpu's GELU exact: every proposal equal."""
    rec, ref = _rec(stem, "llama-exact-gelu"), reference[stem, "llama-exact-gelu"]
    _check_recording(rec, ref)
    got = _proposals(rec, backend)
    diff = [(c["pos0"], g, c["proposals"]) for c, g in zip(rec["cases"], got) if g != c["proposals"]]
    assert not diff, f"{len(diff)} of {len(got)} drafts differ (pos, g4rt, llama.cpp): {diff}"


@pytest.mark.parametrize("backend", ["numpy", pytest.param("cpu", marks=NEED_CC)])
@pytest.mark.parametrize("stem", TARGETS)
def test_proposals_equal_stock_llama_cpp_draft_mtp(stem, backend, reference):
    """Stock llama.cpp (fp16-table GELU): equal but where its own measured error decides."""
    rec, ref = _rec(stem), reference[stem, "llama"]
    _check_recording(rec, ref)
    err = _llama_error(rec, ref)
    assert (err <= LLAMA_ERROR_CAP).all(), f"llama.cpp's logit error per step {err}: not the same computation"
    got = _proposals(rec, backend)
    full, accepted = 0, []
    for c, g, (rows, h0) in zip(rec["cases"], got, ref):
        want = c["proposals"]
        assert len(g) == len(want) == rec["k"], (c["pos0"], g, want)
        # g4rt's proposals are its float64 reference's argmax chain on every backend here
        assert g == [int(np.argmax(r)) for r in rows], (c["pos0"], g)
        if g == want:
            full += 1
            continue
        s = next(i for i in range(len(g)) if g[i] != want[i])
        assert s > 0, f"pos {c['pos0']}: the first proposal differs: g4rt {g}, llama.cpp {want}"
        r = rows[s]
        margin = float(r[g[s]] - r[want[s]])
        msg = (f"{stem} pos {c['pos0']} step {s}: g4rt {g[s]} vs llama.cpp {want[s]}: reference margin "
               f"{margin:.4f}, llama.cpp's error at step {s} on agreeing drafts {err[s]:.4f}")
        assert margin < err[s], "a real mismatch: " + msg
        accepted.append(msg)
    for m in accepted:
        print("within llama.cpp's float error:", m)
    assert full >= 0.85 * len(rec["cases"]), (full, len(rec["cases"]), accepted)
