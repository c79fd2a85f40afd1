"""Random-weight projector files with the real shapes of the Gemma 4 encoders, laid out as
llama.cpp's converter writes them: the 12B's encoder-free embedders (`gemma4uv` vision with 48-px
patches, `gemma4ua` audio with 640-sample frames; see ../shared/fixtures-mm/README.md), and the
E2B / E4B's ViT (`gemma4v`) and conformer (`gemma4a`) (write_synthetic_edge_mmproj; as
tests/data/gemma4{v,a}/mmproj-*.gguf). For timing the encoders at full size (`g4rt bench
--mmproj`); the weights mean nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

#: the 12B (Gemma4UnifiedVisionConfig): patch_size 16 x pooling 3 = 48 px, mm_embed_dim,
#: mm_posemb_size; the audio frame is 640 samples
PATCH = 16
PIXELS = (PATCH * 3) ** 2 * 3
EMBED = 3840
POSITIONS = 1120
FRAME = 640


def write_synthetic_mmproj(out: Path, n_embd: int, seed: int = 0) -> int:
    """Write the projector for a text model `n_embd` wide; returns the tensor bytes."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(out, "clip")
    w.add_key_value("general.type", "mmproj", GGUFValueType.STRING)
    w.add_key_value("general.name", "Synthetic Gemma 4 12B mmproj (random weights)", GGUFValueType.STRING)
    for kind, width in (("vision", EMBED), ("audio", FRAME)):
        w.add_bool(f"clip.has_{kind}_encoder", True)
        w.add_uint32(f"clip.{kind}.projection_dim", n_embd)
        w.add_uint32(f"clip.{kind}.embedding_length", width)
        for key in ("feed_forward_length", "block_count", "attention.head_count"):
            w.add_uint32(f"clip.{kind}.{key}", 0)
        w.add_float32(f"clip.{kind}.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.image_size", 224)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_array("clip.vision.image_mean", [0.0, 0.0, 0.0])
    w.add_array("clip.vision.image_std", [1.0, 1.0, 1.0])
    w.add_string("clip.vision.projector_type", "gemma4uv")
    w.add_string("clip.audio.projector_type", "gemma4ua")
    w.add_uint32("clip.audio.num_mel_bins", 128)

    def mat(rows_out: int, cols_in: int) -> np.ndarray:     # numpy [out, in] = ggml ne [in, out]
        return (rng.standard_normal((rows_out, cols_in), dtype=np.float32) / np.sqrt(cols_in)).astype(np.float32)

    def vec(n: int, centre: float) -> np.ndarray:
        return (centre + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    tensors = {
        "mm.a.input_projection.weight": mat(n_embd, FRAME),
        "mm.input_projection.weight": mat(n_embd, EMBED),
        "v.patch_embd.weight": mat(EMBED, PIXELS), "v.patch_embd.bias": vec(EMBED, 0.0),
        "v.patch_norm.1.weight": vec(PIXELS, 1.0), "v.patch_norm.1.bias": vec(PIXELS, 0.0),
        "v.patch_norm.2.weight": vec(EMBED, 1.0), "v.patch_norm.2.bias": vec(EMBED, 0.0),
        "v.position_embd.weight": (0.5 * rng.standard_normal((2, POSITIONS, EMBED), dtype=np.float32)),
        "v.patch_norm.3.weight": vec(EMBED, 1.0), "v.patch_norm.3.bias": vec(EMBED, 0.0),
    }
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sum(t.nbytes for t in tensors.values())


# ---- gemma4v + gemma4a: the E2B / E4B encoders ------------------------------------------------
@dataclass(frozen=True)
class ViTShape:
    """A gemma4v ViT's sizes as its GGUF states them (clip.vision.*)."""
    hidden: int
    ffn: int
    layers: int
    heads: int
    patch: int              # clip.vision.patch_size (pixels per ViT patch side)
    merge: int              # pooling kernel (llama.cpp's n_merge; not written by the converter)
    positions: int          # entries per axis of v.position_embd.weight (position_embedding_size)
    clipped: bool           # use_clipped_linears: the .input_min ... .output_max scalars are present
    standardize: bool       # v.std_bias / v.std_scale


@dataclass(frozen=True)
class ConformerShape:
    """A gemma4a conformer's sizes (clip.audio.*; the converter writes feed_forward_length = 4 x hidden)."""
    hidden: int
    layers: int
    heads: int
    channels: tuple[int, int]   # subsampling_conv_channels
    n_mel: int
    out_dims: int               # output_proj_dims (a.pre_encode.out rows)
    conv_kernel: int = 5

    @property
    def ffn(self) -> int:
        return 4 * self.hidden

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


#: Gemma 4 E2B / E4B's vision tower (the same ViT in both): transformers 5.25
#: Gemma4VisionConfig's defaults (documented checkpoint google/gemma-4-e2b-it: hidden 768,
#: intermediate 3072, 16 layers, 12 heads of 64, patch 16, pooling 3, position_embedding_size
#: 10240), use_clipped_linears true and standardize false for E2B/E4B (shared/notes/multimodal.md
#: A1.2, from https://github.com/VincentGourbin/gemma-4-swift-mlx/issues/3).
E2B_VIT = ViTShape(hidden=768, ffn=3072, layers=16, heads=12, patch=16, merge=3, positions=10240, clipped=True,
                   standardize=False)
#: Gemma 4 E2B / E4B's audio tower: transformers 5.25 Gemma4AudioConfig's defaults (checkpoint
#: google/gemma-4-e2b-it: hidden 1024, 12 layers, 8 heads, subsampling channels [128, 32],
#: output_proj_dims 1536, conv kernel 5, clipped linears), 128 mel bins (the feature extractor);
#: llama.cpp PR #21348 (its gemma4a encoder): "12-layer conformer ... output projection (1024 -> 1536)".
E2B_CONFORMER = ConformerShape(hidden=1024, layers=12, heads=8, channels=(128, 32), n_mel=128, out_dims=1536)
#: the E2B's text width (model.shapes.EDGE_E2B.hidden; the E4B's is 2560)
E2B_TEXT_WIDTH = 1536


def _size_label(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{round(n / 1e6)}M"


def write_synthetic_edge_mmproj(out: Path, n_embd: int = E2B_TEXT_WIDTH, vision: bool = True, audio: bool = True,
                                seed: int = 0, vit: ViTShape = E2B_VIT, conformer: ConformerShape = E2B_CONFORMER,
                                matrix_type: GGMLQuantizationType = GGMLQuantizationType.F16) -> int:
    """A gemma4v (ViT) and/or gemma4a (conformer) projector with these shapes for a text model
    n_embd wide, as llama.cpp's convert_hf_to_gguf.py --mmproj --outtype f16 writes the E2B's
    (keys, names, order and types of tests/data/gemma4{v,a}/mmproj-*.gguf): 2-D matrices
    `matrix_type`, the 4-D patch embedding too, norms, clamp scalars, the position table and the
    audio convolutions (and a.input_projection, the converter's `_conv` rule) F32. Random weights
    scaled so every layer's activations stay O(1) (weights ~ N(0, 1/fan_in), norms ~ 1, q/k norm
    weights ~ head_dim^-1/4 so the attention's scale-1 logits are O(1), clamps wide but finite).
    Returns the tensor bytes."""
    if not (vision or audio):
        raise ValueError("write_synthetic_edge_mmproj: nothing to write (vision and audio both off)")
    rng = np.random.default_rng(seed)
    mt = matrix_type
    F32 = GGMLQuantizationType.F32
    tensors: list[tuple[str, np.ndarray, GGMLQuantizationType]] = []

    def mat(rows_out: int, cols_in: int, scale: float = 1.0) -> np.ndarray:   # numpy [out, in] = ne [in, out]
        return rng.standard_normal((rows_out, cols_in), dtype=np.float32) * np.float32(scale / np.sqrt(cols_in))

    def vec(n: int, centre: float, spread: float = 0.1) -> np.ndarray:
        return (centre + spread * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    def add(name: str, a: np.ndarray, qt: GGMLQuantizationType = F32) -> None:
        tensors.append((name, np.ascontiguousarray(a.astype(np.float16) if qt == GGMLQuantizationType.F16 else a), qt))

    def clipped(name: str, rows_out: int, cols_in: int, clip: bool, in_bound: float, out_bound: float) -> None:
        """A clipped linear in the converter's order (input_max, input_min, weight, output_max,
        output_min), its bounds +-bound x [1, 1.1): wide for O(1) activations, but finite."""
        def bound(b: float) -> np.ndarray:
            return np.array([b * (1 + 0.1 * rng.random())], np.float32)
        if clip:
            add(f"{name}.input_max", bound(in_bound))
            add(f"{name}.input_min", bound(-in_bound))
        add(f"{name}.weight", mat(rows_out, cols_in), mt)
        if clip:
            add(f"{name}.output_max", bound(out_bound))
            add(f"{name}.output_min", bound(-out_bound))

    if audio:
        a = conformer
        D, F, hd = a.hidden, a.ffn, a.head_dim
        for i in range(a.layers):            # transformers' names sorted (the converter's order)
            p = f"a.blk.{i}."
            for sfx in ("", "_1"):             # feed_forward1, feed_forward2
                clipped(p + "ffn_up" + sfx, F, D, True, 16.0, 64.0)
                clipped(p + "ffn_down" + sfx, D, F, True, 16.0, 64.0)
                add(p + "ffn_post_norm" + sfx + ".weight", vec(D, 1.0))
                add(p + "ffn_norm" + sfx + ".weight", vec(D, 1.0))
            add(p + "norm_conv.weight", vec(D, 1.0))                   # lconv1d.conv_norm
            add(p + "conv_dw.weight", mat(D, a.conv_kernel))           # depthwise [D, 1, 5] -> [D, 5]
            clipped(p + "conv_pw2", D, D, True, 16.0, 64.0)              # linear_end
            clipped(p + "conv_pw1", 2 * D, D, True, 16.0, 64.0)          # linear_start
            add(p + "conv_norm.weight", vec(D, 1.0))                   # lconv1d.pre_layer_norm
            add(p + "ln2.weight", vec(D, 1.0))                         # norm_out
            add(p + "attn_post_norm.weight", vec(D, 1.0))
            add(p + "attn_pre_norm.weight", vec(D, 1.0))
            clipped(p + "attn_k", D, D, True, 16.0, 64.0)
            # softplus(per_dim_scale) as the converter stores it; HF initializes the parameter to 0 (-> ln 2)
            add(p + "per_dim_scale.weight", np.log1p(np.exp(vec(hd, 0.0))).astype(np.float32))
            clipped(p + "attn_out", D, D, True, 16.0, 64.0)              # self_attn.post
            clipped(p + "attn_q", D, D, True, 16.0, 64.0)
            add(p + "attn_k_rel.weight", mat(D, D), mt)                # relative_k_proj
            clipped(p + "attn_v", D, D, True, 16.0, 64.0)
        add("a.pre_encode.out.bias", vec(a.out_dims, 0.0))             # output_proj
        add("a.pre_encode.out.weight", mat(a.out_dims, D), mt)
        c0, c1 = a.channels
        add("a.input_projection.weight", mat(D, (a.n_mel // 4) * c1))  # subsample_conv_projection: F32
        add("a.conv1d.0.weight", mat(c0, 9).reshape(c0, 1, 3, 3))
        add("a.conv1d.0.norm.weight", vec(c0, 1.0))
        add("a.conv1d.1.weight", mat(c1, 9 * c0).reshape(c1, c0, 3, 3))
        add("a.conv1d.1.norm.weight", vec(c1, 1.0))
        add("mm.a.input_projection.weight", mat(n_embd, a.out_dims), mt)
    if vision:
        v = vit
        D, hd = v.hidden, v.hidden // v.heads
        add("mm.input_projection.weight", mat(n_embd, D), mt)
        for i in range(v.layers):
            p = f"v.blk.{i}."
            add(p + "ln1.weight", vec(D, 1.0))
            clipped(p + "ffn_down", D, v.ffn, v.clipped, 16.0, 64.0)
            clipped(p + "ffn_gate", v.ffn, D, v.clipped, 16.0, 64.0)
            clipped(p + "ffn_up", v.ffn, D, v.clipped, 16.0, 64.0)
            add(p + "attn_post_norm.weight", vec(D, 1.0))
            add(p + "ffn_post_norm.weight", vec(D, 1.0))
            add(p + "ln2.weight", vec(D, 1.0))
            add(p + "attn_k_norm.weight", vec(hd, hd ** -0.25, 0.02))
            clipped(p + "attn_k", D, D, v.clipped, 16.0, 64.0)
            clipped(p + "attn_out", D, D, v.clipped, 16.0, 64.0)
            add(p + "attn_q_norm.weight", vec(hd, hd ** -0.25, 0.02))
            clipped(p + "attn_q", D, D, v.clipped, 16.0, 64.0)
            clipped(p + "attn_v", D, D, v.clipped, 16.0, 64.0)
        # [D, 3 p^2] over (c, y, x): the converter's permuted conv kernel [D, 3, p, p] (ne [p, p, 3, D])
        add("v.patch_embd.weight", mat(D, 3 * v.patch * v.patch).reshape(D, 3, v.patch, v.patch), mt)
        add("v.position_embd.weight", 0.5 * rng.standard_normal((2, v.positions, D), dtype=np.float32))
        if v.standardize:
            add("v.std_bias", vec(D, 0.0))
            add("v.std_scale", vec(D, 1.0))
    n_params = sum(t.size for _, t, _ in tensors)
    w = GGUFWriter(out, "clip")
    w.add_key_value("general.type", "mmproj", GGUFValueType.STRING)
    what = " + ".join(x for x, on in (("vision", vision), ("audio", audio)) if on)
    w.add_key_value("general.name", f"Synthetic Gemma 4 E2B mmproj, {what} (random weights)", GGUFValueType.STRING)
    w.add_key_value("general.size_label", _size_label(n_params), GGUFValueType.STRING)
    w.add_uint32("general.file_type", 1 if mt == GGMLQuantizationType.F16 else 0)   # MOSTLY_F16 / ALL_F32
    if vision:
        w.add_bool("clip.has_vision_encoder", True)
        w.add_uint32("clip.vision.projection_dim", n_embd)
        w.add_uint32("clip.vision.image_size", 224)          # the converter's dummy
        w.add_uint32("clip.vision.patch_size", vit.patch)
        w.add_uint32("clip.vision.embedding_length", vit.hidden)
        w.add_uint32("clip.vision.feed_forward_length", vit.ffn)
        w.add_uint32("clip.vision.block_count", vit.layers)
        w.add_uint32("clip.vision.attention.head_count", vit.heads)
        w.add_array("clip.vision.image_mean", [0.0, 0.0, 0.0])
        w.add_array("clip.vision.image_std", [1.0, 1.0, 1.0])
    if audio:
        w.add_bool("clip.has_audio_encoder", True)
        w.add_uint32("clip.audio.projection_dim", n_embd)
        w.add_uint32("clip.audio.embedding_length", conformer.hidden)
        w.add_uint32("clip.audio.feed_forward_length", conformer.ffn)
        w.add_uint32("clip.audio.block_count", conformer.layers)
        w.add_uint32("clip.audio.attention.head_count", conformer.heads)
    if vision:
        w.add_string("clip.vision.projector_type", "gemma4v")
        w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    if audio:
        w.add_string("clip.audio.projector_type", "gemma4a")
        w.add_uint32("clip.audio.num_mel_bins", conformer.n_mel)
        w.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("general.quantization_version", 2)
    total = 0
    for name, t, _ in tensors:
        w.add_tensor(name, t)
        total += t.nbytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return total
