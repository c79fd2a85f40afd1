"""The media encoders on the CUDA backend (kernels: shaders/cuda/media.cu, conformer.cu; lowerings:
runtime/backends/cuda/media_lowering.py), beyond the shared per-op cases (test_vit_ops.py,
test_mmproj_gemma4a.py's op tests, test_backend_ops.py's layernorm / add_vector / gather_add):
sizes that cross the kernels' tiles (full attention's 32-key tiles and 16-row blocks, head dims
over several lane slots, windows over 32 keys), outputs in place and onto an operand, F16 weights,
the lowerings' refusals, and whole encoders (gemma4uv / gemma4ua, gemma4v, gemma4a) against the
numpy reference and transformers' soft tokens.

Targets (tests/cuda_targets.py): cuda (a device, or G4RT_CUDA_EMULATE's stand-in), cuda-emulated
(the host code with numpy kernels), cuda-sim (the kernel sources on the CPU simulator); each is
skipped with the reason where it cannot run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from cuda_targets import CUDA_PARAMS, cuda_backend, cuda_maker, cuda_skip
from g4rt import ops
from g4rt.errors import G4rtError
from op_cases import Src, assert_close, compare_op, run_graph_on, single_op_graph

REPO = Path(__file__).resolve().parents[1]
MM = Path(os.environ.get("G4RT_FIXTURES_MM", REPO.parent / "shared" / "fixtures-mm"))
DATA = REPO / "tests" / "data"


def _qkv(r, n, H, Hkv, D, amp=1.0):
    return tuple((amp * r.standard_normal((n, h * D))).astype(np.float32) for h in (H, Hkv, Hkv))


def _defines(fname: str) -> dict[str, int]:
    """The integer #defines of a shaders/cuda file (simple expressions of earlier ones evaluated)."""
    out: dict[str, int] = {}
    for name, expr in re.findall(r"^#define (\w+) ([^\n/]+)", (REPO / "shaders" / "cuda" / fname).read_text(), re.M):
        expr = re.sub(r"\b[A-Z_]\w*\b", lambda m: str(out.get(m.group(0), m.group(0))), expr.strip())
        if re.fullmatch(r"[\d\s()+*/-]+", expr):
            out[name] = int(eval(expr))          # noqa: S307 - digits and operators only
    return out


def test_host_geometry_matches_the_kernels_defines():
    from g4rt.backends.cuda import kernels
    media, conformer = _defines("media.cu"), _defines("conformer.cu")
    assert (kernels.FA_ROWS, kernels.FA_THREADS, kernels.FA_DMAX) == \
        (media["FA_ROWS"], media["FA_THREADS"], media["FA_DMAX"])
    assert (kernels.CV_MAX_CI, kernels.CV_MAX_CO) == (conformer["CV_MAX_CI"], conformer["CV_MAX_CO"])
    assert (kernels.CA_WARPS, kernels.CA_DMAX, kernels.CA_MAXW) == \
        (conformer["CA_WARPS"], conformer["CA_DMAX"], conformer["CA_MAXW"])


# ---- full attention: tiles, blocks, lane slots, extreme scores, outputs onto an operand ------------
@pytest.mark.parametrize("target", CUDA_PARAMS)
@pytest.mark.parametrize("n,H,Hkv,D,scale,amp", [
    (70, 2, 1, 72, 0.125, 1.0),     # 3 key tiles (the last partial), 5 row blocks, D over 3 lane slots
    (33, 1, 1, 128, 0.09, 1.0),     # the largest head dim, one key past a tile
    (70, 4, 2, 64, 0.125, 6.0),     # GQA; scores of std ~36 (peaked): the online softmax's rescaling
    (1, 1, 1, 4, 1.0, 1.0),         # one row, a tiny head
])
def test_full_attention_across_tiles(target, n, H, Hkv, D, scale, amp):
    r = np.random.default_rng(n * D + H)
    q, k, v = _qkv(r, n, H, Hkv, D, amp)
    op = ops.FullAttention("o", "q", "k", "v", H, Hkv, D, scale)
    out, ref, _ = compare_op(cuda_maker(target), op, {"q": q, "k": k, "v": v}, (n, H * D))
    assert np.isfinite(out).all()
    assert_close(out, ref, 2e-5, f"full attention n {n} D {D}")


@pytest.mark.parametrize("target", CUDA_PARAMS)
@pytest.mark.parametrize("out_name", ["q", "k", "v"])
def test_full_attention_in_place(target, out_name):
    """Onto q (each block reads its own q rows first) and onto k / v (read by every block: a
    scratch output, then a copy)."""
    r = np.random.default_rng(5)
    q, k, v = _qkv(r, 40, 2, 2, 16)
    op = ops.FullAttention(out_name, "q", "k", "v", 2, 2, 16, 0.25)
    out, ref, _ = compare_op(cuda_maker(target), op, {"q": q, "k": k, "v": v}, (40, 32))
    assert_close(out, ref, 2e-5, f"full attention into {out_name}")


