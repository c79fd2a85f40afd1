"""Op-list test cases shared by the backend op tests (Vulkan, native CPU, ...): random GGUF
weights, an in-memory weight source, graphs whose inputs are embedded from F32 tables (so any
backend runs them as plain op lists), and the relative error used as the bound."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from g4rt import ops as O
from g4rt.gguf.quant_types import block_geometry, quantize_rows

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
        self.specs: dict[str, O.WeightSpec] = {}

    def add_raw(self, name, qtype, raw, cols):
        self.raw[name] = np.ascontiguousarray(raw)
        self.specs[name] = O.WeightSpec(name, qtype, raw.shape[0], cols)
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
        self.buffers = {"tokens": O.Buffer("tokens", n, 1, "i32")}
        self.ops: list[O.Op] = []
        self.caches: dict[str, O.KvCache] = {}

    def buf(self, name, cols, rows=None):
        self.buffers[name] = O.Buffer(name, self.n if rows is None else rows, cols)
        return name

    def input(self, name, values):
        values = np.asarray(values, np.float32)
        assert values.shape[0] == self.n
        table = self.src.add(f"in.{name}", values)
        self.buf(name, values.shape[1])
        self.ops.append(O.EmbedLookup(name, table, 1.0))
        return name

    def graph(self, out):
        return O.Graph(n_tokens=self.n, buffers=dict(self.buffers), caches=dict(self.caches),
                       weights=dict(self.src.specs), ops=list(self.ops), output=out,
                       labels=[f"op{i}.{op.kind}" for i, op in enumerate(self.ops)])



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
    c.caches = {"ck": O.KvCache("ck", ring, n_kv * D), "cv": O.KvCache("cv", ring, n_kv * D)}
    c.ops.append(O.Attention(c.buf("o", n_head * D), q, k, v, "ck", "cv", n_head, n_kv, D, window,
                             0.125 * 8 / D ** 0.5))
    c.ops.append(O.KvStore("ck", "cv", k, v))
    return c


def long_cache_decode(backends, D=512, n_head=2, n_kv=1, ring=3072, fill=(1000, 1000, 1000)):
    """Fill a `ring`-row global f32 KV cache on every backend (KvStore only, no attention), then
    run one decode row attending over all of it; returns each backend's attention output."""
    caches = {"ck": O.KvCache("ck", ring, n_kv * D), "cv": O.KvCache("cv", ring, n_kv * D)}
    for be in backends:
        be.allocate_caches(caches)
    pos = 0
    for i, n in enumerate(fill):
        r = np.random.default_rng(100 + i)
        c = Case(n)
        k = c.input("k", r.standard_normal((n, n_kv * D)))
        v = c.input("v", r.standard_normal((n, n_kv * D)))
        c.caches = caches
        c.ops.append(O.KvStore("ck", "cv", k, v))
        for be in backends:
            be.load_weights(c.src.specs, c.src)
            be.compile(c.graph("k")).run(np.arange(n), pos)
        pos += n
    c = attention_case(1, n_head, n_kv, D, 0, ring, seed=5)
    c.caches = caches
    outs = []
    for be in backends:
        be.load_weights(c.src.specs, c.src)
        outs.append(np.array(be.compile(c.graph("o")).run(np.arange(1), pos), copy=True))
    return outs


def elementwise_case() -> Case:
    """GeLU·up, GeLU, add, mul, scale (also by a one-element weight), softcap, slice, and an
    in-place GeLU·up, on 4 rows of 96; the output buffer is "sl"."""
    c = Case(4)
    a_ = c.input("a", rng.standard_normal((4, 96)) * 4)
    b_ = c.input("b", rng.standard_normal((4, 96)))
    by = c.src.add("by", [[0.37]])
    c.ops += [
        O.GeluMul(c.buf("gm", 96), a_, b_),
        O.Gelu(c.buf("g", 96), a_),
        O.Add(c.buf("s", 96), "gm", "g"),
        O.Mul("s", "s", b_),
        O.Scale("s", "s", 1.7),
        O.Scale("s", "s", 0.5, by),
        O.Softcap(c.buf("sc", 96), "s", 3.0),
        O.Slice(c.buf("sl", 40, rows=2), "sc", 1, 50),
        O.GeluMul(a_, a_, b_),
    ]
    return c
