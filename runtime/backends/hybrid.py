"""Split one graph across two backends: a contiguous prefix of the op list runs on the `front`
backend (e.g. the GPU), the rest on the `back` backend (e.g. the native CPU). With
`back_expert_layers` (--cpu-moe / --n-cpu-moe) the expert products of MoE layers also run on the
back, between front pieces (PiecewiseGraph: one graph per piece, hand-overs through the host).
registry.create_backend builds one from --gpu-layers / --cpu-moe.

Nothing here knows any model. The boundary is an op index chosen by the caller; `layers_split(n)`
picks it from the op labels ("blk.N ..." is GGUF's per-layer tensor naming, which graph labels
follow): the first op of the first layer >= n, or the first unlabelled op after the layers; n >=
the layer count puts the whole graph (output head included) in front.

Rules that keep the split exact:
- KV caches are persistent state read and written across calls, so each cache lives on exactly
  one side. When a cache would be touched by ops on both sides (shared-KV layers reading an
  earlier layer's cache), the boundary moves earlier, before the cache's first op.
- Buffers written by front ops and read by back ops before the back writes them ("transfers")
  are copied after the front part has run (CompiledGraph.read_buffers): into f32 input buffers
  of the back backend (Backend.declare_inputs / write_inputs), which the back graph copies into
  place with a leading Slice op (an ordinary op of the contract).
- Weights go to every side that reads them (a tied embedding/output matrix may live on both).
- The rows' placement (ops.Segment list) passes to both sides unchanged: each side's graph
  keeps every row.
- Per-call inputs (ops.Graph.inputs: a media prompt's soft tokens and image mask) are declared
  on both backends; each side's graph names those its ops read, and write_inputs copies each
  only to the sides that read it.
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .. import ops
from ..errors import G4rtError
from .base import Backend, CompiledGraph, OpObserver, WeightSource
from .graph_split import (LayerSplit, Partition, Piece, input_name, kept_name, layers_split, op_sides, partition,
                          piece_graph, pieces, snap_split, sub_graphs)

_ids = itertools.count()


class HybridBackend(Backend):
    """Runs each graph's ops [0, split) on `front` and [split, end) on `back`.

    split: an op index, or a rule graph -> op index (e.g. layers_split(n)). Rules are applied
    per graph and the result snapped so that no KV cache straddles the boundary. Weights and
    caches are handed to each side on the first compile (they are the same for every graph of a
    model): load_weights/allocate_caches only record them.
    """

    name = "hybrid"

    def __init__(self, front: Backend, back: Backend, split: Union[int, Callable[[ops.Graph], int]],
                 check_memory: bool = True, batch: int = 512, back_expert_layers: int = 0,
                 precision: str = "auto"):
        """back_expert_layers: the expert ops of layers below this run on `back` too, between
        front segments (--cpu-moe / --n-cpu-moe); needs a layer-count split rule. precision: the
        --precision request (each half was made with what it runs of it; registry.hybrid_precision)."""
        self.front, self.back = front, back
        self.precision = precision
        self.split_rule = split
        self.back_expert_layers = int(back_expert_layers)
        if self.back_expert_layers and not isinstance(split, LayerSplit):
            raise G4rtError("expert placement needs a layer split (layers_split)")
        self.check_memory = check_memory
        self.batch = batch
        self.specs: dict[str, ops.WeightSpec] = {}
        self.source: Optional[WeightSource] = None
        self.progress = None
        self.caches: dict[str, ops.KvCache] = {}
        self._loaded: dict[str, set[str]] = {"front": set(), "back": set()}
        self._alloc: dict[str, Optional[set[str]]] = {"front": None, "back": None}
        self.last_partition: Optional[Partition] = None
        self.last_pieces: list[Piece] = []          # the last graph cut by _compile_pieces
        self._inputs: dict[str, tuple[int, int]] = {}   # per-call inputs declared on both halves
        self._readers: dict[str, set[str]] = {"front": set(), "back": set()}   # ... read by each half

    @property
    def device_name(self) -> str:
        return f"{self.front.device_name} + {self.back.device_name}"

    @property
    def kv_dtype(self) -> str:
        """The front's (memory plans are for the device's caches)."""
        return self.front.kv_dtype

    def precision_summary(self) -> str:
        """Each half's, e.g. "cuda: exact; cpu: q8 (Q4_0)"; "(no q8 path)" marks a half that runs
        exact under a q8 request. A half holds its weights only from the first compile on: before
        that it names its mode alone, after it a half that got no weights is left out."""
        loaded = [side for side in ("front", "back") if self._loaded[side]]
        parts = []
        for side, be in (("front", self.front), ("back", self.back)):
            if loaded and side not in loaded:
                continue
            text = be.precision_summary()
            if self.precision == "q8" and be.precision == "exact":
                text += " (no q8 path)"
            parts.append(f"{be.name}: {text}")
        return "; ".join(parts)

    def load_weights(self, specs, source, progress=None) -> None:
        self.specs, self.source, self.progress = dict(specs), source, progress

    def allocate_caches(self, caches) -> None:
        self.caches = dict(caches)

    def declare_inputs(self, shapes: dict[str, tuple[int, int]]) -> None:
        """A graph's per-call inputs (media soft tokens, the image mask: ops.Graph.inputs) on both
        halves: the soft tokens are read before the first layer, the image mask by the sliding
        layers of either half. The engine declares them before compile and writes them before
        each run (write_inputs); each half's graph names only those its ops read."""
        self.front.declare_inputs(shapes)
        self.back.declare_inputs(shapes)
        self._inputs.update(shapes)

    def write_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        """Each array goes to the halves whose compiled graphs read it (the soft tokens to the
        half holding the embedding, the image mask to every half with sliding layers)."""
        for name in arrays:
            if name not in self._inputs:
                raise G4rtError(f"input {name!r} was not declared on the hybrid backend")
        for side, be in (("front", self.front), ("back", self.back)):
            mine = {n: a for n, a in arrays.items() if n in self._readers[side]}
            if mine:
                be.write_inputs(mine)

    def _reads_inputs(self, side: str, graph: Optional[ops.Graph]) -> None:
        if graph is not None:
            self._readers[side].update(graph.inputs)

    def split_index(self, graph: ops.Graph) -> int:
        s = self.split_rule(graph) if callable(self.split_rule) else int(self.split_rule)
        return snap_split(graph, s)

    def _prepare(self, graph: ops.Graph, part: Partition, used: tuple[bool, bool],
                 fits: Callable[[], None]) -> None:
        """Load each used side's weights and allocate its caches (the first graph decides)."""
        if self.source is None:
            raise G4rtError("HybridBackend: load_weights must be called before compile")
        # A device with limited memory checks that its part fits before anything is uploaded
        # (the backend knows how it allocates; the hybrid does not).
        if used[0] and self.check_memory and self._alloc["front"] is None:
            fits()
        for side, be, need, caches, on in (("front", self.front, part.front_weights, part.front_caches, used[0]),
                                           ("back", self.back, part.back_weights, part.back_caches, used[1])):
            if not on:
                continue
            missing = need - self._loaded[side]
            if missing:
                union = self._loaded[side] | need
                specs = {w: self.specs[w] for w in sorted(union) if w in self.specs}
                unknown = union - set(specs)
                if unknown:
                    raise G4rtError(f"weights not loaded: {', '.join(sorted(unknown))}")
                be.load_weights(specs, self.source, self.progress if side == "front" else None)
                if side == "back" and self.progress:
                    self.progress(sum(int(self.source.weight_bytes(w).nbytes)
                                      for w in missing - self._loaded["front"]))
                self._loaded[side] = union
            if self._alloc[side] is None:
                unknown = caches - set(self.caches)
                if unknown:
                    raise G4rtError(f"caches not allocated: {', '.join(sorted(unknown))}")
                be.allocate_caches({c: self.caches[c] for c in sorted(caches)})
                self._alloc[side] = set(caches)
            elif not caches <= self._alloc[side]:
                raise G4rtError("HybridBackend: this graph needs KV caches on a side other than the "
                                "first graph placed them (graphs of one model must split alike)")

    def _model_caches(self, graph: ops.Graph) -> dict:
        return {c: graph.caches[c] for c in graph.caches if c in self.caches}

    def compile(self, graph: ops.Graph) -> CompiledGraph:
        if self.back_expert_layers:
            return self._compile_pieces(graph)
        split = self.split_index(graph)
        part = partition(graph, split)
        self._prepare(graph, part, (part.split > 0, part.split < len(graph.ops)),
                      lambda: self.front.check_split_fits(graph, self._model_caches(graph), part.split,
                                                          batch=self.batch))
        self.last_partition = part
        return HybridGraph(self, graph, part)

    def _compile_pieces(self, graph: ops.Graph) -> "PiecewiseGraph":
        sides = op_sides(graph, self.split_rule.front_layers, self.back_expert_layers)
        keep = frozenset(side for side, be in (("front", self.front), ("back", self.back)) if be.keeps_hand_overs)
        cut = pieces(graph, sides, keep)
        part = Partition(split=-1)          # the union per side (for loading and allocation)
        for piece in cut:
            w, c = (part.front_weights, part.front_caches) if piece.side == "front" else \
                   (part.back_weights, part.back_caches)
            w.update(piece.weights)
            c.update(piece.caches)
        part.transfers = [b for piece in cut for b in piece.inputs]
        front_ops = [i for i, sd in enumerate(sides) if sd == "front"]
        self._prepare(graph, part, ("front" in sides, "back" in sides),
                      lambda: self.front.check_ops_fit(graph, self._model_caches(graph), front_ops, batch=self.batch))
        self.last_partition = part
        self.last_pieces = cut
        return PiecewiseGraph(self, graph, cut)

    def close(self) -> None:
        try:
            self.front.close()
        finally:
            self.back.close()


