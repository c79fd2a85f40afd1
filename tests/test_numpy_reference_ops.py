"""Each op of the numpy reference backend (backends/numpy_ref: the oracle of the op-conformance
suite, tests/test_backend_ops.py) against a plain, loop-based reimplementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from g4rt import ops
from g4rt.backends.numpy_ref import NumpyBackend
from g4rt.gguf.quant_types import dequantize_rows, quantize_rows

rng = np.random.default_rng(1234)


class MemSource:
    """A WeightSource over in-memory raw GGUF bytes."""

    def __init__(self):
        self.raw, self.specs = {}, {}

    def add(self, name, values, qtype=QT.F32):
        values = np.atleast_2d(np.asarray(values, np.float32))
        self.raw[name] = quantize_rows(values, qtype)
        self.specs[name] = ops.WeightSpec(name, qtype, values.shape[0], values.shape[1])
        return name

    def weight_bytes(self, name):
        return self.raw[name]


def run_single(op, inputs, out_shape, src=None, caches=None, tokens=None, pos0=0, backend=None):
    """Run one op on the numpy reference backend. Inputs are seeded as persistent buffers and copied in by Slice."""
    src = src or MemSource()
    caches = dict(caches or {})
    n = out_shape[0] if tokens is None else len(tokens)
    seeds = {f"seed.{k}": v for k, v in inputs.items()}
    buffers = {k: ops.Buffer(k, *v.shape) for k, v in inputs.items()}
    buffers[op.out] = ops.Buffer(op.out, *out_shape)
    cache_specs = {k: ops.KvCache(k, *v.shape) for k, v in {**caches, **seeds}.items()}
    op_list = [ops.Slice(k, f"seed.{k}", 0, 0) for k in inputs] + [op]
    g = ops.Graph(n_tokens=n, buffers=buffers, caches=cache_specs, weights=src.specs, ops=op_list, output=op.out)
    be = backend or NumpyBackend()
    be.load_weights(src.specs, src)
    be.allocate_caches(cache_specs)
    for k, v in {**caches, **seeds}.items():
        be.caches[k][...] = v
    toks = np.zeros(n, np.int32) if tokens is None else np.asarray(tokens, np.int32)
    out = be.compile(g).run(toks, ops.one_sequence(n, pos0))
    return out, be


def plain_gelu(x):
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1])
@pytest.mark.parametrize("n", [1, 3])
def test_matmul_matches_dequantized_dot(qtype, n):
    src = MemSource()
    w = rng.standard_normal((5, 64)).astype(np.float32)
    src.add("w", w, qtype)
    wd = dequantize_rows(src.raw["w"], qtype, 64)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    out, _ = run_single(ops.MatMul("y", "x", "w"), {"x": x}, (n, 5), src)
    expect = np.array([[sum(float(x[r, i]) * float(wd[o, i]) for i in range(64)) for o in range(5)] for r in range(n)])
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-4)
    # The quantized weight is close to what was quantized (catches a wrong block decoder).
    assert np.abs(wd - w).max() < (0.3 if qtype in (QT.Q4_0, QT.Q4_1) else 0.1)


def test_rmsnorm_groups_and_weight():
    x = rng.standard_normal((2, 12)).astype(np.float32)
    w = rng.standard_normal(4).astype(np.float32)
    src = MemSource()
    src.add("w", w)
    out, _ = run_single(ops.RmsNorm("y", "x", "w", 1e-6, 4), {"x": x}, (2, 12), src)
    for r in range(2):
        for g in range(3):
            v = x[r, g * 4:(g + 1) * 4].astype(np.float64)
            ref = v / math.sqrt(float(np.mean(v * v)) + 1e-6) * w
            np.testing.assert_allclose(out[r, g * 4:(g + 1) * 4], ref, rtol=1e-5, atol=1e-6)
    out2, _ = run_single(ops.RmsNorm("y", "x", None, 1e-6, 12), {"x": x}, (2, 12))
    v = x.astype(np.float64)
    np.testing.assert_allclose(out2, v / np.sqrt((v * v).mean(1, keepdims=True) + 1e-6), rtol=1e-5)


@pytest.mark.parametrize("n_rot,with_ff", [(8, False), (8, True), (4, False)])
def test_rope_neox(n_rot, with_ff):
    head_dim, heads, n, pos0 = 8, 2, 3, 5
    x = rng.standard_normal((n, heads * head_dim)).astype(np.float32)
    src = MemSource()
    ff = np.array([1.0, 2.0, 1e30, 1e30][: n_rot // 2], np.float32)
    if with_ff:
        src.add("ff", ff)
    out, _ = run_single(ops.Rope("y", "x", head_dim, n_rot, 10000.0, "ff" if with_ff else None), {"x": x},
                        (n, heads * head_dim), src, pos0=pos0)
    for r in range(n):
        p = pos0 + r
        for h in range(heads):
            v = x[r, h * head_dim:(h + 1) * head_dim].astype(np.float64)
            e = v.copy()
            for i in range(n_rot // 2):
                theta = p * 10000.0 ** (-2 * i / n_rot) / (float(ff[i]) if with_ff else 1.0)
                a, b = v[i], v[i + n_rot // 2]
                e[i] = a * math.cos(theta) - b * math.sin(theta)
                e[i + n_rot // 2] = a * math.sin(theta) + b * math.cos(theta)
            np.testing.assert_allclose(out[r, h * head_dim:(h + 1) * head_dim], e, rtol=1e-5, atol=1e-5)


def plain_attention(qrows, keys_by_pos, vals_by_pos, qpos, n_head, n_kv, D, window, scale):
    out = np.zeros((len(qrows), n_head * D))
    for r, p in enumerate(qpos):
        lo = max(0, p - window + 1) if window else 0
        for h in range(n_head):
            kh = h // (n_head // n_kv)
            q = qrows[r, h * D:(h + 1) * D].astype(np.float64)
            s = [scale * float(q @ keys_by_pos[j][kh * D:(kh + 1) * D]) for j in range(lo, p + 1)]
            m = max(s)
            e = [math.exp(v - m) for v in s]
            tot = sum(e)
            for w_, j in zip(e, range(lo, p + 1)):
                out[r, h * D:(h + 1) * D] += w_ / tot * vals_by_pos[j][kh * D:(kh + 1) * D]
    return out


@pytest.mark.parametrize("window,ring,pos0,n", [(0, 32, 0, 5), (0, 32, 7, 3), (4, 4, 9, 1), (4, 4, 6, 6), (5, 5, 11, 2)])
def test_attention_window_gqa_ring(window, ring, pos0, n):
    n_head, n_kv, D = 4, 2, 8
    total = pos0 + n
    K = rng.standard_normal((total, n_kv * D)).astype(np.float32)
    V = rng.standard_normal((total, n_kv * D)).astype(np.float32)
    q = rng.standard_normal((n, n_head * D)).astype(np.float32)
    ck = np.zeros((ring, n_kv * D), np.float32)
    cv = np.zeros((ring, n_kv * D), np.float32)
    for p in range(pos0):                       # earlier positions live in the ring
        ck[p % ring], cv[p % ring] = K[p], V[p]
    op = ops.Attention("y", "q", "k", "v", "ck", "cv", n_head, n_kv, D, window, 0.7)
    out, _ = run_single(op, {"q": q, "k": K[pos0:], "v": V[pos0:]}, (n, n_head * D),
                        caches={"ck": ck, "cv": cv}, pos0=pos0)
    ref = plain_attention(q, K, V, range(pos0, total), n_head, n_kv, D, window, 0.7)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_kv_store_ring_keeps_last_positions():
    ring, n, pos0 = 4, 6, 3
    k = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    v = -k
    op = ops.KvStore("ck", "cv", "k", "v")
    _, be = run_single(op, {"k": k, "v": v}, (ring, 2), caches={"ck": np.zeros((ring, 2)), "cv": np.zeros((ring, 2))},
                       tokens=np.zeros(n), pos0=pos0)
    for p in range(pos0 + n - ring, pos0 + n):
        np.testing.assert_array_equal(be.caches["ck"][p % ring], k[p - pos0])
        np.testing.assert_array_equal(be.caches["cv"][p % ring], v[p - pos0])


def test_elementwise_ops():
    a = rng.standard_normal((2, 6)).astype(np.float32)
    b = rng.standard_normal((2, 6)).astype(np.float32)
    gm, _ = run_single(ops.GeluMul("y", "a", "b"), {"a": a, "b": b}, (2, 6))
    np.testing.assert_allclose(gm, [[plain_gelu(float(x)) * float(y) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)], rtol=1e-5, atol=1e-6)
    g, _ = run_single(ops.Gelu("y", "a"), {"a": a}, (2, 6))
    np.testing.assert_allclose(g, np.vectorize(plain_gelu)(a.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_single(ops.Add("y", "a", "b"), {"a": a, "b": b}, (2, 6))[0], a + b)
    np.testing.assert_allclose(run_single(ops.Mul("y", "a", "b"), {"a": a, "b": b}, (2, 6))[0], a * b)
    src = MemSource()
    src.add("s", [[0.5]])
    np.testing.assert_allclose(run_single(ops.Scale("y", "a", 3.0, "s"), {"a": a}, (2, 6), src)[0], a * 1.5, rtol=1e-6)
    sc, _ = run_single(ops.Softcap("y", "a", 2.0), {"a": a * 10}, (2, 6))
    np.testing.assert_allclose(sc, 2.0 * np.tanh(a * 10 / 2.0), rtol=1e-5)
    sl, _ = run_single(ops.Slice("y", "a", 1, 2), {"a": a}, (1, 3))
    np.testing.assert_array_equal(sl, a[1:2, 2:5])


@pytest.mark.parametrize("qtype", [QT.F32, QT.Q8_0, QT.Q4_0])
def test_embed_lookup_dequantizes_rows(qtype):
    src = MemSource()
    table = rng.standard_normal((10, 32)).astype(np.float32)
    src.add("emb", table, qtype)
    full = dequantize_rows(src.raw["emb"], qtype, 32)
    ids = [7, 0, 7, 3]
    out, _ = run_single(ops.EmbedLookup("y", "emb", 2.0), {}, (4, 32), src, tokens=ids)
    np.testing.assert_allclose(out, full[ids] * 2.0, rtol=1e-6)


def test_weight_cache_respects_cap():
    src = MemSource()
    for i in range(4):
        src.add(f"w{i}", rng.standard_normal((16, 32)), QT.F32)
    be = NumpyBackend(cache_bytes=2 * 16 * 32 * 4)
    be.load_weights(src.specs, src)
    for i in range(4):
        be.weight(f"w{i}")
    assert be._dequant_bytes <= 2 * 16 * 32 * 4 and len(be._dequant) == 2
