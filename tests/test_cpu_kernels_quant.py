"""Native CPU kernels: exact GGUF dequantization (shaders/cpu/quant.c) and the decode matvec
(shaders/cpu/arch/<isa>/matvec.c with f16_table.c), built with the host C compiler at each ISA level this CPU runs
(portable C, AVX2+FMA+F16C, AVX-512) and checked against gguf.quants / numpy."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq

QT = GGMLQuantizationType
SHIM = Path(__file__).resolve().parent / "cpu_shim" / "quant_shim.c"

TYPES = (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
         QT.Q4_K, QT.Q5_K, QT.Q6_K)
QUANTIZABLE = (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1)   # gguf.quants can quantize these

from cpu_build import ISA_CPU_FLAGS, ISA_FLAGS, SRC, arch_file  # noqa: E402
from cpu_build import host_flags as _cpu_flags  # noqa: E402
# byte offsets of the f16 scale fields of one block (the rest of a random block is any bits)
SCALE_FIELDS = {QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.Q8_0: (0,),
                QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,)}




_LIBS: dict[str, ctypes.CDLL] = {}


@pytest.fixture(scope="module", params=list(ISA_FLAGS))
def lib(request, tmp_path_factory):
    isa = request.param
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler: `cc` is not on PATH")
    missing = ISA_CPU_FLAGS[isa] - _cpu_flags()
    if missing:
        pytest.skip(f"{isa} build not run: this CPU lacks {', '.join(sorted(missing))} (/proc/cpuinfo)")
    if isa not in _LIBS:
        out = tmp_path_factory.mktemp(f"g4cpu_{isa}") / f"g4quant_{isa}.so"
        cmd = [cc, "-O2", "-fPIC", "-shared", "-std=c11", "-Wall", "-Wextra", "-Werror",
               *ISA_FLAGS[isa], f"-I{SRC}", str(SRC / "quant.c"), str(SRC / "f16_table.c"),
               *[str(p) for p in (SRC / "repack.c",) if p.is_file()],   # the q8 path's repack helpers
               str(arch_file(isa, "matvec.c")), str(SHIM),
               "-o", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
        L = ctypes.CDLL(str(out))
        L.g4t_isa.restype = ctypes.c_char_p
        L.g4_block_values.argtypes = L.g4_block_bytes.argtypes = [ctypes.c_int]
        L.g4_dequant_row.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_void_p]
        L.g4_dequant_row.restype = None
        L.g4t_matvec.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                 ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                 ctypes.c_int64]
        assert L.g4t_isa().decode() == isa
        _LIBS[isa] = L
    return _LIBS[isa]


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def random_rows(rng, qtype: QT, rows: int, k: int, scale: float = 0.05) -> np.ndarray:
    """Raw GGUF rows (uint8 [rows, row_bytes]): float types from random floats, quantized types
    as random bytes with finite random f16 scale fields."""
    if qtype == QT.F32:
        return rng.standard_normal((rows, k)).astype(np.float32).view(np.uint8)
    if qtype == QT.F16:
        return rng.standard_normal((rows, k)).astype(np.float16).view(np.uint8)
    if qtype == QT.BF16:
        return np.ascontiguousarray(gq.quantize(rng.standard_normal((rows, k)).astype(np.float32), QT.BF16)).view(np.uint8).reshape(rows, -1)
    bv, bb = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows * (k // bv), bb), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        d = (rng.standard_normal(raw.shape[0]) * scale).astype(np.float16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def reference(raw: np.ndarray, qtype: QT, k: int) -> np.ndarray:
    rows = raw.shape[0]
    if qtype == QT.F32:
        return raw.view(np.float32).reshape(rows, k).copy()
    if qtype == QT.F16:
        return raw.view(np.float16).astype(np.float32).reshape(rows, k)
    return np.asarray(gq.dequantize(raw, qtype), dtype=np.float32).reshape(rows, k)


def dequant(L, raw: np.ndarray, qtype: QT, k: int, k0: int = 0, n: int | None = None) -> np.ndarray:
    n = k - k0 if n is None else n
    out = np.full((raw.shape[0], n), np.nan, np.float32)
    for r in range(raw.shape[0]):
        row = np.ascontiguousarray(raw[r])
        L.g4_dequant_row(int(qtype), _ptr(row), k0, n, _ptr(out[r]))
    return out


def test_block_geometry(lib):
    for t in TYPES:
        bv, bb = GGML_QUANT_SIZES[t]
        assert (lib.g4_block_values(int(t)), lib.g4_block_bytes(int(t))) == (bv, bb), t.name
    assert lib.g4_block_values(10) == 0 and lib.g4_block_bytes(10) == 0   # Q2_K: not supported


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequant_exact(lib, qtype):
    rng = np.random.default_rng(int(qtype) + 1)
    k = 1024
    cases = [random_rows(rng, qtype, 6, k), random_rows(rng, qtype, 2, k, scale=300.0)]
    if qtype in QUANTIZABLE:
        v = (rng.standard_normal((4, k)) * rng.choice([1e-3, 1.0, 50.0], (4, 1))).astype(np.float32)
        cases.append(np.ascontiguousarray(gq.quantize(v, qtype)))
    bv = max(GGML_QUANT_SIZES[qtype][0], 1)
    for raw in cases:
        ref = reference(raw, qtype, k)
        got = dequant(lib, raw, qtype, k)
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=qtype.name)
        # a sub-range [k0, k0 + n) of the row
        k0, n = 2 * max(bv, 32) if bv > 1 else 7, 2 * max(bv, 32)
        if qtype in (QT.Q4_K, QT.Q5_K, QT.Q6_K):
            k0, n = 256, 512
        got = dequant(lib, raw, qtype, k, k0, n)
        np.testing.assert_array_equal(got.view(np.uint32), ref[:, k0:k0 + n].view(np.uint32),
                                      err_msg=f"{qtype.name} k0={k0} n={n}")


def _check_matvec(L, qtype, raw, w, x, o0, o1):
    rows = raw.shape[0]
    y = np.full(rows, np.nan, np.float32)
    rc = L.g4t_matvec(int(qtype), _ptr(raw), rows, raw.shape[1], x.size, _ptr(x), _ptr(y), o0, o1)
    assert rc == 0
    w64, x64 = w[o0:o1].astype(np.float64), x.astype(np.float64)
    ref = w64 @ x64
    tol = 1e-5 * (np.abs(w64) @ np.abs(x64)) + 1e-30
    got = y[o0:o1].astype(np.float64)
    bad = ~(np.abs(got - ref) <= tol)
    assert not bad.any(), (f"{qtype.name} K={x.size} rows [{o0},{o1}): row {o0 + int(np.argmax(bad))} "
                           f"got {got[bad][:3]} want {ref[bad][:3]} tol {tol[bad][:3]}")
    assert np.isnan(y[:o0]).all() and np.isnan(y[o1:]).all(), "matvec wrote outside [o0, o1)"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_matvec(lib, qtype):
    rng = np.random.default_rng(100 + int(qtype))
    ks = [256, 512, 3840]
    if GGML_QUANT_SIZES[qtype][0] == 1:
        ks += [7, 100, 1000]   # float types: any width (vector tails)
    for k in ks:
        for rows in (1, 7, 33):
            raw = random_rows(rng, qtype, rows, k)
            w = reference(raw, qtype, k)
            xs = [rng.standard_normal(k).astype(np.float32),
                  np.zeros(k, np.float32),
                  (rng.standard_normal(k) * 1e4).astype(np.float32)]
            # huge activations, scaled so that no partial sum can overflow float32
            big = float(np.abs(w).sum(axis=1).max()) * 1.0 + 1.0
            xs.append((rng.uniform(-1, 1, k) * min(1e30, 1e36 / big)).astype(np.float32))
            # a non-zero mean stresses the folded-offset / mins paths
            xs.append((rng.standard_normal(k) + 3.0).astype(np.float32))
            for x in xs:
                _check_matvec(lib, qtype, raw, w, x, 0, rows)
            x = xs[0]
            if rows > 1:
                _check_matvec(lib, qtype, raw, w, x, 1, rows)
                _check_matvec(lib, qtype, raw, w, x, rows // 3, rows - rows // 3)
                _check_matvec(lib, qtype, raw, w, x, rows - 1, rows)
                _check_matvec(lib, qtype, raw, w, x, 2, 2)


@pytest.mark.parametrize("qtype", QUANTIZABLE + (QT.F16, QT.BF16), ids=lambda t: t.name)
def test_matvec_quantized_weights(lib, qtype):
    """Blocks made by gguf's own quantizer (realistic codes and scales)."""
    rng = np.random.default_rng(7 + int(qtype))
    k, rows = 3840, 9
    v = rng.standard_normal((rows, k)).astype(np.float32)
    if qtype == QT.F16:
        raw = v.astype(np.float16).view(np.uint8)
    else:
        raw = np.ascontiguousarray(gq.quantize(v, qtype)).view(np.uint8).reshape(rows, -1)
    w = reference(raw, qtype, k)
    _check_matvec(lib, qtype, raw, w, rng.standard_normal(k).astype(np.float32), 0, rows)
