"""Read and validate a multimodal projector (mmproj) GGUF as llama.cpp's converter writes it.

The file goes through the same hardened header scan as a text model (gguf/validate.py: bounded
reads, every size checked against the file); this module then checks what a projector must hold:
its projector types (`clip.vision.projector_type` / `clip.audio.projector_type`, or the older
single `clip.projector_type`), every tensor's shape against the metadata, and, against a text
model, that the soft tokens are as wide as its embeddings.

Types g4rt runs: `gemma4uv` (the 12B's encoder-free vision embedder), `gemma4ua` (its audio
embedder) and `gemma4v` (the ViT of E2B/E4B/26B-A4B/31B: mmproj/vision_vit.py). `gemma4a` (the E2B/E4B conformer audio
encoder: mmproj/audio_conformer.py) runs too; any other type is a projector for another model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from typing import Optional

from ..errors import MetadataError, MetadataTypeError, MissingKeyError, UnsupportedModelError
from ..gguf.quant_types import check_supported
from ..gguf.reader import GGUFFile
from .errors import MmprojError, ProjectorMismatchError

#: What llama.cpp hard-codes for gemma4uv: clip.vision.patch_size is the HF patch (4 or 16) and
#: the model merges n_merge = 3 x 3 of them into one soft token (no key says so; clip.cpp).
GEMMA4UV_MERGE = 3
#: LayerNorm eps of the gemma4uv embedder: PyTorch's default, not written in the GGUF (gemma4uv.cpp).
LAYER_NORM_EPS = 1e-5
#: gemma4ua: samples per soft token (40 ms at 16 kHz), hard-coded by llama.cpp (clip.cpp).
AUDIO_FRAME = 640
AUDIO_SAMPLE_RATE = 16000

SUPPORTED_VISION = ("gemma4uv", "gemma4v")
SUPPORTED_AUDIO = ("gemma4ua", "gemma4a")
#: Gemma 4 projector types g4rt knows but does not run yet.
NOT_YET: dict[str, str] = {}
#: An RMSNorm epsilon at or above this is not a real file's.
MAX_RMS_EPS = 1.0


@dataclass(frozen=True)
class VisionConfig:
    projector: str          # "gemma4uv"
    patch: int              # pixels per side of one soft token's patch (patch_size x 3)
    width: int              # embedder width (clip.vision.embedding_length)
    pos_size: int           # entries per axis of the factorized position table
    n_out: int              # soft-token width (= the text model's embedding)
    rms_eps: float
    ln_eps: float = LAYER_NORM_EPS
    #: gemma4v only: the ViT's sizes and clamp bounds (mmproj.vision_vit.ViTConfig)
    vit: Optional[object] = None

    @property
    def patch_values(self) -> int:
        return self.patch * self.patch * 3


@dataclass(frozen=True)
class AudioConfig:
    projector: str          # "gemma4ua"
    frame: int              # samples per soft token
    n_out: int
    rms_eps: float
    sample_rate: int = AUDIO_SAMPLE_RATE


@dataclass(frozen=True)
class ConformerConfig:
    """gemma4a: the E2B/E4B conformer audio encoder (llama.cpp gemma4a.cpp; HF Gemma4AudioModel).
    Chunk 12 / 12 past keys / 13 relative positions, softcap 50, FFN residual 0.5, conv kernel 5
    and eps 1e-6 are hard-coded as llama.cpp does (the GGUF holds none of them)."""
    projector: str          # "gemma4a"
    n_mel: int              # log-mel bins (clip.audio.num_mel_bins)
    channels: tuple[int, int]   # subsampling conv channels
    width: int              # conformer width (clip.audio.embedding_length)
    n_head: int
    n_layer: int
    ffn: int
    out_dims: int           # a.pre_encode.out rows (HF output_proj_dims)
    n_out: int              # soft-token width
    rms_eps: float
    clamps: dict            # clipped linear name (without .weight) -> (in_lo, in_hi, out_lo, out_hi)
    conv_kernel: int = 5
    frame: int = 640        # samples per soft token (4 x the 160-sample hop)
    sample_rate: int = AUDIO_SAMPLE_RATE
    chunk: int = 12
    softcap: float = 50.0
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.width // self.n_head


@dataclass
class Projector:
    """An opened, validated mmproj file."""
    file: GGUFFile
    vision: Optional[VisionConfig]
    audio: Optional[AudioConfig]

    @property
    def path(self):
        return self.file.path

    @property
    def n_out(self) -> int:
        return (self.vision or self.audio).n_out

    def check_text_model(self, n_embd: int, model_name: str = "the text model") -> None:
        """Refuse a projector whose soft tokens are not as wide as the text model's embeddings."""
        for part in (self.vision, self.audio):
            if part is not None and part.n_out != n_embd:
                raise ProjectorMismatchError(
                    f"{self.path.name}: the {part.projector} projector gives {part.n_out}-wide soft tokens, "
                    f"but {model_name} has {n_embd}-wide embeddings: this projector belongs to another model")

    def describe(self) -> str:
        parts = []
        if self.vision and self.vision.vit is not None:
            v, t = self.vision, self.vision.vit
            parts.append(f"vision {v.projector} (ViT: {t.hf_patch}x{t.hf_patch} px patches, {t.n_layer} blocks of "
                         f"width {v.width}, {t.n_head} heads, pooled {t.merge}x{t.merge} = {v.patch}x{v.patch} px "
                         f"per soft token, position table {v.pos_size}x{v.pos_size} patches -> {v.n_out})")
        elif self.vision:
            v = self.vision
            parts.append(f"vision {v.projector} ({v.patch}x{v.patch} px per soft token, width {v.width}, "
                         f"position table {v.pos_size}x{v.pos_size} -> {v.n_out})")
        if isinstance(self.audio, ConformerConfig):
            a = self.audio
            parts.append(f"audio {a.projector} (conformer: {a.n_mel} mel bins, subsampling {list(a.channels)}, "
                         f"{a.n_layer} blocks of width {a.width}, {a.n_head} heads; {a.frame} samples = "
                         f"{1000 * a.frame // a.sample_rate} ms per soft token -> {a.n_out})")
        elif self.audio:
            a = self.audio
            parts.append(f"audio {a.projector} ({a.frame} samples = {1000 * a.frame // a.sample_rate} ms "
                         f"per soft token -> {a.n_out})")
        return "; ".join(parts)


