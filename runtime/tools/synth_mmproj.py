"""A random-weight projector file with the real shapes of the Gemma 4 12B's encoder-free
embedders (`gemma4uv` vision with 48-px patches, `gemma4ua` audio with 640-sample frames), laid
out as llama.cpp's converter writes them (see ../shared/fixtures-mm/README.md): for timing the
encoders at full size (`g4rt bench --mmproj`); the weights mean nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFValueType, GGUFWriter

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
