"""shaders/cpu/gemm.c (g4_k_matmul) against numpy, for every weight type, at every ISA level
this host can run (scalar, avx2, avx512), for odd shapes and 1-3 threads.

Two builds per ISA:
  - "real": shaders/cpu/{dispatch,pool,quant,f16_table,gemm}.c + arch/<isa>/{matvec,gemm}.c
    (the pool runs the command; dispatch.c declares the other kernels weak, so ops.c and
    attention.c, not under test here and the slowest to compile, are left out), when those are
    all there (otherwise that case is skipped, naming what is missing);
  - "shim": gemm.c + arch/<isa>/gemm.c + tests/cpu_shim/gemm_shim.c (plain-C stand-ins for the
    chunk counter, the
    dequantizer and matvec), on real pthreads and with every ith called in turn, built with
    G4_GEMM_MATVEC_ROWS=1 so that every rows >= 2 takes the tiled path; it checks the tiling
    and the work split independently of the other kernel files.
Reference: weights from gguf.quants (quantize, or random bytes with sane scales for the K-quants,
which gguf cannot quantize), dequantized by gguf, product in float64; tolerance 1e-5 of the
|a|.|w| scale of each output.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T, quants  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "tests" / "cpu_shim" / "gemm_shim.c"
REAL_PARTS = ("dispatch.c", "pool.c", "quant.c", "f16_table.c", "repack.c")   # + gemm.c; dispatch.c links ops.c weakly
REAL_ARCH_PARTS = ("matvec.c",)                                   # + arch/<isa>/gemm.c

from cpu_build import G4Cmd, G4Exec, ISA_CPU_FLAGS, ISA_FLAGS, SRC as CPU, arch_file, host_flags  # noqa: E402
BASE_FLAGS = ["-O2", "-fPIC", "-shared", "-std=c11", "-pthread"]

TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]
ROWS = (1, 2, 3, 5, 13, 64, 100)
OUTS = (1, 7, 33, 100)
THREADS = (1, 2, 3)
# Through the real pool, a command on 2-3 threads costs a few ms on a busy 2-core host (the
# workers wait for a time slice), so those thread counts run on a subset of the grid there.
POOL_SUBSET = dict(rows=(1, 3, 13, 100), outs=(7, 100), ks=(256, 1280, 13, 96))
OP_MATMUL = 2
_p = ctypes.c_void_p
_host_flags = host_flags


def _isa_skip(isa: str) -> str | None:
    """Why `isa` cannot run here, or None."""
    if isa == "scalar":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return f"{isa}: not an x86 host ({platform.machine()})"
    flags = _host_flags()
    if flags is None:
        return f"{isa}: no /proc/cpuinfo to read the CPU's features from"
    missing = sorted(ISA_CPU_FLAGS[isa] - flags)
    return f"{isa}: this CPU lacks {', '.join(missing)}" if missing else None


def _real_missing(isa: str) -> list[str]:
    paths = [CPU / p for p in REAL_PARTS] + [arch_file(isa, p) for p in REAL_ARCH_PARTS]
    return [str(p.relative_to(CPU)) for p in paths if not p.is_file()]


def _gemm_sources(isa: str) -> list[str]:
    return [str(CPU / "gemm.c"), str(arch_file(isa, "gemm.c"))]


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    """Build every (mode, isa) library this host can run, in parallel; {(mode, isa): path | skip reason}."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    if not (CPU / "gemm.c").is_file():
        pytest.skip("shaders/cpu/gemm.c missing")
    out = tmp_path_factory.mktemp("g4gemm")
    jobs, result = {}, {}
    for isa in ISA_FLAGS:
        why = _isa_skip(isa)
        missing = _real_missing(isa)
        for mode in ("real", "shim"):
            if why:
                result[(mode, isa)] = why
                continue
            if mode == "real" and missing:
                result[(mode, isa)] = f"shaders/cpu lacks {', '.join(missing)}"
                continue
            if mode == "real":
                srcs = [str(CPU / p) for p in REAL_PARTS] + [str(arch_file(isa, p)) for p in REAL_ARCH_PARTS]
                srcs, extra = srcs + _gemm_sources(isa), []
            else:   # every rows >= 2 through the tiled path (the real build keeps its thresholds)
                srcs, extra = [*_gemm_sources(isa), str(SHIM)], ["-DG4_GEMM_MATVEC_ROWS=1"]
            lib = out / f"libg4_{mode}_{isa}.so"
            cmd = ["gcc", *BASE_FLAGS, *ISA_FLAGS[isa], *extra, f"-I{CPU}", *srcs, "-o", str(lib), "-lm"]
            jobs[(mode, isa)] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), lib)
    for key, (proc, lib) in jobs.items():
        log = proc.communicate()[0].decode(errors="replace")
        if proc.returncode != 0:
            result[key] = RuntimeError(f"gcc failed for {key}:\n{log}")
        else:
            result[key] = lib
    return result


