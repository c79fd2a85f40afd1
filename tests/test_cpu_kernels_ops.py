"""The native CPU backend's op kernels (shaders/cpu/ops.c) against the numpy reference.

Each ISA level the host supports (portable C, AVX2, AVX-512) is built with gcc into a shared
library together with tests/cpu_shim/ops_shim.c, a stand-in for runtime.c that runs a command on
nth real pthreads (real barrier, atomic work counter) and a minimal dequantizer; every op is then
compared with runtime/backends/numpy_ref on random inputs, for thread counts 1-4.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from g4rt.backends.numpy_ref import backend as ref
from g4rt.ops import ROW_EXACT_MAX     # g4cpu.h: batches this small run row by row

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "shaders" / "cpu"
SHIM = REPO / "tests" / "cpu_shim" / "ops_shim.c"

from cpu_build import ISA_CPU_FLAGS, ISA_FLAGS  # noqa: E402
from cpu_build import G4Cmd as Cmd, G4Exec as Exec, host_flags as _host_flags  # noqa: E402
THREADS = (1, 2, 3, 4)

OP_EMBED, OP_MATMUL, OP_RMSNORM, OP_ROPE, OP_ATTENTION, OP_KV_STORE, OP_GELU_MUL, OP_GELU, \
    OP_ADD, OP_MUL, OP_SCALE, OP_SOFTCAP, OP_SLICE = range(1, 14)
F32, F16, Q8_0, BF16 = 0, 1, 8, 30
_p = ctypes.c_void_p


class Lib:
    def __init__(self, path: Path, isa: str):
        self.isa = isa
        lib = ctypes.CDLL(str(path))
        lib.shim_run.argtypes = [ctypes.POINTER(Cmd), ctypes.POINTER(Exec), ctypes.c_int]
        lib.shim_run.restype = ctypes.c_int
        for fn in ("shim_sizeof_cmd", "shim_sizeof_exec"):
            getattr(lib, fn).restype = ctypes.c_size_t
        for fn in ("shim_offsetof_cmd", "shim_offsetof_exec"):
            getattr(lib, fn).restype = ctypes.c_size_t
            getattr(lib, fn).argtypes = [ctypes.c_int]
        for fn in ("shim_attention_scratch", "shim_attention_shared"):
            getattr(lib, fn).restype = ctypes.c_size_t
            getattr(lib, fn).argtypes = [ctypes.POINTER(Cmd), ctypes.c_int]
        lib.shim_isa.restype = ctypes.c_char_p
        for fn in ("shim_h2f", "shim_f2h", "shim_bf2f"):
            getattr(lib, fn).argtypes = [_p, _p, ctypes.c_int64]
        lib.shim_time_tanhf.argtypes = [_p, _p, ctypes.c_int64, ctypes.c_int]
        lib.shim_time_tanhf.restype = ctypes.c_double
        lib.shim_time_kernel.argtypes = [ctypes.POINTER(Cmd), ctypes.POINTER(Exec), ctypes.c_int]
        lib.shim_time_kernel.restype = ctypes.c_double
        self.lib = lib

    def run(self, nth: int, pos0: int = 0, tokens=None, **fields) -> int:
        """Run one command built from `fields` (numpy arrays for pointers); returns barrier calls."""
        cmd = Cmd()
        keep = []
        for k, v in fields.items():
            if isinstance(v, np.ndarray):
                assert v.flags.c_contiguous
                keep.append(v)
                setattr(cmd, k, v.ctypes.data)
            else:
                setattr(cmd, k, v)
        ex = Exec()
        ex.pos0 = pos0
        ex.n_tokens = cmd.rows
        if tokens is not None:
            tokens = np.ascontiguousarray(tokens, np.int32)
            ex.tokens = tokens.ctypes.data
        rc = self.lib.shim_run(ctypes.byref(cmd), ctypes.byref(ex), nth)
        assert rc >= 0
        return rc

    def h2f(self, h: np.ndarray) -> np.ndarray:
        h = np.ascontiguousarray(h, np.uint16)
        out = np.empty(h.shape, np.float32)
        self.lib.shim_h2f(h.ctypes.data, out.ctypes.data, h.size)
        return out

    def f2h(self, f: np.ndarray) -> np.ndarray:
        f = np.ascontiguousarray(f, np.float32)
        out = np.empty(f.shape, np.uint16)
        self.lib.shim_f2h(f.ctypes.data, out.ctypes.data, f.size)
        return out


_BUILDS: dict = {}


def _run_parallel(jobs: dict) -> dict:
    """name -> argv, run at once; name -> (return code, output)."""
    procs = {k: subprocess.Popen(v, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, v in jobs.items()}
    out = {}
    for k, p in procs.items():
        log, _ = p.communicate()
        out[k] = (p.returncode, log)
    return out


def _builds(tmp_path_factory) -> dict:
    """All three ISA builds, compiled in parallel once (a build the CPU cannot run still has to
    compile cleanly): isa -> (library, gcc return code, gcc output); "quant": ops.c + quant.c."""
    if not _BUILDS:
        gcc = shutil.which("gcc")
        if gcc is None:
            pytest.skip("gcc not found")
        d = tmp_path_factory.mktemp("g4ops")
        extra = os.environ.get("G4RT_OPS_TEST_CFLAGS", "").split()   # e.g. sanitizers
        common = [gcc, "-O2", "-fPIC", "-std=c11", "-pthread", *extra, f"-I{SRC}"]
        base = [*common, "-Wall", "-Wextra", "-Werror"]
        best = next((i for i in ("avx512", "avx2") if ISA_CPU_FLAGS[i] <= _host_flags()), "scalar")
        quant = SRC / "quant.c"
        jobs = {}
        for isa, flags in ISA_FLAGS.items():
            for part in ("ops", "attention"):   # the op kernels: shaders/cpu/ops.c and attention.c
                jobs[f"{part}_{isa}"] = [*base, *flags, "-c", str(SRC / f"{part}.c"), "-o", str(d / f"{part}_{isa}.o")]
            jobs[f"shim_{isa}"] = [*base, *flags, "-c", str(SHIM), "-o", str(d / f"shim_{isa}.o")]
        if quant.is_file():   # the embedding kernel with the real dequantizer (another kernel file)
            jobs["quant"] = [*common, *ISA_FLAGS[best], "-c", str(quant), "-o", str(d / "quant.o")]
        res = _run_parallel(jobs)
        links = {}
        for isa in ISA_FLAGS:
            if res[f"ops_{isa}"][0] == 0 and res[f"attention_{isa}"][0] == 0 and res[f"shim_{isa}"][0] == 0:
                links[isa] = [gcc, "-shared", "-pthread", str(d / f"ops_{isa}.o"), str(d / f"attention_{isa}.o"),
                              str(d / f"shim_{isa}.o"),
                              *extra, "-o", str(d / f"libg4ops_{isa}.so"), "-lm"]
        if "quant" in jobs and res["quant"][0] == 0 and best in links:
            links["quant"] = [gcc, "-shared", "-pthread", str(d / f"ops_{best}.o"), str(d / f"attention_{best}.o"),
                              str(d / "quant.o"),
                              str(d / f"shim_{best}.o"), *extra, "-o", str(d / "libg4ops_quant.so"), "-lm"]
        lres = _run_parallel(links)
        for isa in ISA_FLAGS:
            parts = [res[f"{part}_{isa}"] for part in ("ops", "attention", "shim")]
            rc, log = parts[0][0] | parts[1][0] | parts[2][0], parts[0][1] + parts[1][1] + parts[2][1]
            if isa in lres:
                rc, log = rc | lres[isa][0], log + lres[isa][1]
            _BUILDS[isa] = (d / f"libg4ops_{isa}.so", rc, log)
        if "quant" in jobs:
            rc, log = res["quant"]
            if "quant" in lres:
                rc, log = rc | lres["quant"][0], log + lres["quant"][1]
            _BUILDS["quant"] = (d / "libg4ops_quant.so", rc if "quant" in links else 1, log)
        _BUILDS["quant_isa"] = best
    return _BUILDS


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
def test_builds_without_warnings(isa, tmp_path_factory):
    _, rc, log = _builds(tmp_path_factory)[isa]
    assert rc == 0, log


@pytest.fixture(scope="module", params=list(ISA_FLAGS))
def lib(request, tmp_path_factory) -> Lib:
    isa = request.param
    missing = ISA_CPU_FLAGS[isa] - _host_flags()
    if missing:
        pytest.skip(f"{isa} build not run: this CPU lacks {', '.join(sorted(missing))}")
    out, rc, log = _builds(tmp_path_factory)[isa]
    assert rc == 0, log
    lib = Lib(out, isa)
    assert lib.lib.shim_isa().decode() == isa
    return lib


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _nan_like(shape) -> np.ndarray:
    return np.full(shape, np.nan, np.float32)


# ---------------------------------------------------------------------------------------------
# Layout and f16 helpers

def test_struct_layout(lib):
    L = lib.lib
    assert ctypes.sizeof(Cmd) == L.shim_sizeof_cmd()
    assert ctypes.sizeof(Exec) == L.shim_sizeof_exec()
    assert [L.shim_offsetof_cmd(i) for i in range(4)] == [
        Cmd.w_rows.offset, Cmd.eps.offset, Cmd.out.offset, Cmd.cache_v.offset]
    assert [L.shim_offsetof_exec(i) for i in range(4)] == [
        Exec.tokens.offset, Exec.shared_bytes.offset, Exec.nth.offset, Exec.counters.offset]


def test_f16_all_halves(lib):
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = lib.h2f(h)
    want = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    # round trip of every non-NaN half
    back = lib.f2h(got[~nan])
    assert np.array_equal(back, h[~nan])
    assert np.all((lib.f2h(got[nan]) & 0x7FFF) > 0x7C00)
    bits = np.array([0x3F80, 0xBF80, 0x7F80, 0x0001, 0x8000], np.uint16)
    out = np.empty(5, np.float32)
    lib.lib.shim_bf2f(bits.ctypes.data, out.ctypes.data, 5)
    assert np.array_equal(out.view(np.uint32), bits.astype(np.uint32) << 16)


def test_f16_rounding(lib):
    rng = np.random.default_rng(0)
    parts = [
        rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32),  # any float
        rng.uniform(-70000, 70000, 100_000).astype(np.float32),
        (rng.uniform(-1, 1, 100_000) * 2.0 ** -14).astype(np.float32),              # subnormal halves
        (rng.uniform(-1, 1, 50_000) * 2.0 ** -24).astype(np.float32),               # around the smallest
        np.array([0.0, -0.0, 65504, 65519.99, 65520, 65536, -65520, 1e30, np.inf, -np.inf, np.nan,
                  2.0 ** -25, 2.0 ** -25 * 1.0000001, -(2.0 ** -25), 2.0 ** -24 * 1.5, 2.0 ** -24 * 2.5,
                  5.960464477539063e-08, 6.097555160522461e-05, 6.103515625e-05], np.float32),
    ]
    # exact ties: midpoints between adjacent halves (round to even)
    hh = np.arange(0, 0x7C00, dtype=np.uint32).astype(np.uint16)
    lo = hh.view(np.float16).astype(np.float64)
    hi = (hh + 1).astype(np.uint16).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2)[:-1]
    parts += [mid.astype(np.float32), -mid.astype(np.float32)]
    f = np.concatenate(parts)
    got = lib.f2h(f)
    with np.errstate(over="ignore", invalid="ignore"):
        want = f.astype(np.float16).view(np.uint16)
    nan = np.isnan(f)
    assert np.array_equal(got[~nan], want[~nan]), f[~nan][got[~nan] != want[~nan]][:10]
    assert np.all((got[nan] & 0x7FFF) > 0x7C00)


# ---------------------------------------------------------------------------------------------
# Element-wise ops

def _elem_inputs(rng, n):
    a = rng.standard_normal(n).astype(np.float32) * 3
    b = rng.standard_normal(n).astype(np.float32)
    return a, b


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 33), (5, 640), (2, 1000)])
def test_add_mul_scale(lib, shape):
    rng = np.random.default_rng(1)
    a, b = (x.reshape(shape) for x in _elem_inputs(rng, shape[0] * shape[1]))
    for nth in THREADS:
        for op, want in ((OP_ADD, a + b), (OP_MUL, a * b)):
            out = _nan_like(shape)
            lib.run(nth, op=op, rows=shape[0], cols=shape[1], in_cols=shape[1], out=out, a=a, b=b)
            assert np.array_equal(out, want)
        out = _nan_like(shape)
        lib.run(nth, op=OP_SCALE, rows=shape[0], cols=shape[1], scale=0.37, out=out, a=a)
        assert np.array_equal(out, a * np.float32(0.37))
    # in place: out == a, out == b
    x, y = a.copy(), b.copy()
    lib.run(3, op=OP_ADD, rows=shape[0], cols=shape[1], out=x, a=x, b=y)
    assert np.array_equal(x, a + b)
    x, y = a.copy(), b.copy()
    lib.run(2, op=OP_MUL, rows=shape[0], cols=shape[1], out=y, a=x, b=y)
    assert np.array_equal(y, a * b)


def _gelu64(x):
    # 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), without the cancellation for negative x
    x = x.astype(np.float64)
    return x / (1.0 + np.exp(-2.0 * math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 4099])
def test_gelu(lib, n):
    rng = np.random.default_rng(2)
    a, b = _elem_inputs(rng, n)
    with np.errstate(over="ignore", invalid="ignore"):
        want = ref.gelu_tanh(a)
    exact = _gelu64(a)
    for nth in THREADS:
        out = _nan_like(n)
        lib.run(nth, op=OP_GELU, rows=1, cols=n, out=out, a=a)
        # vs the exact value: a few ulp of the result scale; vs numpy_ref: its own f32 rounding too
        np.testing.assert_allclose(out, exact, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
        out = _nan_like(n)
        lib.run(nth, op=OP_GELU_MUL, rows=1, cols=n, out=out, a=a, b=b)
        np.testing.assert_allclose(out, want * b, rtol=1e-5, atol=1e-6)
    x = a.copy()
    lib.run(4, op=OP_GELU_MUL, rows=1, cols=n, out=x, a=x, b=b)
    np.testing.assert_allclose(x, want * b, rtol=1e-5, atol=1e-6)


def _extremes():
    v = [0.0, -0.0, 1e-40, -1e-40, 1e-30, -1e-30, 0.5, -0.5, 3, -3, 5, -5, 9, -9, 10, -10, 20, -20,
         40, -40, 88, -88, 100, -100, 1e4, -1e4, 1e13, -1e13, 1e20, -1e20, 1e30, -1e30, 3e38, -3e38,
         np.inf, -np.inf, np.nan]
    return np.array(v * 3, np.float32)


def test_gelu_extremes(lib):
    x = _extremes()
    with np.errstate(over="ignore", invalid="ignore"):
        want = ref.gelu_tanh(x)
    out = _nan_like(x.size)
    lib.run(2, op=OP_GELU, rows=1, cols=x.size, out=out, a=x)
    assert np.array_equal(np.isnan(out), np.isnan(want)), (x[np.isnan(out) != np.isnan(want)])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_tanh_softcap(lib):
    rng = np.random.default_rng(3)
    # the whole float range (random bit patterns) and a dense sweep where tanh bends
    x = np.concatenate([
        rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.linspace(-12, 12, 200_001, dtype=np.float32),
        np.linspace(-0.7, 0.7, 100_001, dtype=np.float32),
        _extremes()])
    out = _nan_like(x.size)
    lib.run(3, op=OP_SOFTCAP, rows=1, cols=x.size, cap=1.0, out=out, a=x)
    with np.errstate(invalid="ignore"):
        want = np.tanh(x.astype(np.float64))
    nan = np.isnan(x)
    assert np.all(np.isnan(out[nan]))
    assert not np.any(np.isnan(out[~nan]))
    o, w, xx = out[~nan].astype(np.float64), want[~nan], x[~nan]
    big = np.abs(w) > 1e-30
    rel = np.abs(o[big] - w[big]) / np.abs(w[big])
    assert rel.max() < 1e-6, (rel.max(), xx[big][rel.argmax()])
    assert np.all(np.abs(o[~big] - w[~big]) <= 1e-37)
    assert np.all(out[x > 9.1] == 1.0) and np.all(out[x < -9.1] == -1.0)
    assert np.signbit(out[x == 0]).tolist() == np.signbit(x[x == 0]).tolist()
    # softcap proper vs numpy_ref's formula
    logits = (rng.standard_normal(5000) * 40).astype(np.float32)
    cap = np.float32(30.0)
    want = cap * np.tanh(logits / cap)
    for nth in THREADS:
        out = _nan_like(logits.size)
        lib.run(nth, op=OP_SOFTCAP, rows=2, cols=2500, cap=30.0, out=out, a=logits)
        np.testing.assert_allclose(out, want, rtol=2e-6, atol=1e-6)
    y = logits.copy()
    lib.run(2, op=OP_SOFTCAP, rows=1, cols=5000, cap=30.0, out=y, a=y)
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Slice, embed

def test_slice(lib):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((7, 53)).astype(np.float32)
    for (row0, col0, rows, cols) in [(6, 0, 1, 53), (0, 0, 7, 53), (2, 5, 3, 40), (1, 17, 6, 1), (3, 50, 4, 3)]:
        for nth in THREADS:
            out = _nan_like((rows, cols))
            lib.run(nth, op=OP_SLICE, rows=rows, cols=cols, in_cols=53, row0=row0, col0=col0, out=out, a=a)
            assert np.array_equal(out, a[row0:row0 + rows, col0:col0 + cols])


def _q8_0_table(rng, rows, cols):
    nb = cols // 32
    d = (rng.uniform(0.001, 0.05, (rows, nb))).astype(np.float16)
    q = rng.integers(-128, 128, (rows, nb, 32)).astype(np.int8)
    raw = np.zeros((rows, nb, 34), np.uint8)
    raw[:, :, :2] = d.view(np.uint8).reshape(rows, nb, 2)
    raw[:, :, 2:] = q.view(np.uint8)
    deq = (d.astype(np.float32)[:, :, None] * q.astype(np.float32)).reshape(rows, cols)
    return raw.reshape(rows, nb * 34), deq


@pytest.mark.parametrize("qtype", [F32, F16, BF16, Q8_0])
def test_embed(lib, qtype):
    rng = np.random.default_rng(5)
    rows, cols = 50, 320
    t = rng.standard_normal((rows, cols)).astype(np.float32)
    if qtype == F32:
        raw, deq = t, t
    elif qtype == F16:
        raw = t.astype(np.float16)
        deq = raw.astype(np.float32)
        raw = raw.view(np.uint16)
    elif qtype == BF16:
        raw = (t.view(np.uint32) >> 16).astype(np.uint16)
        deq = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        raw, deq = _q8_0_table(rng, rows, cols)
    if qtype == Q8_0:
        from gguf import quants, GGMLQuantizationType
        assert np.array_equal(quants.dequantize(raw, GGMLQuantizationType.Q8_0), deq)
    raw = np.ascontiguousarray(raw)
    row_bytes = raw.nbytes // rows
    scale = np.float32(math.sqrt(cols))
    for toks in ([7], [0, 49, 3, 3, 12], list(rng.integers(0, rows, 9))):
        want = deq[toks] * scale
        for nth in THREADS:
            out = _nan_like((len(toks), cols))
            lib.run(nth, tokens=toks, op=OP_EMBED, qtype=qtype, rows=len(toks), cols=cols, in_cols=cols,
                    scale=float(scale), w=raw, w_rows=rows, w_row_bytes=row_bytes, out=out)
            assert np.array_equal(out, want)
    out = _nan_like((2, cols))   # an out-of-range id reads nothing and gives zeros
    lib.run(2, tokens=[rows, 1], op=OP_EMBED, qtype=qtype, rows=2, cols=cols, scale=1.0, w=raw,
            w_rows=rows, w_row_bytes=row_bytes, out=out)
    assert np.all(out[0] == 0) and np.array_equal(out[1], deq[1])


# ---------------------------------------------------------------------------------------------
# RMSNorm, RoPE

@pytest.mark.parametrize("rows,cols,group,weighted", [
    (1, 640, 640, True), (5, 1152, 1152, False), (3, 1024, 256, True), (4, 8 * 72, 72, True),
    (2, 7 * 13, 13, False), (7, 2048, 2048, True)])
def test_rmsnorm(lib, rows, cols, group, weighted):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((rows, cols)).astype(np.float32) * 2
    x[0, :group] = 0.0                          # an all-zero group
    if rows > 2:
        x[2] *= np.float32(1e30)               # very large values (squares overflow f32)
    w = (1 + rng.standard_normal(group) * 0.1).astype(np.float32) if weighted else None
    eps = float(np.float32(1e-6))
    want = ref.rms_norm(x, w, eps, group)
    assert np.all(np.isfinite(want))
    for nth in THREADS:
        out = _nan_like((rows, cols))
        lib.run(nth, op=OP_RMSNORM, rows=rows, cols=cols, in_cols=cols, group=group, eps=eps,
                out=out, a=x, **({"w": w} if weighted else {}))
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, want, rtol=2e-7, atol=0)
    y = x.copy()
    lib.run(3, op=OP_RMSNORM, rows=rows, cols=cols, group=group, eps=eps, out=y, a=y,
            **({"w": w} if weighted else {}))
    np.testing.assert_allclose(y, want, rtol=2e-7, atol=0)


@pytest.mark.parametrize("rows,n_head,head_dim,n_rot,pos0,ff", [
    (1, 4, 256, 256, 0, False), (1, 8, 128, 128, 5000, False), (6, 4, 64, 32, 17, True),
    (13, 2, 512, 512, 100_000, True), (3, 3, 72, 40, 9, False), (2, 1, 128, 0, 4, False)])
def test_rope(lib, rows, n_head, head_dim, n_rot, pos0, ff):
    rng = np.random.default_rng(7)
    cols = n_head * head_dim
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    base = 10000.0 if not ff else 1_000_000.0
    factors = rng.uniform(1, 8, max(1, n_rot // 2)).astype(np.float32) if ff else None
    want = ref.rope(x, pos0 + np.arange(rows), head_dim, n_rot, base, factors)
    inv = base ** (-np.arange(0, n_rot // 2, dtype=np.float64) * 2.0 / n_rot)
    if factors is not None:
        inv = inv / factors.astype(np.float64)
    freqs = np.ascontiguousarray(inv if n_rot else np.zeros(1))
    for nth in THREADS:
        out = _nan_like((rows, cols))
        lib.run(nth, pos0=pos0, op=OP_ROPE, rows=rows, cols=cols, in_cols=cols, group=head_dim,
                n_rot=n_rot, freqs=freqs, out=out, a=x)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    y = x.copy()
    lib.run(4, pos0=pos0, op=OP_ROPE, rows=rows, cols=cols, group=head_dim, n_rot=n_rot, freqs=freqs,
            out=y, a=y)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# KV store, attention

@pytest.mark.parametrize("f16", [False, True])
@pytest.mark.parametrize("rows,cache_rows,pos0", [(1, 8, 0), (1, 8, 13), (5, 8, 6), (20, 8, 3), (8, 8, 8),
                                                  (3, 64, 61)])
def test_kv_store(lib, f16, rows, cache_rows, pos0):
    rng = np.random.default_rng(8)
    W = 2 * 72
    k = rng.standard_normal((rows, W)).astype(np.float32) * 100
    v = rng.standard_normal((rows, W)).astype(np.float32)
    k[0, :4] = [1e-6, 70000.0, 65519.0, 2.0 ** -25]
    dt = np.float16 if f16 else np.float32
    for nth in THREADS:
        ck0 = rng.standard_normal((cache_rows, W)).astype(dt)
        cv0 = rng.standard_normal((cache_rows, W)).astype(dt)
        ck, cv = ck0.copy(), cv0.copy()
        lib.run(nth, pos0=pos0, op=OP_KV_STORE, rows=rows, cols=W, in_cols=W, cache_rows=cache_rows,
                cache_f16=int(f16), a=k, b=v, cache_k=ck, cache_v=cv)
        keep = range(max(0, rows - cache_rows), rows)
        slots = [(pos0 + r) % cache_rows for r in keep]
        with np.errstate(over="ignore"):
            ck0[slots] = k[list(keep)].astype(dt)
            cv0[slots] = v[list(keep)].astype(dt)
        assert np.array_equal(ck.view(np.uint8), ck0.view(np.uint8))
        assert np.array_equal(cv.view(np.uint8), cv0.view(np.uint8))


def _attention_case(rng, *, n_head, n_kv, D, window, cache_rows, pos0, rows, f16, qscale=1.0):
    """Random q/k/v, a cache holding positions < pos0 (as a KV store would), and the reference."""
    dt = np.float16 if f16 else np.float32
    kvw = n_kv * D
    total = pos0 + rows
    hist_k = rng.standard_normal((total, kvw)).astype(np.float32)
    hist_v = rng.standard_normal((total, kvw)).astype(np.float32)
    ck = (rng.standard_normal((cache_rows, kvw)) * 1e3).astype(dt)   # stale rows: must not be read
    cv = (rng.standard_normal((cache_rows, kvw)) * 1e3).astype(dt)
    for p in range(max(0, pos0 - cache_rows), pos0):
        ck[p % cache_rows] = hist_k[p].astype(dt)
        cv[p % cache_rows] = hist_v[p].astype(dt)
    q = (rng.standard_normal((rows, n_head * D)) * qscale).astype(np.float32)
    k = np.ascontiguousarray(hist_k[pos0:])
    v = np.ascontiguousarray(hist_v[pos0:])
    scale = 1.0 / math.sqrt(D)
    args = (q, k, v, ck.astype(np.float32), cv.astype(np.float32), pos0, n_head, n_kv, D, window, scale)
    # a row-exact batch reads its earlier rows as the cache holds them (the reference's definition)
    want = ref.attention_rows_exact(*args, dt) if 1 < rows <= ROW_EXACT_MAX else ref.attention(*args)
    fields = dict(op=OP_ATTENTION, rows=rows, cols=n_head * D, in_cols=n_head * D, group=D,
                  n_head=n_head, n_kv_head=n_kv, window=window, cache_rows=cache_rows,
                  cache_f16=int(f16), scale=scale, a=q, b=k, c=v, cache_k=ck, cache_v=cv)
    return fields, want


ATT_CASES = [
    # n_head, n_kv, D, window, cache_rows, pos0, rows
    (4, 1, 256, 0, 64, 0, 1),         # first token
    (4, 1, 256, 0, 64, 0, 9),         # prefill from 0
    (8, 2, 128, 0, 100, 37, 1),       # decode, GQA 4
    (8, 4, 64, 0, 80, 50, 7),         # small batch after a prefix
    (4, 4, 128, 16, 16, 37, 1),       # window, ring wrapped
    (4, 2, 128, 16, 16, 10, 40),      # prefill longer than the window, cache partly used
    (2, 1, 512, 32, 40, 75, 5),       # D 512, window, wrap
    (32, 1, 64, 0, 40, 20, 3),        # 32 heads on one kv head (head chunks)
    (3, 3, 72, 0, 30, 11, 4),         # odd head size
    (2, 1, 20, 8, 8, 30, 6),          # tiny odd head size, window
    (4, 1, 256, 24, 24, 0, 64),       # pos0 0, prefill 64 > window 24
]


def _units(rows, n_head, n_kv):
    """Work units of one attention (row block, kv head, <= 16 heads)."""
    rep = n_head // n_kv
    hc = min(rep, 16)
    return -(-rows // max(1, 8 // hc)) * n_kv * -(-rep // hc)


def _barriers(nth, rows, n_head, n_kv, f16, split):
    """Barrier calls the kernel makes (the shim counts one per thread per call). A row-exact batch
    (2..16 rows): the f16 copy of its K/V rows, then per row its one-row attention (one more when
    that row splits its keys) and a barrier; else one barrier when the keys are split."""
    if 1 < rows <= ROW_EXACT_MAX:
        split1 = split and nth > 1 and _units(1, n_head, n_kv) % nth != 0
        return nth * (int(f16) + rows * (1 + int(split1)))
    return nth if split and nth > 1 and _units(rows, n_head, n_kv) % nth else 0


@pytest.mark.parametrize("f16", [False, True])
@pytest.mark.parametrize("case", ATT_CASES, ids=lambda c: "h{}kv{}d{}w{}c{}p{}r{}".format(*c))
def test_attention(lib, case, f16):
    n_head, n_kv, D, window, cache_rows, pos0, rows = case
    rng = np.random.default_rng(9)
    fields, want = _attention_case(rng, n_head=n_head, n_kv=n_kv, D=D, window=window,
                                   cache_rows=cache_rows, pos0=pos0, rows=rows, f16=f16)
    first = None
    for nth in THREADS:
        out = _nan_like((rows, n_head * D))
        barriers = lib.run(nth, pos0=pos0, out=out, **fields)
        # short contexts: whole (row, head) units, no split-K
        assert barriers == _barriers(nth, rows, n_head, n_kv, f16, split=False)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=2e-5)
        if first is None:
            first = out
        else:                       # each value computed by one thread the same way
            assert np.array_equal(out, first)


@pytest.mark.parametrize("f16", [False, True])
@pytest.mark.parametrize("n_head,n_kv,D,window,cache_rows,pos0,rows", [
    (4, 1, 256, 0, 3000, 2500, 1),    # long global decode
    (8, 2, 128, 1024, 1024, 5000, 1), # sliding window, ring wrapped
    (2, 2, 64, 0, 1200, 1100, 3),     # a few rows
    (4, 1, 512, 0, 700, 600, 1),      # D 512
])
def test_attention_split_k(lib, f16, n_head, n_kv, D, window, cache_rows, pos0, rows):
    rng = np.random.default_rng(10)
    fields, want = _attention_case(rng, n_head=n_head, n_kv=n_kv, D=D, window=window,
                                   cache_rows=cache_rows, pos0=pos0, rows=rows, f16=f16)
    for nth in THREADS:
        out = _nan_like((rows, n_head * D))
        barriers = lib.run(nth, pos0=pos0, out=out, **fields)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=2e-5)
        # whole units are (row block, kv head, <= 16 heads); split-K when they do not divide evenly
        assert barriers == _barriers(nth, rows, n_head, n_kv, f16, split=True)


def test_attention_extremes(lib):
    """Peaked softmax (large scores), zero queries: finite where the reference is finite."""
    rng = np.random.default_rng(11)
    for qscale in (0.0, 1e3, 1e6):
        for pos0, rows in ((900, 1), (5, 6)):
            fields, want = _attention_case(rng, n_head=4, n_kv=1, D=128, window=0, cache_rows=1000,
                                           pos0=pos0, rows=rows, f16=True, qscale=qscale)
            assert np.all(np.isfinite(want))
            for nth in (1, 3):
                out = _nan_like((rows, 4 * 128))
                lib.run(nth, pos0=pos0, out=out, **fields)
                assert np.all(np.isfinite(out))
                np.testing.assert_allclose(out, want, rtol=1e-4, atol=5e-5)


def test_attention_scratch_sizes(lib):
    cmd = Cmd(op=OP_ATTENTION, rows=512, n_head=8, n_kv_head=4, group=256, window=1024, cache_rows=1024)
    ws = lib.lib.shim_attention_scratch(ctypes.byref(cmd), 4)
    assert 0 < ws < 4 * 8 * 1100 * 4
    # a 512-row batch itself splits no keys, but it may carry several sequences whose segments
    # run one at a time (runtime.c run_segments): its shared scratch covers a 1..16-row segment's
    prefill = lib.lib.shim_attention_shared(ctypes.byref(cmd), 4)
    cmd.rows = 1
    assert lib.lib.shim_attention_shared(ctypes.byref(cmd), 1) == 0
    one_row = lib.lib.shim_attention_shared(ctypes.byref(cmd), 4)
    assert one_row >= 4 * 8 * 256 * 4
    cmd.cache_f16, cmd.rows = 1, 9      # a row-exact 9-row segment: the split + its f16 row copies
    nine = lib.lib.shim_attention_shared(ctypes.byref(cmd), 4)
    assert nine > one_row
    cmd.rows = 512
    assert lib.lib.shim_attention_shared(ctypes.byref(cmd), 4) >= nine
    assert prefill >= one_row


def test_exports_only_header_functions(lib):
    """ops.c defines the header's functions and static helpers, nothing else."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    import re
    header = (SRC / "g4cpu.h").read_text()
    declared = set(re.findall(r"\b(g4_\w+)\s*\(", header))
    res = subprocess.run([nm, "-D", "--defined-only", str(_BUILDS[lib.isa][0])], capture_output=True, text=True)
    names = {line.split()[-1] for line in res.stdout.splitlines() if line.split()[-2:-1] == ["T"]}
    ours = {n for n in names if not n.startswith("shim_") and not n.startswith("_")}
    assert ours - declared == set(), ours - declared
    for fn in ("g4_k_attention", "g4_attention_scratch", "g4_attention_shared", "g4_k_embed", "g4_k_slice"):
        assert fn in ours