def _str(f: GGUFFile, key: str) -> Optional[str]:
    v = f.get(key, None)
    if v is not None and not isinstance(v, str):
        raise MetadataTypeError(f"{f.path.name}: {key} must be a string, got {type(v).__name__}")
    return v


def _int(f: GGUFFile, key: str, default=None) -> int:
    v = f.get(key, default)
    if v is None:
        raise MissingKeyError(f"{f.path.name}: metadata key {key!r} is missing")
    if isinstance(v, bool) or not isinstance(v, int):
        raise MetadataTypeError(f"{f.path.name}: {key} must be an integer, got {type(v).__name__}")
    if v <= 0:
        raise MetadataError(f"{f.path.name}: {key} must be positive, got {v}")
    return v


def _eps(f: GGUFFile, key: str) -> float:
    v = f.get(key, 1e-6)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise MetadataTypeError(f"{f.path.name}: {key} must be a number, got {type(v).__name__}")
    if not 0 < float(v) < MAX_RMS_EPS:
        raise MetadataError(f"{f.path.name}: {key} is {v}; an RMSNorm epsilon lies in (0, 1)")
    return float(v)


def _shape(f: GGUFFile, name: str, shape: tuple[int, ...], why: str) -> None:
    """The tensor must exist with exactly this GGUF shape (ne order) and a type g4rt runs."""
    t = f.tensor(name)
    got = tuple(int(d) for d in t.shape)
    if got != shape:
        raise MmprojError(f"{f.path.name}: tensor {name} has shape {list(got)}; {why} make it {list(shape)}")
    check_supported(t.qtype, f"{f.path.name}: tensor {name!r}")


def _types(f: GGUFFile) -> tuple[Optional[str], Optional[str]]:
    """(vision type, audio type) as llama.cpp reads them: the per-modality keys, else the
    single clip.projector_type of older files (vision, or audio in an audio-only file)."""
    vision, audio = _str(f, "clip.vision.projector_type"), _str(f, "clip.audio.projector_type")
    single = _str(f, "clip.projector_type")
    has_v, has_a = f.get("clip.has_vision_encoder", None), f.get("clip.has_audio_encoder", None)
    if single and vision is None and audio is None:
        if has_a and not has_v:
            audio = single
        else:
            vision = single
    if has_v is False:
        vision = None
    if has_a is False:
        audio = None
    return vision, audio