def _load(libs, mode: str, isa: str):
    got = libs[(mode, isa)]
    if isinstance(got, Exception):
        raise got
    if isinstance(got, str):
        pytest.skip(got)
    lib = ctypes.CDLL(str(got))
    if mode == "real":
        lib.g4_isa.restype = ctypes.c_char_p
        assert lib.g4_isa().decode() == isa
        lib.g4_sizeof_cmd.restype = ctypes.c_size_t
        lib.g4_sizeof_exec.restype = ctypes.c_size_t
        assert lib.g4_sizeof_cmd() == ctypes.sizeof(G4Cmd)
        assert lib.g4_sizeof_exec() == ctypes.sizeof(G4Exec)
        lib.g4_pool_create.argtypes = [ctypes.c_int]
        lib.g4_pool_create.restype = _p
        lib.g4_pool_free.argtypes = [_p]
        lib.g4_run.argtypes = [_p, ctypes.POINTER(G4Cmd), ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(G4Exec)]
        lib.g4_run.restype = ctypes.c_int
        lib.g4_scratch_bytes.argtypes = [ctypes.POINTER(G4Cmd), ctypes.c_int]
        lib.g4_scratch_bytes.restype = ctypes.c_size_t
        lib.g4_shared_bytes.argtypes = [ctypes.POINTER(G4Cmd), ctypes.c_int]
        lib.g4_shared_bytes.restype = ctypes.c_size_t
    else:
        lib.gemm_shim_isa.restype = ctypes.c_char_p
        assert lib.gemm_shim_isa().decode() == isa
        lib.gemm_shim_run.argtypes = [ctypes.POINTER(G4Cmd), ctypes.c_int, ctypes.c_int]
        lib.gemm_shim_run.restype = ctypes.c_int
    return lib


def _block(qtype) -> tuple[int, int]:
    return gguf.GGML_QUANT_SIZES[qtype]


def _ks(qtype) -> tuple[int, ...]:
    bs = _block(qtype)[0]
    extra = (13,) if bs == 1 else (96,) if bs == 32 else ()
    return (256, 768, 1280) + extra   # 1280: several K-blocks, the last one partial


