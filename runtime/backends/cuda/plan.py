"""The device memory plan of the CUDA backend: weights + KV caches + scratch, per layer (pure Python).

`plan_memory(graph, caches, kv_dtype, free_bytes)` counts what a graph needs on the device, exactly
as the CUDA backend allocates it (raw GGUF bytes per weight padded to 256 bytes, f32 copies of
the small vector weights, caches in f16 or f32, one activation arena for the largest batch), and
how much of it the first N layers need (`front_bytes[N]`, with the same split rule as the hybrid
backend). `Plan.check()` raises a G4rtError that says how many layers would fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ...ops import (Attention, Buffer, Graph, KvCache, MatMul, Op, RmsNorm, Rope, Scale, WeightSpec,
                   op_weights)
from ...errors import G4rtError
from ...gguf.quant_types import row_bytes
from .kernels import attn_splits
from ..graph_split import layers_split, n_layers, op_caches

WEIGHT_PAD = 256        # bytes after each weight (the matvec reads whole 16-byte chunks)
ALIGN = 256             # every allocation / arena slot is aligned to this
DEFAULT_RESERVE = 512 << 20     # CUDA context, modules, graphs, fragmentation
GIB = float(1 << 30)


def align(n: int, a: int = ALIGN) -> int:
    """`n` rounded up to a multiple of `a` (every allocation and arena slot)."""
    return (int(n) + a - 1) // a * a


def weight_bytes(spec: WeightSpec) -> int:
    """Device bytes of one weight as uploaded (raw GGUF rows + padding)."""
    return align(row_bytes(spec.qtype, spec.cols) * spec.rows + WEIGHT_PAD)


def vector_weights(graph: Graph) -> set[str]:
    """Weights read as small f32 vectors (norm weights, RoPE factors, scale factors)."""
    out = set()
    for op in graph.ops:
        if isinstance(op, RmsNorm) and op.weight:
            out.add(op.weight)
        elif isinstance(op, Rope) and op.freq_factors:
            out.add(op.freq_factors)
        elif isinstance(op, Scale) and op.by:
            out.add(op.by)
    return out


def cache_bytes(c: KvCache, kv_dtype: str) -> int:
    return align(c.slots * c.rows * c.cols * (2 if kv_dtype == "f16" else 4))


def scratch_bytes(graph: Graph, ops: Optional[list[Op]] = None, batch: Optional[int] = None,
                  sm_count: int = 132) -> int:
    """Activation arena bytes for the buffers `ops` touch, scaled to a batch of `batch` tokens
    (buffers with graph.n_tokens rows grow with the batch, except the graph output: last-row
    logits stay one row), plus attention partials and temps."""
    ops = graph.ops if ops is None else ops
    n = graph.n_tokens
    b = n if batch is None else max(int(batch), 1)

    def rows(buf: Buffer) -> int:
        # the output keeps its rows: engines ask for every row's logits only when teacher forcing
        if buf.name == graph.output:
            return buf.rows
        return b if buf.rows == n else buf.rows

    names = set()
    for op in ops:
        names.update(r for r in op.reads() if r in graph.buffers)
        if op.out in graph.buffers:
            names.add(op.out)
    total = 0
    for name in names:
        buf = graph.buffers[name]
        if buf.dtype != "f32":
            continue
        total += align(rows(buf) * buf.cols * 4)
    for op in ops:
        if isinstance(op, Attention) and op.q in graph.buffers:
            r = rows(graph.buffers[op.q])
            cache = graph.caches.get(op.cache_k)
            ring = cache.rows if cache else r
            max_keys = op.window if op.window else max(ring, r)
            ns = attn_splits(max_keys, r, op.n_head, sm_count)
            total += align(r * op.n_head * ns * (op.head_dim + 2) * 4)
        if isinstance(op, (MatMul, Attention)) and op.out in op.reads() and op.out in graph.buffers:
            buf = graph.buffers[op.out]
            total += align(rows(buf) * buf.cols * 4)      # temp for an in-place product
    return total + align(4 * (b + 2))                      # + the parameters buffer


@dataclass
class Plan:
    weights_bytes: int
    kv_bytes: int
    scratch_bytes: int
    free_bytes: Optional[int]
    reserve_bytes: int
    n_layers: int
    front_bytes: list[int] = field(default_factory=list)   # [N] = bytes with the first N layers
    split_for_layers: list[int] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.scratch_bytes

    @property
    def available_bytes(self) -> Optional[int]:
        if self.free_bytes is None:
            return None
        return max(0, self.free_bytes - self.reserve_bytes)

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes

    @property
    def layers_that_fit(self) -> int:
        """The most leading layers whose weights, caches and scratch fit (all when free is unknown)."""
        avail = self.available_bytes
        if avail is None:
            return self.n_layers
        best = 0
        for k, need in enumerate(self.front_bytes):
            if need <= avail:
                best = k
        return best

    def describe(self) -> str:
        s = (f"weights {self.weights_bytes / GIB:.2f} GiB + KV cache {self.kv_bytes / GIB:.2f} GiB + "
             f"scratch {self.scratch_bytes / GIB:.2f} GiB = {self.total_bytes / GIB:.2f} GiB")
        if self.free_bytes is not None:
            s += f"; {self.free_bytes / GIB:.2f} GiB free ({self.reserve_bytes / GIB:.2f} GiB kept in reserve)"
        return s

    def check(self, what: str = "the GPU") -> None:
        """Raise a G4rtError naming how many layers would fit when the whole graph does not."""
        if self.fits:
            return
        k = self.layers_that_fit
        raise G4rtError(
            f"the model does not fit on {what}: {self.describe()}. "
            f"{k} of {self.n_layers} layers would fit: run with --gpu-layers {k} "
            f"(the rest on the CPU), or a smaller --ctx")

    def check_split(self, split: int, what: str = "the GPU") -> None:
        """Raise when the ops before `split` (a hybrid front) do not fit."""
        avail = self.available_bytes
        if avail is None:
            return
        need = None
        for k, s in enumerate(self.split_for_layers):
            if s == split:
                need = self.front_bytes[k]
        if need is None or need <= avail:
            return
        k = self.layers_that_fit
        raise G4rtError(
            f"the first layers placed on {what} need {need / GIB:.2f} GiB but "
            f"{avail / GIB:.2f} GiB is available ({self.free_bytes / GIB:.2f} GiB free, "
            f"{self.reserve_bytes / GIB:.2f} GiB reserve): at most {k} of {self.n_layers} layers "
            f"would fit (--gpu-layers {k})")


def reserve_for(free_bytes: Optional[int]) -> int:
    """Device memory kept free for the driver and runtime."""
    return DEFAULT_RESERVE if free_bytes is None else min(DEFAULT_RESERVE, int(0.05 * free_bytes) + (256 << 20))


def _weights_of(graph: Graph, ops: list[Op], vec: set[str]) -> int:
    names = set()
    for op in ops:
        names.update(op_weights(op))
    total = 0
    for w in names:
        spec = graph.weights.get(w)
        if spec is None:
            continue
        total += weight_bytes(spec)
        if w in vec:
            total += align(spec.rows * spec.cols * 4)
    return total


def _caches_of(graph: Graph, ops: list[Op], caches: dict[str, KvCache], kv_dtype: str) -> int:
    names = set()
    for op in ops:
        names |= op_caches(graph, op)
    return sum(cache_bytes(caches[c], kv_dtype) for c in names if c in caches)


def ops_bytes(graph: Graph, ops: list[Op], caches: dict[str, KvCache], kv_dtype: str = "f16",
              batch: Optional[int] = None, sm_count: int = 132) -> int:
    """What a device needs to run `ops` of `graph` (any subset: e.g. a layer split whose
    expert ops stay on the CPU): their weights, the caches they touch and their scratch."""
    if not ops:
        return 0
    return (_weights_of(graph, ops, vector_weights(graph)) + _caches_of(graph, ops, caches, kv_dtype)
            + scratch_bytes(graph, ops, batch, sm_count))


def plan_memory(graph: Graph, caches: Optional[dict[str, KvCache]] = None, kv_dtype: str = "f16",
                free_bytes: Optional[int] = None, batch: Optional[int] = None,
                reserve_bytes: Optional[int] = None, sm_count: int = 132) -> Plan:
    """What `graph` needs on one device, in total and for each number of leading layers.

    caches: the caches allocated for the model (default: graph.caches). batch: the largest batch
    the engine will run (the prefill chunk); scratch scales with it. free_bytes: the device's free
    memory (None: unknown, everything "fits")."""
    caches = dict(graph.caches if caches is None else caches)
    if reserve_bytes is None:
        reserve_bytes = reserve_for(free_bytes)
    vec = vector_weights(graph)
    weights_of = lambda ops: _weights_of(graph, ops, vec)              # noqa: E731
    caches_of = lambda ops: _caches_of(graph, ops, caches, kv_dtype)   # noqa: E731
    W = weights_of(graph.ops)
    # every allocated cache counts, read or not (the backend allocates them all)
    KV = sum(cache_bytes(c, kv_dtype) for c in caches.values())
    S = scratch_bytes(graph, None, batch, sm_count)
    L = n_layers(graph)
    front, splits = [], []
    for k in range(L + 1):
        s = layers_split(k)(graph)
        ops = graph.ops[:s]
        splits.append(s)
        front.append(weights_of(ops) + caches_of(ops) + (scratch_bytes(graph, ops, batch, sm_count) if ops else 0))
    return Plan(W, KV, S, free_bytes, int(reserve_bytes), L, front, splits)


def plan_weights(specs: dict[str, WeightSpec], free_bytes: Optional[int],
                 reserve_bytes: Optional[int] = None) -> tuple[int, int, int, int]:
    """Before any graph exists: (bytes of all weights, available bytes, layers whose weights fit,
    layer count), grouping weights by GGUF's "blk.N." tensor names."""
    from ..graph_split import layer_of
    total = sum(weight_bytes(s) for s in specs.values())
    if free_bytes is None:
        return total, -1, -1, -1
    if reserve_bytes is None:
        reserve_bytes = min(DEFAULT_RESERVE, int(0.05 * free_bytes) + (256 << 20))
    avail = max(0, free_bytes - reserve_bytes)
    per_layer: dict[int, int] = {}
    other = 0
    for name, s in specs.items():
        L = layer_of(name)
        if L is None:
            other += weight_bytes(s)
        else:
            per_layer[L] = per_layer.get(L, 0) + weight_bytes(s)
    n = max(per_layer) + 1 if per_layer else 0
    used, fit = other, 0
    for L in range(n):
        used += per_layer.get(L, 0)
        if used <= avail:
            fit = L + 1
        else:
            break
    if other > avail:
        fit = 0
    return total, avail, fit, n


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if not math.isinf(n) else "inf"