# ---- conformer ops at wider shapes ---------------------------------------------------------------
@pytest.mark.parametrize("target", CUDA_PARAMS)
@pytest.mark.parametrize("T,F,ci,co,masked,qtype", [
    (11, 20, 16, 48, 3, QT.F32),      # several channels in, block of 64 threads
    (7, 9, 1, 300, 0, QT.F32),        # the first subsampling block's shape: 1 channel in, many out
    (5, 8, 40, 8, 1, QT.F16),         # an F16 kernel (dequantized once), mask
])
def test_conv2d_norm_relu_widths(target, T, F, ci, co, masked, qtype):
    r = np.random.default_rng(T * F + co)
    src = Src()
    src.add("w", (r.standard_normal((co * ci * 3, 3)) / np.sqrt(9 * ci)).astype(np.float32), qtype)
    src.add("n", 1 + 0.3 * r.standard_normal(co))
    x = r.standard_normal((T, F * ci)).astype(np.float32)
    mask = np.ones((T, 1), np.float32)
    if masked:
        mask[-masked:] = 0
    To, Fo = (T + 1) // 2, (F + 1) // 2
    op = ops.Conv2dNormRelu("o", "x", "m", "w", "n", ci, co, 1e-6)
    out, ref, _ = compare_op(cuda_maker(target), op, {"x": x, "m": mask}, (To, Fo * co), src, tokens=np.zeros(T))
    assert_close(out, ref, 5e-6, "conv2d_norm_relu")
    assert (ref > 0).any() and (ref == 0).any()


@pytest.mark.parametrize("target", CUDA_PARAMS)
@pytest.mark.parametrize("T,H,D,window,valid,per_dim,out_name", [
    (30, 2, 128, 12, 26, True, "o"),    # the conformer's window, a 128-wide head (4 lane slots)
    (50, 1, 40, 40, 47, False, "o"),    # a window past 32 keys: the second score slot
    (20, 3, 24, 12, 20, True, "q"),     # onto q (a warp reads its own q row first)
    (20, 2, 16, 12, 15, False, "k"),    # onto k: a scratch output, then a copy
])
def test_chunked_attention_shapes(target, T, H, D, window, valid, per_dim, out_name):
    r = np.random.default_rng(T + D + window)
    src = Src()
    width = 2 * D
    src.add("rel", (r.standard_normal((H * D, width)) / np.sqrt(width)).astype(np.float32))
    if per_dim:
        src.add("pd", 0.5 + r.random(D))
    q, k, v = (3 * r.standard_normal((T, H * D))).astype(np.float32), \
        (3 * r.standard_normal((T, H * D))).astype(np.float32), r.standard_normal((T, H * D)).astype(np.float32)
    op = ops.ChunkedAttention(out_name, "q", "k", "v", "rel", "pd" if per_dim else None, H, D, 0.3, 1.3, 50.0,
                              window, valid)
    out, ref, _ = compare_op(cuda_maker(target), op, {"q": q, "k": k, "v": v}, (T, H * D), src)
    assert_close(out, ref, 1e-5, "chunked attention")
    # rows whose keys are all padded frames (t >= valid + window - 1) are zeros
    dead = np.arange(T) >= valid + window - 1
    assert np.array_equal(out[dead], np.zeros_like(out[dead]))


@pytest.mark.parametrize("target", CUDA_PARAMS)
def test_depthwise_conv_glu_silu_in_place(target):
    """DepthwiseConv1d onto its own input (later rows read earlier ones: a scratch output), Glu
    and Silu at the conformer's width."""
    r = np.random.default_rng(7)
    src = Src()
    src.add("w", r.standard_normal((96, 5)))
    x = r.standard_normal((21, 96)).astype(np.float32)
    out, ref, _ = compare_op(cuda_maker(target), ops.DepthwiseConv1d("x", "x", "w"), {"x": x}, x.shape, src)
    assert_close(out, ref, 2e-6, "depthwise conv in place")
    wide = (4 * r.standard_normal((21, 192))).astype(np.float32)
    out, ref, _ = compare_op(cuda_maker(target), ops.Glu("g", "x"), {"x": wide}, (21, 96))
    assert_close(out, ref, 2e-6, "glu")
    out, ref, _ = compare_op(cuda_maker(target), ops.Silu("x", "x"), {"x": wide}, wide.shape)
    assert_close(out, ref, 2e-6, "silu")


