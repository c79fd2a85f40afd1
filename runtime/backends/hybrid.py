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
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np

from .. import ops as O
from ..errors import G4rtError
from .base import Backend, CompiledGraph, OpObserver, WeightSource

_LAYER = re.compile(r"^blk\.(\d+)(?:\.|\s|$)")
INPUT_LABEL = "hybrid_input"


def layer_of(label: str) -> Optional[int]:
    """The layer index of an op label ("blk.12 attn_q", "blk.3.kv_store"), else None."""
    m = _LAYER.match(label or "")
    return int(m.group(1)) if m else None


def n_layers(graph: O.Graph) -> int:
    ids = [layer_of(lb) for lb in graph.labels]
    ids = [i for i in ids if i is not None]
    return max(ids) + 1 if ids else 0


def op_caches(graph: O.Graph, op: O.Op) -> set[str]:
    """Caches an op reads or writes."""
    names = set(op.reads()) | {op.out}
    if isinstance(op, O.KvStore):
        names.add(op.cache_v)
    return {n for n in names if n in graph.caches}


def _labels(graph: O.Graph) -> list[str]:
    return list(graph.labels) + [""] * (len(graph.ops) - len(graph.labels))


def raw_layer_split(graph: O.Graph, front_layers: int) -> int:
    """Op index where layer `front_layers` starts (or the first unlabelled op after the layers);
    the whole graph when front_layers covers every layer."""
    if front_layers <= 0:
        return 0
    if front_layers >= n_layers(graph):
        return len(graph.ops)            # every layer in front: the whole graph
    seen = False
    for i, label in enumerate(_labels(graph)):
        L = layer_of(label)
        if L is not None:
            seen = True
            if L >= front_layers:
                return i
        elif seen:
            return i
    return len(graph.ops)


def snap_split(graph: O.Graph, split: int) -> int:
    """Move `split` earlier until no KV cache is touched on both sides of it."""
    split = max(0, min(int(split), len(graph.ops)))
    users: dict[str, list[int]] = {}
    for i, op in enumerate(graph.ops):
        for c in op_caches(graph, op):
            users.setdefault(c, []).append(i)
    changed = True
    while changed:
        changed = False
        for idx in users.values():
            if idx[0] < split <= idx[-1]:
                split = idx[0]
                changed = True
    return split


def layers_split(front_layers: int) -> Callable[[O.Graph], int]:
    """A split rule: the first `front_layers` layers (and everything before them) in front."""
    def rule(graph: O.Graph) -> int:
        return snap_split(graph, raw_layer_split(graph, front_layers))
    rule.front_layers = front_layers          # type: ignore[attr-defined]
    return rule


@dataclass
class Partition:
    split: int
    front_weights: set[str] = field(default_factory=set)
    back_weights: set[str] = field(default_factory=set)
    front_caches: set[str] = field(default_factory=set)
    back_caches: set[str] = field(default_factory=set)
    transfers: list[str] = field(default_factory=list)   # front-written buffers the back reads


def partition(graph: O.Graph, split: int) -> Partition:
    """Which weights, caches and buffers each side of op index `split` needs."""
    if not 0 <= split <= len(graph.ops):
        raise G4rtError(f"split index {split} is outside the op list (0..{len(graph.ops)})")
    p = Partition(split)
    front_written: set[str] = set()
    for op in graph.ops[:split]:
        p.front_weights.update(O.op_weights(op))
        p.front_caches |= op_caches(graph, op)
        if op.out in graph.buffers:
            front_written.add(op.out)
    written: set[str] = set()
    for op in graph.ops[split:]:
        p.back_weights.update(O.op_weights(op))
        p.back_caches |= op_caches(graph, op)
        for r in op.reads():
            if r in graph.buffers and r not in written and r in front_written and r not in p.transfers:
                p.transfers.append(r)
        if op.out in graph.buffers:
            written.add(op.out)
    both = p.front_caches & p.back_caches
    if both:
        raise G4rtError(f"cache(s) {', '.join(sorted(both))} would be used on both sides of op "
                        f"{split}; move the split (snap_split does)")
    return p


def _buffers_of(graph: O.Graph, ops: list[O.Op]) -> dict[str, O.Buffer]:
    names = set()
    for op in ops:
        names.update(r for r in op.reads() if r in graph.buffers)
        if op.out in graph.buffers:
            names.add(op.out)
    out = {n: graph.buffers[n] for n in sorted(names)}
    if graph.tokens in graph.buffers:
        out[graph.tokens] = graph.buffers[graph.tokens]
    return out


def sub_graphs(graph: O.Graph, part: Partition, input_prefix: str) -> tuple[Optional[O.Graph], Optional[O.Graph], dict[str, str]]:
    """The front graph, the back graph (None for an empty side) and {transfer: back input name}."""
    labels = _labels(graph)
    s = part.split
    front = back = None
    inputs = {b: f"{input_prefix}{b}" for b in part.transfers}
    if s > 0:
        ops = list(graph.ops[:s])
        last = ops[-1].out
        out = part.transfers[-1] if part.transfers else last
        front = O.Graph(n_tokens=graph.n_tokens, buffers=_buffers_of(graph, ops),
                        caches={c: graph.caches[c] for c in sorted(part.front_caches)},
                        weights={w: graph.weights[w] for w in sorted(part.front_weights)},
                        ops=ops, output=out, tokens=graph.tokens, labels=labels[:s])
    if s < len(graph.ops):
        pre = [O.Slice(b, inputs[b], 0, 0) for b in part.transfers]
        ops = pre + list(graph.ops[s:])
        caches = {c: graph.caches[c] for c in sorted(part.back_caches)}
        for b, name in inputs.items():
            buf = graph.buffers[b]
            caches[name] = O.KvCache(name, buf.rows, buf.cols)
        back = O.Graph(n_tokens=graph.n_tokens, buffers=_buffers_of(graph, ops),
                       caches=caches,
                       weights={w: graph.weights[w] for w in sorted(part.back_weights)},
                       ops=ops, output=graph.output, tokens=graph.tokens,
                       labels=[INPUT_LABEL] * len(pre) + labels[s:])
    return front, back, inputs


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
        if part.split > 0 and self.check_memory and hasattr(self.front, "free_bytes") \
                and self._alloc["front"] is None:
            from .cuda_plan import plan_memory
            plan = plan_memory(graph, {c: graph.caches[c] for c in graph.caches if c in self.caches},
                               kv_dtype=getattr(self.front, "kv_dtype", "f16"),
                               free_bytes=self.front.free_bytes(), batch=self.batch)
            plan.check_split(part.split, what=self.front.device_name)
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
