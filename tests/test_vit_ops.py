"""The vision encoder ops (ops.py "vision encoder ops": Clamp, Rope2D, FullAttention, PoolRows,
Standardize): the numpy reference against independent float64 formulas (transformers' forms),
and the native CPU kernels (shaders/cpu/vit_ops.c, 1-3 threads) and the Vulkan kernels
(shaders/glsl/media_elem.comp, rope2d.comp, full_attention.comp) against the reference, odd sizes;
on Vulkan also split into row bands (buffers larger than one storage buffer)."""

from __future__ import annotations

import numpy as np
import pytest

from g4rt import ops
from g4rt.backends.numpy_ref.backend import full_attention, pool_rows, rope2d
from conftest import vulkan_skip_reason
from g4rt.errors import G4rtError
from op_cases import Case, Src, assert_close, compare_op, rel_err
from cuda_targets import CUDA_NAMES, cuda_maker, cuda_skip

THREADS = [1, 2, 3]
VK_SKIP = vulkan_skip_reason()
#: backends under test: the native CPU at 1-3 threads, Vulkan (skipped with the reason when absent)
TARGETS = [pytest.param(("cpu", t), id=f"cpu{t}") for t in THREADS] + [
    pytest.param(("vulkan", 0), id="vulkan", marks=pytest.mark.skipif(VK_SKIP is not None, reason=VK_SKIP or ""))]
needs_vulkan = pytest.mark.skipif(VK_SKIP is not None, reason=VK_SKIP or "")
#: and the CUDA kernels (shaders/cuda/media.cu) on cuda / cuda-emulated / cuda-sim (tests/cuda_targets.py)
TARGETS += [pytest.param(("cuda", n), id=n, marks=pytest.mark.skipif(cuda_skip(n) is not None, reason=cuda_skip(n) or ""))
            for n in CUDA_NAMES]


def cpu(threads):
    from g4rt.backends.cpu import CpuBackend
    return lambda kv_dtype: CpuBackend(threads=threads, kv_dtype=kv_dtype, precision="exact")


def vulkan(**options):
    from g4rt.backends.vulkan import VulkanBackend
    return lambda kv_dtype="f32": VulkanBackend(kv_dtype=kv_dtype, **options)


def backend(target):
    kind, threads = target
    if kind == "vulkan":
        return vulkan()
    if kind == "cuda":
        return cuda_maker(threads)
    try:
        from g4rt.backends.cpu import native
        native.load()
    except Exception as e:   # noqa: BLE001 - no compiler on this host
        pytest.skip(f"native CPU library unavailable: {e}")
    return cpu(threads)


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
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rows,cols", [(1, 5), (7, 33), (37, 64)])
def test_clamp(target, rows, cols):
    r = np.random.default_rng(rows + cols)
    x = (3 * r.standard_normal((rows, cols))).astype(np.float32)
    for lo, hi in ((-1.25, 2.5), (-np.inf, 0.5), (-0.5, np.inf)):
        out, ref, _ = compare_op(backend(target), ops.Clamp("y", "x", lo, hi), {"x": x}, x.shape)
        assert np.array_equal(out, ref)
        assert np.array_equal(ref, np.clip(x, np.float32(lo), np.float32(hi)))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rows,head_dim,heads,base", [(1, 16, 2, 100.0), (29, 8, 3, 100.0), (45, 72, 2, 1e4)])
@pytest.mark.parametrize("inplace", [False, True])
def test_rope2d(target, rows, head_dim, heads, base, inplace):
    r = np.random.default_rng(rows * head_dim)
    x = r.standard_normal((rows, head_dim * heads)).astype(np.float32)
    pos = np.stack([r.integers(0, 64, rows), r.integers(0, 64, rows)], 1).astype(np.float32)
    op = ops.Rope2D("x" if inplace else "y", "x", "pos", head_dim, base)
    out, ref, _ = compare_op(backend(target), op, {"x": x, "pos": pos}, x.shape)
    assert_close(out, ref, 2e-6, "rope2d")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n,H,Hkv,D,scale", [(1, 2, 2, 16, 1.0), (13, 3, 1, 8, 0.5), (50, 2, 2, 20, 1.0),
                                            (300, 2, 1, 64, 0.125), (37, 2, 2, 128, 0.3), (9, 1, 1, 32, 1.0)])
def test_full_attention(target, n, H, Hkv, D, scale):
    r = np.random.default_rng(n + D)
    q, k, v = (r.standard_normal((n, h * D)).astype(np.float32) for h in (H, Hkv, Hkv))
    op = ops.FullAttention("o", "q", "k", "v", H, Hkv, D, scale)
    out, ref, _ = compare_op(backend(target), op, {"q": q, "k": k, "v": v}, (n, H * D))
    assert_close(out, ref, 2e-5, "full attention")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("out_rows,group,cols", [(1, 9, 7), (5, 9, 32), (3, 4, 65)])
