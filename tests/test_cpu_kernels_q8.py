"""The native CPU backend's quantized-activation matvec path "q8" (shaders/cpu/q8.h), against the
numpy model in q8_model.py: the activation quantization bit for bit (g4_matvec_prepare's bytes),
the dot within float32 rounding of the float64 model, row-exact multi-row kernels, VNNI and
non-VNNI builds in agreement, and the backend's thread counts and batch paths (dense and MoE)
giving every row its one-row bits. Builds: the portable C, AVX2 and AVX-512, each x86 one with and
without its VNNI flag (compiler.X86_OPTIONAL) where this CPU has it. $G4RT_Q8_TEST_CFLAGS adds
compiler flags to the kernel builds (the sanitizer run at the end)."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

import q8_model as M
from cpu_build import ISA_CPU_FLAGS, ISA_FLAGS, SRC, arch_file
from cpu_build import host_flags as _cpu_flags
from g4rt.backends.cpu.compiler import X86_OPTIONAL

SHIM = SRC.parents[1] / "tests" / "cpu_shim" / "quant_shim.c"
ACT_EXACT, ACT_Q8, ACT_I16, ACT_REPACKED = 0, 1, 2, 4
F32 = 0
#: the scalar half-precision fields of each block (the rest of a random block is any bits)
SCALE_FIELDS = {M.Q4_0: (0,), M.Q4_1: (0, 2), M.Q5_0: (0,), M.Q5_1: (0, 2), M.Q8_0: (0,),
                M.Q4_K: (0, 2), M.Q5_K: (0, 2), M.Q6_K: (208,)}
#: the dot's bound: |C - model| <= REL * (the sum of the magnitudes of the terms the kernels add,
#: q8_model.dot). REL is about 34 roundings of 2^-24, the first-order error of the float32 sums
#: here (K <= 2816: at most 22 block terms per partial sum, a few scale products and the final
#: reductions); the largest ratio these inputs give is about 1.5e-7.
REL = 2e-6
TINY = 1e-37                                     # absolute slack for underflowing products
TYPE_IDS = [M.NAMES[t] for t in M.Q8_TYPES]


# ---- the builds -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Build:
    name: str            # e.g. "avx512+vnni"
    isa: str             # cpu_build.ISA_FLAGS key
    flags: tuple         # compiler flags
    needs: frozenset     # /proc/cpuinfo flags
    dot: str             # what g4_q8_dot must say
    vnni: bool


def _builds() -> list[Build]:
    out = []
    for isa, flags in ISA_FLAGS.items():
        base = "scalar" if isa == "scalar" else "maddubs"
        out.append(Build(isa, isa, tuple(flags), frozenset(ISA_CPU_FLAGS[isa]), base, False))
        for cpu_flag, flag in X86_OPTIONAL.get(isa, []):
            dot = "vnni" if flag == "-mavx512vnni" else "avxvnni"
            out.append(Build(f"{isa}+{dot}", isa, (*flags, flag), frozenset(ISA_CPU_FLAGS[isa] | {cpu_flag}),
                             dot, True))
    return out


BUILDS = _builds()
#: the shared kernel files the matvec needs (repack.c: the q8 path's repacked-weight helpers)
KERNEL_FILES = [p for p in (SRC / "quant.c", SRC / "f16_table.c", SRC / "repack.c") if p.is_file()]
_LIBS: dict[str, object] = {}


def _compile_all(tmp) -> None:
    """Every build this CPU runs, compiled in parallel once: name -> CDLL, or the failure text."""
    cc = shutil.which(os.environ.get("G4RT_CC") or "cc")
    extra = os.environ.get("G4RT_Q8_TEST_CFLAGS", "").split()
    procs = {}
    for b in BUILDS:
        if b.needs - _cpu_flags() or cc is None:
            continue
        out = tmp / f"g4q8_{b.name.replace('+', '_')}.so"
        cmd = [cc, "-O2", "-fPIC", "-shared", "-std=c11", "-Wall", "-Wextra", "-Werror", *b.flags, *extra,
               f"-I{SRC}", *map(str, KERNEL_FILES), str(arch_file(b.isa, "matvec.c")), str(SHIM),
               "-o", str(out), "-lm"]
        procs[b.name] = (out, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for name, (out, cmd, p) in procs.items():
        log, _ = p.communicate()
        if p.returncode != 0:
            _LIBS[name] = f"{' '.join(cmd)}\n{log}"
            continue
        L = ctypes.CDLL(str(out))
        L.g4t_isa.restype = L.g4_q8_dot.restype = ctypes.c_char_p
        L.g4_q8_row_bytes.argtypes = [ctypes.c_int64]
        L.g4_q8_row_bytes.restype = ctypes.c_size_t
        L.g4t_scratch.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64]
        L.g4t_scratch.restype = ctypes.c_int64
        L.g4t_prepare.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_int64]
        L.g4t_prepare.restype = ctypes.c_int64
        L.g4t_matvec_act.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        L.g4t_q8_layout.argtypes = [ctypes.c_int64, ctypes.c_void_p]
        L.g4t_q8_layout.restype = ctypes.c_int64
        L.g4t_matvec_rows.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64]
        _LIBS[name] = L


def _lib(name: str, tmp_path_factory):
    b = next(b for b in BUILDS if b.name == name)
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: `cc` is not on PATH")
    missing = b.needs - _cpu_flags()
    if missing:
        pytest.skip(f"{name} build not run: this CPU lacks {', '.join(sorted(missing))} (/proc/cpuinfo)")
    if not _LIBS:
        _compile_all(tmp_path_factory.mktemp("g4q8"))
    L = _LIBS[name]
    if isinstance(L, str):
        pytest.fail(f"the {name} build failed:\n{L[-3000:]}", pytrace=False)
    assert L.g4t_isa().decode() == b.isa
    return b, L


@pytest.fixture(scope="module", params=[b.name for b in BUILDS])
def build(request, tmp_path_factory):
    return _lib(request.param, tmp_path_factory)


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


# ---- calls ------------------------------------------------------------------------------------------
def layout(L, K: int) -> dict:
    """part -> byte offset in a quantized row of K values (q8_row_at), and "bytes": the row's size"""
    off = np.zeros(len(M.PARTS), np.int64)
    n = L.g4t_q8_layout(K, _ptr(off))
    assert n > 0
    return {**dict(zip(M.PARTS, map(int, off))), "bytes": int(n)}


