"""Where a graph can be cut in two (pure functions over the op list; no backend here).

A contiguous prefix of the op list can run on one backend and the rest on another (the hybrid
backend, hybrid.py). `layers_split(n)` picks the boundary from the op labels ("blk.N ..." is GGUF's
per-layer tensor naming, which graph labels follow): the first op of the first layer >= n, or the
first unlabelled op after the layers; n >= the layer count puts the whole graph in front.

Rules that keep a split exact:
- KV caches are persistent state read and written across calls, so each cache lives on exactly
  one side. When a cache would be touched by ops on both sides (shared-KV layers reading an
  earlier layer's cache), the boundary moves earlier, before the cache's first op.
- Buffers written by front ops and read by back ops before the back writes them ("transfers")
  become f32 inputs of the back graph, copied into place by a leading Slice op (an ordinary op).
- Weights go to every side that reads them (a tied embedding/output matrix may live on both).
- Per-call inputs (ops.Graph.inputs: media soft tokens, the image mask) go to every side whose
  ops read them (inputs_of); the hybrid declares them on both backends and writes each to the
  halves whose graphs read it (HybridBackend.write_inputs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .. import ops
from ..errors import G4rtError

_LAYER = re.compile(r"^blk\.(\d+)(?:\.|\s|$)")
INPUT_LABEL = "hybrid_input"
KEPT_LABEL = "hybrid_kept"


def layer_of(label: str) -> Optional[int]:
    """The layer index of an op label ("blk.12 attn_q", "blk.3.kv_store"), else None."""
    m = _LAYER.match(label or "")
    return int(m.group(1)) if m else None


def n_layers(graph: ops.Graph) -> int:
    ids = [layer_of(lb) for lb in graph.labels]
    ids = [i for i in ids if i is not None]
    return max(ids) + 1 if ids else 0


def op_caches(graph: ops.Graph, op: ops.Op) -> set[str]:
    """Caches an op reads or writes."""
    names = set(op.reads()) | {op.out}
    if isinstance(op, ops.KvStore):
        names.add(op.cache_v)
    return {n for n in names if n in graph.caches}


def _labels(graph: ops.Graph) -> list[str]:
    return list(graph.labels) + [""] * (len(graph.ops) - len(graph.labels))


def raw_layer_split(graph: ops.Graph, front_layers: int) -> int:
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


def snap_split(graph: ops.Graph, split: int) -> int:
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


@dataclass(frozen=True)
class LayerSplit:
    """A split rule: the first `front_layers` layers (and everything before them) in front."""
    front_layers: int

    def __call__(self, graph: ops.Graph) -> int:
        return snap_split(graph, raw_layer_split(graph, self.front_layers))


def layers_split(front_layers: int) -> LayerSplit:
    return LayerSplit(front_layers)


@dataclass
class Partition:
    split: int
    front_weights: set[str] = field(default_factory=set)
    back_weights: set[str] = field(default_factory=set)
    front_caches: set[str] = field(default_factory=set)
    back_caches: set[str] = field(default_factory=set)
    transfers: list[str] = field(default_factory=list)   # front-written buffers the back reads


def partition(graph: ops.Graph, split: int) -> Partition:
    """Which weights, caches and buffers each side of op index `split` needs."""
    if not 0 <= split <= len(graph.ops):
        raise G4rtError(f"split index {split} is outside the op list (0..{len(graph.ops)})")
    p = Partition(split)
    front_written: set[str] = set()
    for op in graph.ops[:split]:
        p.front_weights.update(ops.op_weights(op))
        p.front_caches |= op_caches(graph, op)
        if op.out in graph.buffers:
            front_written.add(op.out)
    written: set[str] = set()
    for op in graph.ops[split:]:
        p.back_weights.update(ops.op_weights(op))
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


def _buffers_of(graph: ops.Graph, op_list: list[ops.Op]) -> dict[str, ops.Buffer]:
    names = set()
    for op in op_list:
        names.update(r for r in op.reads() if r in graph.buffers)
        if op.out in graph.buffers:
            names.add(op.out)
    out = {n: graph.buffers[n] for n in sorted(names)}
    if graph.tokens in graph.buffers:
        out[graph.tokens] = graph.buffers[graph.tokens]
    return out


def inputs_of(graph: ops.Graph, op_list: list[ops.Op]) -> dict[str, ops.Buffer]:
    """The per-call inputs (ops.Graph.inputs: media soft tokens, the image mask) these ops read."""
    names = {r for op in op_list for r in op.reads() if r in graph.inputs}
    return {n: graph.inputs[n] for n in sorted(names)}


def sub_graphs(graph: ops.Graph, part: Partition,
               input_prefix: str) -> tuple[Optional[ops.Graph], Optional[ops.Graph], dict[str, str]]:
    """The front graph, the back graph (None for an empty side) and {transfer: back input name}."""
    labels = _labels(graph)
    s = part.split
    front = back = None
    inputs = {b: f"{input_prefix}{b}" for b in part.transfers}
    if s > 0:
        op_list = list(graph.ops[:s])
        last = op_list[-1].out
        out = part.transfers[-1] if part.transfers else last
        front = ops.Graph(n_tokens=graph.n_tokens, buffers=_buffers_of(graph, op_list),
                          caches={c: graph.caches[c] for c in sorted(part.front_caches)},
                          weights={w: graph.weights[w] for w in sorted(part.front_weights)},
                          ops=op_list, output=out, tokens=graph.tokens, labels=labels[:s],
                          inputs=inputs_of(graph, op_list))
    if s < len(graph.ops):
        pre = [ops.Slice(b, inputs[b], 0, 0) for b in part.transfers]
        op_list = pre + list(graph.ops[s:])
        caches = {c: graph.caches[c] for c in sorted(part.back_caches)}
        for b, name in inputs.items():
            buf = graph.buffers[b]
            caches[name] = ops.KvCache(name, buf.rows, buf.cols)
        back = ops.Graph(n_tokens=graph.n_tokens, buffers=_buffers_of(graph, op_list),
                         caches=caches,
                         weights={w: graph.weights[w] for w in sorted(part.back_weights)},
                         ops=op_list, output=graph.output, tokens=graph.tokens,
                         labels=[INPUT_LABEL] * len(pre) + labels[s:], inputs=inputs_of(graph, op_list))
    return front, back, inputs


# ---- many pieces: expert ops of MoE layers on the back side (--cpu-moe) -------------------------
def expert_op_ranges(graph: ops.Graph) -> dict[int, tuple[int, int]]:
    """Per layer, the ops [start, end) that multiply by 3-D expert tensors: from the first op that
    reads one to the last, plus the weighted sums (moe_sum) right after it. What runs in between
    (the gate/up slices, the activation) reads only what those ops wrote, so the range's inputs
    are the activation rows and the route, and its output the summed row."""
    ranges: dict[int, tuple[int, int]] = {}
    for i, (op, label) in enumerate(zip(graph.ops, _labels(graph))):
        if not any(graph.weights[w].experts for w in ops.op_weights(op) if w in graph.weights):
            continue
        layer = layer_of(label)
        if layer is None:
            raise G4rtError(f"op {i} reads expert weights but its label {label!r} names no layer")
        start, _ = ranges.get(layer, (i, i + 1))
        ranges[layer] = (start, i + 1)
    for layer, (start, end) in ranges.items():
        while end < len(graph.ops) and graph.ops[end].kind == "moe_sum":
            end += 1
        ranges[layer] = (start, end)
    return ranges


@dataclass
class Piece:
    """A contiguous run of ops on one side, with what crosses its edges."""
    start: int
    end: int
    side: str                                               # "front" or "back"
    weights: set[str] = field(default_factory=set)
    caches: set[str] = field(default_factory=set)
    inputs: list[str] = field(default_factory=list)         # read here, written by an earlier piece
    exports: list[str] = field(default_factory=list)        # written here, an input of a later piece
    kept_in: list[str] = field(default_factory=list)        # as inputs, from a piece on the same side
    kept_out: list[str] = field(default_factory=list)       # as exports, for a piece on the same side


def op_sides(graph: ops.Graph, front_layers: int, back_expert_layers: int) -> list[str]:
    """The side of every op: the first `front_layers` layers in front (layers_split), except the
    expert ops of layers < `back_expert_layers`, which go to the back."""
    split = layers_split(front_layers)(graph)
    sides = ["front" if i < split else "back" for i in range(len(graph.ops))]
    for layer, (start, end) in expert_op_ranges(graph).items():
        if layer < back_expert_layers:
            sides[start:end] = ["back"] * (end - start)
    return sides


def pieces(graph: ops.Graph, sides: list[str], keep: frozenset = frozenset()) -> list[Piece]:
    """Cut the op list where the side changes; say what each piece needs and hands on.
    keep: the sides that can keep a buffer on the device from one of their pieces to a later
    one (a persistent copy, see piece_graph); elsewhere it goes through the host."""
    if len(sides) != len(graph.ops):
        raise G4rtError(f"{len(sides)} sides for {len(graph.ops)} ops")
    cut: list[Piece] = []
    for i, side in enumerate(sides):
        if cut and cut[-1].side == side:
            cut[-1].end = i + 1
        else:
            cut.append(Piece(i, i + 1, side))
    last_writer: dict[str, int] = {}
    cache_side: dict[str, str] = {}
    for j, piece in enumerate(cut):
        written: set[str] = set()
        for op in graph.ops[piece.start:piece.end]:
            piece.weights.update(ops.op_weights(op))
            for c in op_caches(graph, op):
                if cache_side.setdefault(c, piece.side) != piece.side:
                    raise G4rtError(f"cache {c} would be used on both sides; a placement must keep "
                                    "each KV cache on one side")
                piece.caches.add(c)
            for r in op.reads():
                if r in graph.buffers and r != graph.tokens and r not in written and r in last_writer \
                        and r not in piece.inputs and r not in piece.kept_in:
                    producer = cut[last_writer[r]]
                    kept = producer.side == piece.side and piece.side in keep
                    (piece.kept_in if kept else piece.inputs).append(r)
                    out = producer.kept_out if kept else producer.exports
                    if r not in out:
                        out.append(r)
            if op.out in graph.buffers:
                written.add(op.out)
        for b in written:
            last_writer[b] = j
    return cut


def input_name(graph: ops.Graph, buffer: str) -> str:
    """The f32 input a piece receives `buffer` in: shared by every piece graph of this shape on
    a backend (pieces run one after another, and each copies its inputs in first)."""
    buf = graph.buffers[buffer]
    return f"{INPUT_LABEL}.{buf.rows}x{buf.cols}.{buffer}"


def kept_name(graph: ops.Graph, buffer: str) -> str:
    """The persistent device copy a piece leaves `buffer` in for a later one on its side."""
    buf = graph.buffers[buffer]
    return f"{KEPT_LABEL}.{buf.rows}x{buf.cols}.{buffer}"


def piece_graph(graph: ops.Graph, piece: Piece) -> ops.Graph:
    """The piece as a graph of its own: leading Slice ops copy its inputs (and the copies an
    earlier piece on its side kept) into place; trailing ones keep what a later one needs.
    Inputs and kept copies are declared like caches: persistent, f32, shared by name."""
    labels = _labels(graph)
    pre = [ops.Slice(b, input_name(graph, b), 0, 0) for b in piece.inputs] + \
          [ops.Slice(b, kept_name(graph, b), 0, 0) for b in piece.kept_in]
    post = [ops.Slice(kept_name(graph, b), b, 0, 0) for b in piece.kept_out]
    op_list = pre + list(graph.ops[piece.start:piece.end]) + post
    caches = {c: graph.caches[c] for c in sorted(piece.caches)}
    for name, b in [(input_name(graph, b), b) for b in piece.inputs] + \
                   [(kept_name(graph, b), b) for b in piece.kept_in + piece.kept_out]:
        caches[name] = ops.KvCache(name, graph.buffers[b].rows, graph.buffers[b].cols)
    final = piece.end == len(graph.ops)
    output = graph.output if final else (piece.exports[-1] if piece.exports else
                                         next(op.out for op in reversed(op_list) if op.out in graph.buffers))
    return ops.Graph(n_tokens=graph.n_tokens, buffers=_buffers_of(graph, op_list), caches=caches,
                     weights={w: graph.weights[w] for w in sorted(piece.weights)}, ops=op_list, output=output,
                     tokens=graph.tokens, inputs=inputs_of(graph, op_list),
                     labels=[INPUT_LABEL] * len(pre) + labels[piece.start:piece.end] + [KEPT_LABEL] * len(post))
