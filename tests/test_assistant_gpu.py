"""The Gemma 4 MTP assistant drafter on Vulkan (lavapipe here) and CUDA (the kernel sources on the
CPU simulator; the emulated driver's numpy kernels for the op): the drafter's op list is compiled
on the target's own backend instance and reads the target's cache buffers on the device (no copy).

- the drafter's logits match transformers' (tests/data/assistant/*.ref.npz) on the target state the
  reference assumes (g4rt's numpy target, F32 caches), and its proposals on the live target's;
- greedy output with the assistant is plain greedy output (a prompt of ten windows: rollbacks
  cross the ring every step);
- the op PastAttention against the numpy reference and float64 (windows, GQA, several slots);
- a hybrid target drafts on the half holding the caches it reads."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import FIXTURES, vulkan_skip_reason
from test_assistant import DATA, MODELS, NEED_FIXTURES, TARGETS, _assistant, _greedy
from g4rt import ops
from g4rt.testing.cuda.simulator import sim_available

_VK_SKIP = vulkan_skip_reason()
SIM_OK, SIM_REASON = sim_available()
NEED_VULKAN = pytest.mark.skipif(_VK_SKIP is not None, reason=_VK_SKIP or "")
NEED_SIM = pytest.mark.skipif(not SIM_OK, reason=SIM_REASON or "CUDA simulator unavailable")
BACKENDS = [pytest.param("vulkan", marks=NEED_VULKAN), pytest.param("cuda-sim", marks=NEED_SIM)]


def _backend(kind, kv_dtype="f32"):
    if kind == "vulkan":
        from g4rt.backends.vulkan import VulkanBackend
        return VulkanBackend(kv_dtype=kv_dtype)
    from g4rt.backends.cuda.backend import CudaBackend
    from g4rt.testing.cuda.emulated_driver import EmulatedDriver
    return CudaBackend(driver=EmulatedDriver(kernels="numpy" if kind == "cuda-emulated" else "sim"),
                       kv_dtype=kv_dtype)


# ---- the drafter against transformers ---------------------------------------------------------------
@NEED_FIXTURES
@pytest.mark.parametrize("stem", TARGETS)
@pytest.mark.parametrize("kind", BACKENDS)
def test_drafter_on_the_device_matches_transformers(kind, stem):
    """Per reference case (positions before and past the window), four draft steps: with the
    target state the reference assumes (the numpy target's F32 caches written into the device
    target's caches, its hidden state) top-1 1.000 and max|Δlogit| <= 1e-3; with the device target's
    own state (its caches, its kept hidden state) the same proposals as transformers'."""
    from g4rt.engine import Engine
    from g4rt.speculative_mtp import MTP_PREFIX, AssistantBackendError, AssistantDrafter
    ref = np.load(DATA / f"{stem}-assistant.ref.npz")
    ids = ref["ids"]
    eng = Engine(MODELS / f"{stem}.gguf", backend=_backend(kind), ctx=128)
    host = Engine(MODELS / f"{stem}.gguf", backend="numpy", ctx=128)
    d = AssistantDrafter(eng, _assistant(stem))
    try:
        # one backend: the drafter's graph is the target backend's, its caches are the target's
        assert d.backend is eng.backend and d.shared
        assert d.graph.graph.caches and all(n in eng.backend.caches for n in d.graph.graph.caches)
        assert any(n.startswith(MTP_PREFIX) for n in eng.backend.weights)
        with pytest.raises(AssistantBackendError, match="already holds an MTP drafter's weights"):
            AssistantDrafter(eng, _assistant(stem))
        cases = 0
        while f"pos_{cases}" in ref.files:
            c = cases
            P = int(ref[f"pos_{c}"])
            eng.reset()
            eng.forward(ids[:P])
            h = eng.hidden_state()          # read on the device target, no second pass
            assert np.abs(h - ref[f"hidden_{c}"]).max() < 1e-4
            assert d.propose(list(ids[:P + 1]), 4) == list(ref[f"proposals_{c}"])
            host.reset()
            host.forward(ids[:P])
            for name in d.graph.graph.caches:
                eng.backend.write_cache(name, host.backend.caches[name])
            tok, hid, rows = int(ids[P]), ref[f"hidden_{c}"], []
            for _ in range(len(ref[f"proposals_{c}"])):
                lg, hid = d.step(tok, hid, P)
                tok = int(np.argmax(lg))
                rows.append(lg)
            logits, want = np.stack(rows), ref[f"logits_{c}"]
            assert (logits.argmax(1) == want.argmax(1)).all(), c
            assert np.abs(logits - want).max() <= 1e-3, (c, float(np.abs(logits - want).max()))
            cases += 1
        assert cases == 4
    finally:
        d.close()
        eng.close()
        host.close()


# ---- in the speculative loop ---------------------------------------------------------------------
@NEED_FIXTURES
@pytest.mark.parametrize("kind, stem, n", [
    pytest.param("vulkan", TARGETS[0], 40, marks=NEED_VULKAN),
    pytest.param("vulkan", TARGETS[1], 40, marks=NEED_VULKAN),
    pytest.param("cuda-sim", TARGETS[1], 12, marks=NEED_SIM),      # the simulator is slow: a short run
])
def test_greedy_output_with_the_assistant_is_plain_decoding_on_the_device(kind, stem, n, monkeypatch):
    """A 159-token prompt (ten windows: the rings wrap), up to 4 drafts per step on the device
    target's default f16 caches; random weights accept almost nothing, so every step rolls back."""
    backend = "vulkan" if kind == "vulkan" else "cuda"
    if kind == "cuda-sim":
        monkeypatch.setenv("G4RT_CUDA_EMULATE", "sim")
    r = np.load(FIXTURES / "ref" / f"{stem}.exact.npz")
    ids = [int(t) for t in r["ids_3"]]
    plain, _ = _greedy(stem, ids, n, backend)
    got, st = _greedy(stem, ids, n, backend, draft=_assistant(stem), draft_max=4)
    assert got == plain
    assert st.speculative.drafted > st.speculative.accepted
    assert st.speculative.steps > 0


@NEED_FIXTURES
@NEED_VULKAN
def test_two_slots_drafting_in_turn_on_vulkan_give_each_prompt_its_plain_output():
    """Each slot's drafts read its own slot of the device caches."""
    from g4rt.generation import load
    from g4rt.sampling import Sampler
    stem = TARGETS[1]
    r = np.load(FIXTURES / "ref" / f"{stem}.exact.npz")
    prompts = [[int(t) for t in r[f"ids_{i}"]] for i in (2, 3)]
    plain = load(MODELS / f"{stem}.gguf", backend="vulkan", ctx=256)
    m = load(MODELS / f"{stem}.gguf", backend="vulkan", ctx=256, slots=2, draft=_assistant(stem), draft_max=3)
    eng, spec = m.engine, m.speculator
    try:
        hist = []
        for slot, p in enumerate(prompts):
            hist.append(p + [int(np.argmax(eng.forward(p, slot=slot)[-1]))])
        for _ in range(6):
            for slot, h in enumerate(hist):
                h.extend(spec.step(h[-1], h, Sampler(), slot=slot))
        for p, h in zip(prompts, hist):
            assert h[len(p):] == list(plain.generate_ids(p, len(h) - len(p)))
        assert spec.stats.drafted > spec.stats.accepted
    finally:
        m.close()
        plain.close()


# ---- the op --------------------------------------------------------------------------------------
PAST_CASES = [      # H, Hkv, D, window, ring, positions (one row each, row i in slot i)
    (4, 2, 64, 0, 64, (37, 1)),             # global, GQA, two slots
    (4, 1, 128, 16, 20, (30, 1, 17)),        # sliding, rings wrapped, three slots
    (8, 8, 256, 8, 8, (100, 8, 9)),          # window = ring, no GQA
    (2, 2, 512, 0, 600, (590,)),             # head dim 512, a long cache (split on CUDA)
    (2, 1, 80, 5, 7, (3, 40)),               # head dim not a power of two, window shorter than p
]
OP_BACKENDS = [pytest.param("vulkan", marks=NEED_VULKAN), "cuda-emulated", pytest.param("cuda-sim", marks=NEED_SIM)]


def _past_attention(be, H, Hkv, D, window, ring, positions, ck, cv, q):
    slots = len(positions)
    caches = {n: ops.KvCache(n, ring, Hkv * D, slots) for n in ("ck", "cv")}
    be.load_weights({}, None)
    be.allocate_caches(caches)
    for name, vals in (("ck", ck), ("cv", cv)):
        if hasattr(be, "write_cache"):
            be.write_cache(name, vals)
        else:
            be.caches[name][...] = vals
    n = len(positions)
    be.declare_inputs({"in.q": (n, H * D)})
    be.write_inputs({"in.q": q})
    g = ops.Graph(n, {"q": ops.Buffer("q", n, H * D), "o": ops.Buffer("o", n, H * D),
                      "tokens": ops.Buffer("tokens", n, 1, "i32")},
                  {**caches, "in.q": ops.KvCache("in.q", n, H * D)}, {},
                  [ops.Slice("q", "in.q", 0, 0), ops.PastAttention("o", "q", "ck", "cv", H, Hkv, D, window,
                                                                    1.0 / np.sqrt(D))], "o")
    segs = tuple(ops.Segment(i, 1, p, i) for i, p in enumerate(positions))
    try:
        return np.array(be.compile(g).run(np.zeros(n, np.int32), segs), np.float32)
    finally:
        be.close()


@pytest.mark.parametrize("kv_dtype", ["f32", "f16"])
@pytest.mark.parametrize("case", PAST_CASES, ids=[f"H{c[0]}-kv{c[1]}-D{c[2]}-w{c[3]}-ring{c[4]}" for c in PAST_CASES])
@pytest.mark.parametrize("kind", OP_BACKENDS)
def test_past_attention_matches_the_reference(kind, case, kv_dtype):
    """Each row sees its slot's cached positions p - window + 1 .. p - 1 (window 0: 0 .. p - 1),
    never p: against the numpy reference (the op's definition) and float64 over exactly those keys."""
    from g4rt.backends.numpy_ref.backend import NumpyBackend
    H, Hkv, D, window, ring, positions = case
    rng = np.random.default_rng(sum(case[:5]))
    slots = len(positions)
    ck = rng.standard_normal((slots * ring, Hkv * D)).astype(np.float16).astype(np.float32)
    cv = rng.standard_normal((slots * ring, Hkv * D)).astype(np.float16).astype(np.float32)
    q = rng.standard_normal((slots, H * D)).astype(np.float32)
    ref = _past_attention(NumpyBackend(kv_dtype=kv_dtype), H, Hkv, D, window, ring, positions, ck, cv, q)
    got = _past_attention(_backend(kind, kv_dtype), H, Hkv, D, window, ring, positions, ck, cv, q)
    scale = float(np.abs(ref).max())
    assert np.abs(got - ref).max() <= 1e-4 * scale, float(np.abs(got - ref).max())
    for s, p in enumerate(positions):
        kpos = np.arange(max(0, p - window + 1) if window else 0, p)
        assert len(kpos) <= ring
        k = ck[s * ring + kpos % ring].astype(np.float64).reshape(-1, Hkv, D)
        v = cv[s * ring + kpos % ring].astype(np.float64).reshape(-1, Hkv, D)
        for h in range(H):
            sc = k[:, h // (H // Hkv)] @ q[s, h * D:(h + 1) * D].astype(np.float64) / np.sqrt(D)
            w = np.exp(sc - sc.max())
            want = (w / w.sum()) @ v[:, h // (H // Hkv)]
            np.testing.assert_allclose(got[s, h * D:(h + 1) * D], want, rtol=1e-4, atol=1e-5)


# ---- hybrid targets (--gpu-layers) ---------------------------------------------------------------
def _hybrid(kind, layers):
    from g4rt.backends.hybrid import HybridBackend, layers_split
    from g4rt.backends.numpy_ref import NumpyBackend
    return HybridBackend(_backend(kind, "f16"), NumpyBackend(kv_dtype="f16"), layers_split(layers))


@NEED_FIXTURES
@pytest.mark.parametrize("kind, stem, layers, home", [
    ("cuda-emulated", TARGETS[0], 3, "back"),          # the last layers' caches on the host half
    ("cuda-emulated", TARGETS[0], 6, "front"),         # every layer on the device
    ("cuda-emulated", TARGETS[1], 8, "front"),
    pytest.param("vulkan", TARGETS[1], 4, "back", marks=NEED_VULKAN),
    pytest.param("vulkan", TARGETS[0], 6, "front", marks=NEED_VULKAN),
])
def test_a_hybrid_target_drafts_on_the_half_holding_the_caches(kind, stem, layers, home):
    """The drafter runs where the last sliding / full layers' caches are (a sibling of the host
    half sharing its arrays, or the device half itself) and greedy output is plain output."""
    from g4rt.engine import Engine
    from g4rt.generation import GenerationStats, Model
    from g4rt.speculative import Speculator
    from g4rt.speculative_mtp import AssistantDrafter
    ids = [int(t) for t in np.load(FIXTURES / "ref" / f"{stem}.exact.npz")["ids_3"]]
    outs = []
    for mtp in (False, True):
        hb = _hybrid(kind, layers)
        eng = Engine(MODELS / f"{stem}.gguf", backend=hb, ctx=len(ids) + 40, ring_slack=4)
        spec = None
        if mtp:
            d = AssistantDrafter(eng, _assistant(stem))
            half = hb.front if home == "front" else hb.back
            if home == "front":
                assert d.backend is half and d.shared
            else:
                assert all(d.backend.caches[n] is half.caches[n] for n in d.graph.graph.caches)
            spec = Speculator(eng, d, 4, 0)
        m = Model(eng, "", spec, None)
        st = GenerationStats()
        try:
            outs.append(list(m.generate_ids(ids, 16, stats=st)))
        finally:
            m.close()
    assert outs[1] == outs[0]
    assert st.speculative.drafted > st.speculative.accepted and st.speculative.steps > 0


@NEED_FIXTURES
def test_a_hybrid_split_between_the_read_caches_is_refused():
    """Layers 0-4 on the device, 5 on the host: the last sliding cache (4) and the last full one
    (5) sit on different halves."""
    from g4rt.engine import Engine
    from g4rt.speculative_mtp import AssistantBackendError, AssistantDrafter
    eng = Engine(MODELS / f"{TARGETS[0]}.gguf", backend=_hybrid("cuda-emulated", 5), ctx=64)
    try:
        with pytest.raises(AssistantBackendError, match=r"cache_k.4, cache_k.5, .* splits them over its two halves"):
            AssistantDrafter(eng, _assistant(TARGETS[0]))
    finally:
        eng.close()