# GGML block layouts: (values, bytes, byte offsets of the f16 scale fields)
_QUANT_BLOCKS = {2: (32, 18, (0,)), 3: (32, 20, (0, 2)), 6: (32, 22, (0,)), 7: (32, 24, (0, 2)),
                 8: (32, 34, (0,)), 12: (256, 144, (0, 2)), 13: (256, 176, (0, 2)), 14: (256, 210, (208,))}


@pytest.mark.parametrize("qtype", sorted(_QUANT_BLOCKS))
def test_embed_with_quant_c(qtype, tmp_path_factory):
    """EMBED through the real g4_dequant_row (quant.c) for every block type, vs gguf.quants."""
    builds = _builds(tmp_path_factory)
    if "quant" not in builds:
        pytest.skip("shaders/cpu/quant.c is absent")
    out_path, rc, log = builds["quant"]
    if rc != 0:
        pytest.skip(f"ops.c + quant.c did not build (quant.c is another kernel file): {log[-500:]}")
    from gguf import GGMLQuantizationType, quants
    lib = Lib(out_path, builds["quant_isa"])
    bv, bb, halves = _QUANT_BLOCKS[qtype]
    rng = np.random.default_rng(12)
    rows, nb = 20, 3
    raw = rng.integers(0, 256, (rows, nb, bb), dtype=np.uint8)
    for off in halves:   # sane scales (random bytes could be inf / NaN halves)
        raw[:, :, off:off + 2] = rng.uniform(-0.05, 0.05, (rows, nb)).astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    raw = np.ascontiguousarray(raw.reshape(rows, nb * bb))
    deq = quants.dequantize(raw, GGMLQuantizationType(qtype)).astype(np.float32)
    cols = nb * bv
    for toks in ([3], [0, 19, 7, 7]):
        for nth in (1, 2, 3):
            out = _nan_like((len(toks), cols))
            lib.run(nth, tokens=toks, op=OP_EMBED, qtype=qtype, rows=len(toks), cols=cols, scale=0.5,
                    w=raw, w_rows=rows, w_row_bytes=nb * bb, out=out)
            np.testing.assert_array_equal(out, deq[toks] * np.float32(0.5))
