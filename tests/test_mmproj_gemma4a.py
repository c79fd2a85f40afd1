"""gemma4a: the Gemma 4 E2B/E4B conformer audio encoder, and media on a PLE (per-layer input)
text model, against transformers float64 references (tests/data/gemma4a, made by
scripts/make_gemma4a_fixtures.py; no torch needed here).

Covers: the loader (every a.* tensor, the width check, corrupt files), `g4rt info`, the log-mel
front end against the feature extractor's input_features, the conformer's ops (numpy reference vs
the native CPU kernels, odd sizes, 1-3 threads), the soft tokens against embd_i_k, parity of the
whole prompt (numpy, native CPU exact and default precision), the PLE rule (a soft-token row's
per-layer input is the pad token's) and bad audio."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType

from g4rt import ops
from g4rt.backends.numpy_ref import NumpyBackend
from g4rt.errors import G4rtError
from g4rt.media.mel import log_mel
from g4rt.mmproj.audio_conformer import AudioFeatures, prepare_audio
from g4rt.mmproj.encoder import MediaEncoder
from g4rt.mmproj.errors import MediaInputError, ProjectorMismatchError
from g4rt.mmproj.reader import ConformerConfig, load_projector
from g4rt.tools.parity import compare, worst
from gguf_edit import rewrite_gguf
from cuda_targets import CUDA_PARAMS, cuda_backend
from conftest import vulkan_skip_reason

DATA = Path(__file__).resolve().parent / "data" / "gemma4a"
MODEL, MMPROJ, REF = DATA / "g4a-F32.gguf", DATA / "mmproj-g4a-F32.gguf", DATA / "g4a-F32.exact.npz"
CLIPS = ["0_0", "1_0", "2_0", "2_1"]
HAVE_CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
CPU = pytest.param("cpu", marks=pytest.mark.skipif(not HAVE_CC, reason="no C compiler: no native CPU backend"))
#: transformers keeps the audio attention and every RMSNorm in float32: float accuracy
EMBD_TOL = 2e-5


@pytest.fixture(scope="module")
def ref():
    return np.load(REF)


def make_backend(name: str, threads: int = 2):
    if name == "numpy":
        return NumpyBackend()
    if threads == "vulkan":             # the Vulkan kernels (shaders/glsl/conv.comp, chunked_attention.comp, ...)
        from g4rt.backends.vulkan import VulkanBackend
        return VulkanBackend(kv_dtype="f32")
    if isinstance(threads, str):        # a CUDA target (tests/cuda_targets.py): conformer.cu
        return cuda_backend(threads)
    from g4rt.backends.cpu import CpuBackend
    return CpuBackend(threads=threads, kv_dtype="f32", precision="exact")


# ---- the loader and info ------------------------------------------------------------------------
def test_loads_with_every_tensor_checked():
    p = load_projector(MMPROJ, 64, MODEL.name)
    a = p.audio
    assert isinstance(a, ConformerConfig) and a.projector == "gemma4a"
    assert (a.n_mel, a.channels, a.width, a.n_head, a.n_layer, a.ffn, a.out_dims, a.n_out) == \
        (128, (128, 4), 32, 2, 2, 128, 32, 64)
    assert len(a.clamps) == 2 * 10
    lo, hi, olo, ohi = a.clamps["a.blk.0.ffn_up"]
    assert -3 < lo < -1 and 1 < hi < 3 and -3 < olo < -1 and 1 < ohi < 3      # the fixture's finite bounds
    assert "gemma4a" in p.describe() and "conformer" in p.describe()


def test_width_mismatch_names_both_numbers():
    with pytest.raises(ProjectorMismatchError, match=r"64-wide soft tokens.*128-wide embeddings"):
        load_projector(MMPROJ, 128)


@pytest.mark.parametrize("edit, match", [
    (dict(drop_tensors=("a.blk.1.ln2.weight",)), "a.blk.1.ln2.weight"),
    (dict(drop_tensors=("a.blk.0.attn_k_rel.weight",)), "attn_k_rel"),
    (dict(set_keys={"clip.audio.embedding_length": (48, GGUFValueType.UINT32)}), r"embedding_length 48"),
    (dict(set_keys={"clip.audio.num_mel_bins": (64, GGUFValueType.UINT32)}), r"a.input_projection.weight"),
    (dict(set_keys={"clip.audio.attention.head_count": (3, GGUFValueType.UINT32)}), "head_count 3"),
])
def test_mismatched_gemma4a_files_are_refused(tmp_path, edit, match):
    bad = rewrite_gguf(MMPROJ, tmp_path / "mmproj-bad.gguf", **edit)
    with pytest.raises(G4rtError, match=match):
        load_projector(bad, 64)


def test_truncated_file_is_refused(tmp_path):
    raw = MMPROJ.read_bytes()
    cut = tmp_path / "mmproj-cut.gguf"
    cut.write_bytes(raw[:len(raw) * 2 // 3])
    with pytest.raises(G4rtError):
        load_projector(cut, 64)


def test_info_describes_the_conformer(capsys):
    from g4rt.cli.main import run
    assert run(["info", str(MMPROJ)]) == 0
    out = capsys.readouterr().out
    assert "audio: `gemma4a`" in out and "conformer" in out and "a.blk.1.conv_dw.weight" in out


# ---- the front end ------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", CLIPS)
def test_log_mel_matches_the_feature_extractor(ref, clip):
    mel = log_mel(ref[f"audio_{clip}"])
    want = ref[f"input_features_{clip}"]
    assert mel.features.shape == want.shape
    assert (mel.mask == ref[f"input_features_mask_{clip}"].astype(bool)).all()
    np.testing.assert_allclose(mel.features, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("clip", ["1_0", "2_1"])
def test_fixture_clips_end_in_padded_soft_token_frames(ref, clip):
    """These clips' last soft-token frame is padding: the masked keys and dropped rows are tested."""
    from g4rt.mmproj.audio_conformer import frames_after
    mask = ref[f"input_features_mask_{clip}"].astype(bool)
    assert not mask.all()
    assert frames_after(frames_after(len(mask))) > ref[f"embd_{clip}"].shape[0]


