"""Per-op conformance of the CUDA backend against the CPU reference, on random inputs.

Runs only where a CUDA device is present (skipped with the reason otherwise). The helpers at the
top are shared with tests/test_cuda_compile.py, which runs a subset of these checks in CI on the
emulated driver (runtime/testing/cuda/emulated_driver.py: the host code, with numpy kernels).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from g4rt import ops as O
from g4rt.backends.numpy_ref import NumpyBackend
from g4rt.backends.cuda.driver import cuda_available
from g4rt.gguf.quant_types import dequantize_rows, quantize_rows
from g4rt.testing.cuda import driver_from_env

HAVE_CUDA, CUDA_REASON = cuda_available(driver=driver_from_env())
pytestmark = pytest.mark.skipif(not HAVE_CUDA, reason=f"no CUDA device: {CUDA_REASON}")

ALL_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q4_K,
             QT.Q5_K, QT.Q6_K]
K_QUANTS = (QT.Q4_K, QT.Q5_K, QT.Q6_K)
_HALF_FIELDS = {QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,)}


# ---- helpers (shared) ----------------------------------------------------------------------
def random_weight(rng, qtype, rows: int, cols: int) -> np.ndarray:
    """Raw GGUF bytes [rows, row_bytes] of a random weight of `qtype`. gguf cannot quantize the
    K-quants, so those are random bytes with valid f16 scales (every bit pattern is a valid block)."""
    if qtype in K_QUANTS:
        bs, bb = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (rows, cols // bs, bb), dtype=np.uint8)
        for off in _HALF_FIELDS[qtype]:
            raw[:, :, off:off + 2] = rng.uniform(-0.02, 0.02, (rows, cols // bs, 1)).astype(np.float16).view(np.uint8)
        return raw.reshape(rows, -1)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.2, 2.0, (rows, 1))).astype(np.float32)
    if qtype == QT.BF16:
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
    return quantize_rows(w, qtype)


class MemSource:
    """A WeightSource over in-memory raw GGUF bytes."""

    def __init__(self):
        self.raw, self.specs = {}, {}

    def add_raw(self, name, raw, qtype, rows, cols):
        self.raw[name] = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, -1)
        self.specs[name] = O.WeightSpec(name, qtype, rows, cols)
        return name

    def add(self, name, values, qtype=QT.F32):
        values = np.atleast_2d(np.asarray(values, np.float32))
        return self.add_raw(name, quantize_rows(values, qtype), qtype, *values.shape)

    def weight_bytes(self, name):
        return self.raw[name]


def f16_exact(a) -> np.ndarray:
    """Values that survive an f16 cache unchanged (so f16 and f32 caches see the same inputs)."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def single_op_graph(op, inputs: dict, out_shape, src: MemSource, caches: dict, n: int) -> O.Graph:
    buffers = {k: O.Buffer(k, *v.shape) for k, v in inputs.items()}
    if op.out not in caches:
        buffers[op.out] = O.Buffer(op.out, *out_shape)
    cache_specs = {k: O.KvCache(k, *v.shape) for k, v in caches.items()}
    for k, v in inputs.items():
        cache_specs[f"in.{k}"] = O.KvCache(f"in.{k}", *v.shape)
    ops = [O.Slice(k, f"in.{k}", 0, 0) for k in inputs] + [op]
    return O.Graph(n_tokens=n, buffers=buffers, caches=cache_specs, weights=dict(src.specs), ops=ops,
                   output=op.out, labels=[f"seed {k}" for k in inputs] + ["op"])


def run_graph_on(be, g: O.Graph, src: MemSource, inputs: dict, caches: dict, tokens, pos0: int):
    """Load, seed inputs and caches, compile and run; returns (output, compiled graph)."""
    be.load_weights(src.specs, src)
    be.allocate_caches({k: g.caches[k] for k in caches})
    be.declare_inputs({f"in.{k}": v.shape for k, v in inputs.items()})
    be.write_inputs({f"in.{k}": v for k, v in inputs.items()})
    for k, v in caches.items():
        seed_cache(be, k, v)
    cg = be.compile(g)
    tokens = np.asarray(tokens, np.int32)
    return cg.run(tokens, O.one_sequence(len(tokens), pos0)), cg


def seed_cache(be, name, values):
    if hasattr(be, "write_cache"):
        be.write_cache(name, values)
    else:
        be.caches[name][...] = values


def read_cache(be, name) -> np.ndarray:
    if hasattr(be, "read_cache"):
        return be.read_cache(name)
    return np.asarray(be.caches[name], np.float32)


