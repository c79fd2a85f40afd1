"""The op list's framework: buffers, caches, segments, weights, the Op base class and Graph.
The ops themselves are by concern beside this: text.py (the language models'), vision.py (the
Gemma 4 ViT's), audio.py (the conformer's); the package re-exports them all (see __init__)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Optional, Sequence

from gguf import GGMLQuantizationType

from ..errors import G4rtError

@dataclass(frozen=True)
class Buffer:
    name: str
    rows: int
    cols: int
    dtype: str = "f32"          # "f32" activations, "i32" token ids


@dataclass(frozen=True)
class KvCache:
    """A persistent key or value cache of `slots` sequence slots of `rows` rows each: position p
    of slot s lives in row s * rows + p % rows (a ring when rows < ctx)."""
    name: str
    rows: int
    cols: int
    slots: int = 1


@dataclass(frozen=True)
class Segment:
    """Rows row0 .. row0 + rows - 1 of a batch: one sequence's positions pos0 .. pos0 + rows - 1,
    kept in KV cache slot `slot`."""
    row0: int
    rows: int
    pos0: int
    slot: int = 0


def one_sequence(n_tokens: int, pos0: int, slot: int = 0) -> tuple[Segment, ...]:
    """The placement of a call that continues one sequence: every row, from position pos0."""
    return (Segment(0, n_tokens, pos0, slot),)


def placement(segments: Sequence[Segment], n_tokens: int, slots: Optional[int] = 1) -> tuple[Segment, ...]:
    """A call's segments, checked: they must cover the rows in order, each in its own slot below
    `slots` (None: a graph without caches, any slot)."""
    segs = tuple(segments)
    row, seen = 0, set()
    for s in segs:
        if s.row0 != row or s.rows < 1 or s.pos0 < 0 or s.slot < 0 or s.slot in seen \
                or (slots is not None and s.slot >= slots):
            raise G4rtError(f"bad segment {s} (rows so far {row}, {slots} slot(s), slots used {sorted(seen)})")
        seen.add(s.slot)
        row += s.rows
    if row != n_tokens:
        raise G4rtError(f"segments cover {row} rows, the graph has {n_tokens}")
    return segs


def write_row_words(segs, words) -> None:
    """Fill `words` ([rows, 4] integers, a view into a GPU backend's parameters buffer) with each
    row's position, slot, segment start and segment rows: what shaders/glsl/rows.glsl and the
    ROW_* macros of shaders/cuda/common.cuh read."""
    for s in segs:
        w = words[s.row0:s.row0 + s.rows]
        w[:, 0] = range(s.pos0, s.pos0 + s.rows)
        w[:, 1:] = (s.slot, s.row0, s.rows)


def segment_positions(segs) -> "list[int]":
    """The position of every row."""
    out = []
    for s in segs:
        out.extend(range(s.pos0, s.pos0 + s.rows))
    return out


@dataclass(frozen=True)
class WeightSpec:
    name: str                   # GGUF tensor name
    qtype: GGMLQuantizationType
    rows: int                   # output features
    cols: int                   # input features (contiguous in the file)
    experts: int = 0            # a 3-D expert tensor: `experts` matrices of rows / experts rows each


# ---- ops --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """Every op names what it writes as `out`: its output buffer (a field of each op; KvStore's
    is the K cache it writes, beside cache_v)."""
    kind: ClassVar[str] = "op"

    def reads(self) -> list[str]:
        """Names of buffers and caches this op reads (weights excluded)."""
        return [getattr(self, f.name) for f in fields(self)
                if f.name in self._read_fields and getattr(self, f.name) is not None]

    _read_fields: ClassVar[tuple[str, ...]] = ()


#: Part of the contract: a batch of up to this many rows is row-exact on every backend (each row
#: gets the bits a one-row batch, a decode step, gives it), so speculative verification and several
#: sequences decoded together reproduce plain decoding. shaders/cpu/g4cpu.h has the same number.
ROW_EXACT_MAX = 16


#: The fields by which an op names the weights it reads (op_weights; passes that rename weights).
WEIGHT_FIELDS = ("table", "weight", "bias", "freq_factors", "by", "expert_scale", "norm")


def op_weights(op: Op) -> list[str]:
    """Names of the weights an op reads."""
    return [v for v in (getattr(op, attr, None) for attr in WEIGHT_FIELDS) if v is not None]


@dataclass
class Graph:
    """One recorded forward pass for a fixed batch of `n_tokens` tokens."""
    n_tokens: int
    buffers: dict[str, Buffer]
    caches: dict[str, KvCache]
    weights: dict[str, WeightSpec]
    ops: list[Op]
    output: str
    tokens: str = "tokens"
    labels: list[str] = field(default_factory=list)   # a human label per op ("blk.3 attn_q")
    #: Per-call f32 inputs {name: Buffer}: the caller declares them on the backend
    #: (Backend.declare_inputs) and fills them (write_inputs) before each run; ops read them by
    #: name like caches (media soft tokens, the image mask, an encoder's pixels). An input may
    #: hold more rows than the graph (input_rows: one buffer per size class, shared by the graphs
    #: of that class); an op reads its first n_tokens rows.
    inputs: dict[str, Buffer] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"graph: {self.n_tokens} token(s), {len(self.ops)} ops, {len(self.buffers)} buffers, "
                 f"{len(self.caches)} caches, {len(self.weights)} weights"]
        for label, op in zip(self.labels, self.ops):
            lines.append(f"  {label:<28} {op.kind:<10} -> {op.out}")
        return "\n".join(lines)


def input_rows(n_tokens: int) -> int:
    """The rows of the per-call input buffers a graph of n_tokens rows reads: the next power of
    two (at least 16), so that graphs of every batch size share a few buffers per name."""
    return max(16, 1 << (max(1, n_tokens) - 1).bit_length())


def activation_bytes(graph: "Graph") -> int:
    """Bytes of a graph's f32 buffers and per-call inputs (what a backend allocates to run it)."""
    return sum(b.rows * b.cols * 4 for b in list(graph.buffers.values()) + list(graph.inputs.values())
               if b.dtype == "f32")


__all__ = ["Buffer", "KvCache", "Segment", "one_sequence", "placement", "write_row_words",
           "segment_positions", "WeightSpec", "Op", "ROW_EXACT_MAX", "WEIGHT_FIELDS", "op_weights", "Graph",
           "input_rows", "activation_bytes"]