# ---- the conformer ops: numpy reference vs the native CPU kernels --------------------------------
class _Weights:
    def __init__(self, arrays):
        self.arrays = {n: np.ascontiguousarray(a, np.float32) for n, a in arrays.items()}

    def specs(self):
        return {n: ops.WeightSpec(n, QT.F32, a.shape[0], a.shape[1]) for n, a in self.arrays.items()}

    def weight_bytes(self, name):
        a = self.arrays[name]
        return a.view(np.uint8).reshape(a.shape[0], a.shape[1] * 4)


def run_op(backend, op, bufs, out_shape, weights, inputs, n_tokens):
    """One op as a graph: bufs {name: array} are inputs of the call (Graph.inputs)."""
    w = _Weights(weights)
    buffers = {"tokens": ops.Buffer("tokens", n_tokens, 1, "i32"), op.out: ops.Buffer(op.out, *out_shape)}
    graph_inputs = {n: ops.Buffer(n, a.shape[0], a.shape[1]) for n, a in {**bufs, **inputs}.items()}
    graph = ops.Graph(n_tokens=n_tokens, buffers=buffers, caches={}, weights=w.specs(), ops=[op], output=op.out,
                      labels=[op.kind], inputs=graph_inputs)
    backend.load_weights(w.specs(), w)
    backend.declare_inputs({n: (b.rows, b.cols) for n, b in graph_inputs.items()})
    backend.write_inputs({**bufs, **inputs})
    return np.array(backend.compile(graph).run(np.zeros(n_tokens, np.int32), ops.one_sequence(n_tokens, 0)))


def both(op, bufs, out_shape, weights=None, inputs=None, n_tokens=None, threads=2):
    n = n_tokens or out_shape[0]
    want = run_op(NumpyBackend(), op, bufs, out_shape, weights or {}, inputs or {}, n)
    be = make_backend("cpu", threads)
    try:
        got = run_op(be, op, bufs, out_shape, weights or {}, inputs or {}, n)
    finally:
        be.close()
    return want, got


def _close(want, got, tol=2e-6):
    scale = max(1.0, float(np.abs(want).max()))
    assert np.isfinite(got).all() and float(np.abs(got - want).max()) <= tol * scale, float(np.abs(got - want).max())


R = np.random.default_rng(24)

