"""The cases of the op-conformance suite (tests/test_backend_ops.py), each run on a backend and on
the numpy reference (the oracle), in two styles:

- graphs whose inputs are embedded from F32 tables (`Case`: any backend runs them as plain op
  lists), bounded by the relative error `rel_err` < `REL[...]`: what f32 accumulation in another
  order (and f16 KV storage) can cost; the reference's own values are never recomputed;
- one op on inputs seeded into persistent buffers and caches (`compare_op`, the `check_*`
  functions: each takes a backend factory make_backend(kv_dtype)), bounded against the
  reference and, for matmuls, the exact float64 product.

Also used by tests/test_moe.py, test_row_exact.py, test_multi_sequence.py (Case, run_both) and
the CUDA files (test_cuda_compile.py, test_cuda_sim.py: the check_* functions on their drivers)."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from g4rt import ops
from g4rt.backends.numpy_ref import NumpyBackend
from g4rt.gguf.quant_types import block_geometry, dequantize_rows, quantize_rows

# Bounds of the embedded-input cases: max|backend - numpy| / max|numpy|
REL = {"matmul": 2e-5, "embed": 1e-6, "rmsnorm": 2e-6, "rope": 2e-5, "attention": 1e-5,
       "attention_f16": 2e-3, "elementwise": 2e-6, "kv_store_f16": 1e-3}

ALL_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q4_K, QT.Q5_K, QT.Q6_K]
rng = np.random.default_rng(20260)


def random_weight(qtype: QT, rows: int, cols: int) -> np.ndarray:
    """Raw GGUF bytes [rows, row_bytes]: random bits with finite, small f16 scale fields (every bit
    pattern of the quants is exercised; gguf cannot quantize K-quants anyway)."""
    if qtype == QT.F32:
        return quantize_rows(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    if qtype == QT.F16:
        return quantize_rows(rng.standard_normal((rows, cols)).astype(np.float32), qtype)
    if qtype == QT.BF16:
        v = rng.standard_normal((rows, cols)).astype(np.float32)
        return (v.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
    block, size = block_geometry(qtype)
    nb = rows * cols // block
    raw = rng.integers(0, 256, (nb, size), dtype=np.uint8)

    def put_f16(off, lo, hi):
        vals = (rng.uniform(lo, hi, nb) * rng.choice([-1, 1], nb)).astype(np.float16)
        raw[:, off:off + 2] = vals.view(np.uint8).reshape(nb, 2)

    if qtype in (QT.Q4_0, QT.Q5_0, QT.Q8_0):
        put_f16(0, 0.001, 0.05)
    elif qtype in (QT.Q4_1, QT.Q5_1):
        put_f16(0, 0.001, 0.05)
        put_f16(2, 0.0, 0.5)
    elif qtype in (QT.Q4_K, QT.Q5_K):
        put_f16(0, 0.0005, 0.01)
        put_f16(2, 0.0, 0.01)
    elif qtype == QT.Q6_K:
        put_f16(208, 0.0005, 0.01)
    return raw.reshape(rows, -1)


class Src:
    """A WeightSource over in-memory raw bytes."""

    def __init__(self):
        self.raw: dict[str, np.ndarray] = {}
        self.specs: dict[str, ops.WeightSpec] = {}

    def add_raw(self, name, qtype, raw, cols):
        self.raw[name] = np.ascontiguousarray(raw)
        self.specs[name] = ops.WeightSpec(name, qtype, raw.shape[0], cols)
        return name

    def add(self, name, values, qtype=QT.F32):
        values = np.atleast_2d(np.asarray(values, np.float32))
        return self.add_raw(name, qtype, quantize_rows(values, qtype), values.shape[1])

    def weight_bytes(self, name):
        return self.raw[name]


class Case:
    """A graph under construction: inputs are embedded from F32 tables (tokens = 0..n-1)."""

    def __init__(self, n):
        self.n = n
        self.src = Src()
        self.buffers = {"tokens": ops.Buffer("tokens", n, 1, "i32")}
        self.ops: list[ops.Op] = []
        self.caches: dict[str, ops.KvCache] = {}

    def buf(self, name, cols, rows=None):
        self.buffers[name] = ops.Buffer(name, self.n if rows is None else rows, cols)
        return name

    def input(self, name, values):
        values = np.asarray(values, np.float32)
        assert values.shape[0] == self.n
        table = self.src.add(f"in.{name}", values)
        self.buf(name, values.shape[1])
        self.ops.append(ops.EmbedLookup(name, table, 1.0))
        return name

    def graph(self, out):
        return ops.Graph(n_tokens=self.n, buffers=dict(self.buffers), caches=dict(self.caches),
                       weights=dict(self.src.specs), ops=list(self.ops), output=out,
                       labels=[f"op{i}.{op.kind}" for i, op in enumerate(self.ops)])


def run_both(case: Case, out: str, backend, pos0: int = 0, observe: bool = False, close: bool = True):
    """The case's graph on the numpy reference (same KV precision) and on `backend`, from position
    pos0: (reference output, backend output[, {"ref": [...], "got": [...]} every op's output]).
    Closes `backend` afterwards unless close=False."""
    ref = NumpyBackend(kv_dtype=backend.kv_dtype)
    try:
        for be in (ref, backend):
            be.load_weights(case.src.specs, case.src)
            be.allocate_caches(case.caches)
        return run_compiled(case.graph(out), ref, backend, np.arange(case.n, dtype=np.int32), pos0, observe)
    finally:
        if close:
            backend.close()


def run_compiled(graph: ops.Graph, ref, backend, tokens, pos0: int, observe: bool = False):
    """Compile and run `graph` on two backends that hold its weights and caches already."""
    segments = ops.one_sequence(len(tokens), pos0)
    if not observe:
        a = ref.compile(graph).run(tokens, segments)
        return a, np.array(backend.compile(graph).run(tokens, segments), copy=True)
    seen = {"ref": [], "got": []}
    a = ref.compile(graph).run(tokens, segments, observer=lambda i, op, arr: seen["ref"].append(arr))
    b = backend.compile(graph).run(tokens, segments, observer=lambda i, op, arr: seen["got"].append(arr))
    return a, np.array(b, copy=True), seen


def rel_err(got, ref):
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.all(np.isfinite(got))
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def attention_case(n, n_head, n_kv, D, window, ring, seed):
    """q/k/v rows of a random batch, Attention over caches "ck"/"cv" of `ring` rows, then KvStore."""
    r = np.random.default_rng(seed)
    c = Case(n)
    q = c.input("q", r.standard_normal((n, n_head * D)))
    k = c.input("k", r.standard_normal((n, n_kv * D)))
    v = c.input("v", r.standard_normal((n, n_kv * D)))
    c.caches = {"ck": ops.KvCache("ck", ring, n_kv * D), "cv": ops.KvCache("cv", ring, n_kv * D)}
    c.ops.append(ops.Attention(c.buf("o", n_head * D), q, k, v, "ck", "cv", n_head, n_kv, D, window,
                             0.125 * 8 / D ** 0.5))
    c.ops.append(ops.KvStore("ck", "cv", k, v))
    return c


def long_cache_decode(backends, D=512, n_head=2, n_kv=1, ring=3072, fill=(1000, 1000, 1000)):
    """Fill a `ring`-row global f32 KV cache on every backend (KvStore only, no attention), then
    run one decode row attending over all of it; returns each backend's attention output."""
    caches = {"ck": ops.KvCache("ck", ring, n_kv * D), "cv": ops.KvCache("cv", ring, n_kv * D)}
    for be in backends:
        be.allocate_caches(caches)
    pos = 0
    for i, n in enumerate(fill):
        r = np.random.default_rng(100 + i)
        c = Case(n)
        k = c.input("k", r.standard_normal((n, n_kv * D)))
        v = c.input("v", r.standard_normal((n, n_kv * D)))
        c.caches = caches
        c.ops.append(ops.KvStore("ck", "cv", k, v))
        for be in backends:
            be.load_weights(c.src.specs, c.src)
            be.compile(c.graph("k")).run(np.arange(n), ops.one_sequence(n, pos))
        pos += n
    c = attention_case(1, n_head, n_kv, D, 0, ring, seed=5)
    c.caches = caches
    outs = []
    for be in backends:
        be.load_weights(c.src.specs, c.src)
        outs.append(np.array(be.compile(c.graph("o")).run(np.arange(1), ops.one_sequence(1, pos)), copy=True))
    return outs


def elementwise_case() -> Case:
    """GeLU·up, GeLU, add, mul, scale (also by a one-element weight), softcap, slice, and an
    in-place GeLU·up, on 4 rows of 96; the output buffer is "sl"."""
    c = Case(4)
    a_ = c.input("a", rng.standard_normal((4, 96)) * 4)
    b_ = c.input("b", rng.standard_normal((4, 96)))
    by = c.src.add("by", [[0.37]])
    c.ops += [
        ops.GeluMul(c.buf("gm", 96), a_, b_),
        ops.Gelu(c.buf("g", 96), a_),
        ops.Add(c.buf("s", 96), "gm", "g"),
        ops.Mul("s", "s", b_),
        ops.Scale("s", "s", 1.7),
        ops.Scale("s", "s", 0.5, by),
        ops.Softcap(c.buf("sc", 96), "s", 3.0),
        ops.Slice(c.buf("sl", 40, rows=2), "sc", 1, 50),
        ops.GeluMul(a_, a_, b_),
    ]
    return c


# ---- one op on seeded inputs ---------------------------------------------------------------
K_QUANTS = (QT.Q4_K, QT.Q5_K, QT.Q6_K)
_HALF_FIELDS = {QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,)}
INT8_TYPES = [QT.Q8_0, QT.Q4_0, QT.Q4_K, QT.Q6_K]        # the int8 decode path (CUDA's matvec8.cu)

MATMUL_BATCHES = [1, 3, 4, 5, 70]
LONG_ROW_TYPES = [QT.Q4_0, QT.Q4_K, QT.Q6_K, QT.Q8_0]
ATTN_CASES = [                          # H, Hkv, D, window, ring, n, pos0
    (4, 2, 64, 0, 64, 1, 37),          # decode, GQA, global
    (4, 4, 64, 0, 64, 1, 0),           # first token
    (4, 1, 128, 16, 16, 5, 30),        # sliding window, ring wrapped, batch of 5
    (4, 2, 64, 16, 16, 40, 3),         # prefill batch longer than the window
    (2, 2, 256, 0, 3000, 1, 2900),     # long context: split-K
    (8, 2, 512, 0, 600, 3, 590),       # head dim 512
    (2, 1, 80, 8, 8, 1, 100),          # head dim not a power of two
    (4, 2, 64, 1024, 1024, 12, 2000),  # window 1024, positions past it
]
KV_CASES = [(1, 16, 0), (5, 16, 14), (40, 16, 3), (3, 64, 63)]       # n, ring, pos0
RMSNORM_CASES = [(3, 256, 256, True), (5, 512, 64, True), (1, 3840, 3840, True),
                 (7, 256, 128, False), (2, 96, 32, True)]            # rows, cols, group, weight
ROPE_CASES = [(3, 64, 64, 4, 0, False, True), (5, 128, 64, 2, 1000, True, True),
              (1, 256, 256, 8, 8191, True, True), (4, 64, 32, 2, 17, False, False)]
# rows, head_dim, n_rot, heads, pos0, frequency factors, in place


def scaled_random_weight(rng, qtype, rows: int, cols: int) -> np.ndarray:
    """Raw GGUF bytes [rows, row_bytes] of a random weight with a random scale per row. gguf
    cannot quantize the K-quants, so those are random bytes with valid f16 scales (every bit
    pattern is a valid block)."""
    if qtype in K_QUANTS:
        bs, bb = block_geometry(qtype)
        raw = rng.integers(0, 256, (rows, cols // bs, bb), dtype=np.uint8)
        for off in _HALF_FIELDS[qtype]:
            raw[:, :, off:off + 2] = rng.uniform(-0.02, 0.02, (rows, cols // bs, 1)).astype(np.float16).view(np.uint8)
        return raw.reshape(rows, -1)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.2, 2.0, (rows, 1))).astype(np.float32)
    if qtype == QT.BF16:
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
    return quantize_rows(w, qtype)


def f16_exact(a) -> np.ndarray:
    """Values that survive an f16 cache unchanged (so f16 and f32 caches see the same inputs)."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def single_op_graph(op, inputs: dict, out_shape, src: Src, caches: dict, n: int) -> ops.Graph:
    """`op` after one Slice per input, copying it in from a persistent input "in.<name>"."""
    buffers = {k: ops.Buffer(k, *v.shape) for k, v in inputs.items()}
    if op.out not in caches:
        buffers[op.out] = ops.Buffer(op.out, *out_shape)
    cache_specs = {k: ops.KvCache(k, *v.shape) for k, v in caches.items()}
    for k, v in inputs.items():
        cache_specs[f"in.{k}"] = ops.KvCache(f"in.{k}", *v.shape)
    op_list = [ops.Slice(k, f"in.{k}", 0, 0) for k in inputs] + [op]
    return ops.Graph(n_tokens=n, buffers=buffers, caches=cache_specs, weights=dict(src.specs), ops=op_list,
                     output=op.out, labels=[f"seed {k}" for k in inputs] + ["op"])


def run_graph_on(be, g: ops.Graph, src: Src, inputs: dict, caches: dict, tokens, pos0: int):
    """Load, seed inputs and caches, compile and run; returns (output, compiled graph)."""
    be.load_weights(src.specs, src)
    be.allocate_caches({k: g.caches[k] for k in caches})
    be.declare_inputs({f"in.{k}": v.shape for k, v in inputs.items()})
    be.write_inputs({f"in.{k}": v for k, v in inputs.items()})
    for k, v in caches.items():
        seed_cache(be, k, v)
    cg = be.compile(g)
    tokens = np.asarray(tokens, np.int32)
    return cg.run(tokens, ops.one_sequence(len(tokens), pos0)), cg


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
    """Run one op on the numpy reference and on make_backend(kv_dtype); return (backend output,
    reference output, {cache: (backend's, reference's)} for extra_caches)."""
    src = src or Src()
    caches = dict(caches or {})
    n = out_shape[0] if tokens is None else len(tokens)
    toks = np.zeros(n, np.int32) if tokens is None else np.asarray(tokens, np.int32)
    g = single_op_graph(op, inputs, out_shape, src, caches, n)
    ref_be = NumpyBackend(kv_dtype=kv_dtype)
    ref, _ = run_graph_on(ref_be, g, src, inputs, caches, toks, pos0)
    be = make_backend(kv_dtype)
    try:
        out, _ = run_graph_on(be, g, src, inputs, caches, toks, pos0)
        extra = {c: (read_cache(be, c), read_cache(ref_be, c)) for c in extra_caches}
    finally:
        be.close()
    return np.asarray(out, np.float32), np.asarray(ref, np.float32), extra


def assert_close(out, ref, rel=2e-4, what=""):
    scale = float(np.abs(ref).max()) + 1e-6
    err = float(np.abs(out - ref).max())
    assert err <= rel * scale + 1e-6, f"{what}: max |diff| {err:.3g} vs max |ref| {scale:.3g}"


def _matmul_case(make_backend, qtype, n, rows, cols, seed):
    """A random [rows, cols] weight of `qtype` times n random rows on the backend and on the
    reference: (backend output, reference output, x, dequantized weight in float64)."""
    r = np.random.default_rng(seed)
    src = Src()
    raw = scaled_random_weight(r, qtype, rows, cols)
    src.add_raw("w", qtype, raw, cols)
    x = r.standard_normal((n, cols)).astype(np.float32)
    out, ref, _ = compare_op(make_backend, ops.MatMul("y", "x", "w"), {"x": x}, (n, rows), src)
    return out, ref, x, dequantize_rows(raw, qtype, cols).astype(np.float64)


def check_matmul(make_backend, qtype, n, rows, cols, seed=0):
    out, ref, x, wd = _matmul_case(make_backend, qtype, n, rows, cols, seed)
    exact = x.astype(np.float64) @ wd.T
    assert_close(ref, exact, 1e-5, "numpy reference")
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
    r = np.random.default_rng(seed)
    src = Src()
    src.add_raw("t", qtype, scaled_random_weight(r, qtype, rows, cols), cols)
    toks = r.integers(0, rows, n)
    toks[1] = toks[0]
    toks[-1] = rows - 1
    out, ref, _ = compare_op(make_backend, ops.EmbedLookup("e", "t", 1.7), {}, (n, cols), src, tokens=toks)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def check_attention(make_backend, H, Hkv, D, window, ring, n, pos0, kv_dtype="f16", seed=2):
    r = np.random.default_rng(seed)
    q = r.standard_normal((n, H * D)).astype(np.float32)
    k = f16_exact(r.standard_normal((n, Hkv * D)))
    v = f16_exact(r.standard_normal((n, Hkv * D)))
    ck = f16_exact(r.standard_normal((ring, Hkv * D)))
    cv = f16_exact(r.standard_normal((ring, Hkv * D)))
    op = ops.Attention("a", "q", "k", "v", "ck", "cv", H, Hkv, D, window, 1.0 / np.sqrt(D))
    out, ref, _ = compare_op(make_backend, op, {"q": q, "k": k, "v": v}, (n, H * D),
                             caches={"ck": ck, "cv": cv}, pos0=pos0, kv_dtype=kv_dtype)
    assert_close(out, ref, 1e-4, f"attention H={H} Hkv={Hkv} D={D} w={window} ring={ring} n={n} pos0={pos0}")


def check_kv_store(make_backend, n, ring, pos0, kv_dtype="f16", seed=3):
    r = np.random.default_rng(seed)
    cols = 48
    k = r.standard_normal((n, cols)).astype(np.float32)
    v = r.standard_normal((n, cols)).astype(np.float32)
    ck = r.standard_normal((ring, cols)).astype(np.float32)
    cv = r.standard_normal((ring, cols)).astype(np.float32)
    out, ref, extra = compare_op(make_backend, ops.KvStore("ck", "cv", "k", "v"), {"k": k, "v": v},
                                 (ring, cols), caches={"ck": ck, "cv": cv}, pos0=pos0,
                                 tokens=np.zeros(n), kv_dtype=kv_dtype, extra_caches=("cv",))
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(*extra["cv"])


def check_rmsnorm(make_backend, rows, cols, group, with_weight, seed=4):
    r = np.random.default_rng(seed)
    src = Src()
    w = None
    if with_weight:
        w = src.add("w", r.standard_normal(group).astype(np.float32))
    x = (r.standard_normal((rows, cols)) * 3).astype(np.float32)
    out, ref, _ = compare_op(make_backend, ops.RmsNorm("x", "x", w, 1e-6, group), {"x": x}, (rows, cols), src)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)


def check_rope(make_backend, rows, head_dim, n_rot, heads, pos0, with_ff, inplace, seed=5):
    r = np.random.default_rng(seed)
    src = Src()
    ff = None
    if with_ff:
        ff = src.add("ff", r.uniform(1.0, 8.0, n_rot // 2).astype(np.float32))
    x = r.standard_normal((rows, heads * head_dim)).astype(np.float32)
    out_name = "x" if inplace else "y"
    op = ops.Rope(out_name, "x", head_dim, n_rot, 1e6 if with_ff else 1e4, ff)
    out, ref, _ = compare_op(make_backend, op, {"x": x}, x.shape, src, pos0=pos0)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)


def check_elementwise(make_backend, seed=6):
    r = np.random.default_rng(seed)
    a = (r.standard_normal((5, 301)) * 4).astype(np.float32)
    b = r.standard_normal((5, 301)).astype(np.float32)
    src = Src()
    src.add("one", np.array([[0.37]], np.float32))
    cases = [
        (ops.Add("y", "a", "b"), {"a": a, "b": b}),
        (ops.Mul("a", "a", "b"), {"a": a, "b": b}),
        (ops.GeluMul("a", "a", "b"), {"a": a, "b": b}),
        (ops.Gelu("y", "a"), {"a": a}),
        (ops.Scale("y", "a", 0.125), {"a": a}),
        (ops.Scale("a", "a", 1.0, "one"), {"a": a}),
        (ops.Softcap("y", "a", 3.0), {"a": a}),
    ]
    for op, inputs in cases:
        out, ref, _ = compare_op(make_backend, op, inputs, a.shape, src)
        np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6, err_msg=op.kind)
    out, ref, _ = compare_op(make_backend, ops.Slice("y", "a", 2, 37), {"a": a}, (3, 100), src)
    np.testing.assert_array_equal(out, ref)


def check_replay(make_backend, seed=7):
    """One recorded graph replayed with new token ids and positions (the parameters buffer)."""
    r = np.random.default_rng(seed)
    src = Src()
    src.add_raw("t", QT.Q4_0, scaled_random_weight(r, QT.Q4_0, 50, 64), 64)
    op_list = [ops.EmbedLookup("x", "t", 1.0), ops.Rope("x", "x", 32, 32, 1e4, None)]
    g = ops.Graph(n_tokens=2, buffers={"x": ops.Buffer("x", 2, 64)}, caches={}, weights=dict(src.specs),
                  ops=op_list, output="x", labels=["embed", "rope"])
    ref = NumpyBackend()
    ref.load_weights(src.specs, src)
    ref.allocate_caches({})
    be = make_backend("f16")
    try:
        be.load_weights(src.specs, src)
        be.allocate_caches({})
        cg, rg = be.compile(g), ref.compile(g)
        for step in range(4):
            toks = r.integers(0, 50, 2).astype(np.int32)
            segments = ops.one_sequence(2, int(r.integers(0, 1000)))
            np.testing.assert_allclose(cg.run(toks, segments), rg.run(toks, segments), rtol=0, atol=2e-5)
        seen = []
        cg.run(toks, segments, observer=lambda i, op, arr: seen.append((i, op.kind, arr.shape)))
        assert [s[1] for s in seen] == ["embed", "rope"]
    finally:
        be.close()


# ---- media ops (the encoders, soft tokens, image blocks) ----------------------------------------
LAYERNORM_CASES = [(3, 432, True, True), (5, 64, True, False), (1, 6912, False, True), (4, 77, False, False)]
ATTN_AHEAD_CASES = [                    # H, Hkv, D, window, ring, n, pos0, blocks (row ranges)
    (4, 2, 64, 16, 16, 49, 0, [(2, 38)]),            # one 36-token image, window 16
    (4, 2, 64, 16, 16, 40, 30, [(1, 17), (20, 38)]), # two images after a cached prefix
    (2, 1, 128, 0, 64, 9, 5, [(0, 9)]),              # a global layer with keys ahead
    (4, 2, 64, 8, 8, 3, 9, [(0, 2)]),                # 3 rows: the split-K path
    (8, 2, 256, 1024, 1024, 70, 0, [(10, 60)]),
]


def check_layernorm(make_backend, rows, cols, with_weight, with_bias, seed=9):
    r = np.random.default_rng(seed)
    src = Src()
    w = src.add("w", r.uniform(0.5, 1.5, cols)) if with_weight else None
    b = src.add("b", r.standard_normal(cols)) if with_bias else None
    x = (r.standard_normal((rows, cols)) * 3 + 1.5).astype(np.float32)
    out, ref, _ = compare_op(make_backend, ops.LayerNorm("x", "x", w, b, 1e-5), {"x": x}, x.shape, src)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)
    v = x.astype(np.float64)
    exact = (v - v.mean(1, keepdims=True)) / np.sqrt(v.var(1, keepdims=True) + 1e-5)
    if w is not None:
        exact = exact * dequantize_rows(src.raw["w"], QT.F32, cols)
    if b is not None:
        exact = exact + dequantize_rows(src.raw["b"], QT.F32, cols)
    assert_close(ref, exact, 1e-6, "numpy layernorm vs float64")


def check_add_vector_gather_take(make_backend, seed=10):
    """AddVector, GatherAdd (a two-table position lookup, indexes repeated and at both ends) and
    TakeRows (some rows taken, in place and not)."""
    r = np.random.default_rng(seed)
    src = Src()
    n, cols, P = 7, 64, 16
    src.add("bias", r.standard_normal(cols))
    src.add("table", r.standard_normal((2 * P, cols)))
    x = r.standard_normal((n, cols)).astype(np.float32)
    out, ref, _ = compare_op(make_backend, ops.AddVector("y", "x", "bias"), {"x": x}, x.shape, src)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    assert_close(ref, x + dequantize_rows(src.raw["bias"], QT.F32, cols), 1e-6, "add_vector vs numpy")
    idx = np.array([[0, P], [15, 2 * P - 1], [3, P + 3], [3, P + 3], [7, P], [0, 2 * P - 1], [15, P + 8]], np.float32)
    out, ref, _ = compare_op(make_backend, ops.GatherAdd("x", "x", "table", "idx"), {"x": x, "idx": idx},
                             x.shape, src)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    table = dequantize_rows(src.raw["table"], QT.F32, cols)
    assert_close(ref, x + table[idx[:, 0].astype(int)] + table[idx[:, 1].astype(int)], 1e-6, "gather_add")
    check_take_rows(make_backend, seed)


def check_take_rows(make_backend, seed=10):
    """TakeRows: some rows taken, in place and not."""
    r = np.random.default_rng(seed)
    n, cols = 7, 64
    src = Src()
    x = r.standard_normal((n, cols)).astype(np.float32)
    soft = r.standard_normal((n, cols)).astype(np.float32)
    take = np.array([[0], [1], [1], [0], [1], [0], [0]], np.float32)
    for out_name in ("x", "y"):
        out, ref, _ = compare_op(make_backend, ops.TakeRows(out_name, "x", "soft", "take"),
                                 {"x": x, "soft": soft, "take": take}, x.shape, src)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(ref, np.where(take != 0, soft, x))


def check_attention_ahead(make_backend, H, Hkv, D, window, ring, n, pos0, blocks, kv_dtype="f16", seed=11):
    """Attention whose rows inside a block also see the later rows of their block, against the
    numpy reference and against the mask spelled out (q - kv < window and (kv <= q or same block))."""
    r = np.random.default_rng(seed)
    q = r.standard_normal((n, H * D)).astype(np.float32)
    k = f16_exact(r.standard_normal((n, Hkv * D)))
    v = f16_exact(r.standard_normal((n, Hkv * D)))
    ck = f16_exact(r.standard_normal((ring, Hkv * D)))
    cv = f16_exact(r.standard_normal((ring, Hkv * D)))
    ahead = np.zeros((n, 1), np.float32)
    for b0, b1 in blocks:
        ahead[b0:b1, 0] = np.arange(b1 - b0 - 1, -1, -1)
    scale = 1.0 / np.sqrt(D)
    op = ops.Attention("a", "q", "k", "v", "ck", "cv", H, Hkv, D, window, scale, "ahead")
    out, ref, _ = compare_op(make_backend, op, {"q": q, "k": k, "v": v, "ahead": ahead}, (n, H * D),
                             caches={"ck": ck, "cv": cv}, pos0=pos0, kv_dtype=kv_dtype)
    assert_close(out, ref, 1e-4, f"attention ahead H={H} D={D} w={window} n={n} pos0={pos0} blocks={blocks}")
    # the rule itself, in float64 over the cache rows and this batch
    kpos = np.concatenate([np.arange(max(0, pos0 - ring), pos0), pos0 + np.arange(n)])
    keys = np.concatenate([ck[kpos[kpos < pos0] % ring], k]).astype(np.float64)
    vals = np.concatenate([cv[kpos[kpos < pos0] % ring], v]).astype(np.float64)
    qpos = pos0 + np.arange(n)
    block = np.full(len(kpos), -1)
    qblock = np.full(n, -2)
    for j, (b0, b1) in enumerate(blocks):
        block[(kpos >= pos0 + b0) & (kpos < pos0 + b1)] = j
        qblock[b0:b1] = j
    allowed = (kpos[None] <= qpos[:, None]) | (block[None] == qblock[:, None])
    if window:
        allowed &= qpos[:, None] - kpos[None] < window
    want = np.zeros((n, H * D))
    for h in range(H):
        kh = h // (H // Hkv)
        s = q[:, h * D:(h + 1) * D].astype(np.float64) @ keys[:, kh * D:(kh + 1) * D].T * scale
        s = np.where(allowed, s, -np.inf)
        p = np.exp(s - s.max(1, keepdims=True))
        want[:, h * D:(h + 1) * D] = (p / p.sum(1, keepdims=True)) @ vals[:, kh * D:(kh + 1) * D]
    assert_close(ref, want, 1e-5, "numpy attention ahead vs the mask rule")
