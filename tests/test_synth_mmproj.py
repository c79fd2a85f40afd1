"""`g4rt synth OUT --mmproj --vision vit --audio conformer`: a random-weight projector with the
real Gemma 4 E2B / E4B encoders' shapes (tools/synth_mmproj.py). The file loads through the
projector reader like a converted one, every tensor has the real model's shape (the table below,
sources named), and a small image / 1 s of audio encode on the native CPU to finite soft tokens
of the E2B's text width with RMS about 1 (the random weights are scaled to keep every layer's
activations O(1)). The timed real-size runs are in docs/benchmarks/multimodal.md."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
TEXT_WIDTH = 1536       # Gemma 4 E2B's hidden size (model.shapes.EDGE_E2B)

#: The E2B / E4B vision tower (gemma4v) in GGUF order (ne: torch's [out, in] reversed), N = every
#: block. Sources: transformers 5.25 `Gemma4VisionConfig` defaults (checkpoint google/gemma-4-e2b-it:
#: hidden 768, intermediate 3072, 16 layers, 12 heads x head_dim 64, patch 16, pooling 3,
#: position_embedding_size 10240; modeling_gemma4.py: q/k/v/o 768 x 768, gate/up/down, q/k norms
#: of head_dim), use_clipped_linears for E2B/E4B (shared/notes/multimodal.md A1.2), and llama.cpp's
#: converter (names; the patch kernel permuted to [D, 3, p, p]; the position table [2, P, D]).
VIT_SHAPES = {
    "v.patch_embd.weight": [16, 16, 3, 768], "v.position_embd.weight": [768, 10240, 2],
    "mm.input_projection.weight": [768, TEXT_WIDTH],
    **{f"v.blk.N.{n}.weight": [768, 768] for n in ("attn_q", "attn_k", "attn_v", "attn_out")},
    "v.blk.N.attn_q_norm.weight": [64], "v.blk.N.attn_k_norm.weight": [64],
    "v.blk.N.ffn_gate.weight": [768, 3072], "v.blk.N.ffn_up.weight": [768, 3072],
    "v.blk.N.ffn_down.weight": [3072, 768],
    **{f"v.blk.N.{n}.weight": [768] for n in ("ln1", "ln2", "attn_post_norm", "ffn_post_norm")},
    **{f"v.blk.N.{lin}.{b}": [1] for lin in ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate", "ffn_up", "ffn_down")
       for b in ("input_min", "input_max", "output_min", "output_max")},
}
VIT_BLOCKS = 16
#: The E2B / E4B audio tower (gemma4a). Sources: transformers 5.25 `Gemma4AudioConfig` defaults
#: (checkpoint google/gemma-4-e2b-it: hidden 1024, 12 layers, 8 heads, subsampling channels
#: [128, 32], output_proj_dims 1536, conv kernel 5), modeling_gemma4.py (FFN 4 x hidden, light conv
#: linear_start 2 x hidden, input_proj_linear (128 / 4) x 32 = 1024 inputs, per_dim_scale of
#: head_dim 128, output_proj with bias), llama.cpp PR #21348 ("12-layer conformer ... output
#: projection (1024 -> 1536)"), and the converter's names (tests/data/gemma4a/mmproj-g4a-F32.gguf).
CONFORMER_SHAPES = {
    "a.conv1d.0.weight": [3, 3, 1, 128], "a.conv1d.0.norm.weight": [128],
    "a.conv1d.1.weight": [3, 3, 128, 32], "a.conv1d.1.norm.weight": [32],
    "a.input_projection.weight": [1024, 1024],
    "a.pre_encode.out.weight": [1024, 1536], "a.pre_encode.out.bias": [1536],
    "mm.a.input_projection.weight": [1536, TEXT_WIDTH],
    **{f"a.blk.N.{n}.weight": [1024, 4096] for n in ("ffn_up", "ffn_up_1")},
    **{f"a.blk.N.{n}.weight": [4096, 1024] for n in ("ffn_down", "ffn_down_1")},
    **{f"a.blk.N.{n}.weight": [1024, 1024]
       for n in ("attn_q", "attn_k", "attn_v", "attn_out", "attn_k_rel", "conv_pw2")},
    "a.blk.N.conv_pw1.weight": [1024, 2048], "a.blk.N.conv_dw.weight": [5, 1024], "a.blk.N.per_dim_scale.weight": [128],
    **{f"a.blk.N.{n}.weight": [1024] for n in ("ffn_norm", "ffn_post_norm", "ffn_norm_1", "ffn_post_norm_1",
                                                "attn_pre_norm", "attn_post_norm", "conv_norm", "norm_conv", "ln2")},
    **{f"a.blk.N.{lin}.{b}": [1] for lin in ("ffn_up", "ffn_down", "ffn_up_1", "ffn_down_1", "attn_q", "attn_k",
                                             "attn_v", "attn_out", "conv_pw1", "conv_pw2")
       for b in ("input_min", "input_max", "output_min", "output_max")},
}
CONFORMER_BLOCKS = 12


@pytest.fixture(scope="module")
def e2b_mmproj(tmp_path_factory):
    """The real-size file, written by the CLI (both encoders in one file, as the E2B's mmproj)."""
    from g4rt.cli.main import main
    out = tmp_path_factory.mktemp("synthmm") / "mmproj-e2b-synth-f16.gguf"
    res = CliRunner().invoke(main, ["synth", str(out), "--mmproj", "--vision", "vit", "--audio", "conformer"])
    assert res.exit_code == 0, res.output
    yield out
    out.unlink(missing_ok=True)


def _pattern_shapes(path) -> dict[str, list[int]]:
    """Tensor name (block number -> N) -> GGUF shape, every block's equal to block 0's."""
    import gguf
    out: dict[str, list[int]] = {}
    for t in gguf.GGUFReader(path).tensors:
        key = re.sub(r"\.blk\.\d+\.", ".blk.N.", t.name)
        shape = [int(d) for d in t.shape]
        assert out.setdefault(key, shape) == shape, f"{t.name}: {shape}, another block has {out[key]}"
    return out


def test_the_tensors_have_the_real_e2b_shapes(e2b_mmproj):
    import gguf
    got = _pattern_shapes(e2b_mmproj)
    assert got == {**VIT_SHAPES, **CONFORMER_SHAPES}
    names = "\n".join(t.name for t in gguf.GGUFReader(e2b_mmproj).tensors)
    assert {int(m) for m in re.findall(r"^v\.blk\.(\d+)\.ln1\.weight$", names, re.M)} == set(range(VIT_BLOCKS))
    assert {int(m) for m in re.findall(r"^a\.blk\.(\d+)\.ln2\.weight$", names, re.M)} == set(range(CONFORMER_BLOCKS))


def test_keys_and_types_are_the_converters(e2b_mmproj):
    """The metadata keys of llama.cpp's converted gemma4a + gemma4v fixture (same names, types and
    order), F16 matrices and F32 everything the converter keeps F32."""
    import gguf
    from pathlib import Path
    fixture = gguf.GGUFReader(Path(__file__).parent / "data" / "gemma4a" / "mmproj-g4a-F32.gguf")
    r = gguf.GGUFReader(e2b_mmproj)
    def keys(rd):
        return [(k, [int(t) for t in f.types]) for k, f in rd.fields.items() if not k.startswith("GGUF.")]
    assert keys(r) == keys(fixture)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["v.patch_embd.weight"] == types["v.blk.3.attn_q.weight"] == types["a.blk.0.conv_pw1.weight"] == "F16"
    for n in ("v.position_embd.weight", "a.conv1d.1.weight", "a.input_projection.weight", "a.blk.0.conv_dw.weight",
              "a.blk.0.attn_q.input_min", "v.blk.0.ln1.weight"):
        assert types[n] == "F32", n
    assert r.fields["clip.vision.projector_type"].contents() == "gemma4v"
    assert r.fields["clip.audio.projector_type"].contents() == "gemma4a"


def test_the_reader_takes_it_as_the_e2b_encoders(e2b_mmproj):
    from g4rt.mmproj.reader import load_projector
    p = load_projector(e2b_mmproj, TEXT_WIDTH)
    v, t, a = p.vision, p.vision.vit, p.audio
    assert (v.projector, v.patch, v.width, v.pos_size, v.n_out) == ("gemma4v", 48, 768, 10240, TEXT_WIDTH)
    assert (t.hf_patch, t.merge, t.n_layer, t.n_head, t.head_dim, t.ffn, t.standardize) == \
        (16, 3, 16, 12, 64, 3072, False)
    assert len(t.clamps) == 16 * 7 and all(np.isfinite(b).all() for _, b in t.clamps)
    assert (a.projector, a.n_mel, a.channels, a.width, a.n_head, a.n_layer, a.ffn, a.out_dims, a.n_out) == \
        ("gemma4a", 128, (128, 32), 1024, 8, 12, 4096, 1536, TEXT_WIDTH)
    assert len(a.clamps) == 12 * 10 and all(np.isfinite(b).all() for b in a.clamps.values())


@pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")
def test_a_small_image_and_a_second_of_audio_encode_to_finite_soft_tokens(e2b_mmproj):
    """4 soft tokens (a 96 x 96 px image: 36 ViT patches through all 16 blocks) and 1 s of audio
    (25 soft tokens through the 12 conformer blocks) on the native CPU: [N, 1536], finite, RMS
    about 1 (the unweighted RMS norm before mm.input_projection, weights ~ N(0, 1/fan_in))."""
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.mmproj.reader import load_projector
    p = load_projector(e2b_mmproj, TEXT_WIDTH)
    enc = MediaEncoder(p, "cpu", threads=2, precision="exact")
    try:
        r = np.random.default_rng(0)
        pos = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
        img = enc.encode_image(r.random((4, p.vision.patch_values), dtype=np.float32), pos)
        t = np.arange(16000) / 16000
        wave = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.02 * r.standard_normal(t.size)
        clip, n = enc.audio_input(wave.astype(np.float32))
        aud = enc.encode_audio(clip)
    finally:
        enc.close()
    assert img.shape == (4, TEXT_WIDTH) and aud.shape == (n, TEXT_WIDTH) and n == 25
    for x in (img, aud):
        assert np.isfinite(x).all()
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        assert 0.5 < rms < 2.0, rms
        assert float(np.abs(x).max()) < 20.0
    assert not np.allclose(img[0], img[1])          # the patches' pixels and positions reach the output


def test_vision_only_and_audio_only_files(tmp_path):
    """--vision vit alone writes a vision-only projector (as the 26B / 31B's), --audio conformer
    alone an audio-only one; small shapes here, the same writer."""
    from g4rt.mmproj.reader import load_projector
    from g4rt.tools.synth_mmproj import ConformerShape, ViTShape, write_synthetic_edge_mmproj
    vit = ViTShape(hidden=32, ffn=64, layers=2, heads=2, patch=4, merge=3, positions=16, clipped=False,
                   standardize=True)
    conf = ConformerShape(hidden=32, layers=1, heads=2, channels=(128, 4), n_mel=128, out_dims=48)
    write_synthetic_edge_mmproj(tmp_path / "v.gguf", 64, audio=False, vit=vit)
    write_synthetic_edge_mmproj(tmp_path / "a.gguf", 64, vision=False, conformer=conf)
    pv, pa = load_projector(tmp_path / "v.gguf", 64), load_projector(tmp_path / "a.gguf", 64)
    assert pv.audio is None and pv.vision.vit.standardize and pv.vision.vit.clamps == ()
    assert pa.vision is None and (pa.audio.width, pa.audio.out_dims, pa.audio.channels) == (32, 48, (128, 4))


def test_synth_refuses_the_e2b_encoders_with_another_target(tmp_path):
    from g4rt.cli.main import main
    res = CliRunner().invoke(main, ["synth", str(tmp_path / "x.gguf"), "--mmproj", "--vision", "vit", "--moe"])
    assert res.exit_code != 0 and "E2B" in res.output
    assert not (tmp_path / "x.gguf").exists()


def test_bench_times_the_encoder_not_the_soft_token_cache(monkeypatch):
    """bench_media's timed repeats run the encoder (the prompter's cache would answer them)."""
    from pathlib import Path
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.tools.bench_media import bench_media
    data = Path(__file__).parent / "data" / "gemma4v"
    calls = []
    real = MediaEncoder.encode_image
    monkeypatch.setattr(MediaEncoder, "encode_image", lambda self, *a: calls.append(1) or real(self, *a))
    img = np.full((24, 24, 3), 128, np.uint8)
    res = bench_media(data / "g4v-F32.gguf", data / "mmproj-g4v-F32.gguf", "numpy", [img], [], {}, reps=3,
                      image_max_tokens=4)
    assert res["images"][0]["tokens"] == 4
    assert len(calls) >= 1 + 3          # the untimed first run and 3 timed ones (the prefill may add one)
