"""Gemma 4 MTP assistant drafters (issue 26): the drafter's logits match transformers (float64) on
the fixture assistants of tests/data/assistant (scripts/make_assistant_fixtures.py), greedy output
with the assistant is plain greedy output (a prompt past the window, rollbacks every step),
the target's hidden state survives a rollback, and assistants that do not fit are refused before
anything loads."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES

DATA = Path(__file__).parent / "data" / "assistant"
MODELS = FIXTURES / "models"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
NEED_CC = pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")
NEED_FIXTURES = pytest.mark.skipif(not MODELS.is_dir(), reason=f"{FIXTURES} is absent (the fixture targets)")
TARGETS = ["g4-dense-untied-F32", "g4-edge-F32"]


def _assistant(stem):
    return DATA / f"{stem}-assistant-F32.gguf"


def _ref(stem):
    return np.load(DATA / f"{stem}-assistant.ref.npz")


def _target(stem, backend="numpy", **opts):
    from g4rt.engine import Engine
    return Engine(MODELS / f"{stem}.gguf", backend=backend, ctx=128, **opts)


def _drafts(eng, drafter, ref):
    """Per reference case: (logits [steps, vocab], the target's hidden state) from the live target."""
    ids = ref["ids"]
    c = 0
    while f"pos_{c}" in ref.files:
        P = int(ref[f"pos_{c}"])
        eng.reset()
        eng.forward(ids[:P])
        h = eng.hidden_state()
        tok, hid, rows = int(ids[P]), h, []
        for _ in range(len(ref[f"proposals_{c}"])):
            lg, hid = drafter.step(tok, hid, P)
            tok = int(np.argmax(lg))
            rows.append(lg)
        yield c, np.stack(rows), h
        c += 1


# ---- the drafter against transformers ---------------------------------------------------------------
@NEED_FIXTURES
@pytest.mark.parametrize("stem", TARGETS)
def test_drafter_matches_transformers(stem):
    """Every draft step of every case (positions before and past the window): top-1 1.000 and
    max|Δlogit| <= 1e-3 against transformers' assistant in float64 on the same target states."""
    from g4rt.speculative_mtp import AssistantDrafter
    ref = _ref(stem)
    eng = _target(stem)
    d = AssistantDrafter(eng, _assistant(stem))
    try:
        cases = 0
        for c, logits, h in _drafts(eng, d, ref):
            assert np.abs(h - ref[f"hidden_{c}"]).max() < 1e-4, "the target's states moved since the recipe ran"
            want = ref[f"logits_{c}"]
            assert (logits.argmax(1) == want.argmax(1)).all(), c
            assert np.abs(logits - want).max() <= 1e-3, (c, float(np.abs(logits - want).max()))
            P = int(ref[f"pos_{c}"])
            assert d.propose(list(ref["ids"][:P + 1]), 4) == list(ref[f"proposals_{c}"])
            cases += 1
        assert cases == 4
    finally:
        d.close()
        eng.close()


@NEED_FIXTURES
@NEED_CC
@pytest.mark.parametrize("stem", TARGETS)
def test_native_cpu_drafter_matches_transformers(stem):
    """On a native CPU target the drafter runs natively too, on the target's own cache arrays:
    float32 caches and exact activations give transformers' logits within the same bar."""
    from g4rt.speculative_mtp import AssistantDrafter
    ref = _ref(stem)
    eng = _target(stem, "cpu", precision="exact", kv_dtype="f32")
    d = AssistantDrafter(eng, _assistant(stem))
    try:
        for name, arr in d.backend.caches.items():
            if name.startswith("cache_"):
                assert arr is eng.backend.caches[name]          # the same array: no copy
        assert d.backend.name == "cpu"
        for c, logits, _ in _drafts(eng, d, ref):
            want = ref[f"logits_{c}"]
            assert (logits.argmax(1) == want.argmax(1)).all(), c
            assert np.abs(logits - want).max() <= 1e-3, (c, float(np.abs(logits - want).max()))
    finally:
        d.close()
        eng.close()


# ---- in the speculative loop ---------------------------------------------------------------------
def _greedy(stem, ids, n, backend, **spec):
    from g4rt.generation import GenerationStats, load
    m = load(MODELS / f"{stem}.gguf", backend=backend, ctx=len(ids) + n + 24, **spec)
    try:
        st = GenerationStats()
        return list(m.generate_ids(ids, n, stats=st)), st
    finally:
        m.close()


@NEED_FIXTURES
@pytest.mark.parametrize("backend", ["numpy", pytest.param("cpu", marks=NEED_CC)])
@pytest.mark.parametrize("stem", TARGETS)
def test_greedy_output_with_the_assistant_is_plain_decoding(stem, backend):
    """A 159-token prompt (ten times the window: the rings wrap), 40 tokens, up to 4 drafts per
    step; random weights accept almost nothing, so every step rolls back."""
    r = np.load(FIXTURES / "ref" / f"{stem}.exact.npz")
    ids = [int(t) for t in r["ids_3"]]
    plain, _ = _greedy(stem, ids, 40, backend)
    got, st = _greedy(stem, ids, 40, backend, draft=_assistant(stem), draft_max=4)
    assert got == plain
    assert st.speculative.drafted > st.speculative.accepted
    assert st.speculative.steps > 0


@NEED_FIXTURES
def test_slots_drafting_in_turn_give_each_prompt_its_plain_output():
    """Two slots taking speculative steps in turn, as the server's loop does (each keeps its own
    hidden state between turns): each prompt's tokens as plain decoding gives them alone."""
    from g4rt.generation import load
    from g4rt.sampling import Sampler
    stem = TARGETS[1]
    r = np.load(FIXTURES / "ref" / f"{stem}.exact.npz")
    prompts = [[int(t) for t in r[f"ids_{i}"]] for i in (2, 3)]
    plain = load(MODELS / f"{stem}.gguf", backend="numpy", ctx=256)
    m = load(MODELS / f"{stem}.gguf", backend="numpy", ctx=256, slots=2, draft=_assistant(stem), draft_max=3)
    eng, spec = m.engine, m.speculator
    try:
        hist = []
        for slot, p in enumerate(prompts):
            hist.append(p + [int(np.argmax(eng.forward(p, slot=slot)[-1]))])
        for _ in range(8):
            for slot, h in enumerate(hist):
                h.extend(spec.step(h[-1], h, Sampler(), slot=slot))
        for p, h in zip(prompts, hist):
            n = len(h) - len(p)
            assert h[len(p):] == list(plain.generate_ids(p, n))
        assert spec.stats.drafted >= 2 * 8 * 3 - 2 > spec.stats.accepted     # every turn drafted
    finally:
        m.close()
        plain.close()


@NEED_FIXTURES
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_slots_verified_together_give_each_prompt_its_plain_output(backend):
    """The server's loop with two busy slots and the assistant: every step drafts for both and
    verifies both slots' rows in one batched target pass (forward_batch over two segments), and
    each prompt still gets plain decoding's tokens."""
    from g4rt.generation import load
    from g4rt.sampling import Sampler
    from g4rt.slots import SlotLoop, SlotRequest
    stem = TARGETS[1]
    r = np.load(FIXTURES / "ref" / f"{stem}.exact.npz")
    prompts = [[int(t) for t in r[f"ids_{i}"]] for i in (2, 3)]
    plain = load(MODELS / f"{stem}.gguf", backend=backend, ctx=256)
    want = [list(plain.generate_ids(p, 20)) for p in prompts]
    plain.close()
    m = load(MODELS / f"{stem}.gguf", backend=backend, ctx=256, slots=2, draft=_assistant(stem), draft_max=3)
    eng = m.engine
    segments = []
    real = eng._forward_segments

    def counted(items, all_logits=False):
        segments.append(len(items))
        return real(items, all_logits)
    eng._forward_segments = counted
    drafter = m.speculator.drafter
    rows_per_step = []
    real_step = drafter.step_many

    def step_counted(tokens, *a):
        rows_per_step.append(len(tokens))
        return real_step(tokens, *a)
    drafter.step_many = step_counted
    got = {}
    try:
        loop = SlotLoop(eng, m.tokenizer.is_eog, lambda req, tok, logits: False,
                        lambda slot, req, reason, err: got.__setitem__(id(req), (reason, err)),
                        speculator=m.speculator, isolate_errors=False)
        reqs = [SlotRequest(p, 20, Sampler()) for p in prompts]
        for req in reqs:
            loop.start(req, reuse_prefix=False)
        while loop.busy():
            loop.step()
        for req, p, w in zip(reqs, prompts, want):
            assert got[id(req)][1] is None
            assert req.history[len(p):] == w
        assert segments.count(2) >= 5, segments          # both slots' drafts verified in one pass
        assert rows_per_step.count(2) >= 5, rows_per_step  # ... and drafted in one drafter call a step
        assert sum(req.draft_n for req in reqs) > 0
        # a batched draft proposes what each slot's draft alone proposes (row-exact drafter)
        hist = []
        for slot, p in enumerate(prompts):
            eng.reset(slot)
            hist.append(p + [int(np.argmax(eng.forward(p, slot=slot)[-1]))])
        together = drafter.propose_many([(hist[0], 3, 0), (hist[1], 3, 1)])
        assert together == [drafter.propose(hist[0], 3, 0), drafter.propose(hist[1], 3, 1)]
        assert [len(x) for x in together] == [3, 3]
    finally:
        m.close()


@NEED_FIXTURES
def test_the_hidden_state_follows_a_rollback():
    """After a verification batch moved back to a kept prefix, the hidden state handed to the
    drafter is the kept last row's (what a run ending at that prefix computes)."""
    stem = TARGETS[0]
    ids = _ref(stem)["ids"]
    a, b = _target(stem, slots=2), _target(stem)
    a.keep_hidden = b.keep_hidden = True
    try:
        a.forward(ids[:30])
        a.forward(ids[30:36], all_logits=True)
        a.truncate(33)
        b.forward(ids[:30])
        b.forward(ids[30:33], all_logits=True)
        # batches of up to 16 rows are row-exact: the kept row has the bits b's last row has
        np.testing.assert_array_equal(a.hidden_state(), b.hidden_state())
        a.forward(ids[:12], slot=1)               # another slot's calls leave slot 0's state
        np.testing.assert_array_equal(a.hidden_state(), b.hidden_state())
        a.truncate(32)
        assert a.hidden_state() is not None
        b.reset()
        b.forward(ids[:5])
        b.forward(ids[5:9], all_logits=False)
        b.truncate(7)
        assert b.hidden_state() is None          # only the last row's state was computed
    finally:
        a.close()
        b.close()


# ---- the op --------------------------------------------------------------------------------------
def _backend(name):
    if name == "cpu":
        from g4rt.backends.cpu.backend import CpuBackend
        return CpuBackend(kv_dtype="f32", precision="exact")
    from g4rt.backends.numpy_ref.backend import NumpyBackend
    return NumpyBackend()


@pytest.mark.parametrize("backend", ["numpy", pytest.param("cpu", marks=NEED_CC)])
def test_past_attention_reads_only_earlier_cached_positions(backend):
    """Two slots, a ring that wrapped: each row sees its slot's positions p - window + 1 .. p - 1
    (float64 softmax over exactly those keys)."""
    from g4rt import ops
    rng = np.random.default_rng(3)
    H, KV, D, ring, W = 4, 2, 8, 6, 5
    be = _backend(backend)
    be.load_weights({}, None)
    be.allocate_caches({n: ops.KvCache(n, ring, KV * D, 2) for n in ("ck", "cv")})
    be.caches["ck"][:] = rng.standard_normal(be.caches["ck"].shape)
    be.caches["cv"][:] = rng.standard_normal(be.caches["cv"].shape)
    q = rng.standard_normal((2, H * D)).astype(np.float32)
    be.declare_inputs({"q": (2, H * D)})
    be.write_inputs({"q": q})
    g = ops.Graph(2, {"o": ops.Buffer("o", 2, H * D), "tokens": ops.Buffer("tokens", 2, 1, "i32")},
                  {n: ops.KvCache(n, ring, KV * D, 2) for n in ("ck", "cv")}, {},
                  [ops.PastAttention("o", "q", "ck", "cv", H, KV, D, W, 0.5)], "o")
    segs = (ops.Segment(0, 1, 9, 1), ops.Segment(1, 1, 3, 0))
    got = np.array(be.compile(g).run(np.zeros(2, np.int32), segs))
    be.close()
    for r, s in enumerate(segs):
        p = s.pos0
        kpos = np.arange(max(0, p - W + 1), p)
        k = be.caches["ck"][s.slot * ring + kpos % ring].astype(np.float64).reshape(-1, KV, D)
        v = be.caches["cv"][s.slot * ring + kpos % ring].astype(np.float64).reshape(-1, KV, D)
        for h in range(H):
            sc = 0.5 * k[:, h // (H // KV)] @ q[r, h * D:(h + 1) * D].astype(np.float64)
            w = np.exp(sc - sc.max())
            want = (w / w.sum()) @ v[:, h // (H // KV)]
            np.testing.assert_allclose(got[r, h * D:(h + 1) * D], want, rtol=1e-5, atol=1e-6)


# ---- refusals ------------------------------------------------------------------------------------
def _edited(tmp_path, stem, keys):
    from gguf import GGUFValueType
    from gguf_edit import rewrite_gguf
    types = {int: GGUFValueType.UINT32}
    out = tmp_path / "edited-assistant.gguf"
    return rewrite_gguf(_assistant(stem), out, set_keys={
        f"gemma4-assistant.{k}": (v, types[type(v)]) for k, v in keys.items()})


@NEED_FIXTURES
@pytest.mark.parametrize("keys, fragment", [
    ({"embedding_length_out": 512}, "hidden size 512 .*this target's is 256"),
    ({"attention.key_length_swa": 32, "attention.value_length_swa": 32},
     "head dim 32; the target's sliding layer 4 .* has 64"),
    ({"attention.key_length": 64, "attention.value_length": 64}, "head dim 64; the target's full layer 5 .* has 128"),
    ({"attention.head_count_kv": 1}, "expects 1 KV heads; the target's sliding layer 4 has 2"),
    ({"attention.sliding_window": 32}, "window of 32; the target's sliding cache keeps a window of 16"),
])
def test_a_mismatched_assistant_is_refused_before_loading(tmp_path, keys, fragment):
    from g4rt.generation import load
    from g4rt.model.assistant import AssistantMismatchError
    bad = _edited(tmp_path, TARGETS[0], keys)
    with pytest.raises(AssistantMismatchError, match=fragment):
        load(MODELS / f"{TARGETS[0]}.gguf", backend="numpy", ctx=64, draft=bad)


@NEED_FIXTURES
def test_an_assistant_with_another_vocabulary_is_refused(tmp_path):
    from gguf import GGUFReader, GGUFValueType
    from gguf_edit import rewrite_gguf
    from g4rt.generation import load
    from g4rt.speculative import SpeculativeError
    src = _assistant(TARGETS[0])
    tokens = list(GGUFReader(src).fields["tokenizer.ggml.tokens"].contents())
    tokens[77] = tokens[77] + "x"
    bad = rewrite_gguf(src, tmp_path / "other-vocab.gguf",
                       set_keys={"tokenizer.ggml.tokens": (tokens, GGUFValueType.ARRAY, GGUFValueType.STRING)})
    with pytest.raises(SpeculativeError, match="token 77"):
        load(MODELS / f"{TARGETS[0]}.gguf", backend="numpy", ctx=64, draft=bad)


@NEED_FIXTURES
def test_a_target_not_ending_in_sliding_full_is_refused():
    from g4rt.gguf.reader import GGUFFile
    from g4rt.model.assistant import AssistantMismatchError, load_assistant_config
    from g4rt.model.config import load_config
    cfg = load_config(GGUFFile(MODELS / f"{TARGETS[0]}.gguf"))
    layers = list(cfg.layers)
    layers[-2] = dataclasses.replace(layers[-2], sliding=False, window=0)
    odd = dataclasses.replace(cfg, layers=tuple(layers))
    with pytest.raises(AssistantMismatchError, match=r"last two layers are \[full, full\]"):
        load_assistant_config(GGUFFile(_assistant(TARGETS[0])), odd)


@NEED_FIXTURES
def test_a_plain_model_is_not_taken_for_an_assistant():
    from g4rt.errors import UnsupportedModelError
    from g4rt.gguf.reader import GGUFFile
    from g4rt.model.assistant import load_assistant_config
    from g4rt.model.config import load_config
    f = GGUFFile(MODELS / f"{TARGETS[0]}.gguf")
    with pytest.raises(UnsupportedModelError, match="not a 'gemma4-assistant' drafter"):
        load_assistant_config(f, load_config(f))


# ---- g4rt synth --assistant ------------------------------------------------------------------------
@NEED_FIXTURES
def test_synth_writes_an_assistant_that_fits_the_12b_shape(tmp_path):
    """The published size (4 layers, hidden 1024) with the 12B's head dims and KV heads; checked
    against the 12B's configuration (a small vocabulary keeps the file small) and refused by a
    target of another width."""
    from g4rt.gguf.reader import GGUFFile
    from g4rt.model.assistant import AssistantMismatchError, load_assistant_config
    from g4rt.model.assistant_graph import AssistantWeights, build_assistant_graph
    from g4rt.model.config import load_config
    from g4rt.model.shapes import DENSE_12B as S
    from g4rt.model.synthetic import dense_gemma4
    from g4rt.tools.synth import QT
    from g4rt.tools.synth_assistant import write_synthetic_assistant
    vocab = MODELS / "g4-dense-F32.gguf"
    out = tmp_path / "a.gguf"
    write_synthetic_assistant(out, QT.Q4_0, vocab)
    target, specs = dense_gemma4(n_layer=S.n_layer, n_embd=S.hidden, n_head=S.n_head, ffn=S.ffn, head_dim_swa=S.d_swa,
                                 n_kv_swa=S.kv_swa, head_dim=S.d_global, n_kv=S.kv_global, window=S.window,
                                 period=S.period, n_vocab=2048, context_length=4096)
    f = GGUFFile(out)
    cfg = load_assistant_config(f, target)
    assert (cfg.n_layer, cfg.n_embd, cfg.backbone) == (4, 1024, 3840)
    assert [L.kv_source for L in cfg.layers] == [46, 46, 46, 47]
    assert [L.head_dim for L in cfg.layers] == [256, 256, 256, 512]

    class NoTarget:          # the graph only names the target's embedding, it reads no bytes
        pass
    w = AssistantWeights(f, NoTarget(), specs, cfg)
    g = build_assistant_graph(cfg, target, w.specs, 1, 4096)
    assert sorted(g.caches) == ["cache_k.46", "cache_k.47", "cache_v.46", "cache_v.47"]
    with pytest.raises(AssistantMismatchError, match="hidden size 3840 .*this target's is 256"):
        load_assistant_config(f, load_config(GGUFFile(vocab)))


@NEED_FIXTURES
@NEED_CC
def test_cli_run_with_an_assistant_prints_the_plain_text_and_the_acceptance():
    import subprocess
    import sys
    stem = TARGETS[0]
    base = [sys.executable, "-m", "g4rt", "run", str(MODELS / f"{stem}.gguf"), "-p", "The capital of France is",
            "-n", "12", "--backend", "cpu"]
    plain = subprocess.run(base, capture_output=True, text=True, timeout=120)
    mtp = subprocess.run(base + ["--draft", str(_assistant(stem)), "--draft-max", "3"], capture_output=True,
                         text=True, timeout=120)
    assert plain.returncode == 0 and mtp.returncode == 0, mtp.stderr
    assert mtp.stdout == plain.stdout
    assert "speculative: mtp" in mtp.stderr and "drafted tokens accepted" in mtp.stderr


def test_a_target_on_a_device_backend_is_refused_with_a_reason():
    """Vulkan / CUDA targets share their own backend with the drafter (tests/test_assistant_gpu.py);
    a hybrid is never the drafter's backend (its half holding the caches is) and an unknown backend
    is refused, naming why."""
    from types import SimpleNamespace
    from g4rt.speculative_mtp import AssistantBackendError, drafter_backend, host_caches
    target = SimpleNamespace(backend=SimpleNamespace(name="vulkan", device_name="Some GPU", caches={"k": object()}))
    with pytest.raises(AssistantBackendError, match="Some GPU"):
        host_caches(target)
    assert drafter_backend(target) == (target.backend, True)
    hybrid = SimpleNamespace(backend=SimpleNamespace(name="hybrid", device_name="Some GPU + cpu", caches={}))
    with pytest.raises(AssistantBackendError, match=r"half of a hybrid target \(Some GPU \+ cpu, --gpu-layers\) that holds the caches"):
        drafter_backend(hybrid)
    other = SimpleNamespace(backend=SimpleNamespace(name="tpu", device_name="Some TPU", caches={}))
    with pytest.raises(AssistantBackendError, match="cpu, numpy, vulkan or cuda target; this target runs on Some TPU"):
        drafter_backend(other)


@NEED_FIXTURES
def test_sampled_speculation_with_the_assistant_is_reproducible_and_follows_the_sampler():
    """Sampling keeps the target's distribution by the shared acceptance rule (its chi-square test
    is in test_speculative.py); here: same seed, same tokens, each inside the sampler's top 20."""
    from g4rt.generation import load
    from g4rt.sampling import Sampler
    stem = TARGETS[0]
    ids = [int(t) for t in np.load(FIXTURES / "ref" / f"{stem}.exact.npz")["ids_0"]]
    runs = []
    for _ in range(2):
        m = load(MODELS / f"{stem}.gguf", backend="numpy", ctx=128, draft=_assistant(stem), draft_max=4)
        try:
            runs.append(list(m.generate_ids(ids, 24, Sampler(temperature=0.8, top_k=20, seed=11))))
            assert m.speculator.stats.drafted > 0
        finally:
            m.close()
    assert runs[0] == runs[1]
    m = load(MODELS / f"{stem}.gguf", backend="numpy", ctx=128)
    try:
        logits = m.logits(ids + runs[0])
    finally:
        m.close()
    for i, t in enumerate(runs[0]):
        assert t in np.argsort(-logits[len(ids) - 1 + i])[:20]


@NEED_FIXTURES
def test_an_assistant_too_big_for_memory_is_refused_before_loading(monkeypatch):
    from g4rt import memory_plan
    from g4rt.generation import load
    from g4rt.speculative_mtp import AssistantBackendError
    monkeypatch.setattr(memory_plan, "available_ram", lambda: 1 << 20)      # the assistant is 1.5 MB
    with pytest.raises(AssistantBackendError, match=r"needs 1\.4 MiB of weights but 1\.0 MiB"):
        load(MODELS / f"{TARGETS[0]}.gguf", backend="numpy", ctx=64, draft=_assistant(TARGETS[0]))


@NEED_FIXTURES
def test_an_ordered_embedding_head_is_named_as_unused(tmp_path):
    """E2B/E4B assistants may carry centroid tensors: g4rt (as llama.cpp) uses the full tied head
    and says so where the run is announced."""
    from gguf import GGUFReader, GGUFWriter
    from g4rt.speculative_mtp import AssistantDrafter
    src, out = _assistant(TARGETS[0]), tmp_path / "centroids.gguf"
    r = GGUFReader(src)
    w = GGUFWriter(str(out), "gemma4-assistant")
    for k, f in r.fields.items():
        if not k.startswith("GGUF.") and k != "general.architecture":
            w.add_key_value(k, f.contents(), f.types[0], sub_type=f.types[1] if len(f.types) > 1 else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.add_tensor("masked_embd_centroids.weight", np.zeros((2048 // 4, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    eng = _target(TARGETS[0])
    d = AssistantDrafter(eng, out)
    try:
        assert "centroid) head is ignored: logits come from the full tied head" in d.name
        assert AssistantDrafter(eng, src).name == "mtp"
    finally:
        d.close()
        eng.close()