cpu_only = pytest.mark.skipif(not HAVE_CC, reason="no C compiler: no native CPU backend")
VK_SKIP = vulkan_skip_reason()
VULKAN = pytest.param("vulkan", marks=pytest.mark.skipif(VK_SKIP is not None, reason=VK_SKIP or ""))
#: the op tests' backends: the native CPU at 1-3 threads, Vulkan, then the CUDA targets
OP_TARGETS = [1, 2, 3, VULKAN, *CUDA_PARAMS]


@cpu_only
@pytest.mark.parametrize("threads", OP_TARGETS)
def test_silu_and_glu(threads):
    x = (R.standard_normal((7, 22)) * 4).astype(np.float32)
    _close(*both(ops.Silu("o", "x"), {"x": x}, (7, 22), threads=threads))
    want, got = both(ops.Glu("o", "x"), {"x": x}, (7, 11), threads=threads)
    _close(want, got)
    np.testing.assert_allclose(want, x[:, :11] / (1 + np.exp(-x[:, 11:].astype(np.float64))), rtol=1e-6, atol=1e-6)


@cpu_only
@pytest.mark.parametrize("threads", OP_TARGETS)
@pytest.mark.parametrize("T, F, ci, co, masked", [(9, 11, 1, 5, 2), (13, 6, 3, 4, 0), (2, 3, 2, 3, 1)])
def test_conv2d_norm_relu(threads, T, F, ci, co, masked):
    x = R.standard_normal((T, F * ci)).astype(np.float32)
    mask = np.ones((T, 1), np.float32)
    if masked:
        mask[-masked:] = 0
    w = (R.standard_normal((co * ci * 3, 3)) / 3).astype(np.float32)
    norm = (1 + 0.3 * R.standard_normal((1, co))).astype(np.float32)
    To, Fo = (T + 1) // 2, (F + 1) // 2
    op = ops.Conv2dNormRelu("o", "x", "m", "w", "n", ci, co, 1e-6)
    want, got = both(op, {"x": x}, (To, Fo * co), {"w": w, "n": norm}, {"m": mask}, n_tokens=T, threads=threads)
    _close(want, got, 5e-6)
    # against a direct loop over the definition (masked rows are zeros)
    xm = np.where(mask != 0, x, 0).reshape(T, F, ci)
    k = w.reshape(co, ci, 3, 3)
    acc = np.zeros((To, Fo, co))
    for t in range(To):
        for f in range(Fo):
            for kt in range(3):
                for kf in range(3):
                    ti, fi = 2 * t + kt - 1, 2 * f + kf - 1
                    if 0 <= ti < T and 0 <= fi < F:
                        acc[t, f] += k[:, :, kt, kf] @ xm[ti, fi]
    mu, var = acc.mean(-1, keepdims=True), acc.var(-1, keepdims=True)
    direct = np.maximum((acc - mu) / np.sqrt(var + 1e-6) * norm.reshape(-1), 0).reshape(To, Fo * co)
    np.testing.assert_allclose(want, direct, rtol=0, atol=2e-5)


@cpu_only
@pytest.mark.parametrize("threads", OP_TARGETS)
def test_depthwise_conv1d(threads):
    x = R.standard_normal((13, 7)).astype(np.float32)
    w = R.standard_normal((7, 5)).astype(np.float32)
    want, got = both(ops.DepthwiseConv1d("o", "x", "w"), {"x": x}, (13, 7), {"w": w}, threads=threads)
    _close(want, got)
    assert np.allclose(want[0], w[:, 4] * x[0], atol=1e-6)             # causal: row 0 sees itself only
    assert np.allclose(want[6], sum(w[:, k] * x[2 + k] for k in range(5)), atol=1e-5)