def _check_type(f: GGUFFile, kind: str, ptype: str, supported: tuple[str, ...]) -> None:
    if ptype in supported:
        return
    if ptype in NOT_YET:
        raise UnsupportedModelError(f"{f.path.name}: {kind} projector {ptype!r} ({NOT_YET[ptype]}) is not "
                                    f"supported yet; g4rt runs {', '.join(SUPPORTED_VISION + SUPPORTED_AUDIO)} "
                                    f"(Gemma 4 12B)")
    raise ProjectorMismatchError(f"{f.path.name}: {kind} projector type {ptype!r} is not a Gemma 4 projector "
                                 f"(g4rt runs {', '.join(SUPPORTED_VISION + SUPPORTED_AUDIO)}): this mmproj "
                                 f"belongs to another model")


def _vision_gemma4uv(f: GGUFFile) -> VisionConfig:
    hf_patch = _int(f, "clip.vision.patch_size")
    if hf_patch > 256:
        raise MetadataError(f"{f.path.name}: clip.vision.patch_size {hf_patch} is implausible")
    patch = hf_patch * GEMMA4UV_MERGE
    width = _int(f, "clip.vision.embedding_length")
    n_out = _int(f, "clip.vision.projection_dim")
    K = patch * patch * 3
    why = f"clip.vision.patch_size {hf_patch} (x{GEMMA4UV_MERGE} = {patch} px patches, {K} values), " \
          f"embedding_length {width} and projection_dim {n_out}"
    _shape(f, "v.patch_embd.weight", (K, width), why)
    _shape(f, "v.patch_embd.bias", (width,), why)
    _shape(f, "v.patch_norm.1.weight", (K,), why)
    _shape(f, "v.patch_norm.1.bias", (K,), why)
    for i in (2, 3):
        _shape(f, f"v.patch_norm.{i}.weight", (width,), why)
        _shape(f, f"v.patch_norm.{i}.bias", (width,), why)
    pos = f.tensor("v.position_embd.weight")
    if len(pos.shape) != 3 or pos.shape[0] != width or pos.shape[2] != 2 or pos.shape[1] < 1:
        raise MmprojError(f"{f.path.name}: tensor v.position_embd.weight has shape {list(pos.shape)}; "
                          f"embedding_length {width} makes it [{width}, P, 2] (x and y tables)")
    check_supported(pos.qtype, f"{f.path.name}: tensor 'v.position_embd.weight'")
    _shape(f, "mm.input_projection.weight", (width, n_out), why)
    return VisionConfig("gemma4uv", patch, width, int(pos.shape[1]), n_out,
                        _eps(f, "clip.vision.attention.layer_norm_epsilon"))


def _audio_gemma4ua(f: GGUFFile) -> AudioConfig:
    n_out = _int(f, "clip.audio.projection_dim")
    # clip.audio.embedding_length is the frame size; llama.cpp ignores it and uses 640
    _shape(f, "mm.a.input_projection.weight", (AUDIO_FRAME, n_out),
           f"the {AUDIO_FRAME}-sample frame and clip.audio.projection_dim {n_out}")
    return AudioConfig("gemma4ua", AUDIO_FRAME, n_out, _eps(f, "clip.audio.attention.layer_norm_epsilon"))


def _scalar(f: GGUFFile, name: str) -> float:
    t = f.tensor(name)
    if tuple(int(d) for d in t.shape) != (1,) or t.qtype.name != "F32":
        raise MmprojError(f"{f.path.name}: tensor {name} must be one F32 value (a clipped linear's bound), "
                          f"got {t.qtype.name} {list(t.shape)}")
    v = float(np.asarray(t.raw).view(np.float32).reshape(-1)[0])
    if v != v:
        raise MmprojError(f"{f.path.name}: tensor {name} is NaN")
    return v


