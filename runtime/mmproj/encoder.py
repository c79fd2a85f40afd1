"""MediaEncoder: a projector's op lists run on a backend, giving soft tokens float32 [N, n_embd].

It takes prepared arrays (g4rt.media prepares them from files): an image as pixel values
[N, patch*patch*3] in [0, 1], each patch flattened (row, col, channel) - HWC - in row-major grid
order, with its (x, y) grid positions; audio as frames [M, 640] of 16 kHz samples. The patch
embedding of the GGUF has its columns in CHW order (ggml's im2col order; the converter permutes
them), so the patches are put in that order here, on the host, before the graph runs.

The encoder has its own backend instance (its own weights; the text model's backend keeps its
own), made by the registry with the text backend's name and options.
"""

from __future__ import annotations

from collections import OrderedDict
import numpy as np

from ..backends import create_backend
from ..backends.base import Backend, CompiledGraph
from ..ops import input_rows, one_sequence
from .errors import MediaInputError
from .graphs import audio_graph, image_graph, input_names, projector_weight_specs
from .reader import ConformerConfig, Projector

#: Compiled graphs kept (one per distinct soft-token count).
MAX_GRAPHS = 8


def hwc_to_chw(patch: int) -> np.ndarray:
    """perm such that chw_row = hwc_row[perm]: GGUF column i holds channel i // p², row
    (i % p²) // p, column i % p of the patch, i.e. HWC index row*3p + col*3 + ch."""
    i = np.arange(patch * patch * 3)
    ch, rest = i // (patch * patch), i % (patch * patch)
    return (rest // patch) * patch * 3 + (rest % patch) * 3 + ch


class MediaEncoder:
    """Soft tokens of images and audio for one projector on one backend."""

    def __init__(self, projector: Projector, backend: str | Backend = "numpy", **backend_options):
        self.projector = projector
        self.backend = create_backend(backend, **backend_options) if isinstance(backend, str) else backend
        self._vit = projector.vision is not None and projector.vision.vit is not None     # gemma4v
        if self._vit:
            from .vision_vit import vit_weight_specs
            self.specs = vit_weight_specs(projector.file, projector.vision)
        else:
            self.specs = projector_weight_specs(projector.file)
        self.backend.load_weights(self.specs, self)
        self._graphs: OrderedDict[tuple[str, int], CompiledGraph] = OrderedDict()
        self._perm = hwc_to_chw(projector.vision.patch) if projector.vision else None

    # WeightSource
    def weight_bytes(self, name: str) -> np.ndarray:
        raw = self.projector.file.tensor(name).raw
        if self._vit and name == "v.patch_embd.weight":       # 4-D [p, p, 3, D]: D rows of CHW values
            return raw.reshape(self.specs[name].rows, -1)
        return raw

    def _graph(self, kind: str, n: int) -> CompiledGraph:
        key = (kind, n)
        g = self._graphs.get(key)
        if g is None:
            if kind == "conformer":         # n = (mel frames, valid soft tokens)
                from .audio_conformer import conformer_graph
                graph = conformer_graph(self.projector.audio, self.specs, *n)
            elif kind == "image" and self._vit:
                from .vision_vit import image_graph as vit_graph
                graph = vit_graph(self.projector.vision, self.specs, n)
            else:
                graph = image_graph(self.projector.vision, self.specs, n) if kind == "image" \
                    else audio_graph(self.projector.audio, self.specs, n)
            self.backend.declare_inputs({name: (b.rows, b.cols) for name, b in graph.inputs.items()})
            g = self._graphs[key] = self.backend.compile(graph)
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return g

    def _run(self, kind: str, n: int, inputs: dict[str, np.ndarray], rows: int = 0) -> np.ndarray:
        """n soft tokens from a graph of `rows` rows (default n; a ViT's rows are its patches)."""
        g = self._graph(kind, n)
        rows = rows or n
        cap = input_rows(rows)      # the input buffers' rows (the graph reads the first `rows`)
        padded = {}
        for name, a in inputs.items():
            p = np.zeros((cap, a.shape[1]), np.float32)
            p[:rows] = a
            padded[name] = p
        self.backend.write_inputs(padded)
        out = g.run(np.zeros(rows, np.int32), one_sequence(rows, 0))
        return np.array(out, dtype=np.float32, copy=True)

    def encode_image(self, pixel_values, positions) -> np.ndarray:
        """pixel_values [N, patch*patch*3] (HWC per patch), positions int [N, 2] (x, y) ->
        soft tokens [N, n_embd]."""
        v = self.projector.vision
        if v is None:
            raise MediaInputError(f"{self.projector.path.name} has no vision projector; it cannot take images")
        px = np.asarray(pixel_values, dtype=np.float32)
        pos = np.asarray(positions)
        if px.ndim != 2 or px.shape[1] != v.patch_values or px.shape[0] < 1:
            raise MediaInputError(f"image pixel values have shape {list(px.shape)}; the {v.projector} projector "
                                  f"takes [N, {v.patch_values}] ({v.patch}x{v.patch} px patches, 3 channels)")
        if pos.shape != (px.shape[0], 2):
            raise MediaInputError(f"image positions have shape {list(pos.shape)}, expected [{px.shape[0]}, 2]")
        if self._vit:
            return self._encode_vit(px, pos)
        if pos.min() < 0 or pos.max() >= v.pos_size:
            raise MediaInputError(f"an image {int(pos[:, 1].max()) + 1} x {int(pos[:, 0].max()) + 1} patches large "
                                  f"does not fit the projector's {v.pos_size}-entry position table (at most "
                                  f"{v.pos_size * v.patch} px per side)")
        n = px.shape[0]
        names = input_names("image", n)
        rows = np.stack([pos[:, 0], v.pos_size + pos[:, 1]], axis=1).astype(np.float32)
        return self._run("image", n, {names["pixels"]: np.ascontiguousarray(px[:, self._perm]),
                                      names["pos"]: rows})

    def _encode_vit(self, px: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """gemma4v: each soft token's merge x merge patches through the ViT (mmproj/vision_vit.py)."""
        from .vision_vit import max_patch_position, patch_inputs
        v = self.projector.vision
        if pos.min() < 0 or max_patch_position(v, pos) >= v.pos_size:
            raise MediaInputError(f"an image {int(pos[:, 1].max()) + 1} x {int(pos[:, 0].max()) + 1} soft tokens large "
                                  f"does not fit the ViT's {v.pos_size}-entry position table (at most "
                                  f"{v.pos_size // v.vit.merge * v.patch} px per side)")
        n = px.shape[0]
        return self._run("image", n, patch_inputs(v, px, pos), rows=n * v.vit.merge ** 2)

    def audio_input(self, samples, label: str = "audio"):
        """What encode_audio takes for float32 16 kHz samples, and its soft-token count: 640-sample
        frames (gemma4ua) or log-mel features (gemma4a: audio_conformer.AudioFeatures)."""
        a = self.projector.audio
        if a is None:
            raise MediaInputError(f"{self.projector.path.name} has no audio projector; it cannot take audio")
        if isinstance(a, ConformerConfig):
            from .audio_conformer import prepare_audio
            feats = prepare_audio(a, samples, label)
            return feats, feats.n_tokens
        from ..media.audio import audio_frames
        frames = audio_frames(np.asarray(samples, np.float32), a.frame)
        return frames, int(frames.shape[0])

    def _encode_conformer(self, feats) -> np.ndarray:
        from .audio_conformer import AudioFeatures, graph_inputs
        if not isinstance(feats, AudioFeatures):
            raise MediaInputError("the gemma4a audio encoder takes log-mel features (MediaEncoder.audio_input), "
                                  "not raw frames")
        t0, valid = int(feats.features.shape[0]), feats.n_tokens
        mask = np.asarray(feats.mask, bool)
        if feats.features.ndim != 2 or feats.features.shape[1] != self.projector.audio.n_mel or valid < 1 \
                or mask.shape != (t0,) or (mask[1:] & ~mask[:-1]).any():
            raise MediaInputError(f"audio features of shape {list(feats.features.shape)} (mask {list(mask.shape)}): "
                                  f"the gemma4a encoder takes [frames, {self.projector.audio.n_mel}] with the valid "
                                  f"frames first and at least one soft token")
        g = self._graph("conformer", (t0, valid))
        self.backend.write_inputs(graph_inputs(feats))
        out = g.run(np.zeros(t0, np.int32), one_sequence(t0, 0))
        return np.array(out[:valid], dtype=np.float32, copy=True)

    def encode_audio(self, frames) -> np.ndarray:
        """frames [M, 640] float32 16 kHz samples -> soft tokens [M, n_embd] (gemma4ua); for
        gemma4a, log-mel features from audio_input -> their soft tokens."""
        a = self.projector.audio
        if a is None:
            raise MediaInputError(f"{self.projector.path.name} has no audio projector; it cannot take audio")
        if isinstance(a, ConformerConfig):
            return self._encode_conformer(frames)
        fr = np.asarray(frames, dtype=np.float32)
        if fr.ndim != 2 or fr.shape[1] != a.frame or fr.shape[0] < 1:
            raise MediaInputError(f"audio frames have shape {list(fr.shape)}; the {a.projector} projector takes "
                                  f"[M, {a.frame}] (at least one frame)")
        n = fr.shape[0]
        return self._run("audio", n, {input_names("audio", n)["frames"]: fr})

    def close(self) -> None:
        self.backend.close()


__all__ = ["MediaEncoder", "hwc_to_chw"]