def test_pool_rows(target, out_rows, group, cols):
    r = np.random.default_rng(out_rows * group + cols)
    x = r.standard_normal((out_rows * group, cols)).astype(np.float32)
    op = ops.PoolRows("y", "x", group, float(np.sqrt(cols)))
    out, ref, _ = compare_op(backend(target), op, {"x": x}, (out_rows, cols), tokens=np.zeros(out_rows * group))
    assert_close(out, ref, 1e-6, "pool_rows")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rows,cols", [(1, 3), (9, 32), (31, 70)])
def test_standardize(target, rows, cols):
    r = np.random.default_rng(rows + 3 * cols)
    src = Src()
    bias, scale = r.standard_normal(cols), 0.5 + r.random(cols)
    src.add("bias", bias)
    src.add("scale", scale)
    x = (4 * r.standard_normal((rows, cols))).astype(np.float32)
    for out_name in ("x", "y"):
        out, ref, _ = compare_op(backend(target), ops.Standardize(out_name, "x", "bias", "scale"), {"x": x}, x.shape, src)
        assert np.array_equal(out, ref)
    want = (x - bias.astype(np.float32)) * scale.astype(np.float32)
    assert_close(ref, want, 1e-6, "standardize vs numpy")


# ---- Vulkan: buffers split into row bands ---------------------------------------------------------
@needs_vulkan
def test_vulkan_media_ops_split_into_row_bands():
    """4 KiB storage buffers: every [50, 64] buffer spans 4 bands (16 rows each), K and V of the
    GQA attention ([50, 16]) fit one; each op runs band by band (global row numbers) and the
    chain agrees with the reference."""
    n, D, H, P = 50, 16, 4, 20
    r = np.random.default_rng(5)
    c = Case(n)
    x = c.input("x", 2 * r.standard_normal((n, H * D)))
    idx = c.input("idx", np.stack([r.integers(0, P, n), P + r.integers(0, P, n)], 1))
    pos = c.input("pos", np.stack([r.integers(0, 30, n), r.integers(0, 30, n)], 1))
    k = c.input("k", r.standard_normal((n, D)))
    v = c.input("v", r.standard_normal((n, D)))
    wide = c.input("wide", 3 * r.standard_normal((n, 2 * H * D)))
    for name, rows in (("lw", 1), ("lb", 1), ("bias", 1), ("sb", 1), ("ss", 1)):
        c.src.add(name, (0.5 + r.random((rows, H * D))) if name in ("lw", "ss") else r.standard_normal((rows, H * D)))
    c.src.add("table", r.standard_normal((2 * P, H * D)))
    c.ops += [
        ops.LayerNorm(c.buf("h", H * D), x, "lw", "lb", 1e-5),
        ops.AddVector("h", "h", "bias"),
        ops.GatherAdd("h", "h", "table", idx),
        ops.Clamp("h", "h", -1.5, 2.0),
        ops.Rope2D(c.buf("q", H * D), "h", pos, D, 100.0),
        ops.FullAttention(c.buf("a", H * D), "q", k, v, H, 1, D, 0.25),
        ops.Glu(c.buf("g", H * D), wide),
        ops.Add("a", "a", "g"),
        ops.Silu("a", "a"),
        ops.PoolRows(c.buf("p", H * D, rows=n // 2), "a", 2, 3.0),
        ops.Standardize("p", "p", "sb", "ss"),
    ]
    from g4rt.backends.numpy_ref import NumpyBackend
    ref_be, be = NumpyBackend(kv_dtype="f32"), vulkan(max_buffer_bytes=4096)()
    try:
        for b in (ref_be, be):
            b.load_weights(c.src.specs, c.src)
            b.allocate_caches({})
        vg = be.compile(c.graph("p"))
        assert len(vg.locs["h"].pieces) == 4 and len(vg.locs["wide"].pieces) == 7 and len(vg.locs["k"].pieces) == 1
        tokens, seg = np.arange(n, dtype=np.int32), ops.one_sequence(n, 0)
        want = ref_be.compile(c.graph("p")).run(tokens, seg)
        err = rel_err(np.asarray(vg.run(tokens, seg)), want)
    finally:
        be.close()
    assert err < 2e-6, err


@needs_vulkan
def test_vulkan_full_attention_refuses_keys_split_across_buffers():
    n, D, H = 40, 16, 2
    r = np.random.default_rng(6)
    c = Case(n)
    q = c.input("q", r.standard_normal((n, H * D)))
    c.ops.append(ops.FullAttention(c.buf("a", H * D), q, q, q, H, H, D, 0.25))
    be = vulkan(max_buffer_bytes=2048)()
    try:
        be.load_weights(c.src.specs, c.src)
        be.allocate_caches({})
        with pytest.raises(G4rtError, match="split across two Vulkan storage buffers"):
            be.compile(c.graph("a"))
    finally:
        be.close()