@functools.lru_cache(maxsize=None)
def _weights(qtype, n_out: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw GGUF rows [n_out, row_bytes] uint8, their exact float32 values [n_out, k])."""
    rng = np.random.default_rng(1000 * int(qtype) + 7 * n_out + k)
    bs, bb = _block(qtype)
    if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        raw = rng.integers(0, 256, size=(n_out, k // bs, bb), dtype=np.uint8)
        d = rng.uniform(1e-3, 1e-2, size=(n_out, k // bs)).astype(np.float16).view(np.uint8).reshape(n_out, k // bs, 2)
        if qtype == T.Q6_K:
            raw[..., 208:210] = d
        else:
            dmin = rng.uniform(1e-3, 1e-2, size=(n_out, k // bs)).astype(np.float16)
            raw[..., 0:2] = d
            raw[..., 2:4] = dmin.view(np.uint8).reshape(n_out, k // bs, 2)
        raw = raw.reshape(n_out, -1)
    else:
        x = rng.standard_normal((n_out, k)).astype(np.float32)
        raw = np.ascontiguousarray(quants.quantize(x, qtype))
        if qtype == T.F32 or qtype == T.F16:
            raw = raw.view(np.uint8).reshape(n_out, -1)
    w = quants.dequantize(raw, qtype).astype(np.float32).reshape(n_out, k)
    assert np.isfinite(w).all()
    return np.ascontiguousarray(raw.reshape(n_out, -1)), w


@functools.lru_cache(maxsize=None)
def _case(qtype, n_out: int, k: int):
    raw, w = _weights(qtype, n_out, k)
    rng = np.random.default_rng(k + 3)
    a = rng.standard_normal((max(ROWS), k)).astype(np.float32)
    ref = a.astype(np.float64) @ w.astype(np.float64).T
    scale = np.abs(a).astype(np.float64) @ np.abs(w).astype(np.float64).T
    return raw, a, ref, scale


def _cmd(qtype, rows, n_out, k, raw, a, out) -> G4Cmd:
    c = G4Cmd()
    c.op = OP_MATMUL
    c.qtype = int(qtype)
    c.rows, c.cols, c.in_cols = rows, n_out, k
    c.w_rows, c.w_row_bytes = n_out, raw.shape[1]
    c.w = raw.ctypes.data
    c.a = a.ctypes.data
    c.out = out.ctypes.data
    return c


def _check(out, rows, n_out, ref, scale, what):
    got = out[: rows * n_out].reshape(rows, n_out)
    assert np.isnan(out[rows * n_out:]).all(), f"{what}: wrote past the end of out"
    assert np.isfinite(got).all(), f"{what}: outputs left unwritten or not finite"
    err = np.abs(got - ref[:rows]) / (scale[:rows] + 1e-30)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= 1e-5, (f"{what}: rel err {err.max():.3g} at (row, out) {worst}: "
                               f"got {got[worst]}, want {ref[worst]}")


def _run_all(libs, mode, isa, qtype):
    lib = _load(libs, mode, isa)
    for nth in THREADS:
        # one pool at a time: an idle pool's workers spin for a while after each job
        pool = lib.g4_pool_create(nth) if mode == "real" else None
        try:
            subset = mode == "real" and nth > 1
            for k in _ks(qtype):
                if subset and k not in POOL_SUBSET["ks"]:
                    continue
                for n_out in POOL_SUBSET["outs"] if subset else OUTS:
                    raw, a_all, ref, scale = _case(qtype, n_out, k)
                    for rows in POOL_SUBSET["rows"] if subset else ROWS:
                        a = np.ascontiguousarray(a_all[:rows])
                        runs = [("pool", None)] if mode == "real" else [("threads", 1), ("in turn", 0)]
                        for how, threaded in runs:
                            out = np.full(rows * n_out + 37, np.nan, dtype=np.float32)
                            c = _cmd(qtype, rows, n_out, k, raw, a, out)
                            what = f"{mode}/{isa} {qtype.name} rows={rows} out={n_out} K={k} nth={nth} ({how})"
                            if mode == "real":
                                rc = _run_real(lib, pool, c, rows, nth)
                            else:
                                rc = lib.gemm_shim_run(ctypes.byref(c), nth, threaded)
                            assert rc == 0, f"{what}: run returned {rc}"
                            _check(out, rows, n_out, ref, scale, what)
        finally:
            if pool:
                lib.g4_pool_free(pool)


def _run_real(lib, pool, c, rows, nth) -> int:
    ws_bytes = (lib.g4_scratch_bytes(ctypes.byref(c), nth) + 63) // 64 * 64
    sh_bytes = (lib.g4_shared_bytes(ctypes.byref(c), nth) + 63) // 64 * 64
    ws = np.zeros(ws_bytes * nth + 128, dtype=np.uint8)
    sh = np.zeros(sh_bytes + 128, dtype=np.uint8)
    ex = G4Exec()
    ex.n_tokens = rows
    ex.ws = (ws.ctypes.data + 63) // 64 * 64
    ex.ws_bytes = ws_bytes
    ex.shared = (sh.ctypes.data + 63) // 64 * 64
    ex.shared_bytes = sh_bytes
    return lib.g4_run(pool, ctypes.byref(c), 0, 1, ctypes.byref(ex))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("isa", list(ISA_FLAGS))
@pytest.mark.parametrize("mode", ["real", "shim"])
def test_matmul(libs, mode, isa, qtype):
    _run_all(libs, mode, isa, qtype)