def compare_op(make_backend, op, inputs, out_shape, src=None, caches=None, tokens=None, pos0=0,
               kv_dtype="f16", extra_caches=()):
    """Run one op on the CPU reference and on make_backend(kv_dtype); return (gpu, cpu, backends)."""
    src = src or MemSource()
    caches = dict(caches or {})
    n = out_shape[0] if tokens is None else len(tokens)
    toks = np.zeros(n, np.int32) if tokens is None else np.asarray(tokens, np.int32)
    g = single_op_graph(op, inputs, out_shape, src, caches, n)
    cpu = NumpyBackend(kv_dtype=kv_dtype)
    ref, _ = run_graph_on(cpu, g, src, inputs, caches, toks, pos0)
    gpu_be = make_backend(kv_dtype)
    try:
        out, _ = run_graph_on(gpu_be, g, src, inputs, caches, toks, pos0)
        extra = {c: (read_cache(gpu_be, c), read_cache(cpu, c)) for c in extra_caches}
    finally:
        gpu_be.close()
    return np.asarray(out, np.float32), np.asarray(ref, np.float32), extra


def assert_close(out, ref, rel=2e-4, what=""):
    scale = float(np.abs(ref).max()) + 1e-6
    err = float(np.abs(out - ref).max())
    assert err <= rel * scale + 1e-6, f"{what}: max |diff| {err:.3g} vs max |ref| {scale:.3g}"


# ---- checks (each takes a backend factory) -------------------------------------------------
def _matmul_case(make_backend, qtype, n, rows, cols, seed):
    """A random [rows, cols] weight of `qtype` times n random rows on the backend and on the CPU
    reference: (backend output, reference output, x, dequantized weight in float64)."""
    rng = np.random.default_rng(seed)
    src = MemSource()
    raw = random_weight(rng, qtype, rows, cols)
    src.add_raw("w", raw, qtype, rows, cols)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    out, ref, _ = compare_op(make_backend, O.MatMul("y", "x", "w"), {"x": x}, (n, rows), src)
    return out, ref, x, dequantize_rows(raw, qtype, cols).astype(np.float64)


def check_matmul(make_backend, qtype, n, rows, cols, seed=0):
    out, ref, x, wd = _matmul_case(make_backend, qtype, n, rows, cols, seed)
    exact = x.astype(np.float64) @ wd.T
    assert_close(ref, exact, 1e-5, "cpu reference")
    assert_close(out, exact, 2e-4, f"{qtype.name} n={n} [{rows}x{cols}]")


def q8_round_trip(x: np.ndarray) -> np.ndarray:
    """x after the int8 path's activation rounding (matvec8.cu quantize_q8): per 32 values,
    d = max|x| / 127, round(x / d) * d (ties to even)."""
    g = np.asarray(x, np.float32).reshape(x.shape[0], -1, 32)
    d = np.abs(g).max(-1, keepdims=True) / np.float32(127)
    q = np.where(d > 0, np.rint(g / np.where(d > 0, d, 1)), 0)
    return (q * d).reshape(x.shape)


def check_matvec8(make_backend, qtype, n, rows, cols, seed=8):
    """The int8 decode path: equal to the exact product of the weights with the 8-bit-rounded
    activations (fp32 summation order aside), and within 8-bit rounding of the exact product."""
    out, _, x, wd = _matmul_case(make_backend, qtype, n, rows, cols, seed)
    assert_close(out, q8_round_trip(x).astype(np.float64) @ wd.T, 1e-5, f"int8 {qtype.name} n={n}")
    assert_close(out, x.astype(np.float64) @ wd.T, 2e-2, f"int8 {qtype.name} n={n} vs exact")


def check_embed(make_backend, qtype, rows=37, cols=256, n=7, seed=1):
    rng = np.random.default_rng(seed)
    src = MemSource()
    src.add_raw("t", random_weight(rng, qtype, rows, cols), qtype, rows, cols)
    toks = rng.integers(0, rows, n)
    toks[1] = toks[0]
    toks[-1] = rows - 1
    out, ref, _ = compare_op(make_backend, O.EmbedLookup("e", "t", 1.7), {}, (n, cols), src, tokens=toks)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def check_attention(make_backend, H, Hkv, D, window, ring, n, pos0, kv_dtype="f16", seed=2):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, H * D)).astype(np.float32)
    k = f16_exact(rng.standard_normal((n, Hkv * D)))
    v = f16_exact(rng.standard_normal((n, Hkv * D)))
    ck = f16_exact(rng.standard_normal((ring, Hkv * D)))
    cv = f16_exact(rng.standard_normal((ring, Hkv * D)))
    op = O.Attention("a", "q", "k", "v", "ck", "cv", H, Hkv, D, window, 1.0 / np.sqrt(D))
    out, ref, _ = compare_op(make_backend, op, {"q": q, "k": k, "v": v}, (n, H * D),
                             caches={"ck": ck, "cv": cv}, pos0=pos0, kv_dtype=kv_dtype)
    assert_close(out, ref, 1e-4, f"attention H={H} Hkv={Hkv} D={D} w={window} ring={ring} n={n} pos0={pos0}")