@pytest.mark.parametrize("target", CUDA_PARAMS)
def test_layernorm_f16_weights_and_clamp_infinite_bounds(target):
    r = np.random.default_rng(8)
    src = Src()
    src.add("w", r.uniform(0.5, 1.5, 300), QT.F16)
    src.add("b", r.standard_normal(300), QT.F16)
    x = (5 * r.standard_normal((9, 300)) + 2).astype(np.float32)
    out, ref, _ = compare_op(cuda_maker(target), ops.LayerNorm("x", "x", "w", "b", 1e-6), {"x": x}, x.shape, src)
    assert_close(out, ref, 2e-6, "layernorm, F16 weight and bias")
    for lo, hi in ((-1e10, 1e10), (-np.inf, 0.25), (-0.5, np.inf)):
        out, ref, _ = compare_op(cuda_maker(target), ops.Clamp("x", "x", lo, hi), {"x": x}, x.shape)
        assert np.array_equal(out, ref), (lo, hi)


# ---- the lowerings' refusals ---------------------------------------------------------------------
def _refusal(op, inputs, out_shape, src=None, tokens=None):
    """The G4rtError compiling `op` on the CUDA backend (emulated: the lowering is host code)."""
    src = src or Src()
    n = out_shape[0] if tokens is None else len(tokens)
    g = single_op_graph(op, inputs, out_shape, src, {}, n)
    be = cuda_backend("cuda-emulated")
    try:
        with pytest.raises(G4rtError) as e:
            run_graph_on(be, g, src, inputs, {}, np.zeros(n, np.int32), 0)
    finally:
        be.close()
    return str(e.value)


def test_lowerings_say_what_does_not_fit():
    r = np.random.default_rng(9)
    q, k, v = _qkv(r, 4, 1, 1, 136)
    msg = _refusal(ops.FullAttention("o", "q", "k", "v", 1, 1, 136, 1.0), {"q": q, "k": k, "v": v}, (4, 136))
    assert "head dim 136" in msg and "128" in msg and "full_attention" in msg
    src = Src()
    src.add("rel", r.standard_normal((8, 16)))
    q, k, v = _qkv(r, 4, 1, 1, 8)
    msg = _refusal(ops.ChunkedAttention("o", "q", "k", "v", "rel", None, 1, 8, 1.0, 1.0, 50.0, 65, 4),
                   {"q": q, "k": k, "v": v}, (4, 8), src)
    assert "window 65" in msg and "64" in msg
    x = r.standard_normal((5, 12)).astype(np.float32)
    msg = _refusal(ops.Rope2D("x", "x", "pos", 6, 100.0), {"x": x, "pos": np.zeros((5, 2), np.float32)}, x.shape)
    assert "head_dim 6" in msg
    msg = _refusal(ops.PoolRows("y", "x", 2, 1.0), {"x": x}, (3, 12), tokens=np.zeros(5))
    assert "groups of 2" in msg
    src = Src()
    src.add("w", r.standard_normal((11,)))
    msg = _refusal(ops.AddVector("x", "x", "w"), {"x": x}, x.shape, src)
    assert "11 values" in msg and "12" in msg
    src = Src()
    src.add("w", r.standard_normal((2000 * 3, 3)))
    src.add("n", np.ones(2000))
    msg = _refusal(ops.Conv2dNormRelu("o", "x", None, "w", "n", 1, 2000, 1e-6), {"x": x}, (3, 6 * 2000), src)
    assert "1 -> 2000 channels" in msg and "1024" in msg


# ---- whole encoders: the simulator (and a device) against the numpy reference ------------------------
#: Max |CUDA - numpy| over each encoder's fixture media, measured on the simulator (cuda-sim):
#: gemma4uv 1.8e-6 (images) / gemma4ua 3.3e-6 (audio) on soft tokens up to |4.2|; gemma4v 4.2e-6
#: (|4.0|); gemma4a 2.0e-6 (|3.2|). The bound, relative to max(1, |numpy|): 1e-5 (about 10x the
#: worst measured; a GPU's fused multiply-adds move the last bits).
ENCODER_TOL = 1e-5
#: transformers' float64 soft tokens: the bars the numpy / CPU encoders meet (test_mmproj_*.py)
HF_TOL = 2e-5


def _encoder_fixture(which: str):
    """(projector path, n_embd, the reference npz) of an encoder's fixture, or a skip."""
    if which == "gemma4uv+ua":
        if not (MM / "MANIFEST.json").is_file():
            pytest.skip(f"fixtures folder {MM} is absent (set G4RT_FIXTURES_MM to point at it)")
        ref, path, n_embd = MM / "ref" / "g4u-mm-F32.exact.npz", MM / "models" / "mmproj-g4u-mm-F32.gguf", 256
    elif which == "gemma4v":
        ref, path, n_embd = DATA / "gemma4v" / "g4v-F32.exact.npz", DATA / "gemma4v" / "mmproj-g4v-F32.gguf", 64
    else:
        ref, path, n_embd = DATA / "gemma4a" / "g4a-F32.exact.npz", DATA / "gemma4a" / "mmproj-g4a-F32.gguf", 64
    for f in (ref, path):
        if not f.is_file():
            pytest.skip(f"fixture {f} is absent")
    return path, n_embd, np.load(ref)


