"""The multimodal encoders end to end on Vulkan: MediaEncoder(projector, "vulkan") against
MediaEncoder(projector, "numpy") (the reference) on every image and audio clip of each projector
fixture: gemma4uv + gemma4ua (the 12B's encoder-free embedders, shared/fixtures-mm), gemma4v (the
ViT: Rope2D, FullAttention, PoolRows, Standardize; tests/data/gemma4v) and gemma4a (the conformer:
Conv2dNormRelu, ChunkedAttention, DepthwiseConv1d, Glu, Silu; tests/data/gemma4a), with both
Vulkan kernel sets. The soft tokens must agree to float32 accuracy relative to their scale; they
are also held to the transformers float64 references the CPU backends meet."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import vulkan_skip_reason

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
MM = Path(os.environ.get("G4RT_FIXTURES_MM", REPO.parent / "shared" / "fixtures-mm"))

#: (name, mmproj, text width, reference npz)
PROJECTORS = {
    "gemma4uv+gemma4ua": (MM / "models" / "mmproj-g4u-mm-F32.gguf", 256, MM / "ref" / "g4u-mm-F32.exact.npz"),
    "gemma4v": (DATA / "gemma4v" / "mmproj-g4v-F32.gguf", 64, DATA / "gemma4v" / "g4v-F32.exact.npz"),
    "gemma4a": (DATA / "gemma4a" / "mmproj-g4a-F32.gguf", 64, DATA / "gemma4a" / "g4a-F32.exact.npz"),
}
#: max |vulkan - numpy| / max |numpy| per item. Measured on lavapipe (worst item, "cpu" / "gpu"
#: kernels): gemma4uv+gemma4ua 5.5e-7 / 9.6e-7, gemma4v 1.3e-6 / 1.1e-6, gemma4a 1.2e-6 / 8.6e-7
#: (float32 summation order only); the bound leaves a ~4x margin.
REL_BOUND = {"gemma4uv+gemma4ua": 5e-6, "gemma4v": 5e-6, "gemma4a": 5e-6}
#: the transformers float64 reference, as tests/test_multimodal.py / test_mmproj_gemma4v.py /
#: test_mmproj_gemma4a.py hold the numpy and CPU backends to it (absolute, relative to max(1, scale))
REF_TOL = 2e-5

VK_SKIP = vulkan_skip_reason()


def _skip_reason(name: str):
    path, _, ref = PROJECTORS[name]
    if VK_SKIP is not None:
        return VK_SKIP
    if not path.is_file() or not ref.is_file():
        return f"projector fixture {path.parent} is absent (set G4RT_FIXTURES_MM for shared/fixtures-mm)"
    return None


def _items(name: str, enc, ref):
    """(label, encode(encoder) -> soft tokens, the reference's soft tokens) of every image and clip."""
    from g4rt.media.image import prepare_image
    out = []
    for key in sorted(k for k in ref.files if re.fullmatch(r"(image|audio)_\d+_\d+", k)):
        item = key.split("_", 1)[1]
        want = ref["embd_" + item]
        if key.startswith("image"):
            im = prepare_image(ref[key], patch=enc.projector.vision.patch, resize=False)
            out.append((key, lambda e, im=im: e.encode_image(im.pixel_values, im.positions), want))
        else:
            feats, n = enc.audio_input(ref[key])
            assert n == want.shape[0], key
            out.append((key, lambda e, f=feats: e.encode_audio(f), want))
    return out


@pytest.mark.parametrize("kernels", ["cpu", "gpu"])
@pytest.mark.parametrize("name", list(PROJECTORS))
def test_soft_tokens_on_vulkan_match_numpy(name, kernels):
    reason = _skip_reason(name)
    if reason:
        pytest.skip(reason)
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.mmproj.reader import load_projector
    path, n_embd, ref_path = PROJECTORS[name]
    ref = np.load(ref_path)
    proj = load_projector(path, n_embd)
    ref_enc = MediaEncoder(proj, "numpy")
    enc = MediaEncoder(proj, "vulkan", kernels=kernels, kv_dtype="f32")
    kinds, worst = set(), 0.0
    try:
        items = _items(name, ref_enc, ref)
        assert items, f"no image or audio in {ref_path.name}"
        for label, encode, want in items:
            a = np.asarray(encode(ref_enc), np.float64)
            b = encode(enc)
            assert b.shape == a.shape == want.shape, label
            assert np.isfinite(b).all(), label
            rel = float(np.abs(b - a).max() / np.abs(a).max())
            worst = max(worst, rel)
            assert rel <= REL_BOUND[name], f"{label}: max |vulkan - numpy| = {rel:.3g} of the values' scale"
            assert np.abs(b - want).max() <= REF_TOL * max(1.0, float(np.abs(want).max())), label
            kinds.add(label.split("_")[0])
    finally:
        enc.close()
        ref_enc.close()
    # the fixture has what its name says: images and/or audio
    assert kinds == {"gemma4uv+gemma4ua": {"image", "audio"}, "gemma4v": {"image"}, "gemma4a": {"audio"}}[name]
    print(f"{name} ({kernels} kernels): max relative |vulkan - numpy| {worst:.3g}")


# ---- weights of other types than F32 (a converter's --outtype f16 / bf16) ---------------------------
@pytest.mark.skipif(VK_SKIP is not None, reason=VK_SKIP or "")
@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_encoder_ops_read_f16_and_bf16_weights(qtype):
    """LayerNorm, AddVector, GatherAdd, Standardize, Conv2dNormRelu, DepthwiseConv1d and
    ChunkedAttention with every weight stored as F16 / BF16 (read through dequantized f32 copies)
    agree with the reference, which dequantizes the same bytes."""
    from gguf import GGMLQuantizationType as QT
    from g4rt import ops
    from g4rt.backends.numpy_ref import NumpyBackend
    from g4rt.backends.vulkan import VulkanBackend
    from op_cases import Case, rel_err
    qt = QT[qtype]
    n, cols, P, ci, co, H, D = 21, 48, 8, 4, 8, 4, 12
    r = np.random.default_rng(11)
    c = Case(n)
    x = c.input("x", 2 * r.standard_normal((n, cols)) + 0.5)
    idx = c.input("idx", np.stack([r.integers(0, P, n), P + r.integers(0, P, n)], 1))
    for name, shape in (("lw", (1, cols)), ("lb", (1, cols)), ("bias", (1, cols)), ("table", (2 * P, cols)),
                        ("sb", (1, cols)), ("ss", (1, cols)), ("convw", (co * ci * 3, 3)), ("norm", (1, co)),
                        ("dw", (cols, 5)), ("rel", (H * D, 10)), ("by", (1, D))):
        scale_like = name in ("lw", "ss", "norm", "by")
        c.src.add(name, (0.5 + r.random(shape)) if scale_like else r.standard_normal(shape) / 2, qt)
    to = (n - 1) // 2 + 1
    c.ops += [
        ops.LayerNorm(c.buf("h", cols), x, "lw", "lb", 1e-5),
        ops.AddVector("h", "h", "bias"),
        ops.GatherAdd("h", "h", "table", idx),
        ops.Standardize("h", "h", "sb", "ss"),
        ops.Conv2dNormRelu(c.buf("cv", (cols // ci + 1) // 2 * co, rows=to), "h", None, "convw", "norm", ci, co, 1e-6),
        ops.DepthwiseConv1d(c.buf("d", cols, rows=to), "cv", "dw"),
        ops.ChunkedAttention(c.buf("a", cols, rows=to), "d", "d", "d", "rel", "by", H, D, 0.7, 1.3, 50.0, 12, to - 2),
    ]
    ref_be, be = NumpyBackend(kv_dtype="f32"), VulkanBackend(kv_dtype="f32")
    try:
        for b in (ref_be, be):
            b.load_weights(c.src.specs, c.src)
            b.allocate_caches({})
        assert all(s.qtype == qt for name, s in c.src.specs.items() if not name.startswith("in."))
        tokens, seg = np.arange(n, dtype=np.int32), ops.one_sequence(n, 0)
        want = ref_be.compile(c.graph("a")).run(tokens, seg)
        got = np.asarray(be.compile(c.graph("a")).run(tokens, seg))
    finally:
        be.close()
    assert np.abs(want).max() > 0.1 and np.abs(want[-1]).max() > 0.1      # the chain did not collapse
    err = rel_err(got, want)
    print(f"{qtype} weights: max relative |vulkan - numpy| {err:.3g}")
    assert err < 5e-6, err
