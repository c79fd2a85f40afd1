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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from .. import ops as O
from ..errors import G4rtError

_LAYER = re.compile(r"^blk\.(\d+)(?:\.|\s|$)")
INPUT_LABEL = "hybrid_input"
KEPT_LABEL = "hybrid_kept"


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


# ---- many segments: expert ops of MoE layers on the back side (--cpu-moe) -----------------------
def expert_op_ranges(graph: O.Graph) -> dict[int, tuple[int, int]]:
    """Per layer, the ops [start, end) that multiply by 3-D expert tensors: from the first op that
    reads one to the last, plus the weighted sums (moe_sum) right after it. What runs in between
    (the gate/up slices, the activation) reads only what those ops wrote, so the range's inputs
    are the activation rows and the route, and its output the summed row."""
    ranges: dict[int, tuple[int, int]] = {}
    for i, (op, label) in enumerate(zip(graph.ops, _labels(graph))):
        if not any(graph.weights[w].experts for w in O.op_weights(op) if w in graph.weights):
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
class Segment:
    """A contiguous run of ops on one side, with what crosses its edges."""
    start: int
    end: int
    side: str                                               # "front" or "back"
    weights: set[str] = field(default_factory=set)
    caches: set[str] = field(default_factory=set)
    inputs: list[str] = field(default_factory=list)         # read here, written by an earlier segment
    exports: list[str] = field(default_factory=list)        # written here, an input of a later segment
    kept_in: list[str] = field(default_factory=list)        # as inputs, from a segment on the same side
    kept_out: list[str] = field(default_factory=list)       # as exports, for a segment on the same side


def op_sides(graph: O.Graph, front_layers: int, back_expert_layers: int) -> list[str]:
    """The side of every op: the first `front_layers` layers in front (layers_split), except the
    expert ops of layers < `back_expert_layers`, which go to the back."""
    split = layers_split(front_layers)(graph)
    sides = ["front" if i < split else "back" for i in range(len(graph.ops))]
    for layer, (start, end) in expert_op_ranges(graph).items():
        if layer < back_expert_layers:
            sides[start:end] = ["back"] * (end - start)
    return sides


def segments(graph: O.Graph, sides: list[str], keep: frozenset = frozenset()) -> list[Segment]:
    """Cut the op list where the side changes; say what each segment needs and hands on.
    keep: the sides that can keep a buffer on the device from one of their segments to a later
    one (a persistent copy, see segment_graph); elsewhere it goes through the host."""
    if len(sides) != len(graph.ops):
        raise G4rtError(f"{len(sides)} sides for {len(graph.ops)} ops")
    segs: list[Segment] = []
    for i, side in enumerate(sides):
        if segs and segs[-1].side == side:
            segs[-1].end = i + 1
        else:
            segs.append(Segment(i, i + 1, side))
    last_writer: dict[str, int] = {}
    cache_side: dict[str, str] = {}
    for j, seg in enumerate(segs):
        written: set[str] = set()
        for op in graph.ops[seg.start:seg.end]:
            seg.weights.update(O.op_weights(op))
            for c in op_caches(graph, op):
                if cache_side.setdefault(c, seg.side) != seg.side:
                    raise G4rtError(f"cache {c} would be used on both sides; a placement must keep "
                                    "each KV cache on one side")
                seg.caches.add(c)
            for r in op.reads():
                if r in graph.buffers and r != graph.tokens and r not in written and r in last_writer \
                        and r not in seg.inputs and r not in seg.kept_in:
                    producer = segs[last_writer[r]]
                    kept = producer.side == seg.side and seg.side in keep
                    (seg.kept_in if kept else seg.inputs).append(r)
                    out = producer.kept_out if kept else producer.exports
                    if r not in out:
                        out.append(r)
            if op.out in graph.buffers:
                written.add(op.out)
        for b in written:
            last_writer[b] = j
    return segs


def input_name(graph: O.Graph, buffer: str) -> str:
    """The f32 input a segment receives `buffer` in: shared by every segment graph of this shape
    on a backend (segments run one after another, and each copies its inputs in first)."""
    buf = graph.buffers[buffer]
    return f"{INPUT_LABEL}.{buf.rows}x{buf.cols}.{buffer}"


def kept_name(graph: O.Graph, buffer: str) -> str:
    """The persistent device copy a segment leaves `buffer` in for a later one on its side."""
    buf = graph.buffers[buffer]
    return f"{KEPT_LABEL}.{buf.rows}x{buf.cols}.{buffer}"


def segment_graph(graph: O.Graph, seg: Segment) -> O.Graph:
    """The segment as a graph of its own: leading Slice ops copy its inputs (and the copies an
    earlier segment on its side kept) into place; trailing ones keep what a later one needs.
    Inputs and kept copies are declared like caches: persistent, f32, shared by name."""
    labels = _labels(graph)
    pre = [O.Slice(b, input_name(graph, b), 0, 0) for b in seg.inputs] + \
          [O.Slice(b, kept_name(graph, b), 0, 0) for b in seg.kept_in]
    post = [O.Slice(kept_name(graph, b), b, 0, 0) for b in seg.kept_out]
    ops = pre + list(graph.ops[seg.start:seg.end]) + post
    caches = {c: graph.caches[c] for c in sorted(seg.caches)}
    for name, b in [(input_name(graph, b), b) for b in seg.inputs] + \
                   [(kept_name(graph, b), b) for b in seg.kept_in + seg.kept_out]:
        caches[name] = O.KvCache(name, graph.buffers[b].rows, graph.buffers[b].cols)
    final = seg.end == len(graph.ops)
    output = graph.output if final else (seg.exports[-1] if seg.exports else
                                         next(op.out for op in reversed(ops) if op.out in graph.buffers))
    return O.Graph(n_tokens=graph.n_tokens, buffers=_buffers_of(graph, ops), caches=caches,
                   weights={w: graph.weights[w] for w in sorted(seg.weights)}, ops=ops, output=output,
                   tokens=graph.tokens,
                   labels=[INPUT_LABEL] * len(pre) + labels[seg.start:seg.end] + [KEPT_LABEL] * len(post))