@cpu_only
@pytest.mark.parametrize("threads", OP_TARGETS)
@pytest.mark.parametrize("T, H, D, valid, per_dim", [(29, 3, 6, 25, True), (5, 2, 4, 5, False), (14, 1, 8, 13, True)])
def test_chunked_attention(threads, T, H, D, valid, per_dim):
    q, k, v = (R.standard_normal((T, H * D)).astype(np.float32) * 3 for _ in range(3))
    width = 10
    weights = {"rel": (R.standard_normal((H * D, width)) / 3).astype(np.float32)}
    if per_dim:
        weights["pd"] = (0.5 + R.random((1, D))).astype(np.float32)
    op = ops.ChunkedAttention("o", "q", "k", "v", "rel", "pd" if per_dim else None, H, D, 0.7, 1.3, 50.0, 12, valid)
    want, got = both(op, {"q": q, "k": k, "v": v}, (T, H * D), weights, threads=threads)
    _close(want, got, 5e-6)
    # one row by hand: keys t-11 .. t below `valid`, relative entry 12 - distance, softcap 50
    t = min(T - 1, valid - 1)
    rel = op.relative_table(weights["rel"]).reshape(13, H, D)
    for h in range(H):
        qs = q[t, h * D:(h + 1) * D] * 0.7 * (weights["pd"].reshape(-1) if per_dim else 1)
        us = [u for u in range(max(0, t - 11), t + 1) if u < valid]
        s = np.array([qs @ (k[u, h * D:(h + 1) * D] * 1.3) + qs @ rel[12 - (t - u), h] for u in us])
        s = 50 * np.tanh(s / 50)
        p = np.exp(s - s.max())
        p /= p.sum()
        np.testing.assert_allclose(want[t, h * D:(h + 1) * D], p @ v[us, h * D:(h + 1) * D], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(VK_SKIP is not None, reason=VK_SKIP or "")
def test_vulkan_conv2d_output_split_into_row_bands():
    """4 KiB storage buffers: the conv's [20, 128] output spans 3 bands (8 rows each) while its
    input and mask fit one; each band reads the input rows 2t-1 .. 2t+1 it needs."""
    from g4rt.backends.vulkan import VulkanBackend
    T, F, ci, co = 40, 16, 1, 16
    x = R.standard_normal((T, F * ci)).astype(np.float32)
    mask = np.ones((T, 1), np.float32)
    mask[-3:] = 0
    w = (R.standard_normal((co * ci * 3, 3)) / 3).astype(np.float32)
    norm = (1 + 0.3 * R.standard_normal((1, co))).astype(np.float32)
    op = ops.Conv2dNormRelu("o", "x", "m", "w", "n", ci, co, 1e-6)
    shape = ((T + 1) // 2, (F + 1) // 2 * co)
    want = run_op(NumpyBackend(), op, {"x": x}, shape, {"w": w, "n": norm}, {"m": mask}, T)
    be = VulkanBackend(kv_dtype="f32", max_buffer_bytes=4096)
    try:
        got = run_op(be, op, {"x": x}, shape, {"w": w, "n": norm}, {"m": mask}, T)
    finally:
        be.close()
    _close(want, got, 2e-6)


@pytest.mark.skipif(VK_SKIP is not None, reason=VK_SKIP or "")
@pytest.mark.parametrize("which", ["depthwise", "chunked"])
def test_vulkan_windowed_ops_refuse_inputs_split_across_buffers(which):
    """A row band of the output would need key / input rows of two storage buffers: refused, named."""
    from g4rt.backends.vulkan import VulkanBackend
    T, C = 40, 64
    weights = {"w": R.standard_normal((C, 5)).astype(np.float32), "rel": R.standard_normal((C, 8)).astype(np.float32),
               "pw": R.standard_normal((C, 8)).astype(np.float32)}
    if which == "depthwise":
        op = ops.DepthwiseConv1d("o", "h", "w")
    else:
        op = ops.ChunkedAttention("o", "h", "h", "h", "rel", None, 2, 32, 0.7, 1.3, 50.0, 12, T)
    wspecs = _Weights(weights)
    buffers = {"tokens": ops.Buffer("tokens", T, 1, "i32"), "h": ops.Buffer("h", T, C), "o": ops.Buffer("o", T, C)}
    graph = ops.Graph(n_tokens=T, buffers=buffers, caches={}, weights=wspecs.specs(),
                      ops=[ops.MatMul("h", "g", "pw"), op], output="o", labels=["matmul", op.kind],
                      inputs={"g": ops.Buffer("g", T, 8)})
    be = VulkanBackend(kv_dtype="f32", max_buffer_bytes=4096)
    try:
        be.load_weights(wspecs.specs(), wspecs)
        be.declare_inputs({"g": (T, 8)})
        with pytest.raises(G4rtError, match="split across two Vulkan storage buffers"):
            be.compile(graph)
    finally:
        be.close()


# ---- the encoder: soft tokens vs transformers --------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", CPU])
def test_soft_tokens_match_transformers(ref, backend):
    enc = MediaEncoder(load_projector(MMPROJ, 64), make_backend(backend))
    try:
        for clip in CLIPS:
            feats, n = enc.audio_input(ref[f"audio_{clip}"])
            want = ref[f"embd_{clip}"]
            assert n == want.shape[0]
            got = enc.encode_audio(feats)
            assert got.shape == want.shape
            assert float(np.abs(got - want).max()) <= EMBD_TOL, clip
    finally:
        enc.close()


def test_features_of_the_reference_give_the_same_soft_tokens(ref):
    """The encoder fed transformers' own input_features (not g4rt's mel) lands on embd too."""
    enc = MediaEncoder(load_projector(MMPROJ, 64), "numpy")
    feats = AudioFeatures(ref["input_features_1_0"], ref["input_features_mask_1_0"].astype(bool))
    assert float(np.abs(enc.encode_audio(feats) - ref["embd_1_0"]).max()) <= EMBD_TOL


# ---- the whole prompt ---------------------------------------------------------------------------
def _replay(ref, backend: str, precision: str = "exact", pad_override=None):
    from g4rt.cli.checks import _parity_prompter
    from g4rt.engine import Engine
    from g4rt.tools.parity_media import run_media_reference
    engine = Engine(MODEL, backend=backend, **({} if backend == "numpy" else dict(precision=precision, threads=2)))
    if pad_override is not None:        # what the engine would do without the PLE pad rule
        get = engine.file.get
        engine.file.get = lambda k, d=None: pad_override if k == "tokenizer.ggml.padding_token_id" else get(k, d)
    prompter = _parity_prompter(engine, MMPROJ, backend, 2 if backend == "cpu" else None, precision)
    try:
        out, embd = run_media_reference(engine, ref, prompter)
    finally:
        prompter.close()
    return worst(compare(ref, out)), embd


@pytest.mark.parametrize("backend", ["numpy", CPU])
def test_parity_exact(ref, backend):
    w, embd = _replay(ref, backend, "exact")
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05, w
    assert w["greedy"] == 32
    assert max(d for ds in embd for d in ds) <= EMBD_TOL


@cpu_only
def test_parity_cli_default_precision(capsys):
    """`g4rt parity MODEL --mmproj MM --ref REF` on the native CPU at its default precision (F32
    weights: the exact path; the bar is the quantized one of the issue)."""
    from g4rt.cli.main import run
    assert run(["parity", str(MODEL), "--mmproj", str(MMPROJ), "--ref", str(REF), "--backend", "cpu", "-t", "2"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("worst:"))
    top1, dlogit = float(line.split()[2]), float(line.split()[4])     # worst: top1 X max|dlogit| Y ...
    assert top1 >= 0.85 and dlogit <= 1.0, line
    assert "soft tokens: worst" in out


def test_ple_rows_of_soft_tokens_take_the_pad_token(ref):
    """Without the rule (the placeholder id's own per-layer embedding), the references are missed."""
    w, _ = _replay(ref, "numpy", pad_override=20)
    assert w["top1"] < 0.85 or w["max_dlogit"] > 1.0, w


# ---- bad audio ----------------------------------------------------------------------------------
def test_zero_samples_and_too_short_audio_are_refused():
    proj = load_projector(MMPROJ, 64)
    with pytest.raises(G4rtError, match="0 samples"):
        prepare_audio(proj.audio, np.zeros(0, np.float32))
    with pytest.raises(MediaInputError, match="too short"):
        prepare_audio(proj.audio, np.zeros(100, np.float32))   # 0 mel frames
    enc = MediaEncoder(proj, "numpy")
    with pytest.raises(MediaInputError, match="log-mel"):
        enc.encode_audio(np.zeros((3, 640), np.float32))


def test_generate_with_audio_on_the_ple_model(ref):
    """The user path: g4rt.load(..., mmproj=) and generate(audio=[...]) on the E2B-style model."""
    import g4rt
    model = g4rt.load(str(MODEL), backend="numpy", mmproj=str(MMPROJ))
    text = "".join(model.generate("<|audio|>", audio=[ref["audio_1_0"]], max_tokens=3, temperature=0))
    assert isinstance(text, str)
    assert model.last_stats.media and "1 audio clip (9 tokens)" in model.last_stats.media
    with pytest.raises(G4rtError, match="0 samples"):
        list(model.generate("<|audio|>", audio=[np.zeros(0, np.float32)], max_tokens=1))
