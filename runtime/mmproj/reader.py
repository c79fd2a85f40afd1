"""Read and validate a multimodal projector (mmproj) GGUF as llama.cpp's converter writes it.

The file goes through the same hardened header scan as a text model (gguf/validate.py: bounded
reads, every size checked against the file); this module then checks what a projector must hold:
its projector types (`clip.vision.projector_type` / `clip.audio.projector_type`, or the older
single `clip.projector_type`), every tensor's shape against the metadata, and, against a text
model, that the soft tokens are as wide as its embeddings.

Types g4rt runs: `gemma4uv` (the 12B's encoder-free vision embedder) and `gemma4ua` (its audio
embedder). `gemma4v` (the ViT of E2B/E4B/26B-A4B/31B) and `gemma4a` (the conformer) are known
and refused as not supported yet; any other type is a projector for another model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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

SUPPORTED_VISION = ("gemma4uv",)
SUPPORTED_AUDIO = ("gemma4ua",)
#: Gemma 4 projector types g4rt knows but does not run yet.
NOT_YET = {"gemma4v": "the Gemma 4 ViT vision encoder (E2B/E4B/26B-A4B/31B)",
           "gemma4a": "the Gemma 4 conformer audio encoder (E2B/E4B)"}
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
        if self.vision:
            v = self.vision
            parts.append(f"vision {v.projector} ({v.patch}x{v.patch} px per soft token, width {v.width}, "
                         f"position table {v.pos_size}x{v.pos_size} -> {v.n_out})")
        if self.audio:
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
        vision = _vision_gemma4uv(f)
    if atype is not None:
        _check_type(f, "audio", atype, SUPPORTED_AUDIO)
        audio = _audio_gemma4ua(f)
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
        if proj.vision:
            out.append(f"- images: one soft token per {proj.vision.patch}x{proj.vision.patch} px patch "
                       f"(clip.vision.patch_size x {GEMMA4UV_MERGE}); LayerNorm eps {LAYER_NORM_EPS:g}, RMS eps "
                       f"{proj.vision.rms_eps:g}; bidirectional on the text model's sliding layers")
        if proj.audio:
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