def _audio_gemma4a(f: GGUFFile) -> ConformerConfig:
    """Every a.* tensor of the conformer checked against the metadata (notes A1.7)."""
    n_out = _int(f, "clip.audio.projection_dim")
    D = _int(f, "clip.audio.embedding_length")
    H = _int(f, "clip.audio.attention.head_count")
    L = _int(f, "clip.audio.block_count")
    ffn = _int(f, "clip.audio.feed_forward_length")
    n_mel = _int(f, "clip.audio.num_mel_bins", 128)
    if D % H or (D // H) % 2 or D % 2:
        raise MetadataError(f"{f.path.name}: clip.audio.embedding_length {D} is not a multiple of 2 x "
                            f"head_count {H}")
    if n_mel % 4 or n_mel > 1024 or L > 256 or D > 65536 or ffn > 1 << 20:
        raise MetadataError(f"{f.path.name}: implausible conformer metadata (num_mel_bins {n_mel}, block_count {L}, "
                            f"embedding_length {D}, feed_forward_length {ffn})")
    c0 = f.tensor("a.conv1d.0.weight")
    c1 = f.tensor("a.conv1d.1.weight")
    if len(c0.shape) != 4 or len(c1.shape) != 4:
        raise MmprojError(f"{f.path.name}: the subsampling convolutions a.conv1d.0/1.weight must be 4-D "
                          f"[3, 3, in, out], got {list(c0.shape)} and {list(c1.shape)}")
    ch0, ch1 = int(c0.shape[3]), int(c1.shape[3])
    why = (f"clip.audio.embedding_length {D}, head_count {H}, feed_forward_length {ffn}, num_mel_bins {n_mel}, "
           f"projection_dim {n_out} and subsampling channels [{ch0}, {ch1}]")
    _shape(f, "a.conv1d.0.weight", (3, 3, 1, ch0), why)
    _shape(f, "a.conv1d.1.weight", (3, 3, ch0, ch1), why)
    _shape(f, "a.conv1d.0.norm.weight", (ch0,), why)
    _shape(f, "a.conv1d.1.norm.weight", (ch1,), why)
    _shape(f, "a.input_projection.weight", ((n_mel // 4) * ch1, D), why)
    out = f.tensor("a.pre_encode.out.weight")
    if len(out.shape) != 2:
        raise MmprojError(f"{f.path.name}: tensor a.pre_encode.out.weight has shape {list(out.shape)}; the output "
                          f"projection is 2-D [{D}, output_proj_dims]")
    out_dims = int(out.shape[1])
    _shape(f, "a.pre_encode.out.weight", (D, out_dims), why)
    _shape(f, "a.pre_encode.out.bias", (out_dims,), why)
    _shape(f, "mm.a.input_projection.weight", (out_dims, n_out), why)
    clamps = {}
    hd = D // H
    for i in range(L):
        p = f"a.blk.{i}."
        for n in ("ffn_norm", "ffn_post_norm", "ffn_norm_1", "ffn_post_norm_1", "attn_pre_norm", "attn_post_norm",
                  "norm_conv", "conv_norm", "ln2"):
            _shape(f, p + n + ".weight", (D,), why)
        _shape(f, p + "per_dim_scale.weight", (hd,), why)
        _shape(f, p + "attn_k_rel.weight", (D, D), why)
        _shape(f, p + "conv_dw.weight", (5, D), why + " (conv kernel 5)")
        for n, shape in (("ffn_up", (D, ffn)), ("ffn_down", (ffn, D)), ("ffn_up_1", (D, ffn)),
                         ("ffn_down_1", (ffn, D)), ("attn_q", (D, D)), ("attn_k", (D, D)), ("attn_v", (D, D)),
                         ("attn_out", (D, D)), ("conv_pw1", (D, 2 * D)), ("conv_pw2", (D, D))):
            _shape(f, p + n + ".weight", shape, why)
            bounds = tuple(_scalar(f, f"{p}{n}.{b}") if f.has_tensor(f"{p}{n}.{b}") else default
                           for b, default in (("input_min", -np.inf), ("input_max", np.inf),
                                              ("output_min", -np.inf), ("output_max", np.inf)))
            if bounds[0] > bounds[1] or bounds[2] > bounds[3]:
                raise MmprojError(f"{f.path.name}: {p}{n} has clip bounds {list(bounds)} (min above max)")
            clamps[p + n] = bounds
        if f.has_tensor(p + "per_dim_k_scale.weight"):
            raise MmprojError(f"{f.path.name}: {p}per_dim_k_scale.weight is not a tensor Gemma 4's conformer has")
    if any(n.startswith(f"a.blk.{L}.") for n in f.tensors):
        raise MmprojError(f"{f.path.name}: the file holds more conformer blocks than clip.audio.block_count {L}")
    return ConformerConfig("gemma4a", n_mel, (ch0, ch1), D, H, L, ffn, out_dims, n_out,
                           _eps(f, "clip.audio.attention.layer_norm_epsilon"), clamps)


def is_projector(f: GGUFFile) -> bool:
    """Whether an opened GGUF is a projector (the converter writes architecture clip)."""
    return f.get("general.architecture", None) == "clip" or f.get("general.type", None) == "mmproj"


def load_projector(path: str | os.PathLike, n_embd: Optional[int] = None, model_name: str = "the text model"
                   ) -> Projector:
    """Open and validate an mmproj file; with n_embd, also check it fits that text model."""
    f = GGUFFile(path)
    if not is_projector(f):
        raise MmprojError(f"{f.path.name}: not a multimodal projector (general.architecture is "
                          f"{f.get('general.architecture', None)!r}, an mmproj file has 'clip')")
    vtype, atype = _types(f)
    if vtype is None and atype is None:
        raise MissingKeyError(f"{f.path.name}: no projector type (clip.vision.projector_type / "
                              f"clip.audio.projector_type)")
    vision = audio = None
    if vtype is not None:
        _check_type(f, "vision", vtype, SUPPORTED_VISION)
        if vtype == "gemma4v":
            from .vision_vit import read_gemma4v        # the ViT's tensors and config
            vit, fields = read_gemma4v(f, _int, _eps, _shape)
            vision = VisionConfig("gemma4v", vit=vit, **fields)
        else:
            vision = _vision_gemma4uv(f)
    if atype is not None:
        _check_type(f, "audio", atype, SUPPORTED_AUDIO)
        audio = _audio_gemma4a(f) if atype == "gemma4a" else _audio_gemma4ua(f)
    proj = Projector(f, vision, audio)
    if n_embd is not None:
        proj.check_text_model(n_embd, model_name)
    return proj


def images_bidirectional(projector: str, n_embd_text: int) -> bool:
    """Whether an image's soft tokens attend to each other (on sliding layers only), decided as
    llama.cpp's mtmd_decode_use_non_causal does, since no GGUF key says so: gemma4uv (12B) yes;
    gemma4v yes except the E2B/E4B text widths 1536 and 2560 (their HF configs set
    use_bidirectional_attention to null); audio never."""
    if projector == "gemma4uv":
        return True
    if projector == "gemma4v":
        return n_embd_text not in (1536, 2560)
    return False


def describe_lines(path) -> list[str]:
    """Markdown lines for `g4rt info` on a projector file: what it runs (or why not) and its
    tensors with their shapes."""
    f = GGUFFile(path)
    vtype, atype = _types(f)
    out = ["## Projector", "", f"- vision: `{vtype or 'none'}`; audio: `{atype or 'none'}`"]
    try:
        proj = load_projector(path)
        out.append(f"- runs: {proj.describe()}")
        if proj.vision and proj.vision.vit is not None:
            t = proj.vision.vit
            out.append(f"- images: one soft token per {proj.vision.patch}x{proj.vision.patch} px ({t.merge}x{t.merge} "
                       f"ViT patches of clip.vision.patch_size {t.hf_patch}, averaged); 2-D RoPE theta "
                       f"{t.rope_base:g}, RMS eps {proj.vision.rms_eps:g}, {len(t.clamps)} clipped linears, "
                       f"standardization {'yes' if t.standardize else 'no'}, FFN gelu_tanh (as transformers); "
                       f"bidirectional on the text model's sliding layers unless it is 1536 or 2560 wide (E2B/E4B)")
        elif proj.vision:
            out.append(f"- images: one soft token per {proj.vision.patch}x{proj.vision.patch} px patch "
                       f"(clip.vision.patch_size x {GEMMA4UV_MERGE}); LayerNorm eps {LAYER_NORM_EPS:g}, RMS eps "
                       f"{proj.vision.rms_eps:g}; bidirectional on the text model's sliding layers")
        if isinstance(proj.audio, ConformerConfig):
            out.append(f"- audio: log-mel ({proj.audio.n_mel} bins, 20 ms window, 10 ms hop) -> 2 x Conv2d stride 2 "
                       f"-> {proj.audio.n_layer} conformer blocks (chunked local attention: 12 keys, softcap 50) -> "
                       f"one soft token per {proj.audio.frame} samples; causal")
        elif proj.audio:
            out.append(f"- audio: one soft token per {proj.audio.frame} samples at {proj.audio.sample_rate} Hz; "
                       f"RMS eps {proj.audio.rms_eps:g}; causal")
        out.append(f"- soft tokens: {proj.n_out} wide (the text model's embedding width must match)")
    except Exception as e:   # noqa: BLE001 - info describes a file it cannot run too
        from ..errors import G4rtError
        if not isinstance(e, G4rtError):
            raise
        out.append(f"- not runnable: {e}")
    out += ["", "| tensor | type | shape (GGUF order) |", "|---|---|---|"]
    for name, t in sorted(f.tensors.items()):
        out.append(f"| `{name}` | {t.qtype.name} | {list(int(d) for d in t.shape)} |")
    return out