class HybridGraph(CompiledGraph):
    def __init__(self, backend: HybridBackend, graph: ops.Graph, part: Partition):
        self.backend, self.graph, self.part = backend, graph, part
        prefix = f"hyb{next(_ids)}."
        fg, bg, self.inputs = sub_graphs(graph, part, prefix)
        backend._reads_inputs("front", fg)
        backend._reads_inputs("back", bg)
        self.front = backend.front.compile(fg) if fg is not None else None
        if bg is not None:
            backend.back.declare_inputs({name: (graph.buffers[b].rows, graph.buffers[b].cols)
                                         for b, name in self.inputs.items()})
            self.back = backend.back.compile(bg)
        else:
            self.back = None
        self.n_pre = len(self.inputs)

    def run(self, tokens, segments: Sequence[ops.Segment], observer: Optional[OpObserver] = None) -> np.ndarray:
        part = self.part
        values: dict[str, np.ndarray] = {}
        out = None
        if self.front is not None:
            out = _run_and_read(self.front, tokens, segments, part.transfers, values, observer, lambda idx: idx)
        if self.back is None:
            return out
        if values:
            self.backend.back.write_inputs({self.inputs[b]: values[b] for b in part.transfers})
        n = self.n_pre
        return _run_and_read(self.back, tokens, segments, [], values, observer,
                             lambda idx: idx - n + part.split if idx >= n else None)

    def read_buffers(self, names) -> dict[str, np.ndarray]:
        """Buffers of the last run, each from the half whose ops wrote it (e.g. the post-norm
        hidden rows an MTP drafter takes: Engine.keep_hidden)."""
        out: dict[str, np.ndarray] = {}
        for name in names:
            half = next((cg for cg in (self.back, self.front)
                         if cg is not None and any(op.out == name for op in cg.graph.ops)), None)
            if half is None:
                raise G4rtError(f"no op of this hybrid graph writes {name!r}")
            out.update(half.read_buffers([name]))
        return out


