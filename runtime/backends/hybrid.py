"""Split one graph across two backends: a contiguous prefix of the op list runs on the `front`
backend (e.g. the GPU), the rest on the `back` backend (e.g. the CPU reference).

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
from .graph_split import Partition, layers_split, partition, snap_split, sub_graphs


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

    def __init__(self, front: Backend, back: Backend, split: Union[int, Callable[[O.Graph], int]],
                 check_memory: bool = True, batch: int = 512):
        self.front, self.back = front, back
        self.split_rule = split
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

    def _prepare(self, graph: O.Graph, part: Partition) -> None:
        if self.source is None:
            raise G4rtError("HybridBackend: load_weights must be called before compile")
        # A device with limited memory checks that its part fits before anything is uploaded
        # (the backend knows how it allocates; the hybrid does not).
        if part.split > 0 and self.check_memory and hasattr(self.front, "check_split_fits") \
                and self._alloc["front"] is None:
            self.front.check_split_fits(graph, {c: graph.caches[c] for c in graph.caches if c in self.caches},
                                        part.split, batch=self.batch)
        for side, be, need, caches in (("front", self.front, part.front_weights, part.front_caches),
                                       ("back", self.back, part.back_weights, part.back_caches)):
            if (side == "front" and part.split == 0) or (side == "back" and part.split == len(graph.ops)):
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

    def compile(self, graph: O.Graph) -> "HybridGraph":
        split = self.split_index(graph)
        part = partition(graph, split)
        self._prepare(graph, part)
        self.last_partition = part
        return HybridGraph(self, graph, part)

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
            want = set(part.transfers)
            direct = hasattr(self.front, "read_buffers") and observer is None
            if direct:
                out = self.front.run(tokens, pos0)
                if want:
                    values = self.front.read_buffers(list(part.transfers))
            else:
                def obs(idx, op, arr):
                    if op.out in want:
                        values[op.out] = np.array(arr, dtype=np.float32, copy=True)
                    if observer:
                        observer(idx, op, arr)
                out = self.front.run(tokens, pos0, obs)
            missing = want - set(values)
            if missing:
                raise G4rtError(f"hybrid: the front graph did not produce {', '.join(sorted(missing))}")
        if self.back is None:
            return out
        if values:
            write_inputs(self.backend.back, {self.inputs[b]: values[b] for b in part.transfers})
        back_obs = None
        if observer:
            def back_obs(idx, op, arr):
                if idx >= self.n_pre:
                    observer(idx - self.n_pre + part.split, op, arr)
        return self.back.run(tokens, pos0, back_obs)


def create_hybrid(gpu_layers: int, gpu: str = "cuda", cpu: str = "cpu",
                  gpu_options: Optional[dict] = None, cpu_options: Optional[dict] = None,
                  **kwargs) -> HybridBackend:
    """`--gpu-layers N`: the first N layers (and the ops before them) on `gpu`, the rest on `cpu`."""
    from . import create_backend
    if gpu_layers < 0:
        raise G4rtError(f"--gpu-layers must be >= 0, got {gpu_layers}")
    front = create_backend(gpu, **(gpu_options or {}))
    back = create_backend(cpu, **(cpu_options or {}))
    return HybridBackend(front, back, layers_split(gpu_layers), **kwargs)