def c_row(L, qtype: int, x: np.ndarray, act: int = ACT_Q8) -> dict:
    """The C's quantized row of x, split into its parts."""
    return M.split_row(c_prepare(L, qtype, x, act), x.size, layout(L, x.size))


def c_prepare(L, qtype: int, x: np.ndarray, act: int = ACT_Q8) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros(L.g4t_scratch(qtype, act, x.size) + 64, np.uint8)
    n = L.g4t_prepare(qtype, act, x.size, _ptr(x), _ptr(out), out.size)
    assert n >= 0
    return out[:n]


def c_matvec(L, qtype: int, raw: np.ndarray, x: np.ndarray, o0: int = 0, o1: int | None = None,
             act: int = ACT_Q8) -> np.ndarray:
    rows = raw.shape[0]
    o1 = rows if o1 is None else o1
    x = np.ascontiguousarray(x, np.float32)
    y = np.full(rows, np.nan, np.float32)
    assert L.g4t_matvec_act(qtype, act, _ptr(raw), rows, raw.shape[1], x.size, _ptr(x), _ptr(y), o0, o1) == 0
    return y


def c_matvec_rows(L, qtype: int, raw: np.ndarray, X: np.ndarray, o0: int = 0, o1: int | None = None,
                  act: int = ACT_Q8) -> np.ndarray:
    rows = raw.shape[0]
    o1 = rows if o1 is None else o1
    X = np.ascontiguousarray(X, np.float32)
    Y = np.full((X.shape[0], rows), np.nan, np.float32)
    assert L.g4t_matvec_rows(qtype, act, _ptr(raw), rows, raw.shape[1], X.shape[1], X.shape[0], _ptr(X),
                             _ptr(Y), o0, o1) == 0
    return Y