class PiecewiseGraph(CompiledGraph):
    """Pieces alternating between the two backends (a GPU layer's attention, then its experts on
    the CPU, then the rest of the layer on the GPU, ...). Each piece is a graph of its own on its
    backend; what crosses to the other side goes through the host as f32 rows, what a later piece
    on the same side needs stays on that device (Backend.declare_kept)."""

    def __init__(self, backend: HybridBackend, graph: ops.Graph, cut: list[Piece]):
        self.backend, self.graph, self.pieces = backend, graph, cut
        shape = lambda b: (graph.buffers[b].rows, graph.buffers[b].cols)      # noqa: E731
        self._steps = []         # per piece, what run() needs: fixed once recorded
        for piece in cut:
            be = backend.front if piece.side == "front" else backend.back
            names = {b: input_name(graph, b) for b in piece.inputs}
            if names:
                be.declare_inputs({name: shape(b) for b, name in names.items()})
            if piece.kept_in or piece.kept_out:
                be.declare_kept({kept_name(graph, b): shape(b) for b in piece.kept_in + piece.kept_out})
            n_pre, n_ops = len(piece.inputs) + len(piece.kept_in), piece.end - piece.start
            to_global = lambda idx, n=n_pre, m=n_ops, s=piece.start: \
                idx - n + s if n <= idx < n + m else None  # noqa: E731
            pg = piece_graph(graph, piece)
            backend._reads_inputs(piece.side, pg)
            self._steps.append((be, names, be.compile(pg), piece.exports, to_global))
        # bytes through the host per call (what stays on a device is not counted)
        self.transfer_bytes = sum(int(np.prod(shape(b))) * 4 for piece in cut for b in piece.inputs)

    def run(self, tokens, segments: Sequence[ops.Segment], observer: Optional[OpObserver] = None) -> np.ndarray:
        carried: dict[str, np.ndarray] = {}
        out = None
        for be, names, cg, exports, to_global in self._steps:
            if names:
                be.write_inputs({name: carried[b] for b, name in names.items()})
            out = _run_and_read(cg, tokens, segments, exports, carried, observer, to_global)
        return out


def _run_and_read(cg: CompiledGraph, tokens, segments: Sequence[ops.Segment], want: list[str], values: dict,
                  observer: Optional[OpObserver], to_global: Callable[[int], Optional[int]]) -> np.ndarray:
    """Run a compiled graph, putting copies of the buffers named in `want` into `values`; the
    observer sees the graph's own ops under their indices in the whole graph."""
    relay = None
    if observer is not None:
        def relay(idx, op, arr):
            g = to_global(idx)
            if g is not None:
                observer(g, op, arr)
    out = cg.run(tokens, segments, relay)
    if want:
        values.update(cg.read_buffers(want))
    return out


#: layers_split is the rule a HybridBackend usually takes (`HybridBackend(gpu, cpu, layers_split(n))`).
__all__ = ["HybridBackend", "HybridGraph", "PiecewiseGraph", "layers_split"]
