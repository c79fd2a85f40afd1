"""Speculative decoding: greedy output token for token that of plain decoding (draft models of
high and low acceptance, prompt lookup, K = 1 / 4 / 8, rollbacks across the 1024-window ring);
the sampling rule leaves the target's distribution unchanged (and a wrong rule is caught); drafts
with another vocabulary or too big for memory are refused before loading."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
NEED_CC = pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")
NEED_FIXTURES = pytest.mark.skipif(not (FIXTURES / "models").is_dir(), reason=f"{FIXTURES} is absent")
MODELS = FIXTURES / "models"
MOE = FIXTURES.parent / "fixtures-moe" / "models"


def _prompt(name, i=3, n=None, long=False):
    r = np.load(FIXTURES / "ref" / f"{name}{'.long' if long else ''}.exact.npz")
    ids = r[f"ids_{i}"] if f"ids_{i}" in r.files else max((r[k] for k in r.files if k.startswith("ids")), key=len)
    return [int(t) for t in (ids if n is None else ids[:n])]


def _greedy(path, ids, n, backend="cpu", **spec):
    from g4rt.generation import GenerationStats, load
    if backend == "cuda-sim":           # the CUDA kernels on the CPU simulator, through the engine
        m = _load_sim(path, len(ids) + n + 24, **spec)
    else:
        m = load(path, backend=backend, ctx=len(ids) + n + 24, **spec)
    try:
        st = GenerationStats()
        out = list(m.generate_ids(ids, n, stats=st))
        return out, st
    finally:
        m.close()


def _load_sim(path, ctx, **spec):
    from g4rt.engine import Engine
    from g4rt.generation import Model
    from g4rt.speculative import create_speculator
    from g4rt.text.tokenizer import load_tokenizer
    from test_cuda_sim import sim
    k = spec.get("draft_max", 8)
    e = Engine(path, backend=sim(), ctx=ctx, ring_slack=k)
    sp = None
    if spec:
        sp = create_speculator(e, load_tokenizer(e.file), draft=spec.get("draft"), spec=spec.get("spec"),
                               draft_max=k, draft_backend="numpy")
    return Model(e, "cuda simulator", sp)


# ---- greedy identity ---------------------------------------------------------------------------
def _family_draft(name):
    """Another quant of the same weights (high acceptance where quantization keeps the argmax)."""
    base = name.rsplit("-", 1)[0] if not name.endswith("Q4_0-pure") else name[:-len("-Q4_0-pure")]
    for cand in (f"{base}-F32", f"{base}-Q8_0", f"{base}-Q4_0-pure", f"{base}-Q4_K_M"):
        if cand != name and (MODELS / f"{cand}.gguf").is_file():
            return MODELS / f"{cand}.gguf"
    return MODELS / "g4-dense-F32.gguf"


ALL = sorted(p.stem for p in MODELS.glob("*.gguf")) if MODELS.is_dir() else []


@NEED_FIXTURES
@NEED_CC
@pytest.mark.parametrize("name", ALL)
def test_greedy_identity_on_every_fixture(name):
    """A same-family draft (K = 8), another family's draft (K = 4, low acceptance) and prompt
    lookup (K = 1): each gives exactly the plain greedy tokens."""
    path = MODELS / f"{name}.gguf"
    ids = _prompt(name)
    plain, _ = _greedy(path, ids, 32)
    other = MODELS / ("g4-edge-Q4_0-pure.gguf" if "edge" not in name else "g4-dense-Q4_0-pure.gguf")
    for spec in (dict(draft=_family_draft(name), draft_max=8), dict(draft=other, draft_max=4),
                 dict(spec="ngram", draft_max=1)):
        got, st = _greedy(path, ids, 32, **spec)
        assert got == plain, (spec, st.speculative)
        assert st.speculative.steps > 0


def _other_backends():
    from conftest import vulkan_skip_reason
    from g4rt.testing.cuda.simulator import sim_available
    ok, why = sim_available()
    return ["numpy",
            pytest.param("vulkan", marks=pytest.mark.skipif(vulkan_skip_reason() is not None,
                                                            reason=str(vulkan_skip_reason()))),
            pytest.param("cuda-sim", marks=pytest.mark.skipif(not ok, reason=str(why)))]


@NEED_FIXTURES
@pytest.mark.parametrize("name", ALL)
def test_greedy_identity_on_every_fixture_with_the_numpy_reference(name):
    path = MODELS / f"{name}.gguf"
    ids = _prompt(name)
    plain, _ = _greedy(path, ids, 24, "numpy")
    got, st = _greedy(path, ids, 24, "numpy", draft=_family_draft(name), draft_max=8)
    assert got == plain, st.speculative


@NEED_FIXTURES
@pytest.mark.parametrize("backend", _other_backends()[1:])
@pytest.mark.parametrize("name", [pytest.param("g4-dense-Q4_K_M", marks=pytest.mark.slow), "g4-edge-Q4_0-pure",
                                  pytest.param("g4-dense-keqv-F32", marks=pytest.mark.slow)])
def test_greedy_identity_on_the_gpu_backends(backend, name):
    """Vulkan (lavapipe) and the CUDA kernels (simulator) are row-exact too: speculative output
    equals their own plain greedy output (K = 4, a same-family draft)."""
    path = MODELS / f"{name}.gguf"
    ids = _prompt(name)
    n = 12 if backend == "cuda-sim" else 24
    plain, _ = _greedy(path, ids, n, backend)
    got, st = _greedy(path, ids, n, backend, draft=_family_draft(name), draft_max=4)
    assert got == plain, st.speculative
    assert st.speculative.steps > 0


@NEED_FIXTURES
@NEED_CC
def test_greedy_identity_on_the_moe_fixture():
    path = MOE / "g4-moe-Q4_K_M.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    r = np.load(MOE.parent / "ref" / "g4-moe-Q4_K_M.exact.npz")
    ids = [int(t) for t in r["ids_3"]]
    plain, _ = _greedy(path, ids, 32)
    got, st = _greedy(path, ids, 32, draft=MOE / "g4-moe-Q8_0.gguf", draft_max=6)
    assert got == plain and st.speculative.accepted > 0


@NEED_FIXTURES
@NEED_CC
@pytest.mark.parametrize("k", [1, 4, 8])
def test_greedy_identity_across_the_1024_window(k):
    """A 2,337-token prompt, then 40 tokens with rollbacks as the rings wrap."""
    name = "g4-dense-w1024-Q4_0-pure"
    ids = _prompt(name, long=True)
    plain, _ = _greedy(MODELS / f"{name}.gguf", ids, 40)
    got, st = _greedy(MODELS / f"{name}.gguf", ids, 40, draft=MODELS / "g4-dense-w1024-F32.gguf", draft_max=k)
    assert got == plain
    assert st.speculative.drafted > st.speculative.accepted      # some proposals were taken back


@NEED_CC
def test_prompt_lookup_accepts_on_a_repetitive_prompt():
    """The bundled Gemma 3 270M continuing a repeated sentence: prompt lookup proposes it."""
    from g4rt.model.bundled import default_model_path
    from g4rt.generation import load
    try:
        path = default_model_path()
    except Exception as e:              # noqa: BLE001 - the bundled model is an optional package
        pytest.skip(f"the bundled default model is not installed: {e}")
    m = load(path, backend="cpu", ctx=256)
    ids = m.encode_prompt("The quick brown fox jumps over the lazy dog. " * 3 + "The quick")
    m.close()
    plain, _ = _greedy(path, ids, 40)
    got, st = _greedy(path, ids, 40, spec="ngram", draft_max=8)
    assert got == plain
    assert st.speculative.acceptance > 0.8 and st.speculative.tokens_per_step > 4, st.speculative


@NEED_FIXTURES
@NEED_CC
def test_chat_turns_keep_the_cache_with_a_draft():
    """The next turn reuses the cached history of both models and still decodes as plainly."""
    from g4rt.generation import load
    path = MODELS / "g4-dense-untied-F32.gguf"
    ids = _prompt("g4-dense-untied-F32", 0)
    m = load(path, backend="cpu", ctx=256, draft=MODELS / "g4-dense-untied-Q8_0.gguf", draft_max=4)
    p = load(path, backend="cpu", ctx=256)
    try:
        a = list(m.generate_ids(ids, 16))
        b = list(m.generate_ids(ids + a + ids[1:6], 16))
        assert a == list(p.generate_ids(ids, 16))
        assert b == list(p.generate_ids(ids + a + ids[1:6], 16))
    finally:
        m.close()
        p.close()


# ---- sampling: the rule keeps the target's distribution ----------------------------------------
def _chi2(counts, p):
    n = counts.sum()
    e = n * p
    return float(((counts - e) ** 2 / e).sum())


CHI2_DF5_P001 = 20.52          # the 0.999 quantile of chi-square with 5 degrees of freedom


def _first_tokens(rule, proposal_of, trials=30000):
    """The emitted token at one position when the drafter proposes proposal_of(trial)."""
    from g4rt.sampling import Sampler
    logits = np.log(np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05], np.float32))
    s = Sampler(temperature=1.0, seed=7)
    counts = np.zeros(6)
    for t in range(trials):
        tok, _ = rule(s, logits, [], proposal_of(t))
        counts[tok] += 1
    return counts, np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])


@pytest.mark.parametrize("proposal_of", [lambda t: 0, lambda t: 5, lambda t: t % 6, lambda t: (t * 7919) % 3],
                         ids=["likely", "unlikely", "cycling", "skewed"])
def test_the_acceptance_rule_keeps_the_target_distribution(proposal_of):
    from g4rt.speculative import accept_or_replace
    counts, p = _first_tokens(accept_or_replace, proposal_of)
    assert _chi2(counts, p) < CHI2_DF5_P001, counts


def test_a_wrong_rule_is_caught():
    """The test has the power to fail: rejecting into p itself (not p without the proposal), or
    always keeping the proposal, moves the distribution far past the bound."""
    def resample_from_p(s, logits, history, d):
        ids, w = s.distribution(logits, history)
        p = float(w[np.flatnonzero(ids == d)[0]] / w.sum())
        return (d, True) if s.rng.random() < p else (s.draw(ids, w), False)

    def always_keep(s, logits, history, d):
        return d, True
    for wrong in (resample_from_p, always_keep):
        counts, p = _first_tokens(wrong, lambda t: 0)
        assert _chi2(counts, p) > 10 * CHI2_DF5_P001, (wrong.__name__, counts)


def test_greedy_rule_keeps_exactly_the_argmax():
    from g4rt.sampling import Sampler
    from g4rt.speculative import accept_or_replace
    logits = np.array([0.1, 2.0, 2.0, -1.0], np.float32)       # a tie: the lower id is the argmax
    s = Sampler()
    assert accept_or_replace(s, logits, [], 1) == (1, True)
    assert accept_or_replace(s, logits, [], 2) == (1, False)


@NEED_FIXTURES
@NEED_CC
def test_sampled_speculation_is_reproducible_and_follows_the_sampler():
    from g4rt.generation import load
    from g4rt.sampling import Sampler
    path = MODELS / "g4-dense-untied-F32.gguf"
    ids = _prompt("g4-dense-untied-F32", 0)
    runs = []
    for _ in range(2):
        m = load(path, backend="cpu", ctx=128, draft=MODELS / "g4-dense-untied-Q8_0.gguf", draft_max=4)
        try:
            runs.append(list(m.generate_ids(ids, 24, Sampler(temperature=0.8, top_k=20, seed=11))))
        finally:
            m.close()
    assert runs[0] == runs[1]
    # every token is one the sampler could draw: inside the top 20 of the target at its position
    m = load(path, backend="cpu", ctx=128)
    try:
        logits = m.logits(ids + runs[0])
    finally:
        m.close()
    for i, t in enumerate(runs[0]):
        assert t in np.argsort(-logits[len(ids) - 1 + i])[:20]


# ---- refusals ----------------------------------------------------------------------------------
@NEED_FIXTURES
def test_a_draft_with_another_vocabulary_is_refused(tmp_path):
    from gguf import GGUFReader, GGUFValueType
    from gguf_edit import rewrite_gguf
    from g4rt.generation import load
    from g4rt.speculative import SpeculativeError
    src = MODELS / "g4-dense-F32.gguf"
    tokens = list(GGUFReader(src).fields["tokenizer.ggml.tokens"].contents())
    tokens[1234] = tokens[1234] + "x"
    bad = tmp_path / "other-vocab.gguf"
    rewrite_gguf(src, bad, set_keys={"tokenizer.ggml.tokens": (tokens, GGUFValueType.ARRAY, GGUFValueType.STRING)})
    with pytest.raises(SpeculativeError, match="token 1234"):
        load(MODELS / "g4-dense-Q4_0-pure.gguf", backend="numpy", ctx=64, draft=bad)


@NEED_FIXTURES
def test_a_draft_too_big_for_memory_is_refused_before_loading(monkeypatch):
    from g4rt import memory_plan
    from g4rt import speculative
    from g4rt.generation import load
    monkeypatch.setattr(memory_plan, "available_ram", lambda: 1 << 20)
    built = []
    real = speculative.Engine
    monkeypatch.setattr(speculative, "Engine", lambda *a, **k: built.append(a) or real(*a, **k))
    with pytest.raises(speculative.SpeculativeError, match="needs .* GiB"):
        load(MODELS / "g4-dense-F32.gguf", backend="numpy", ctx=64, draft=MODELS / "g4-dense-Q4_0-pure.gguf")
    assert built == []


@NEED_FIXTURES
@pytest.mark.parametrize("args,fragment", [
    (["--spec", "ngram", "--draft", str(MODELS / "g4-dense-Q4_0-pure.gguf")], "not both"),
    (["--spec", "ngram", "--draft-min", "9", "--draft-max", "4"], "--draft-min"),
    (["--draft-max", "40", "--spec", "ngram"], "--draft-max"),
])
def test_cli_refusals(args, fragment):
    proc = subprocess.run([sys.executable, "-m", "g4rt", "run", str(MODELS / "g4-dense-F32.gguf"), "-p", "hi",
                           "-n", "2", "-q", "--backend", "numpy"] + args, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@NEED_FIXTURES
@NEED_CC
def test_cli_summary_reports_the_speculation():
    path = MODELS / "g4-dense-untied-F32.gguf"
    base = [sys.executable, "-m", "g4rt", "run", str(path), "-p", "one two three one two three one two", "-n", "12",
            "--backend", "cpu"]
    plain = subprocess.run(base, capture_output=True, text=True, timeout=120)
    spec = subprocess.run(base + ["--spec", "ngram"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout
    assert "speculative:" in spec.stderr and "tokens per verification" in spec.stderr


# ---- the server ------------------------------------------------------------------------------------
@NEED_FIXTURES
@NEED_CC
@pytest.mark.parametrize("spec_args", [["--spec", "ngram", "--draft-max", "4"],
                                       ["--draft", str(MODELS / "g4-dense-untied-Q8_0.gguf"), "--draft-max", "6"],
                                       ["--draft", str(Path(__file__).parent / "data" / "assistant" /
                                                       "g4-dense-untied-F32-assistant-F32.gguf"), "--draft-max", "4"]],
                         ids=["ngram", "draft", "mtp-assistant"])
def test_server_with_speculation_answers_as_plain_decoding(tmp_path, spec_args):
    """Greedy completions, streamed and not, with two slots busy at once: the same text as plain
    in-process decoding, logprobs for every token, and llama-server's draft counts in `timings`."""
    import threading

    import httpx

    from g4rt.generation import load
    from server_util import ServerProcess
    path = MODELS / "g4-dense-untied-F32.gguf"
    prompts = ["one two three one two three one two", "a b c d a b c d a b"]
    m = load(path, backend="cpu", ctx=256)
    want = {p: m.tokenizer.decode(list(m.generate_ids(m.encode_prompt(p), 20))) for p in prompts}
    m.close()
    srv = ServerProcess(path, "--backend", "cpu", "--parallel", "2", "--ctx", "256", *spec_args,
                        log_dir=tmp_path).wait_ready()
    try:
        got = {}

        def ask(p):
            r = httpx.post(srv.url + "/v1/completions", json={"prompt": p, "max_tokens": 20, "temperature": 0,
                                                               "logprobs": 1}, timeout=120)
            got[p] = r.json()
        threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in prompts:
            body = got[p]
            assert body["choices"][0]["text"] == want[p], body
            assert len(body["choices"][0]["logprobs"]["tokens"]) == body["usage"]["completion_tokens"]
            assert body["timings"]["draft_n"] >= body["timings"]["draft_n_accepted"] >= 0
        assert any(got[p]["timings"]["draft_n"] > 0 for p in prompts)
    finally:
        assert srv.stop() == 0, srv.logs()


@NEED_FIXTURES
@NEED_CC
@pytest.mark.parametrize("spec", [dict(spec="ngram", draft_max=8), dict(draft=MODELS / "g4-dense-untied-Q8_0.gguf",
                                                                        draft_max=8)], ids=["ngram", "draft"])
def test_speculation_stops_where_plain_decoding_stops(spec):
    """A context that fills up, a token budget that ends inside a verification: the same tokens and
    the same stop reason as plain decoding."""
    from g4rt.generation import GenerationStats, load
    path = MODELS / "g4-dense-untied-F32.gguf"
    ids = _prompt("g4-dense-untied-F32", 0)
    for ctx, n in ((len(ids) + 11, 64), (len(ids) + 64, 13)):
        runs = []
        for opts in ({}, spec):
            m = load(path, backend="cpu", ctx=ctx, **opts)
            try:
                st = GenerationStats()
                runs.append((list(m.generate_ids(ids, n, stats=st)), st.stop_reason))
            finally:
                m.close()
        assert runs[0] == runs[1], (ctx, n, runs)