def check_kv_store(make_backend, n, ring, pos0, kv_dtype="f16", seed=3):
    rng = np.random.default_rng(seed)
    cols = 48
    k = rng.standard_normal((n, cols)).astype(np.float32)
    v = rng.standard_normal((n, cols)).astype(np.float32)
    ck = rng.standard_normal((ring, cols)).astype(np.float32)
    cv = rng.standard_normal((ring, cols)).astype(np.float32)
    out, ref, extra = compare_op(make_backend, O.KvStore("ck", "cv", "k", "v"), {"k": k, "v": v},
                                 (ring, cols), caches={"ck": ck, "cv": cv}, pos0=pos0,
                                 tokens=np.zeros(n), kv_dtype=kv_dtype, extra_caches=("cv",))
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(*extra["cv"])


def check_rmsnorm(make_backend, rows, cols, group, with_weight, seed=4):
    rng = np.random.default_rng(seed)
    src = MemSource()
    w = None
    if with_weight:
        w = src.add("w", rng.standard_normal(group).astype(np.float32))
    x = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
    out, ref, _ = compare_op(make_backend, O.RmsNorm("x", "x", w, 1e-6, group), {"x": x}, (rows, cols), src)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)


def check_rope(make_backend, rows, head_dim, n_rot, heads, pos0, with_ff, inplace, seed=5):
    rng = np.random.default_rng(seed)
    src = MemSource()
    ff = None
    if with_ff:
        ff = src.add("ff", rng.uniform(1.0, 8.0, n_rot // 2).astype(np.float32))
    x = rng.standard_normal((rows, heads * head_dim)).astype(np.float32)
    out_name = "x" if inplace else "y"
    op = O.Rope(out_name, "x", head_dim, n_rot, 1e6 if with_ff else 1e4, ff)
    out, ref, _ = compare_op(make_backend, op, {"x": x}, x.shape, src, pos0=pos0)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)


def check_elementwise(make_backend, seed=6):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((5, 301)) * 4).astype(np.float32)
    b = rng.standard_normal((5, 301)).astype(np.float32)
    src = MemSource()
    src.add("one", np.array([[0.37]], np.float32))
    cases = [
        (O.Add("y", "a", "b"), {"a": a, "b": b}),
        (O.Mul("a", "a", "b"), {"a": a, "b": b}),
        (O.GeluMul("a", "a", "b"), {"a": a, "b": b}),
        (O.Gelu("y", "a"), {"a": a}),
        (O.Scale("y", "a", 0.125), {"a": a}),
        (O.Scale("a", "a", 1.0, "one"), {"a": a}),
        (O.Softcap("y", "a", 3.0), {"a": a}),
    ]
    for op, inputs in cases:
        out, ref, _ = compare_op(make_backend, op, inputs, a.shape, src)
        np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6, err_msg=op.kind)
    out, ref, _ = compare_op(make_backend, O.Slice("y", "a", 2, 37), {"a": a}, (3, 100), src)
    np.testing.assert_array_equal(out, ref)


def check_replay(make_backend, seed=7):
    """One recorded graph replayed with new token ids and positions (the parameters buffer)."""
    rng = np.random.default_rng(seed)
    src = MemSource()
    src.add_raw("t", random_weight(rng, QT.Q4_0, 50, 64), QT.Q4_0, 50, 64)
    ops = [O.EmbedLookup("x", "t", 1.0), O.Rope("x", "x", 32, 32, 1e4, None)]
    g = O.Graph(n_tokens=2, buffers={"x": O.Buffer("x", 2, 64)}, caches={}, weights=dict(src.specs),
                ops=ops, output="x", labels=["embed", "rope"])
    cpu = NumpyBackend()
    cpu.load_weights(src.specs, src)
    cpu.allocate_caches({})
    be = make_backend("f16")
    try:
        be.load_weights(src.specs, src)
        be.allocate_caches({})
        cg, rg = be.compile(g), cpu.compile(g)
        for step in range(4):
            toks = rng.integers(0, 50, 2).astype(np.int32)
            pos0 = int(rng.integers(0, 1000))
            at = O.one_sequence(len(toks), pos0)
            np.testing.assert_allclose(cg.run(toks, at), rg.run(toks, at), rtol=0, atol=2e-5)
        seen = []
        cg.run(toks, O.one_sequence(len(toks), pos0), observer=lambda i, op, arr: seen.append((i, op.kind, arr.shape)))
        assert [s[1] for s in seen] == ["embed", "rope"]
    finally:
        be.close()


