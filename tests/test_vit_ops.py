"""The vision encoder ops (ops.py "vision encoder ops": Clamp, Rope2D, FullAttention, PoolRows,
Standardize): the numpy reference against independent float64 formulas (transformers' forms),
and the native CPU kernels (shaders/cpu/vit_ops.c) against the reference, odd sizes, 1-3 threads."""

from __future__ import annotations

import numpy as np
import pytest

from g4rt import ops
from g4rt.backends.numpy_ref.backend import full_attention, pool_rows, rope2d
from op_cases import Src, assert_close, compare_op

THREADS = [1, 2, 3]


def cpu(threads):
    from g4rt.backends.cpu import CpuBackend
    return lambda kv_dtype: CpuBackend(threads=threads, kv_dtype=kv_dtype, precision="exact")


@pytest.fixture(scope="module", autouse=True)
def _native():
    try:
        from g4rt.backends.cpu import native
        native.load()
    except Exception as e:   # noqa: BLE001 - no compiler on this host
        pytest.skip(f"native CPU library unavailable: {e}")


# ---- the reference against independent formulas -----------------------------------------------
def _hf_rope2d(x, pos, head_dim, base):
    """transformers' Gemma4VisionRotaryEmbedding + apply_multidimensional_rope, in float64."""
    rows = x.shape[0]
    xh = x.astype(np.float64).reshape(rows, -1, head_dim)
    spatial = head_dim // 2
    inv = 1.0 / base ** (np.arange(0, spatial, 2, dtype=np.float64) / spatial)
    out = []
    for axis in (0, 1):
        part = xh[:, :, axis * spatial:(axis + 1) * spatial]
        f = pos[:, axis, None].astype(np.float64) * inv[None]               # [rows, spatial/2]
        cos, sin = np.cos(np.concatenate([f, f], 1))[:, None], np.sin(np.concatenate([f, f], 1))[:, None]
        rot = np.concatenate([-part[..., spatial // 2:], part[..., :spatial // 2]], -1)
        out.append(part * cos + rot * sin)
    return np.concatenate(out, -1).reshape(rows, -1)


def test_rope2d_reference_is_transformers_axial_rope():
    r = np.random.default_rng(1)
    for hd, heads in ((16, 3), (8, 1), (72, 2)):
        x = r.standard_normal((13, hd * heads)).astype(np.float32)
        pos = np.stack([r.integers(0, 40, 13), r.integers(0, 40, 13)], 1)
        assert_close(rope2d(x, pos, hd, 100.0), _hf_rope2d(x, pos, hd, 100.0), 1e-5, f"rope2d hd {hd}")


def test_full_attention_and_pooling_references():
    r = np.random.default_rng(2)
    n, H, Hkv, D = 11, 4, 2, 8
    q, k, v = (r.standard_normal((n, h * D)).astype(np.float32) for h in (H, Hkv, Hkv))
    got = full_attention(q, k, v, H, Hkv, D, 0.7)
    for h in range(H):
        kh = h // (H // Hkv)
        s = 0.7 * q[:, h * D:(h + 1) * D].astype(np.float64) @ k[:, kh * D:(kh + 1) * D].T.astype(np.float64)
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        assert_close(got[:, h * D:(h + 1) * D], p @ v[:, kh * D:(kh + 1) * D], 1e-5, f"head {h}")
    x = r.standard_normal((18, 5)).astype(np.float32)
    assert_close(pool_rows(x, 9, 3.0), 3.0 * x.astype(np.float64).reshape(2, 9, 5).mean(1), 1e-6, "pool")


# ---- native CPU against the reference ------------------------------------------------------------
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("rows,cols", [(1, 5), (7, 33), (37, 64)])
def test_clamp(threads, rows, cols):
    r = np.random.default_rng(rows + cols)
    x = (3 * r.standard_normal((rows, cols))).astype(np.float32)
    for lo, hi in ((-1.25, 2.5), (-np.inf, 0.5), (-0.5, np.inf)):
        out, ref, _ = compare_op(cpu(threads), ops.Clamp("y", "x", lo, hi), {"x": x}, x.shape)
        assert np.array_equal(out, ref)
        assert np.array_equal(ref, np.clip(x, np.float32(lo), np.float32(hi)))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("rows,head_dim,heads,base", [(1, 16, 2, 100.0), (29, 8, 3, 100.0), (45, 72, 2, 1e4)])
@pytest.mark.parametrize("inplace", [False, True])
def test_rope2d(threads, rows, head_dim, heads, base, inplace):
    r = np.random.default_rng(rows * head_dim)
    x = r.standard_normal((rows, head_dim * heads)).astype(np.float32)
    pos = np.stack([r.integers(0, 64, rows), r.integers(0, 64, rows)], 1).astype(np.float32)
    op = ops.Rope2D("x" if inplace else "y", "x", "pos", head_dim, base)
    out, ref, _ = compare_op(cpu(threads), op, {"x": x, "pos": pos}, x.shape)
    assert_close(out, ref, 2e-6, "rope2d")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n,H,Hkv,D,scale", [(1, 2, 2, 16, 1.0), (13, 3, 1, 8, 0.5), (50, 2, 2, 20, 1.0)])
def test_full_attention(threads, n, H, Hkv, D, scale):
    r = np.random.default_rng(n + D)
    q, k, v = (r.standard_normal((n, h * D)).astype(np.float32) for h in (H, Hkv, Hkv))
    op = ops.FullAttention("o", "q", "k", "v", H, Hkv, D, scale)
    out, ref, _ = compare_op(cpu(threads), op, {"q": q, "k": k, "v": v}, (n, H * D))
    assert_close(out, ref, 2e-5, "full attention")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("out_rows,group,cols", [(1, 9, 7), (5, 9, 32), (3, 4, 65)])
def test_pool_rows(threads, out_rows, group, cols):
    r = np.random.default_rng(out_rows * group + cols)
    x = r.standard_normal((out_rows * group, cols)).astype(np.float32)
    op = ops.PoolRows("y", "x", group, float(np.sqrt(cols)))
    out, ref, _ = compare_op(cpu(threads), op, {"x": x}, (out_rows, cols), tokens=np.zeros(out_rows * group))
    assert_close(out, ref, 1e-6, "pool_rows")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("rows,cols", [(1, 3), (9, 32), (31, 70)])
def test_standardize(threads, rows, cols):
    r = np.random.default_rng(rows + 3 * cols)
    src = Src()
    bias, scale = r.standard_normal(cols), 0.5 + r.random(cols)
    src.add("bias", bias)
    src.add("scale", scale)
    x = (4 * r.standard_normal((rows, cols))).astype(np.float32)
    for out_name in ("x", "y"):
        out, ref, _ = compare_op(cpu(threads), ops.Standardize(out_name, "x", "bias", "scale"), {"x": x}, x.shape, src)
        assert np.array_equal(out, ref)
    want = (x - bias.astype(np.float32)) * scale.astype(np.float32)
    assert_close(ref, want, 1e-6, "standardize vs numpy")
