"""Every native CPU kernel against the numpy reference, op by op, on fresh random inputs, for each
code path this CPU runs (avx512, avx2, and the portable scalar one) and several thread counts.

Graphs come from op_cases (inputs embedded from F32 tables, so both backends run plain op
lists). Bound per op: max|native - numpy| / max|numpy|, what f32 accumulation in another order
(and f16 KV storage) can cost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from g4rt import ops as O
from g4rt.backends.numpy_ref import NumpyBackend
from g4rt.errors import G4rtError
from g4rt.gguf.quant_types import block_geometry
from op_cases import ALL_TYPES, Case, attention_case, elementwise_case, long_cache_decode, random_weight, rel_err, rng

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc/gcc/clang): the native CPU backend cannot be built")

if CC is not None:
    from g4rt.backends.cpu import CpuBackend
    from g4rt.backends.cpu.compiler import supported_isas
    ISAS = supported_isas()
else:
    ISAS = []

REL = {"matmul": 2e-5, "embed": 1e-6, "rmsnorm": 2e-6, "rope": 2e-5, "attention": 1e-5,
       "attention_f16": 2e-3, "elementwise": 2e-6, "kv_store_f16": 1e-3}
THREADS = [1, 2, 3]

_backends: dict = {}


def native(isa: str, threads: int, kv_dtype: str = "f16") -> "CpuBackend":
    return CpuBackend(threads=threads, kv_dtype=kv_dtype, isa=isa)


def run_both(case: Case, out: str, isa: str, threads: int, pos0: int = 0, kv_dtype: str = "f16",
             observe: bool = False):
    ref, nat = NumpyBackend(kv_dtype=kv_dtype), native(isa, threads, kv_dtype)
    for be in (ref, nat):
        be.load_weights(case.src.specs, case.src)
        be.allocate_caches(case.caches)
    g = case.graph(out)
    toks = np.arange(case.n, dtype=np.int32)
    try:
        if observe:
            seen = {"ref": [], "nat": []}
            a = ref.compile(g).run(toks, pos0, observer=lambda i, op, arr: seen["ref"].append(arr))
            b = nat.compile(g).run(toks, pos0, observer=lambda i, op, arr: seen["nat"].append(arr))
            return a, b.copy(), seen
        return ref.compile(g).run(toks, pos0), nat.compile(g).run(toks, pos0).copy()
    finally:
        nat.close()


# ---- matmul: every type, decode (1 row), small batches and prefill tiles, odd rows ---------------
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 3, 37])
def test_matmul_every_type(isa, qtype, n):
    block, _ = block_geometry(qtype)
    cols = 512 if block == 256 else (96 if block == 32 else 72)     # 72: float rows with a tail
    rows = 77
    for threads in THREADS:
        c = Case(n)
        x = c.input("x", rng.standard_normal((n, cols)))
        c.src.add_raw("w", qtype, random_weight(qtype, rows, cols), cols)
        c.ops.append(O.MatMul(c.buf("y", rows), x, "w"))
        a, b = run_both(c, "y", isa, threads)
        assert rel_err(b, a) < REL["matmul"], (threads, rel_err(b, a))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_K, QT.Q6_K, QT.F16], ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 70])
def test_matmul_wide_rows(isa, qtype, n):
    """K = 3840 (the 12B's width) and 161 output rows: many K blocks, ragged row chunks."""
    K, rows = 3840, 161
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, K)))
    c.src.add_raw("w", qtype, random_weight(qtype, rows, K), K)
    c.ops.append(O.MatMul(c.buf("y", rows), x, "w"))
    a, b = run_both(c, "y", isa, 2)
    assert rel_err(b, a) < REL["matmul"] * 2


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("scale", [0.0, 1e4, 1e15])
def test_matmul_zero_and_huge_activations(isa, scale):
    n, K, rows = 2, 512, 33
    for qtype in (QT.Q4_0, QT.Q4_K, QT.Q6_K, QT.Q8_0, QT.F32):
        c = Case(n)
        x = c.input("x", rng.standard_normal((n, K)) * scale)
        c.src.add_raw("w", qtype, random_weight(qtype, rows, K), K)
        c.ops.append(O.MatMul(c.buf("y", rows), x, "w"))
        a, b = run_both(c, "y", isa, 2)
        assert np.all(np.isfinite(b))
        if scale == 0.0:
            assert np.all(b == 0)
        else:
            assert rel_err(b, a) < REL["matmul"], qtype


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_embed_every_type(isa, qtype):
    block, _ = block_geometry(qtype)
    cols = 512 if block == 256 else 96
    c = Case(7)
    table = c.src.add_raw("tab", qtype, random_weight(qtype, 50, cols), cols)
    c.ops.append(O.EmbedLookup(c.buf("e", cols), table, 0.5))
    ref, nat = NumpyBackend(), native(isa, 2)
    for be in (ref, nat):
        be.load_weights(c.src.specs, c.src)
        be.allocate_caches({})
    toks = np.array([0, 49, 8, 9, 23, 24, 49], np.int32)
    g = c.graph("e")
    assert rel_err(nat.compile(g).run(toks, 0), ref.compile(g).run(toks, 0)) < REL["embed"]
    nat.close()