# ---- the cases (shared with tests/test_cuda_sim.py, which runs them on the CPU simulator) -----
MATMUL_BATCHES = [1, 3, 4, 5, 70]
LONG_ROW_TYPES = [QT.Q4_0, QT.Q4_K, QT.Q6_K, QT.Q8_0]
ATTN_CASES = [
    (4, 2, 64, 0, 64, 1, 37),          # decode, GQA, global
    (4, 4, 64, 0, 64, 1, 0),           # first token
    (4, 1, 128, 16, 16, 5, 30),        # sliding window, ring wrapped, batch of 5
    (4, 2, 64, 16, 16, 40, 3),         # prefill batch longer than the window
    (2, 2, 256, 0, 3000, 1, 2900),     # long context: split-K
    (8, 2, 512, 0, 600, 3, 590),       # head dim 512
    (2, 1, 80, 8, 8, 1, 100),          # head dim not a power of two
    (4, 2, 64, 1024, 1024, 12, 2000),  # window 1024, positions past it
]
KV_CASES = [(1, 16, 0), (5, 16, 14), (40, 16, 3), (3, 64, 63)]
RMSNORM_CASES = [(3, 256, 256, True), (5, 512, 64, True), (1, 3840, 3840, True),
                 (7, 256, 128, False), (2, 96, 32, True)]
ROPE_CASES = [(3, 64, 64, 4, 0, False, True), (5, 128, 64, 2, 1000, True, True),
              (1, 256, 256, 8, 8191, True, True), (4, 64, 32, 2, 17, False, False)]


# ---- the GPU tests -------------------------------------------------------------------------
def _cuda(kv_dtype):
    from g4rt.backends.cuda.backend import CudaBackend
    return CudaBackend(kv_dtype=kv_dtype, driver=driver_from_env())


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", MATMUL_BATCHES)
def test_matmul_every_type(qtype, n):
    check_matmul(_cuda, qtype, n, rows=37, cols=768)


@pytest.mark.parametrize("qtype", LONG_ROW_TYPES, ids=lambda t: t.name)
def test_matvec_long_rows_many_tiles(qtype):
    # 4608 values = 2.25 tiles of 2048 (a partial last tile), 129 rows (a partial last block)
    check_matmul(_cuda, qtype, 1, rows=129, cols=4608)


@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.BF16], ids=lambda t: t.name)
@pytest.mark.parametrize("cols", [100, 98, 33])
@pytest.mark.parametrize("n", [1, 9, 20])
def test_matmul_float_types_odd_widths(qtype, cols, n):
    # widths that are not a multiple of 32 (partial groups) or of 4 (unaligned activation rows)
    check_matmul(_cuda, qtype, n, rows=11, cols=cols)


INT8_TYPES = [QT.Q8_0, QT.Q4_0, QT.Q4_K, QT.Q6_K]


def _cuda_int8(kv_dtype):
    from g4rt.backends.cuda.backend import CudaBackend
    return CudaBackend(kv_dtype=kv_dtype, int8_matvec=True, driver=driver_from_env())


@pytest.mark.parametrize("qtype", INT8_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n,rows,cols", [(1, 37, 768), (4, 129, 4608), (3, 5, 256)])
def test_int8_matvec(qtype, n, rows, cols):
    check_matvec8(_cuda_int8, qtype, n, rows, cols)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_embedding_every_type(qtype):
    check_embed(_cuda, qtype)


@pytest.mark.parametrize("H,Hkv,D,window,ring,n,pos0", ATTN_CASES)
@pytest.mark.parametrize("kv_dtype", ["f16", "f32"])
def test_attention(H, Hkv, D, window, ring, n, pos0, kv_dtype):
    check_attention(_cuda, H, Hkv, D, window, ring, n, pos0, kv_dtype)


@pytest.mark.parametrize("n,ring,pos0", KV_CASES)
@pytest.mark.parametrize("kv_dtype", ["f16", "f32"])
def test_kv_store(n, ring, pos0, kv_dtype):
    check_kv_store(_cuda, n, ring, pos0, kv_dtype)


@pytest.mark.parametrize("rows,cols,group,w", RMSNORM_CASES)
def test_rmsnorm(rows, cols, group, w):
    check_rmsnorm(_cuda, rows, cols, group, w)


@pytest.mark.parametrize("rows,head_dim,n_rot,heads,pos0,ff,inplace", ROPE_CASES)
def test_rope(rows, head_dim, n_rot, heads, pos0, ff, inplace):
    check_rope(_cuda, rows, head_dim, n_rot, heads, pos0, ff, inplace)


def test_elementwise_ops():
    check_elementwise(_cuda)


def test_graph_replay_with_new_tokens_and_positions():
    check_replay(_cuda)


def test_graph_capture_is_used():
    from g4rt.backends.cuda.backend import CudaBackend
    be = CudaBackend(driver=driver_from_env())
    try:
        assert be.use_graphs or be.debug
    finally:
        be.close()