def _media(r, proj):
    """[(name, encode(encoder), transformers' soft tokens)] for every image and audio clip of r."""
    from g4rt.media.image import prepare_image
    items = []
    for key in r.files:
        if re.fullmatch(r"image_\d+_\d+", key):
            im = prepare_image(r[key], patch=proj.vision.patch, resize=False)
            items.append((key, lambda e, im=im: e.encode_image(im.pixel_values, im.positions),
                          r["embd_" + key[len("image_"):]]))
        elif re.fullmatch(r"audio_\d+_\d+", key):
            items.append((key, lambda e, a=r[key]: e.encode_audio(e.audio_input(a)[0]),
                          r["embd_" + key[len("audio_"):]]))
    return items


@pytest.mark.parametrize("target", CUDA_PARAMS)
@pytest.mark.parametrize("which", ["gemma4uv+ua", "gemma4v", "gemma4a"])
def test_encoder_soft_tokens_match_numpy(target, which):
    """Every image / audio clip of the fixture through MediaEncoder(projector, CUDA backend): the
    soft tokens against MediaEncoder(projector, "numpy") and against transformers' own. (The
    fixtures' media are small, 9-64 soft tokens, up to 576 ViT patches: the simulator runs them all.)"""
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.mmproj.reader import load_projector
    path, n_embd, r = _encoder_fixture(which)
    proj = load_projector(path, n_embd)
    items = _media(r, proj)
    ref = MediaEncoder(proj, "numpy")
    enc = MediaEncoder(proj, cuda_backend(target))
    try:
        assert items
        kinds = set()
        for name, encode, hf in items:
            want, got = encode(ref), encode(enc)
            assert got.shape == want.shape == hf.shape, name
            scale = max(1.0, float(np.abs(want).max()))
            err = float(np.abs(got - want).max())
            assert np.isfinite(got).all() and err <= ENCODER_TOL * scale, f"{which} {name}: max |diff| {err:.3g}"
            assert float(np.abs(got - hf).max()) <= HF_TOL * scale, f"{which} {name} vs transformers"
            kinds.add(name.split("_")[0])
        assert kinds == ({"image", "audio"} if which == "gemma4uv+ua" else {"audio" if which == "gemma4a" else "image"})
    finally:
        enc.close()
        ref.close()


# ---- the simulator is strict: full attention without its tile barrier fails --------------------------
def _full_attention_on(kernels, q, k, v, H, Hkv, D, scale):
    """One launch of media.cu's full_attention as the lowering makes it (16 rows a block)."""
    n = q.shape[0]
    out = np.zeros((n, H * D), np.float32)
    kernels.launch("full_attention", (-(-n // 16), H, 1), (128, 1, 1),
                   [q.ctypes.data, k.ctypes.data, v.ctypes.data, out.ctypes.data, n, H, Hkv, D, scale])
    return out


def test_full_attention_without_its_tile_barrier_fails_on_the_simulator(tmp_path):
    """media.cu's full_attention without the barrier after its threads load a shared K/V tile:
    the simulator's threads run ahead and score keys the others have not loaded yet, so the output
    is wrong (the simulator does not hide a missing barrier); the kernel as written is right."""
    import shutil
    if cuda_skip("cuda-sim"):
        pytest.skip(cuda_skip("cuda-sim"))
    from g4rt.backends.numpy_ref.backend import full_attention
    from g4rt.testing.cuda.simulator import SimKernels, shared_kernels
    d = tmp_path / "cuda"
    shutil.copytree(REPO / "shaders" / "cuda", d)
    src = (d / "media.cu").read_text()
    barrier = "        __syncthreads();                          // the tile is loaded"
    assert src.count(barrier) == 1
    (d / "media.cu").write_text(src.replace(barrier, "        // (barrier removed)"))
    r = np.random.default_rng(12)
    q, k, v = _qkv(r, 70, 1, 1, 16)
    want = full_attention(q, k, v, 1, 1, 16, 0.25)
    assert_close(_full_attention_on(shared_kernels(), q, k, v, 1, 1, 16, 0.25), want, 2e-5, "as written")
    with pytest.raises(AssertionError, match="max \\|diff\\|"):
        assert_close(_full_attention_on(SimKernels(d), q, k, v, 1, 1, 16, 0.25), want, 2e-5, "no barrier")