# ---- norms, rope, element-wise -----------------------------------------------------------------
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("group,with_weight", [(256, True), (64, True), (64, False)])
def test_rmsnorm(isa, group, with_weight):
    for threads in THREADS:
        c = Case(5)
        x = c.input("x", rng.standard_normal((5, 256)) * 3)
        w = c.src.add("nw", rng.standard_normal((1, group))) if with_weight else None
        c.ops.append(O.RmsNorm(c.buf("y", 256), x, w, 1e-6, group))
        c.ops.append(O.RmsNorm("x", "x", w, 1e-6, group))              # in place
        c.ops.append(O.Add("y", "y", "x"))
        a, b = run_both(c, "y", isa, threads)
        assert rel_err(b, a) < REL["rmsnorm"]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("head_dim,n_rot,base,ff,pos0", [
    (64, 64, 10000.0, False, 0),
    (128, 128, 1e6, True, 2300),        # proportional RoPE: factors 1 then 1e30
    (64, 32, 10000.0, False, 9000),     # partial rotation: columns past n_rot are copied
    (512, 128, 1e6, True, 70000),
])
def test_rope(isa, head_dim, n_rot, base, ff, pos0):
    n = 6
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, 4 * head_dim)))
    ffn = None
    if ff:
        f = np.ones(n_rot // 2, np.float32)
        f[n_rot // 8:] = 1e30
        ffn = c.src.add("ff", f[None, :])
    c.ops.append(O.Rope(c.buf("y", 4 * head_dim), x, head_dim, n_rot, base, ffn))
    c.ops.append(O.Rope(x, x, head_dim, n_rot, base, ffn))             # in place
    c.ops.append(O.Add("y", "y", x))
    a, b = run_both(c, "y", isa, 2, pos0=pos0)
    assert rel_err(b, a) < REL["rope"]


@pytest.mark.parametrize("isa", ISAS)
def test_elementwise_ops(isa):
    for threads in THREADS:
        c = elementwise_case()
        a, b, seen = run_both(c, "sl", isa, threads, observe=True)
        assert rel_err(b, a) < REL["elementwise"]
        for i, (x, y) in enumerate(zip(seen["ref"], seen["nat"])):
            assert rel_err(y, x) < REL["elementwise"], c.ops[i]


@pytest.mark.parametrize("isa", ISAS)
def test_softcap_and_gelu_large_inputs_stay_finite(isa):
    c = Case(2)
    x = c.input("x", np.array([[-1e30, -1e4, -80.0, -3.0, 0.0, 1e-3, 3.0, 80.0, 1e4, 1e30]] * 2))
    c.ops += [O.Softcap(c.buf("y", 10), x, 30.0), O.Gelu(c.buf("z", 10), x), O.Add("y", "y", "z")]
    a, b = run_both(c, "y", isa, 2)
    assert np.all(np.isfinite(b[:, 1:-1]))
    assert rel_err(b[:, 1:-1], a[:, 1:-1]) < REL["elementwise"]


# ---- attention + KV store: window, GQA, ring wrap-around, pos0 > 0, f16/f32 KV ---------------
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_dtype", ["f32", "f16"])
@pytest.mark.parametrize("n_head,n_kv,D,window,ring,threads", [
    (4, 2, 64, 16, 16, 2),      # sliding window 16 in a 16-row ring: wraps around
    (4, 1, 128, 0, 64, 3),      # global, 1 KV head (GQA 4:1)
    (2, 2, 256, 5, 5, 1),       # window 5, head_dim 256 (n > ring in one batch)
    (4, 2, 96, 12, 12, 2),      # head_dim a multiple of 8 but not of 32
    (2, 1, 512, 0, 80, 4),      # the 12B's global head_dim
])
def test_attention_through_the_cache(isa, kv_dtype, n_head, n_kv, D, window, ring, threads):
    ref, nat = NumpyBackend(kv_dtype=kv_dtype), native(isa, threads, kv_dtype)
    pos = 0
    steps = [7, 1, 1, 12, 1, 30 if ring >= 30 else ring + 3, 1, 9, 1]   # prefills, decodes, n > ring
    for i, n in enumerate(steps):
        if pos + n > (ring if window == 0 else 10 ** 6):
            break
        c = attention_case(n, n_head, n_kv, D, window, ring, seed=i)
        for be in (ref, nat):
            be.load_weights(c.src.specs, c.src)
            if i == 0:
                be.allocate_caches(c.caches)
        g = c.graph("o")
        toks = np.arange(n, dtype=np.int32)
        seen = {"ref": [], "nat": []}
        a = ref.compile(g).run(toks, pos, observer=lambda j, op, arr: seen["ref"].append(arr))
        b = nat.compile(g).run(toks, pos, observer=lambda j, op, arr: seen["nat"].append(arr))
        tol = REL["attention_f16" if kv_dtype == "f16" else "attention"]
        assert rel_err(b, a) < tol, (i, pos, n)
        tol_c = REL["kv_store_f16"] if kv_dtype == "f16" else 1e-7
        assert rel_err(seen["nat"][-1], seen["ref"][-1].astype(np.float32)) < tol_c
        pos += n
    assert pos > ring or window == 0
    nat.close()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_decode_attention_over_a_long_cache(isa, threads):
    """One row at position 3000 over a 3072-row global cache, head_dim 512, 2 heads: the
    position split (flash-decoding partials merged after a barrier) takes over here."""
    ref, nat = NumpyBackend(kv_dtype="f32"), native(isa, threads, "f32")
    a, b = long_cache_decode([ref, nat])
    assert rel_err(b, a) < REL["attention"] * 10
    nat.close()


# ---- the command array is replayed with new tokens and positions -------------------------------
@pytest.mark.parametrize("isa", ISAS)
def test_replay_with_new_tokens_and_positions(isa):
    c = Case(3)
    table = c.src.add_raw("tab", QT.Q4_0, random_weight(QT.Q4_0, 20, 64), 64)
    c.ops += [O.EmbedLookup(c.buf("e", 64), table, 1.0), O.Rope(c.buf("r", 64), "e", 64, 64, 1e4, None)]
    ref, nat = NumpyBackend(), native(isa, 2)
    for be in (ref, nat):
        be.load_weights(c.src.specs, c.src)
        be.allocate_caches({})
    gr, gn = ref.compile(c.graph("r")), nat.compile(c.graph("r"))
    cmds = gn.low.cmds
    for toks, pos0 in [([1, 2, 3], 0), ([19, 0, 7], 100), ([5, 5, 5], 4000)]:
        assert rel_err(gn.run(np.array(toks), pos0), gr.run(np.array(toks), pos0)) < REL["rope"]
    assert gn.low.cmds is cmds
    nat.close()


# ---- selection, errors ---------------------------------------------------------------------------
def test_scalar_path_forced_by_environment(monkeypatch):
    monkeypatch.setenv("G4RT_CPU_ISA", "scalar")
    be = CpuBackend(threads=1)
    assert be.lib.isa == "scalar" and "scalar" in be.device_name
    be.close()


def test_bad_isa_and_thread_counts_are_clear_errors(monkeypatch):
    monkeypatch.setenv("G4RT_CPU_ISA", "sse9")
    with pytest.raises(G4rtError, match="G4RT_CPU_ISA"):
        CpuBackend()
    monkeypatch.delenv("G4RT_CPU_ISA")
    with pytest.raises(G4rtError, match="threads"):
        CpuBackend(threads=0)


def test_no_compiler_is_a_clear_error_and_auto_falls_back(monkeypatch, tmp_path, capsys):
    from g4rt.backends import pick_backend
    from g4rt.backends.cpu import compiler, native as N
    monkeypatch.setenv("G4RT_CC", "no-such-cc")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("G4RT_CPU_CACHE", str(tmp_path / "cache"))     # nothing cached either
    N._load.cache_clear()
    try:
        with pytest.raises(compiler.CCompilerMissingError, match="apt-get install gcc"):
            CpuBackend()
        name, why = pick_backend()
        assert name == "numpy" and "native CPU backend" in why
        assert "using the slow numpy reference" in capsys.readouterr().err
    finally:
        N._load.cache_clear()


def test_compile_is_cached_by_cpu_and_flags(tmp_path, monkeypatch):
    from g4rt.backends.cpu import compiler
    monkeypatch.setenv("G4RT_CPU_CACHE", str(tmp_path))
    p1 = compiler.build("scalar")
    t1 = p1.stat().st_mtime_ns
    assert compiler.build("scalar") == p1 and p1.stat().st_mtime_ns == t1     # cached
    monkeypatch.setenv("G4RT_CPU_CFLAGS", "-DG4_TEST_FLAG=1")
    assert compiler.build("scalar") != p1                                      # flags are in the key


# ---- a deliberate mutation must be caught --------------------------------------------------------
def test_a_wrong_block_offset_is_caught(tmp_path, monkeypatch):
    """Copy the kernels, shift the Q8_0 dequantizer's read by one byte, and check that the op
    test above would fail on it (the tests can fail)."""
    from g4rt.backends.cpu import compiler, native as N
    src = compiler.source_dir()
    mutant = tmp_path / "cpu"
    shutil.copytree(src, mutant)
    q = (mutant / "quant.c").read_text()
    marker = "G4_MUTATION_POINT"
    assert marker in q, "quant.c lost its mutation marker"
    q = q.replace(f"/* {marker} */ 0", f"/* {marker} */ 1")
    (mutant / "quant.c").write_text(q)
    monkeypatch.setenv("G4RT_CPU_SHADER_DIR", str(mutant))
    monkeypatch.setenv("G4RT_CPU_CACHE", str(tmp_path / "cache"))
    N._load.cache_clear()
    try:
        c = Case(3)
        table = c.src.add_raw("tab", QT.Q8_0, random_weight(QT.Q8_0, 9, 64), 64)
        c.ops.append(O.EmbedLookup(c.buf("e", 64), table, 1.0))
        a, b = run_both(c, "e", "scalar", 1)
        assert rel_err(b, a) > REL["embed"] * 100
    finally:
        N._load.cache_clear()


# ---- sanitizers: the op suite once under ASan + UBSan ---------------------------------------------
@pytest.mark.slow     # two minutes: a sanitizer build and the op suite under it
@pytest.mark.skipif(os.environ.get("G4RT_SANITIZE_RUN") == "1", reason="inside the sanitizer run")
def test_kernels_under_address_and_undefined_sanitizers(tmp_path):
    """Runs this file's op tests in a subprocess with the library built under
    -fsanitize=address,undefined (libasan preloaded into Python); any report fails it."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed for the sanitizer run")
    asan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not asan or not os.path.isfile(asan):
        pytest.skip("libasan is not installed (apt-get install gcc provides it)")
    env = dict(os.environ, G4RT_SANITIZE_RUN="1", LD_PRELOAD=asan, G4RT_CC=gcc,
               G4RT_CPU_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined "
                               "-fno-omit-frame-pointer -O1",
               G4RT_CPU_CACHE=str(tmp_path / "cache"),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    tests = os.path.abspath(__file__)
    moe = os.path.join(os.path.dirname(tests), "test_moe.py")      # the MoE kernels' gather and scatter too
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", tests,
                        moe + "::test_native_moe_ops",
                        "-k", "not long_cache and not wrong_block_offset and not compiler and not sanitizers"],
                       env=env, capture_output=True, text=True, timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "runtime error" not in out and "AddressSanitizer" not in out, out[-6000:]
