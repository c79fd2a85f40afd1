"""Small tensors the kernels read besides the GGUF blocks: f32 copies of small weights (norm
scales, one-element scales) and RoPE tables. Made on first use, kept until the weight they come
from is uploaded again."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ... import ops
from ...gguf.quant_types import dequantize_rows
from .upload import WeightUploader


def rope_table_words(inverse_frequencies: np.ndarray) -> np.ndarray:
    """rope.comp's table: per pair, the turns per position (frequency / 2 pi, mod 1) as 64-bit
    fixed point, high word first, so that position x turns is exact in integer arithmetic."""
    fx = [int(round(float(v) * 2.0 ** 64)) & ((1 << 64) - 1)
          for v in np.mod(inverse_frequencies / (2 * np.pi), 1.0)]
    return np.array([[(f >> 32) & 0xFFFFFFFF, f & 0xFFFFFFFF] for f in fx], np.uint32).reshape(-1)


class DerivedTensors:
    def __init__(self, weights: dict, uploader: WeightUploader):
        self.weights = weights          # name -> arena.PlacedWeight, filled by the backend
        self.uploader = uploader
        self.source = None              # the WeightSource of the uploaded weights
        self._vectors: dict[str, tuple[object, int]] = {}
        self._rope_tables: dict = {}

    def vector_f32(self, name: str) -> tuple[object, int]:
        """A small weight as f32 words: (tensor, word offset) of the uploaded tensor when it is
        F32, else of a dequantized copy (these are tiny)."""
        t = self._vectors.get(name)
        if t is None:
            w = self.weights[name]
            if w.spec.qtype == GGMLQuantizationType.F32 and len(w.chunks) == 1:
                t = (w.chunks[0].tensor, w.chunks[0].byte_off // 4)
            else:
                vals = dequantize_rows(self.source.weight_bytes(name), w.spec.qtype, w.spec.cols)
                words = np.ascontiguousarray(vals.reshape(-1), np.float32).view(np.uint32)
                t = (self.uploader.upload_words(words), 0)
            self._vectors[name] = t
        return t

    def rope_table(self, op: ops.Rope):
        """The table of rope.comp for the op's (n_rot, base, frequency factors)."""
        key = (op.n_rot, float(op.base), op.freq_factors)
        t = self._rope_tables.get(key)
        if t is None:
            factors = None
            if op.freq_factors is not None:
                spec = self.weights[op.freq_factors].spec
                factors = dequantize_rows(self.source.weight_bytes(op.freq_factors), spec.qtype, spec.cols)
            t = self.uploader.upload_words(rope_table_words(op.inverse_frequencies(factors)))
            self._rope_tables[key] = t
        return t

    def forget(self, name: str) -> None:
        """Drop what was derived from weight `name` (it is being uploaded again)."""
        self._vectors.pop(name, None)
        for key in [k for k in self._rope_tables if k[2] == name]:
            del self._rope_tables[key]

    def clear(self) -> None:
        self._vectors.clear()
        self._rope_tables.clear()
