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
from .reader import Projector

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
        self.specs = projector_weight_specs(projector.file)
        self.backend.load_weights(self.specs, self)
        self._graphs: OrderedDict[tuple[str, int], CompiledGraph] = OrderedDict()
        self._perm = hwc_to_chw(projector.vision.patch) if projector.vision else None

    # WeightSource
    def weight_bytes(self, name: str) -> np.ndarray:
        return self.projector.file.tensor(name).raw

    def _graph(self, kind: str, n: int) -> CompiledGraph:
        key = (kind, n)
        g = self._graphs.get(key)
        if g is None:
            graph = image_graph(self.projector.vision, self.specs, n) if kind == "image" \
                else audio_graph(self.projector.audio, self.specs, n)
            self.backend.declare_inputs({name: (b.rows, b.cols) for name, b in graph.inputs.items()})
            g = self._graphs[key] = self.backend.compile(graph)
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return g

    def _run(self, kind: str, n: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        g = self._graph(kind, n)
        cap = input_rows(n)         # the input buffers' rows (the graph reads the first n)
        padded = {}
        for name, a in inputs.items():
            p = np.zeros((cap, a.shape[1]), np.float32)
            p[:n] = a
            padded[name] = p
        self.backend.write_inputs(padded)
        out = g.run(np.zeros(n, np.int32), one_sequence(n, 0))
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
        if pos.min() < 0 or pos.max() >= v.pos_size:
            raise MediaInputError(f"an image {int(pos[:, 1].max()) + 1} x {int(pos[:, 0].max()) + 1} patches large "
                                  f"does not fit the projector's {v.pos_size}-entry position table (at most "
                                  f"{v.pos_size * v.patch} px per side)")
        n = px.shape[0]
        names = input_names("image", n)
        rows = np.stack([pos[:, 0], v.pos_size + pos[:, 1]], axis=1).astype(np.float32)
        return self._run("image", n, {names["pixels"]: np.ascontiguousarray(px[:, self._perm]),
                                      names["pos"]: rows})

    def encode_audio(self, frames) -> np.ndarray:
        """frames [M, 640] float32 16 kHz samples -> soft tokens [M, n_embd]."""
        a = self.projector.audio
        if a is None:
            raise MediaInputError(f"{self.projector.path.name} has no audio projector; it cannot take audio")
        fr = np.asarray(frames, dtype=np.float32)
        if fr.ndim != 2 or fr.shape[1] != a.frame or fr.shape[0] < 1:
            raise MediaInputError(f"audio frames have shape {list(fr.shape)}; the {a.projector} projector takes "
                                  f"[M, {a.frame}] (at least one frame)")
        n = fr.shape[0]
        return self._run("audio", n, {input_names("audio", n)["frames"]: fr})

    def close(self) -> None:
        self.backend.close()


__all__ = ["MediaEncoder", "hwc_to_chw"]
