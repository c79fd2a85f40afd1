"""Several sequences in one batch (ops.Segment; #13).

Per op: Rope, Attention and KvStore over a batch of several segments (different lengths and
positions, sliding windows, ring wrap, GQA, a slot reused by a new sequence) give each segment
bit for bit what it gets alone, on the numpy reference and the native CPU backend (every ISA
this CPU runs, 1-3 threads), and the two backends agree within the op tests' bounds.

Per model: N prompts decoded together (`Model.generate_many`, more prompts than slots, so new
prompts prefill while others decode) give token for token what each gives alone, on every
fixture; a request cancelled mid-way leaves the others unchanged; seeded sampling is the same
whatever else is in the batch; the server with --parallel answers as one request at a time.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from g4rt import ops as O
from g4rt.backends.numpy_ref import NumpyBackend
from g4rt.errors import G4rtError
from op_cases import Case, rel_err

from conftest import FIXTURES

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
NEED_CC = pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")
NEED_FIXTURES = pytest.mark.skipif(not (FIXTURES / "models").is_dir(), reason=f"{FIXTURES} is absent")
MODELS = FIXTURES / "models"
ALL = sorted(p.stem for p in MODELS.glob("*.gguf")) if MODELS.is_dir() else []

if CC:
    from g4rt.backends.cpu import CpuBackend
    from g4rt.backends.cpu.compiler import supported_isas
    ISAS = supported_isas()
else:
    ISAS = []


# ---- per op ------------------------------------------------------------------------------------
def _seq_case(values, n_head, n_kv, D, window, ring, slots, tag=""):
    """Rope on q and k, Attention over caches of `slots` slots, KvStore: the per-sequence ops.
    tag: makes the input tables' names unique (the GPU backends keep weights by name)."""
    q, k, v = values
    c = Case(q.shape[0])
    qi, ki, vi = c.input(f"q{tag}", q), c.input(f"k{tag}", k), c.input(f"v{tag}", v)
    ff = c.src.add("ff", np.linspace(1.0, 3.0, D // 4)[None, :])
    c.ops.append(O.Rope(c.buf("qr", n_head * D), qi, D, D // 2, 10000.0, ff))
    c.ops.append(O.Rope(c.buf("kr", n_kv * D), ki, D, D // 2, 10000.0, ff))
    c.caches = {"ck": O.KvCache("ck", ring, n_kv * D, slots), "cv": O.KvCache("cv", ring, n_kv * D, slots)}
    c.ops.append(O.Attention(c.buf("o", n_head * D), "qr", "kr", vi, "ck", "cv", n_head, n_kv, D, window,
                             1.0 / D ** 0.5))
    c.ops.append(O.KvStore("ck", "cv", "kr", vi))
    return c


# (slot, rows) per segment of each batch; None resets a slot (a new sequence reuses it)
SCHEDULE = [
    [(0, 7), (1, 3), (2, 1)],
    [(0, 1), (1, 1), (2, 12)],        # 12 rows: longer than the ring on the windowed case
    [(2, 1), (0, 1)],                 # slots out of order, one idle
    [(1, 17), (0, 1)],                # a segment past the row-exact size
    ["reset", 1],
    [(0, 1), (1, 4), (2, 1)],
    [(1, 1), (2, 1), (0, 9)],
    [(0, 1), (1, 1), (2, 1)],
]


def _backend(kind, isa=None, threads=1, kv="f16"):
    if kind.startswith("cuda"):      # the CUDA host code on the emulated driver: numpy or simulated kernels
        from g4rt.backends.cuda.backend import CudaBackend
        from g4rt.testing.cuda.emulated_driver import EmulatedDriver
        return CudaBackend(driver=EmulatedDriver(kernels="sim" if kind == "cuda-sim" else "numpy"), kv_dtype=kv)
    if kind == "vulkan":
        from g4rt.backends.vulkan import VulkanBackend
        return VulkanBackend(kv_dtype=kv)
    return NumpyBackend(kv_dtype=kv) if kind == "numpy" else CpuBackend(threads=threads, kv_dtype=kv, isa=isa)


def _vulkan_skip():
    from conftest import vulkan_skip_reason
    return vulkan_skip_reason()


NEED_VULKAN = pytest.mark.skipif(_vulkan_skip() is not None, reason=str(_vulkan_skip()))


def _cache(be, name):
    if hasattr(be, "read_cache"):
        return be.read_cache(name)
    return np.array(be.caches[name], np.float32, copy=True)


def _run_schedule(make, n_head, n_kv, D, window, ring, slots=3, seed=0):
    """The schedule batched on one backend, and each segment alone on per-slot backends: returns
    (batched outputs, alone outputs, batched caches per slot, alone caches) per step."""
    rng = np.random.default_rng(seed)
    multi = make()
    alone = [make() for _ in range(slots)]
    for be in alone:
        be.allocate_caches({n: O.KvCache(n, ring, n_kv * D) for n in ("ck", "cv")})
    pos = [0] * slots
    steps = []
    first = True
    for batch in SCHEDULE:
        if batch[0] == "reset":
            pos[batch[1]] = 0
            continue
        rows = sum(n for _, n in batch)
        vals = (rng.standard_normal((rows, n_head * D)), rng.standard_normal((rows, n_kv * D)),
                rng.standard_normal((rows, n_kv * D)))
        c = _seq_case(vals, n_head, n_kv, D, window, ring, slots, tag=len(steps))
        multi.load_weights(c.src.specs, c.src)
        if first:
            multi.allocate_caches(c.caches)
        segs, r0 = [], 0
        for slot, n in batch:
            segs.append(O.Segment(r0, n, pos[slot], slot))
            r0 += n
        got = np.array(multi.compile(c.graph("o")).run(np.arange(rows), segs), copy=True)
        ref = []
        for s in segs:
            part = tuple(x[s.row0:s.row0 + s.rows] for x in vals)
            ca = _seq_case(part, n_head, n_kv, D, window, ring, 1, tag=f"{len(steps)}.{s.slot}")
            be = alone[s.slot]
            be.load_weights(ca.src.specs, ca.src)
            ref.append(np.array(be.compile(ca.graph("o")).run(np.arange(s.rows), O.one_sequence(s.rows, s.pos0)), copy=True))
            pos[s.slot] += s.rows
        first = False
        mc = {s.slot: _cache(multi, "ck")[s.slot * ring:(s.slot + 1) * ring] for s in segs}
        ac = {s.slot: _cache(alone[s.slot], "ck") for s in segs}
        steps.append((got, np.concatenate(ref), (mc, ac), segs))
    for be in [multi] + alone:
        if hasattr(be, "close"):
            be.close()
    return steps


CASES = [  # n_head, n_kv, D, window, ring
    (4, 2, 64, 0, 96),          # global, GQA 2:1
    (2, 1, 128, 5, 6),          # window 5 on a 6-row ring: wraps within segments and across steps
    (8, 2, 256, 16, 24),        # the 12B's sliding head_dim, GQA 4:1
]


@pytest.mark.parametrize("case", CASES, ids=["global", "ring", "d256"])
def test_numpy_segments_equal_each_sequence_alone(case):
    for got, ref, (mc, ac), _ in _run_schedule(lambda: NumpyBackend(kv_dtype="f16"), *case):
        np.testing.assert_array_equal(got, ref)
        for slot in mc:
            np.testing.assert_array_equal(mc[slot], ac[slot])


@NEED_CC
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=["global", "ring", "d256"])
def test_native_segments_equal_each_sequence_alone_and_the_reference(isa, threads, case):
    nat = _run_schedule(lambda: _backend("cpu", isa, threads), *case)
    ref = _run_schedule(lambda: NumpyBackend(kv_dtype="f16"), *case)
    for (got, alone, (mc, ac), segs), (rgot, _, (rmc, _), _) in zip(nat, ref):
        np.testing.assert_array_equal(got, alone)               # bit for bit what it gets alone
        for slot in mc:
            np.testing.assert_array_equal(mc[slot], ac[slot])
            assert rel_err(mc[slot], rmc[slot]) < 1e-3
        assert rel_err(got, rgot) < 2e-3, [str(s) for s in segs]


def _sim_skip():
    from g4rt.testing.cuda.simulator import sim_available
    ok, why = sim_available()
    return None if ok else str(why)


@pytest.mark.parametrize("kind", [pytest.param("vulkan", marks=NEED_VULKAN), "cuda-emu",
                                  pytest.param("cuda-sim", marks=pytest.mark.skipif(_sim_skip() is not None,
                                                                                    reason=str(_sim_skip())))])
@pytest.mark.parametrize("kv", ["f16", "f32"])
@pytest.mark.parametrize("case", CASES, ids=["global", "ring", "d256"])
def test_gpu_segments_equal_each_sequence_alone_and_the_reference(case, kv, kind):
    """The per-row words of the parameters buffer (shaders/glsl/rows.glsl, shaders/cuda/common.cuh):
    each row of a batch of several sequences reads its own segment and cache slot. Row-exact steps
    are bit for bit each sequence alone; the 17-row step within float rounding of it."""
    if kind == "cuda-sim" and (kv == "f32" or case is not CASES[1]):
        pytest.skip("the simulator runs the ring case with the f16 cache (time)")
    vk = _run_schedule(lambda: _backend(kind, kv=kv), *case)
    ref = _run_schedule(lambda: NumpyBackend(kv_dtype=kv), *case)
    for (got, alone, (mc, ac), segs), (rgot, _, (rmc, _), _) in zip(vk, ref):
        if sum(s.rows for s in segs) <= O.ROW_EXACT_MAX:
            np.testing.assert_array_equal(got, alone)           # row-exact: bit for bit
        else:
            assert rel_err(got, alone) < 1e-5
        for slot in mc:
            np.testing.assert_array_equal(mc[slot], ac[slot])
            assert rel_err(mc[slot], rmc[slot]) < 1e-3
        assert rel_err(got, rgot) < 2e-3, [str(s) for s in segs]


def test_bad_segments_are_refused():
    with pytest.raises(G4rtError, match="cover"):
        O.placement([O.Segment(0, 2, 0, 0)], 3, 2)
    with pytest.raises(G4rtError, match="bad segment"):
        O.placement([O.Segment(0, 1, 0, 1), O.Segment(1, 2, 5, 1)], 3, 2)   # one slot twice
    with pytest.raises(G4rtError, match="bad segment"):
        O.placement([O.Segment(0, 3, 0, 2)], 3, 2)                          # no such slot
    assert O.one_sequence(3, 7) == (O.Segment(0, 3, 7, 0),)


# ---- whole models --------------------------------------------------------------------------------
def _prompts(name, n=5):
    r = np.load(FIXTURES / "ref" / f"{name}.exact.npz")
    keys = sorted((k for k in r.files if k.startswith("ids")), key=lambda k: int(k.split("_")[1]))
    out = [[int(t) for t in r[k]] for k in keys]
    while len(out) < n:
        out.append(out[len(out) % len(keys)][:7])
    # different lengths: short ones pack with decode rows, long ones prefill in chunks of their own
    return [p[:max(3, len(p) - 5 * i)] for i, p in enumerate(out[:n])]


def _alone(model, ids, n, sampler=None):
    model.engine.reset()
    model._cached = []
    return list(model.generate_ids(ids, n, sampler))


@contextlib.contextmanager
def _model(path, backend, slots, ctx=160, chunk=24):
    m = _load(path, backend, slots, ctx, chunk)
    try:
        yield m
    finally:
        m.close()


def _load(path, backend, slots, ctx=160, chunk=24):
    from g4rt.engine import Engine
    from g4rt.generation import Model
    be = _backend(backend) if backend.startswith("cuda") else backend
    return Model(Engine(path, backend=be, ctx=ctx, slots=slots, prefill_chunk=chunk))


@NEED_FIXTURES
@NEED_CC
@pytest.mark.parametrize("name", ALL)
def test_greedy_batch_equals_each_prompt_alone_on_every_fixture(name):
    """Five prompts through three slots (prompt chunks of 24: long prompts prefill over several
    steps while others decode): every prompt's tokens as it gets them alone."""
    with _model(MODELS / f"{name}.gguf", "cpu", 3) as m:
        prompts = _prompts(name)
        from g4rt.slots import BatchStats
        st = BatchStats()
        got = m.generate_many(prompts, 16, stats=st)
        for p, r in zip(prompts, got):
            assert r.tokens == _alone(m, p, 16)
        assert st.mean_batch > 1.5          # the sequences really went through together


def _other_cases():
    vk = [pytest.param("vulkan", "g4-dense-w1024-F32", marks=NEED_VULKAN)]
    emu = [("cuda-emu", n) for n in ("g4-dense-keqv-F32", "g4-dense-w1024-F32")]
    return [("numpy", n) for n in ("g4-dense-Q4_K_M", "g4-edge-Q4_0-pure", "g4-dense-keqv-F32",
                                   "g4-dense-w1024-F32")] + emu + vk


@NEED_FIXTURES
@pytest.mark.parametrize("backend,name", _other_cases())
def test_greedy_batch_equals_each_prompt_alone_on_the_other_backends(name, backend):
    n = 10
    with _model(MODELS / f"{name}.gguf", backend, 3) as m:
        prompts = _prompts(name, 4)
        got = m.generate_many(prompts, n)
        for p, r in zip(prompts, got):
            assert r.tokens == _alone(m, p, n)


@NEED_FIXTURES
@NEED_CC
def test_the_1024_window_long_prompts_batched():
    """The long prompts of the 1024-window fixture wrap its sliding rings while others decode."""
    name = "g4-dense-w1024-Q4_0-pure"
    r = np.load(FIXTURES / "ref" / f"{name}.long.exact.npz")
    longs = [[int(t) for t in r[k]] for k in sorted(r.files) if k.startswith("ids")][:2]
    prompts = longs + _prompts(name, 2)
    ctx = max(map(len, prompts)) + 24
    with _model(MODELS / f"{name}.gguf", "cpu", 3, ctx=ctx, chunk=512) as m:
        got = m.generate_many(prompts, 12)
        for p, res in zip(prompts, got):
            assert res.tokens == _alone(m, p, 12)


@NEED_FIXTURES
@NEED_CC
def test_a_cancelled_request_leaves_the_others_unchanged():
    name = "g4-dense-Q4_0"
    with _model(MODELS / f"{name}.gguf", "cpu", 3) as m:
        prompts = _prompts(name, 4)
        seen = {}
        got = m.generate_many(prompts, 14, on_token=lambda i, t: seen.setdefault(i, []).append(t),
                              cancelled=lambda i: i == 1 and len(seen.get(1, [])) >= 3)
        assert got[1].stop_reason == "cancelled" and len(got[1].tokens) == 3
        assert got[1].tokens == _alone(m, prompts[1], 3)
        for i in (0, 2, 3):
            assert got[i].tokens == _alone(m, prompts[i], 14)
            assert seen[i] == got[i].tokens


@NEED_FIXTURES
@NEED_CC
def test_seeded_sampling_is_the_same_whatever_else_is_in_the_batch():
    from g4rt.sampling import Sampler
    name = "g4-dense-untied-Q8_0"
    with _model(MODELS / f"{name}.gguf", "cpu", 4) as m:
        prompts = _prompts(name, 4)

        def samplers():
            return [Sampler(temperature=0.9, top_k=40, seed=100 + i) for i in range(4)]
        together = m.generate_many(prompts, 16, samplers=samplers())
        pair = m.generate_many(prompts[2:], 16, samplers=samplers()[2:])
        for i, p in enumerate(prompts):
            assert together[i].tokens == _alone(m, p, 16, samplers()[i])
        assert [r.tokens for r in pair] == [r.tokens for r in together[2:]]
        assert len({tuple(r.tokens) for r in together}) > 1


@NEED_FIXTURES
@NEED_CC
def test_forward_batch_refuses_bad_batches():
    from g4rt.errors import ContextOverflowError
    with _model(MODELS / "g4-dense-Q4_0.gguf", "cpu", 2, ctx=40) as m:
        e = m.engine
        with pytest.raises(G4rtError, match="each slot once"):
            e.forward_batch([(0, [1]), (0, [2])])
        with pytest.raises(G4rtError, match="out of range"):
            e.forward_batch([(0, [1]), (5, [2])])
        e.forward(list(range(2, 38)), slot=1)
        with pytest.raises(ContextOverflowError):
            e.forward_batch([(0, [1]), (1, [5, 6, 7, 8, 9])])
        with pytest.raises(ContextOverflowError):       # in a later pack: still nothing runs
            e.forward_batch([(0, list(range(20)))] + [(1, [5, 6, 7, 8, 9])])
        assert e.position(0) == 0 and e.position(1) == 36         # nothing moved


@NEED_FIXTURES
@NEED_CC
def test_cli_batch_prints_each_prompt_as_run_alone(tmp_path):
    path = MODELS / "g4-dense-untied-F32.gguf"
    texts = ["The capital of France is", "One two three", "Hello"]
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": t}) for t in texts) + "\n")
    base = [sys.executable, "-m", "g4rt", "run", str(path), "-n", "8", "--backend", "cpu"]
    proc = subprocess.run(base + ["--batch", str(f), "--parallel", "2"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2] and [x["prompt"] for x in lines] == texts
    assert "batched" in proc.stderr
    for t, x in zip(texts, lines):
        alone = subprocess.run(base + ["-p", t, "-q"], capture_output=True, text=True, timeout=120)
        assert alone.stdout.rstrip("\n") == x["text"]
    bad = subprocess.run(base + ["--batch", str(f), "-p", "x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "one of" in bad.stderr and "Traceback" not in bad.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    bad = subprocess.run(base + ["--batch", str(empty)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "no prompts" in bad.stderr and "Traceback" not in bad.stderr


@NEED_FIXTURES
@NEED_CC
def test_a_hybrid_split_batches_too():
    """A GPU front (the CUDA host code on the emulated driver) and the native CPU back: segments
    pass through to both halves; every prompt gets its tokens alone."""
    from g4rt.backends.cpu import CpuBackend
    from g4rt.backends.hybrid import HybridBackend, layers_split
    from g4rt.engine import Engine
    from g4rt.generation import Model
    name = "g4-dense-keqv-F32"
    be = HybridBackend(_backend("cuda-emu"), CpuBackend(threads=2), layers_split(3))
    m = Model(Engine(MODELS / f"{name}.gguf", backend=be, ctx=160, slots=3, prefill_chunk=24))
    try:
        prompts = _prompts(name, 4)
        got = m.generate_many(prompts, 8)
        for p, r in zip(prompts, got):
            assert r.tokens == _alone(m, p, 8)
    finally:
        m.close()


MOE = FIXTURES.parent / "fixtures-moe" / "models"


@NEED_CC
@pytest.mark.skipif(not (MOE / "g4-moe-Q4_K_M.gguf").is_file(), reason=f"{MOE} is absent")
def test_the_moe_model_batches_too():
    from g4rt.engine import Engine
    from g4rt.generation import Model
    m = Model(Engine(MOE / "g4-moe-Q4_K_M.gguf", backend="cpu", ctx=120, slots=3, prefill_chunk=24))
    try:
        rng = np.random.default_rng(5)
        prompts = [rng.integers(0, m.engine.config.n_vocab, n).tolist() for n in (5, 30, 12, 40)]
        got = m.generate_many(prompts, 10)
        for p, r in zip(prompts, got):
            assert r.tokens == _alone(m, p, 10)
    finally:
        m.close()


@NEED_FIXTURES
@NEED_CC
def test_server_sends_a_first_token_as_soon_as_its_prompt_is_done():
    """Two long prompts arriving together: the server prefills them in passes of their own, and
    the first one's first token goes out before the second one's prefill pass runs (not after
    every prompt of the step). Each stream still gets its tokens alone."""
    import threading
    from g4rt.sampling import Sampler
    from g4rt.server.scheduler import DoneEvent, Job, Scheduler
    m = _load(MODELS / "g4-dense-Q4_0.gguf", "cpu", slots=2, ctx=160, chunk=512)
    try:
        eng, jobs, passes = m.engine, [], []
        real = eng.forward              # a prompt chunk over 16 rows runs as forward() alone

        def spy(ids, *a, **k):             # what each such pass feeds, and how far each job has got
            passes.append(([len(ids)], [j.generated for j in jobs]))
            return real(ids, *a, **k)
        eng.forward = spy
        prompts = [[2] + list(range(300 + 40 * i, 339 + 40 * i)) for i in range(2)]
        done = [threading.Event(), threading.Event()]
        sched = Scheduler(eng, m.tokenizer)
        try:
            with sched._cv:                # both arrive before the worker looks at the queue
                for i, p in enumerate(prompts):
                    jobs.append(Job(p, 4, Sampler(), lambda e, i=i: isinstance(e, DoneEvent) and done[i].set()))
                    sched.submit(jobs[-1])
            assert all(d.wait(120) for d in done)
        finally:
            sched.shutdown()
            eng.forward = real
        prefills = [(k, g) for k, (lens, g) in enumerate(passes) if lens == [40]]
        assert len(prefills) == 2 and prefills[1][0] == prefills[0][0] + 1, passes
        assert sorted(prefills[1][1]) == [0, 1], passes    # one stream is under way already
        assert [j.history[len(p):] for j, p in zip(jobs, prompts)] == [list(m.generate_ids(p, 4)) for p in prompts]
    finally:
        m.close()


@NEED_FIXTURES
@NEED_CC
def test_server_a_failing_first_token_fails_only_its_own_request():
    """Sampling the first token right after a prefill pass runs inside the pass loop: an error
    there ends that request with an error event and leaves the worker and the other stream
    running."""
    import threading
    from g4rt.sampling import Sampler
    from g4rt.server.scheduler import DoneEvent, ErrorEvent, Job, Scheduler

    class Broken(Sampler):
        def sample(self, logits, history):
            raise RuntimeError("sampler broke")

    m = _load(MODELS / "g4-dense-Q4_0.gguf", "cpu", slots=2, ctx=160, chunk=512)
    try:
        prompts = [[2] + list(range(300 + 40 * i, 339 + 40 * i)) for i in range(2)]
        events: list[list] = [[], []]
        done = [threading.Event(), threading.Event()]

        def emit(e, i):
            events[i].append(e)
            if isinstance(e, (DoneEvent, ErrorEvent)):
                done[i].set()
        sched = Scheduler(m.engine, m.tokenizer)
        try:
            with sched._cv:
                for i, (p, s) in enumerate(zip(prompts, [Broken(), Sampler()])):
                    sched.submit(Job(p, 4, s, lambda e, i=i: emit(e, i)))
            assert all(d.wait(120) for d in done)
        finally:
            sched.shutdown()
        assert isinstance(events[0][-1], ErrorEvent) and "sampler broke" in events[0][-1].message
        assert isinstance(events[1][-1], DoneEvent) and events[1][-1].usage["completion_tokens"] == 4
    finally:
        m.close()