# ---- inputs -------------------------------------------------------------------------------------------
def random_rows(rng, qtype: int, rows: int, k: int, scale: float = 0.05) -> np.ndarray:
    """Raw GGUF rows (uint8 [rows, row_bytes]): random bytes, finite random f16 scale fields."""
    bv, bb = M.BLOCK[qtype]
    raw = rng.integers(0, 256, (rows * (k // bv), bb), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        d = (rng.standard_normal(raw.shape[0]) * scale).astype(np.float16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
    return np.ascontiguousarray(raw.reshape(rows, -1))


def widths(qtype: int) -> list[int]:
    return [256, 512, 2816] if qtype in M.K_TYPES else [96, 256, 512, 2816]


def activations(rng, K: int) -> dict[str, np.ndarray]:
    """Named float32 rows of K values: plain, shifted (the offset / mins terms), small and large
    scales, a zero first block (amax 0), mixed block scales."""
    g = rng.standard_normal(K)
    zero = g.copy()
    zero[:256 if K >= 512 else 32] = 0.0
    mixed = g * np.repeat(10.0 ** rng.integers(-4, 4, K // 32), 32)
    return {k: v.astype(np.float32) for k, v in {
        "normal": g, "shifted": g + 3.0, "small": g * 1e-3, "large": g * 1e3, "zero_block": zero,
        "mixed_scales": mixed}.items()}


def crafted(K: int) -> dict[str, np.ndarray]:
    """Rows for the quantizer alone: exact rounding ties, f16-subnormal and f16-overflowing block
    scales, signed zeros, largest magnitudes tied between signs, non-finite blocks."""
    rng = np.random.default_rng(K)
    out = {}
    t = rng.integers(-126, 127, K).astype(np.float32) + np.float32(0.5)       # x * 127 / 127: ties
    t[::32] = 127.0                                                          # amax 127: id = 1 exactly
    t[128::256] = -127.0                                                     # a K block's max -127: iscale 1
    t[::256] = -127.0
    out["ties"] = t
    out["f16_subnormal_d"] = (rng.standard_normal(K) * 1e-4).astype(np.float32)
    out["tiny_d_flushed"] = (rng.standard_normal(K) * 1e-7).astype(np.float32)
    out["d_overflows_f16"] = (rng.standard_normal(K) * 1e7).astype(np.float32)
    z = rng.standard_normal(K).astype(np.float32)
    z[:32] = -0.0
    z[32:64:2] = -0.0
    out["signed_zeros"] = z
    tie = rng.uniform(-1, 1, K).astype(np.float32)
    tie[5], tie[9] = -3.0, 3.0                  # |max| tied: the first (-3) is the Q8_K max
    if K >= 512:
        tie[256 + 7], tie[256 + 200] = 2.0, -2.0
    out["max_tied"] = tie
    bad = rng.standard_normal(K).astype(np.float32)
    bad[3] = np.inf
    bad[K - 1] = -np.inf
    if K >= 512:
        bad[300] = np.nan
    out["non_finite"] = bad
    return out


# ---- 1. the row layout and the dot flavour --------------------------------------------------------
def test_dot_flavour_and_row_layout(build):
    """g4_q8_dot names the build's integer dot; a quantized row holds its five parts 64-byte
    aligned and disjoint within g4_q8_row_bytes(K), which is the q8 scratch of every type."""
    b, L = build
    assert L.g4_q8_dot().decode() == b.dot
    for K in (32, 96, 256, 512, 2816, 3840):
        lay, size = layout(L, K), M.part_sizes(K)
        assert lay["bytes"] == L.g4_q8_row_bytes(K)
        spans = sorted((lay[p], lay[p] + size[p], p) for p in M.PARTS)
        for (a0, a1, pa), (b0, _, pb) in zip(spans, spans[1:]):
            assert a1 <= b0, f"K={K}: {pa} [{a0}, {a1}) overlaps {pb} at {b0}"
        assert spans[-1][1] <= lay["bytes"], K
        assert all(lay[p] % 64 == 0 for p in M.PARTS), (K, lay)
        for t in M.Q8_TYPES:
            if K % M.BLOCK[t][0] == 0:
                assert L.g4t_scratch(t, ACT_Q8, K) == lay["bytes"], (M.NAMES[t], K)
    # float weights ignore act: the same scratch, the same bits
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((7, 200)).astype(np.float32).view(np.uint8)
    x = rng.standard_normal(200).astype(np.float32)
    assert L.g4t_scratch(F32, ACT_Q8, 200) == L.g4t_scratch(F32, ACT_EXACT, 200)
    np.testing.assert_array_equal(c_matvec(L, F32, raw, x, act=ACT_Q8).view(np.uint32),
                                  c_matvec(L, F32, raw, x, act=ACT_EXACT).view(np.uint32))


# ---- 1. the activation quantization, bit for bit ---------------------------------------------------
def _bits_equal(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per element: the same float bits, or both NaN."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))


def check_quantized(got: dict, x: np.ndarray, qtype: int, what: str) -> None:
    """got: the C's quantized row of x (c_row) against the model's, bit for bit."""
    want = M.quantize(x, qtype)
    ok = ~want["bad"]                                  # q of a non-finite block is unspecified
    okv = np.repeat(ok, 32)
    bad_q = np.flatnonzero((got["q"] != want["q"]) & okv)
    assert bad_q.size == 0, (f"{what}: q differs at {bad_q[:8]}: x {x[bad_q[:4]]} got {got['q'][bad_q[:4]]} "
                             f"want {want['q'][bad_q[:4]]}")
    for part in ("d", "sd"):
        eq = _bits_equal(got[part], want[part])
        assert eq.all(), (f"{what}: {part} differs in blocks {np.flatnonzero(~eq)[:8]}: "
                          f"got {got[part][~eq][:4]} want {want[part][~eq][:4]}")
    assert np.isnan(got["d"][want["bad"]]).all(), f"{what}: a non-finite block's d is not NaN"
    eq = (got["bias"] == want["bias"]) | ~ok
    assert eq.all(), f"{what}: bias differs in blocks {np.flatnonzero(~eq)[:8]}"
    eq = _bits_equal(got["s16"], want["s16"]) | ~np.repeat(ok, 2)
    assert eq.all(), f"{what}: s16 differs at {np.flatnonzero(~eq)[:8]}"


@pytest.mark.parametrize("qtype", M.Q8_TYPES, ids=TYPE_IDS)
def test_quantization_is_bit_exact(build, qtype):
    b, L = build
    rng = np.random.default_rng(10 + qtype)
    n = 0
    for K in widths(qtype):
        for name, x in {**activations(rng, K), **crafted(K)}.items():
            check_quantized(c_row(L, qtype, x), x, qtype, f"{b.name} {M.NAMES[qtype]} K={K} {name}")
            n += 1
    assert n >= 39


# ---- 2. the dot ------------------------------------------------------------------------------------
def check_dot(y: np.ndarray, raw: np.ndarray, qtype: int, x: np.ndarray, o0: int, o1: int, what: str,
              xq: dict | None = None) -> None:
    want, bound = M.dot(raw[o0:o1], qtype, x.size, M.quantize(x, qtype) if xq is None else xq)
    got = y[o0:o1].astype(np.float64)
    tol = REL * bound + TINY
    bad = ~(np.abs(got - want) <= tol)
    assert not bad.any(), (f"{what} rows [{o0},{o1}): row {o0 + int(np.argmax(bad))}: got {got[bad][:3]} "
                           f"want {want[bad][:3]} tol {tol[bad][:3]}")
    assert np.isnan(y[:o0]).all() and np.isnan(y[o1:]).all(), f"{what}: wrote outside [o0, o1)"


@pytest.mark.parametrize("qtype", M.Q8_TYPES, ids=TYPE_IDS)
def test_dot_matches_the_model(build, qtype):
    b, L = build
    rng = np.random.default_rng(200 + qtype)
    for K in widths(qtype):
        rows = 37
        raw = random_rows(rng, qtype, rows, K)
        for name, x in activations(rng, K).items():
            what = f"{b.name} {M.NAMES[qtype]} K={K} {name}"
            check_dot(c_matvec(L, qtype, raw, x), raw, qtype, x, 0, rows, what)
        x = activations(rng, K)["shifted"]
        for o0, o1 in ((1, rows), (12, 25), (rows - 1, rows), (5, 5)):
            check_dot(c_matvec(L, qtype, raw, x, o0, o1), raw, qtype, x, o0, o1, f"{b.name} {M.NAMES[qtype]} K={K}")
        # large weight scales, one row
        raw1 = random_rows(rng, qtype, 1, K, scale=300.0)
        check_dot(c_matvec(L, qtype, raw1, x), raw1, qtype, x, 0, 1, f"{b.name} {M.NAMES[qtype]} K={K} big w")
        # a block holding inf: every result NaN (the exact path's answer too)
        xi = x.copy()
        xi[K // 2 + 3] = np.inf
        y = c_matvec(L, qtype, raw, xi, 2, rows)
        assert np.isnan(y).all(), f"{b.name} {M.NAMES[qtype]} K={K}: inf in x gave {y[~np.isnan(y)][:4]}"


def test_decoder_matches_gguf():
    """The model's weight decoder (codes, scales, mins) against gguf.quants' dequantization."""
    from gguf import GGMLQuantizationType
    from gguf import quants as gq
    rng = np.random.default_rng(5)
    for t in M.Q8_TYPES:
        raw = random_rows(rng, t, 5, 512)
        ref = np.asarray(gq.dequantize(raw, GGMLQuantizationType(t)), np.float64).reshape(5, 512)
        np.testing.assert_allclose(M.dequantize(raw, t, 512), ref, rtol=1e-6, atol=1e-9, err_msg=M.NAMES[t])


# ---- 3. row-exact multi-row kernels; VNNI and non-VNNI builds agree -----------------------------
def _row_inputs(rng, K: int, R: int) -> np.ndarray:
    X = rng.standard_normal((R, K)).astype(np.float32)
    X[1::3] += 2.0
    X[2::5, :32] = 0.0
    X[3::7] *= 1e-3
    if R > 8:
        X[8, 40] = np.inf                       # a NaN row among finite ones
    return X


@pytest.mark.parametrize("qtype", M.Q8_TYPES, ids=TYPE_IDS)
def test_rows_equal_one_row_matvecs(build, qtype):
    b, L = build
    rng = np.random.default_rng(300 + qtype)
    K, rows = 768, 37
    raw = random_rows(rng, qtype, rows, K)
    X = _row_inputs(rng, K, 16)
    one = np.stack([c_matvec(L, qtype, raw, X[r]) for r in range(16)])
    for R in range(1, 17):
        Y = c_matvec_rows(L, qtype, raw, X[:R])
        np.testing.assert_array_equal(Y.view(np.uint32), one[:R].view(np.uint32),
                                      err_msg=f"{b.name} {M.NAMES[qtype]}: {R} rows")
    Y = c_matvec_rows(L, qtype, raw, X[:11], 3, 29)
    np.testing.assert_array_equal(Y[:, 3:29].view(np.uint32), one[:11, 3:29].view(np.uint32))
    assert np.isnan(Y[:, :3]).all() and np.isnan(Y[:, 29:]).all()
    assert np.isnan(one[8]).all() and np.isfinite(np.delete(one, 8, axis=0)).all()


def _vnni_pairs():
    out = []
    for b in BUILDS:
        if b.vnni:
            plain = next(p for p in BUILDS if p.isa == b.isa and not p.vnni)
            out.append(pytest.param(plain.name, b.name, id=b.name))
    return out


@pytest.mark.parametrize("qtype", M.Q8_TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("plain,vnni", _vnni_pairs())
def test_vnni_and_plain_builds_agree_bitwise(plain, vnni, qtype, tmp_path_factory):
    """The same integer sums in the same lanes and float order: the two builds of one ISA give
    the same bits, and the same quantized row (Q8_0 takes the sign trick on both)."""
    (_, La), (_, Lb) = _lib(plain, tmp_path_factory), _lib(vnni, tmp_path_factory)
    rng = np.random.default_rng(400 + qtype)
    for K in widths(qtype):
        raw = random_rows(rng, qtype, 37, K)
        for name, x in activations(rng, K).items():
            pa, pb = c_row(La, qtype, x), c_row(Lb, qtype, x)
            for part in ("q", "d", "sd", "s16", "bias"):
                np.testing.assert_array_equal(pa[part].view(np.uint8), pb[part].view(np.uint8), err_msg=part)
            ya, yb = c_matvec(La, qtype, raw, x), c_matvec(Lb, qtype, raw, x)
            diff = np.flatnonzero(ya.view(np.uint32) != yb.view(np.uint32))
            assert diff.size == 0, (f"{M.NAMES[qtype]} K={K} {name}: {plain} and {vnni} differ in "
                                    f"{diff.size}/37 rows, e.g. row {diff[0]}: {ya[diff[0]]!r} vs {yb[diff[0]]!r}")


# ---- 5. the bit-exact check has teeth ------------------------------------------------------------
@pytest.mark.parametrize("qtype", [M.Q8_0, M.Q4_K], ids=["Q8_0", "Q4_K"])
def test_a_wrong_rounding_model_is_rejected(build, qtype):
    """Exact ties (x * id = n + 1/2): the kernels round to even, so a model rounding half away
    from zero disagrees there, and the comparison check_quantized makes catches it."""
    b, L = build
    K = 256
    x = crafted(K)["ties"]
    row = c_row(L, qtype, x)
    check_quantized(row, x, qtype, "ties")                           # the right model: equal
    got, wrong = row["q"], M.quantize(x, qtype, half_away=True)["q"]
    odd_floor = (np.floor(np.abs(x)) % 2 == 0) & (np.abs(x) != 127)          # n even: n + 1/2 -> n
    assert odd_floor.sum() > 20
    assert (got[odd_floor] != wrong[odd_floor]).all()
    np.testing.assert_array_equal(np.abs(got[odd_floor]), np.floor(np.abs(x[odd_floor])).astype(np.int8))


def test_a_model_without_the_f16_scale_rounding_is_rejected(build):
    """The dot's bound sees the f16 rounding of d: every block's amax / 127 = 1 + 2^-11 (an f16
    tie, stored as 1.0) and all terms positive (Q4_1, positive scales and x), so a model that left
    d in float32 misses every C result, while the right model meets them all."""
    b, L = build
    rng = np.random.default_rng(9)
    K, rows = 512, 37
    raw = random_rows(rng, M.Q4_1, rows, K)
    for off in (0, 2):                                    # d and m positive
        blk = raw.reshape(-1, 20)
        blk[:, off + 1] &= 0x7f
    x = rng.uniform(0.5, 100.0, K).astype(np.float32)
    x[::32] = np.float32(127 * (1 + 2.0 ** -11))          # each block's amax
    xq = M.quantize(x, M.Q4_1)
    assert (xq["d"] == 1.0).all()
    y = c_matvec(L, M.Q4_1, raw, x).astype(np.float64)
    right, bound = M.dot(raw, M.Q4_1, K, xq)
    assert (np.abs(y - right) <= REL * bound).all()
    xq["d"] = np.full(K // 32, 1 + 2.0 ** -11, np.float32)
    wrong, _ = M.dot(raw, M.Q4_1, K, xq)
    assert (np.abs(y - wrong) > 10 * REL * bound).all()


def test_tiny_blocks_contribute_zero(build):
    """A block whose amax is below 127 / FLT_MAX (id = 127 / amax overflows to inf): d rounds to
    0 (f16; Q8_K: 1 / -inf), so the block adds nothing, whatever its q bytes (not modelled: the
    x86 quantizer writes -128 there, the portable one converts inf to int8)."""
    b, L = build
    rng = np.random.default_rng(11)
    for qtype in (M.Q4_0, M.Q4_1, M.Q8_0, M.Q4_K, M.Q6_K):
        K = 512
        x = rng.standard_normal(K).astype(np.float32)
        x[:256] = rng.uniform(-1, 1, 256).astype(np.float32) * np.float32(2e-38)
        x[10] = 0.0
        row = c_row(L, qtype, x)
        assert (row["d"][:8] == 0).all() and (row["sd"][:8] == 0).all(), M.NAMES[qtype]
        raw = random_rows(rng, qtype, 9, K)
        xq = M.quantize(x, qtype)
        np.testing.assert_array_equal(xq["d"][:8], 0)
        xq["q"][:256] = 0
        check_dot(c_matvec(L, qtype, raw, x), raw, qtype, x, 0, 9, f"{b.name} {M.NAMES[qtype]} tiny", xq=xq)


# ---- 4. the backend: thread counts, the batch paths, MoE -----------------------------------------
def _have_cc() -> bool:
    return (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")) is not None


NEED_CC = pytest.mark.skipif(not _have_cc(), reason="no C compiler: the native CPU backend cannot be built")
BATCHES = (1, 5, 16, 17, 40)
THREADS = (1, 2, 3, 4)


def _graph_runs(src, graphs: dict, threads: tuple, run, precision: str = "q8") -> dict:
    """{(t, key): output} for each thread count and graph, on one CpuBackend(precision=...)
    per thread count; run(compiled, key) -> the output array."""
    from g4rt.backends.cpu import CpuBackend
    out = {}
    for t in threads:
        be = CpuBackend(threads=t, precision=precision)
        try:
            be.load_weights(src.specs, src)
            be.allocate_caches({})
            for key, g in graphs.items():
                out[t, key] = np.array(run(be.compile(g), key), copy=True)
        finally:
            be.close()
    return out


def _table_graph(src, n: int, ops_, out: str, buffers: dict):
    from g4rt import ops
    return ops.Graph(n_tokens=n, buffers={"tokens": ops.Buffer("tokens", n, 1, "i32"), **buffers(n)},
                     caches={}, weights=dict(src.specs), ops=list(ops_), output=out,
                     labels=[f"op{i}.{op.kind}" for i, op in enumerate(ops_)])


@NEED_CC
@pytest.mark.parametrize("precision", ["q8", "i16"])
def test_backend_threads_and_batches_are_row_exact(precision):
    """A MatMul of 1, 5, 16, 17 and 40 rows (17 and up: the shared-scratch batch path) on 1..4
    threads, every q8 weight type: the same bits at every thread count, each row the bits of its
    one-row matmul, and within the model's bound (so the q8 path ran)."""
    from g4rt import ops
    from op_cases import Src
    rng = np.random.default_rng(77)
    K, N = 512, 77
    X = _row_inputs(rng, K, 40)
    X[8] = rng.standard_normal(K)            # finite rows only here
    src = Src()
    src.add("in.x", X)
    raws = {t: random_rows(rng, t, N, K) for t in M.Q8_TYPES}
    graphs = {}
    for t in M.Q8_TYPES:
        src.add_raw(f"w{t}", t, raws[t], K)
        for n in BATCHES:
            graphs[t, n] = _table_graph(src, n, [ops.EmbedLookup("x", "in.x", 1.0), ops.MatMul("y", "x", f"w{t}")],
                                        "y", lambda n: {"x": ops.Buffer("x", n, K), "y": ops.Buffer("y", n, N)})

    def run(g, key):
        n = key[1]
        return g.run(np.arange(n, dtype=np.int32), ops.one_sequence(n, 0))
    res = _graph_runs(src, graphs, THREADS, run, precision)

    def run_one(g, key):                     # token r of the same table: row r alone
        return g.run(np.array([key[1]], np.int32), ops.one_sequence(1, 0))
    single = _graph_runs(src, {(t, r): graphs[t, 1] for t in M.Q8_TYPES for r in range(40)}, (2,), run_one,
                         precision)
    for t in M.Q8_TYPES:
        one = np.concatenate([single[2, (t, r)] for r in range(40)])
        for th in THREADS:
            for n in BATCHES:
                np.testing.assert_array_equal(res[th, (t, n)].view(np.uint32), one[:n].view(np.uint32),
                                              err_msg=f"{M.NAMES[t]}: {n} rows on {th} threads vs one row each")
        for r in (0, 17, 39):
            xq = M.quantize(X[r], t) if precision == "q8" else M.quantize_i16(X[r], t)
            want, bound = M.dot(raws[t], t, K, xq)
            assert (np.abs(one[r] - want) <= REL * bound + TINY).all(), (M.NAMES[t], r)


@NEED_CC
@pytest.mark.parametrize("N", [40, 44], ids=["repacked", "gguf-rows"])
@pytest.mark.parametrize("qtype", [M.Q4_0, M.Q8_0, M.Q4_K, M.Q6_K], ids=["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_backend_moe_expert_matmul_is_row_exact(qtype, N):
    """MoeMatMul in q8 for 1 and 20 tokens (20: the gathered batch path) on 1..4 threads: each
    selection's output row the bits of that token's one-token run, and within the model's bound
    of its expert's product. N = 40: the experts repacked 8 rows at a time (Q4_0, Q4_K, Q6_K);
    44 rows per expert cannot be (a group would span two experts): the GGUF rows."""
    from g4rt import ops
    from g4rt.backends.cpu.backend import repackable_experts
    from g4rt.backends.numpy_ref.backend import moe_route
    from op_cases import Src
    rng = np.random.default_rng(88 + qtype)
    n_max, k, E, K = 20, 2, 8, 256
    assert repackable_experts(ops.WeightSpec("w", qtype, E * N, K, experts=E)) == (N % 8 == 0)
    src = Src()
    lg = rng.standard_normal((n_max, E)).astype(np.float32)
    X = (rng.standard_normal((n_max, K)) + 0.5).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, (1, E)).astype(np.float32)
    src.add("in.lg", lg)
    src.add("in.x", X)
    src.add("scale", scale)
    raw = random_rows(rng, qtype, E * N, K)
    src.add_raw("w", qtype, raw, K)
    src.specs["w"] = ops.WeightSpec("w", qtype, E * N, K, experts=E)
    ops_ = [ops.EmbedLookup("lg", "in.lg", 1.0), ops.EmbedLookup("x", "in.x", 1.0),
            ops.MoeRoute("route", "lg", k, "scale"), ops.MoeMatMul("y", "x", "route", "w", E)]

    def buffers(n):
        return {"lg": ops.Buffer("lg", n, E), "x": ops.Buffer("x", n, K), "route": ops.Buffer("route", n, 2 * k),
                "y": ops.Buffer("y", n * k, N)}
    graphs = {n: _table_graph(src, n, ops_, "y", buffers) for n in (1, n_max)}

    def run(g, n):
        return g.run(np.arange(n, dtype=np.int32), ops.one_sequence(n, 0))
    res = _graph_runs(src, graphs, THREADS, run)

    def run_one(g, r):
        return g.run(np.array([r], np.int32), ops.one_sequence(1, 0))
    single = _graph_runs(src, {r: graphs[1] for r in range(n_max)}, (1,), run_one)
    one = np.concatenate([single[1, r] for r in range(n_max)])            # [n_max * k, N]
    for (t, n), y in res.items():
        np.testing.assert_array_equal(y.view(np.uint32), one[:n * k].view(np.uint32),
                                      err_msg=f"{M.NAMES[qtype]} MoE: {n} tokens on {t} threads")
    route = moe_route(lg, k, scale[0])
    for r in range(n_max):
        for j in range(k):
            e = int(route[r, k + j])
            want, bound = M.dot(raw[e * N:(e + 1) * N], qtype, K, M.quantize(X[r], qtype))
            assert (np.abs(one[r * k + j] - want) <= REL * bound + TINY).all(), (M.NAMES[qtype], r, j, e)


# ---- 6. the q8 path under AddressSanitizer and UBSan ---------------------------------------------
@pytest.mark.slow     # a few minutes: sanitizer builds of the shim and the backend, this file under them
@pytest.mark.skipif(os.environ.get("G4RT_SANITIZE_RUN") == "1", reason="inside the sanitizer run")
def test_q8_kernels_under_address_and_undefined_sanitizers(tmp_path):
    """This file's tests in a subprocess with every kernel build (the shim's and the backend's)
    under -fsanitize=address,undefined (libasan preloaded into Python); any report fails it."""
    gcc = shutil.which("gcc")
    if gcc is None or shutil.which("cc") is None:
        pytest.skip("gcc (and cc) are needed for the sanitizer run")
    asan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not asan or not os.path.isfile(asan):
        pytest.skip("libasan is not installed (apt-get install gcc provides it)")
    san = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1"
    env = dict(os.environ, G4RT_SANITIZE_RUN="1", LD_PRELOAD=asan, G4RT_CC=gcc, G4RT_CPU_CFLAGS=san,
               G4RT_Q8_TEST_CFLAGS=san, G4RT_CPU_CACHE=str(tmp_path / "cache"),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", os.path.abspath(__file__),
                        "-k", "not sanitizers"], env=env, capture_output=True, text=True, timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "runtime error" not in out and "AddressSanitizer" not in out, out[-6000:]
    assert re.search(r"\b\d+ passed", out) and not re.search(r"\b\d+ failed", out), out[-3000:]


# ---- the i16 mode (two int8 planes per 32 values, q8.h) and the repacked layouts ------------------
def check_quantized_i16(got: dict, x: np.ndarray, qtype: int, what: str) -> None:
    want = M.quantize_i16(x, qtype)
    okv = np.repeat(~want["bad"], 32)
    for part in ("q", "q2"):
        bad = np.flatnonzero((got[part] != want[part]) & okv)
        assert bad.size == 0, f"{what}: {part} differs at {bad[:8]}: x {x[bad[:4]]}"
    for part in ("d", "sd", "s16"):
        n = got[part].size
        ok = np.repeat(~want["bad"], n // want["bad"].size)
        eq = _bits_equal(got[part], want[part]) | ~ok
        assert eq.all(), f"{what}: {part} differs at {np.flatnonzero(~eq)[:8]}"
    assert np.isnan(got["d"][want["bad"]]).all()
    assert ((got["bias"] == want["bias"]) | want["bad"]).all(), f"{what}: bias"


@pytest.mark.parametrize("qtype", M.Q8_TYPES, ids=TYPE_IDS)
def test_i16_quantization_is_bit_exact(build, qtype):
    b, L = build
    rng = np.random.default_rng(700 + qtype)
    for K in widths(qtype):
        for name, x in {**activations(rng, K), **crafted(K)}.items():
            check_quantized_i16(c_row(L, qtype, x, ACT_I16), x, qtype, f"{b.name} {M.NAMES[qtype]} K={K} {name} i16")


@pytest.mark.parametrize("qtype", M.Q8_TYPES, ids=TYPE_IDS)
def test_i16_dot_matches_the_model_and_is_near_exact(build, qtype):
    """The i16 dot against the model of its own arithmetic, and within int16 rounding of the
    float64 dot of the exact weights with the float32 activations."""
    b, L = build
    rng = np.random.default_rng(800 + qtype)
    for K in widths(qtype):
        raw = random_rows(rng, qtype, 37, K)
        w = M.dequantize(raw, qtype, K)
        for name, x in activations(rng, K).items():
            what = f"{b.name} {M.NAMES[qtype]} K={K} {name} i16"
            y = c_matvec(L, qtype, raw, x, act=ACT_I16)
            check_dot(y, raw, qtype, x, 0, 37, what, xq=M.quantize_i16(x, qtype))
            exact = w @ x.astype(np.float64)
            amax = np.abs(x.reshape(-1, 32)).max(axis=1)
            err = (np.abs(w).reshape(37, -1, 32).sum(axis=2) * amax).sum(axis=1) / 32512 + 1e-30
            assert (np.abs(y - exact) <= 1.01 * err + 1e-5 * np.abs(exact)).all(), what


@pytest.mark.parametrize("act", [ACT_Q8, ACT_I16], ids=["q8", "i16"])
@pytest.mark.parametrize("qtype", M.Q8_TYPES, ids=TYPE_IDS)
def test_i16_rows_equal_one_row_matvecs(build, qtype, act):
    b, L = build
    rng = np.random.default_rng(900 + qtype)
    K, rows = 768, 21
    raw = random_rows(rng, qtype, rows, K)
    X = _row_inputs(rng, K, 16)
    one = np.stack([c_matvec(L, qtype, raw, X[r], act=act) for r in range(16)])
    for R in (1, 2, 3, 5, 16):
        Y = c_matvec_rows(L, qtype, raw, X[:R], act=act)
        np.testing.assert_array_equal(Y.view(np.uint32), one[:R].view(np.uint32),
                                      err_msg=f"{b.name} {M.NAMES[qtype]} act {act}: {R} rows")
