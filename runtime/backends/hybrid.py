"""Split one graph across two backends: a contiguous prefix of the op list runs on the `front`
backend (e.g. the GPU), the rest on the `back` backend (e.g. the CPU reference). With
`back_expert_layers` (--cpu-moe / --n-cpu-moe) the expert products of MoE layers also run on the
back, between front segments (SegmentedGraph: one graph per segment, hand-overs through the host).

Nothing here knows any model. The boundary is an op index chosen by the caller; `layers_split(n)`
picks it from the op labels ("blk.N ..." is GGUF's per-layer tensor naming, which graph labels
follow): the first op of the first layer >= n, or the first unlabelled op after the layers; n >=
the layer count puts the whole graph (output head included) in front.

Rules that keep the split exact:
- KV caches are persistent state read and written across calls, so each cache lives on exactly
  one side. When a cache would be touched by ops on both sides (shared-KV layers reading an
  earlier layer's cache), the boundary moves earlier, before the cache's first op.
- Buffers written by front ops and read by back ops before the back writes them ("transfers")
  are copied after the front part has run: into f32 input buffers of the back backend, which
  the back graph copies into place with a leading Slice op (an ordinary op of the contract).
- Weights go to every side that reads them (a tied embedding/output matrix may live on both).

Backend requirements: to read transfers back from the front, its compiled graph either has
`read_buffers(names) -> {name: array}` (CUDA) or runs with an observer (any backend: the
observer's per-op output copies are captured). To receive inputs, the back backend either has
`declare_inputs({name: (rows, cols)})` / `write_inputs({name: array})` (CUDA) or is a backend whose
`caches` attribute is a dict of numpy arrays (the CPU reference).
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional, Union

import numpy as np

from .. import ops as O
from ..errors import G4rtError
from .base import Backend, CompiledGraph, OpObserver, WeightSource
from .graph_split import (Partition, Segment, input_name, kept_name, layers_split, op_sides, partition, segment_graph,
                          segments, snap_split, sub_graphs)


# ---- moving arrays in and out of backends ----------------------------------------------------
def declare_inputs(backend: Backend, shapes: dict[str, tuple[int, int]]) -> None:
    if hasattr(backend, "declare_inputs"):
        backend.declare_inputs(shapes)
    elif isinstance(getattr(backend, "caches", None), dict):
        for name, (rows, cols) in shapes.items():
            backend.caches[name] = np.zeros((rows, cols), np.float32)
    else:
        raise G4rtError(f"backend {backend.name} cannot receive hybrid inputs")


def write_inputs(backend: Backend, arrays: dict[str, np.ndarray]) -> None:
    if hasattr(backend, "write_inputs"):
        backend.write_inputs(arrays)
    elif isinstance(getattr(backend, "caches", None), dict):
        for name, a in arrays.items():
            backend.caches[name] = np.array(a, dtype=np.float32, copy=True)
    else:
        raise G4rtError(f"backend {backend.name} cannot receive hybrid inputs")


_ids = itertools.count()


class HybridBackend(Backend):
    """Runs each graph's ops [0, split) on `front` and [split, end) on `back`.

    split: an op index, or a rule graph -> op index (e.g. layers_split(n)). Rules are applied
    per graph and the result snapped so that no KV cache straddles the boundary. Weights and
    caches are handed to each side on the first compile (they are the same for every graph of a
    model): load_weights/allocate_caches only record them.
    """

    name = "hybrid"

    @property
    def supports_segments(self) -> bool:
        """Segments pass through to both sides unchanged (each side's sub-graph keeps the rows)."""
        return self.front.supports_segments and self.back.supports_segments

    def __init__(self, front: Backend, back: Backend, split: Union[int, Callable[[O.Graph], int]],
                 check_memory: bool = True, batch: int = 512, back_expert_layers: int = 0):
        """back_expert_layers: the expert ops of layers below this run on `back` too, between
        front segments (--cpu-moe / --n-cpu-moe); needs a layer-count split rule."""
        self.front, self.back = front, back
        self.split_rule = split
        self.back_expert_layers = int(back_expert_layers)
        if self.back_expert_layers and not hasattr(split, "front_layers"):
            raise G4rtError("expert placement needs a layer split (layers_split)")
        self.check_memory = check_memory
        self.batch = batch
        self.specs: dict[str, O.WeightSpec] = {}
        self.source: Optional[WeightSource] = None
        self.progress = None
        self.caches: dict[str, O.KvCache] = {}
        self._loaded: dict[str, set[str]] = {"front": set(), "back": set()}
        self._alloc: dict[str, Optional[set[str]]] = {"front": None, "back": None}
        self.last_partition: Optional[Partition] = None

    @property
    def device_name(self) -> str:
        return f"{self.front.device_name} + {self.back.device_name}"

    def load_weights(self, specs, source, progress=None) -> None:
        self.specs, self.source, self.progress = dict(specs), source, progress

    def allocate_caches(self, caches) -> None:
        self.caches = dict(caches)

    def split_index(self, graph: O.Graph) -> int:
        s = self.split_rule(graph) if callable(self.split_rule) else int(self.split_rule)
        return snap_split(graph, s)

    def _prepare(self, graph: O.Graph, part: Partition, used: tuple[bool, bool],
                 fits: Optional[Callable[[], None]] = None) -> None:
        """Load each used side's weights and allocate its caches (the first graph decides)."""
        if self.source is None:
            raise G4rtError("HybridBackend: load_weights must be called before compile")
        # A device with limited memory checks that its part fits before anything is uploaded
        # (the backend knows how it allocates; the hybrid does not).
        if used[0] and self.check_memory and fits is not None and self._alloc["front"] is None:
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

    def _model_caches(self, graph: O.Graph) -> dict:
        return {c: graph.caches[c] for c in graph.caches if c in self.caches}

    def compile(self, graph: O.Graph) -> CompiledGraph:
        if self.back_expert_layers:
            return self._compile_segments(graph)
        split = self.split_index(graph)
        part = partition(graph, split)
        fits = (lambda: self.front.check_split_fits(graph, self._model_caches(graph), part.split, batch=self.batch)) \
            if hasattr(self.front, "check_split_fits") else None
        self._prepare(graph, part, (part.split > 0, part.split < len(graph.ops)), fits)
        self.last_partition = part
        return HybridGraph(self, graph, part)

    def _compile_segments(self, graph: O.Graph) -> "SegmentedGraph":
        sides = op_sides(graph, self.split_rule.front_layers, self.back_expert_layers)
        keep = frozenset(side for side, be in (("front", self.front), ("back", self.back))
                         if hasattr(be, "declare_kept"))
        segs = segments(graph, sides, keep)
        part = Partition(split=-1)          # the union per side (for loading and allocation)
        for seg in segs:
            w, c = (part.front_weights, part.front_caches) if seg.side == "front" else \
                   (part.back_weights, part.back_caches)
            w.update(seg.weights)
            c.update(seg.caches)
        part.transfers = [b for seg in segs for b in seg.inputs]
        front_ops = [i for i, sd in enumerate(sides) if sd == "front"]
        fits = (lambda: self.front.check_ops_fit(graph, self._model_caches(graph), front_ops, batch=self.batch)) \
            if hasattr(self.front, "check_ops_fit") else None
        self._prepare(graph, part, ("front" in sides, "back" in sides), fits)
        self.last_partition = part
        self.last_segments = segs
        return SegmentedGraph(self, graph, segs)

    def close(self) -> None:
        try:
            self.front.close()
        finally:
            self.back.close()


class HybridGraph(CompiledGraph):
    def __init__(self, backend: HybridBackend, graph: O.Graph, part: Partition):
        self.backend, self.graph, self.part = backend, graph, part
        prefix = f"hyb{next(_ids)}."
        fg, bg, self.inputs = sub_graphs(graph, part, prefix)
        self.front = backend.front.compile(fg) if fg is not None else None
        if bg is not None:
            declare_inputs(backend.back, {name: (graph.buffers[b].rows, graph.buffers[b].cols)
                                          for b, name in self.inputs.items()})
            self.back = backend.back.compile(bg)
        else:
            self.back = None
        self.n_pre = len(self.inputs)

    def run(self, tokens, pos0: int, observer: Optional[OpObserver] = None) -> np.ndarray:
        part = self.part
        values: dict[str, np.ndarray] = {}
        out = None
        if self.front is not None:
            out = _run_and_read(self.front, tokens, pos0, part.transfers, values, observer, lambda idx: idx)
        if self.back is None:
            return out
        if values:
            write_inputs(self.backend.back, {self.inputs[b]: values[b] for b in part.transfers})
        n = self.n_pre
        return _run_and_read(self.back, tokens, pos0, [], values, observer,
                             lambda idx: idx - n + part.split if idx >= n else None)


class SegmentedGraph(CompiledGraph):
    """Segments alternating between the two backends (a GPU layer's attention, then its experts
    on the CPU, then the rest of the layer on the GPU, ...). Each segment is a graph of its own
    on its backend; what crosses to the other side goes through the host as f32 rows, what a later
    segment on the same side needs stays on that device (declare_kept)."""

    def __init__(self, backend: HybridBackend, graph: O.Graph, segs: list[Segment]):
        self.backend, self.graph, self.segments = backend, graph, segs
        shape = lambda b: (graph.buffers[b].rows, graph.buffers[b].cols)      # noqa: E731
        self._steps = []         # per segment, what run() needs: fixed once recorded
        for seg in segs:
            be = backend.front if seg.side == "front" else backend.back
            names = {b: input_name(graph, b) for b in seg.inputs}
            declare_inputs(be, {name: shape(b) for b, name in names.items()})
            if seg.kept_in or seg.kept_out:
                be.declare_kept({kept_name(graph, b): shape(b) for b in seg.kept_in + seg.kept_out})
            n_pre, n_ops = len(seg.inputs) + len(seg.kept_in), seg.end - seg.start
            to_global = lambda idx, n=n_pre, m=n_ops, s=seg.start: idx - n + s if n <= idx < n + m else None  # noqa: E731
            self._steps.append((be, names, be.compile(segment_graph(graph, seg)), seg.exports, to_global))
        # bytes through the host per call (what stays on a device is not counted)
        self.transfer_bytes = sum(int(np.prod(shape(b))) * 4 for seg in segs for b in seg.inputs)

    def run(self, tokens, pos0: int, observer: Optional[OpObserver] = None) -> np.ndarray:
        carried: dict[str, np.ndarray] = {}
        out = None
        for be, names, cg, exports, to_global in self._steps:
            if names:
                write_inputs(be, {name: carried[b] for b, name in names.items()})
            out = _run_and_read(cg, tokens, pos0, exports, carried, observer, to_global)
        return out


def _run_and_read(cg: CompiledGraph, tokens, pos0: int, want: list[str], values: dict,
                  observer: Optional[OpObserver], to_global: Callable[[int], Optional[int]]) -> np.ndarray:
    """Run a compiled graph, putting copies of the buffers named in `want` into `values`; the
    observer sees the graph's own ops under their indices in the whole graph."""
    if observer is None and (not want or hasattr(cg, "read_buffers")):
        out = cg.run(tokens, pos0)
        if want:
            values.update(cg.read_buffers(want))
        return out
    wanted = set(want)

    def obs(idx, op, arr):
        if op.out in wanted:
            values[op.out] = np.array(arr, dtype=np.float32, copy=True)
        g = to_global(idx)
        if observer is not None and g is not None:
            observer(g, op, arr)
    out = cg.run(tokens, pos0, obs)
    missing = wanted - set(values)
    if missing:
        raise G4rtError(f"hybrid: a segment did not produce {', '.join(sorted(missing))}")
    return out


ALL_LAYERS = 1 << 30


def create_hybrid(gpu_layers: Optional[int], gpu: str = "cuda", cpu: str = "cpu",
                  gpu_options: Optional[dict] = None, cpu_options: Optional[dict] = None,
                  cpu_moe_layers: int = 0, **kwargs) -> HybridBackend:
    """`--gpu-layers N`: the first N layers (and the ops before them) on `gpu`, the rest on `cpu`
    (None: every layer on `gpu`). `cpu_moe_layers` (--n-cpu-moe N; --cpu-moe is every layer):
    the expert matmuls of layers below N run on `cpu` too, their weights only there."""
    from . import create_backend
    if gpu_layers is not None and gpu_layers < 0:
        raise G4rtError(f"--gpu-layers must be >= 0, got {gpu_layers}")
    if cpu_moe_layers < 0:
        raise G4rtError(f"--n-cpu-moe must be >= 0, got {cpu_moe_layers}")
    front = create_backend(gpu, **(gpu_options or {}))
    back = create_backend(cpu, **(cpu_options or {}))
    split = layers_split(ALL_LAYERS if gpu_layers is None else gpu_layers)
    return HybridBackend(front, back, split, back_expert_layers=cpu_moe_layers, **kwargs)
