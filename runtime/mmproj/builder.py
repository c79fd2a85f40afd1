"""GraphBuilder: how the projectors' graph modules (graphs.py, vision_vit.py, audio_conformer.py)
declare buffers and weights and emit ops into one encoder op list."""

from __future__ import annotations

import math
from typing import Optional

from ..ops import Buffer, Clamp, Graph, MatMul, Op, WeightSpec


class GraphBuilder:
    """An encoder op list under construction: `rows` is the graph's row count (n_tokens), the
    default of every buffer it declares (an encoder's later buffers may have fewer: pooling,
    subsampling)."""

    def __init__(self, specs: dict[str, WeightSpec], rows: int):
        self.specs, self.rows = specs, rows
        self.buffers = {"tokens": Buffer("tokens", rows, 1, "i32")}
        self.weights: dict[str, WeightSpec] = {}
        self.ops: list[Op] = []
        self.labels: list[str] = []

    def buf(self, name: str, cols: int, rows: Optional[int] = None) -> str:
        self.buffers[name] = Buffer(name, self.rows if rows is None else rows, cols)
        return name

    def w(self, name: str) -> str:
        self.weights[name] = self.specs[name]
        return name

    def emit(self, label: str, op: Op) -> str:
        self.ops.append(op)
        self.labels.append(label)
        return op.out

    def clipped_linear(self, label: str, out: str, x: str, weight: str, bounds) -> str:
        """Gemma 4's clipped linear into the declared buffer `out`: clamp(x) -> weight -> clamp,
        each clamp only where one of its bounds (lo, hi, out_lo, out_hi) is finite."""
        lo, hi, olo, ohi = bounds
        src = x
        if math.isfinite(lo) or math.isfinite(hi):
            xb = self.buffers[x]     # the clamped copy is x's shape: one buffer per input x
            src = self.emit(f"{label}.clamp_in", Clamp(self.buf(f"{x}.clamped", xb.cols, xb.rows), x, lo, hi))
        self.emit(label, MatMul(out, src, self.w(weight)))
        if math.isfinite(olo) or math.isfinite(ohi):
            self.emit(f"{label}.clamp_out", Clamp(out, out, olo, ohi))
        return out

    def graph(self, out: str, inputs: dict[str, Buffer]) -> Graph:
        return Graph(n_tokens=self.rows, buffers=self.buffers, caches={}, weights=self.weights, ops=self.ops,
                     output=out, labels=self.labels, inputs=inputs)


__all__ = ["GraphBuilder"]
