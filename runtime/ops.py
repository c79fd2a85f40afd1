"""The op list: the contract between a model's graph builder and the backends.

A `Graph` is a flat list of ops over named 2-D buffers ([rows, cols], row-major, float32 unless
stated) and named weights (GGUF tensors, kept in their block layout). It is built once per model,
context and batch size, then replayed: the only per-call inputs are the token ids and where the
rows sit: a list of `Segment`s, each a run of consecutive rows that continue one sequence (its KV
cache slot and the position of its first row). One sequence is the common case (`one_sequence`:
one segment of every row); several let one pass decode many sequences (the server's parallel
slots). Row-wise ops ignore segments; Rope, KvStore and Attention work per segment.

Backends execute these ops and know nothing about any model; the model knows nothing about
backends. Every op's semantics are defined by the numpy reference (backends/numpy_ref/).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Optional, Sequence

import numpy as np
from gguf import GGMLQuantizationType

from .errors import G4rtError


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


def graph_slots(graph) -> Optional[int]:
    """How many sequence slots a graph's KV caches hold (None: it uses none, e.g. the output head
    of a hybrid split, and takes segments of any slot). Only caches that attention and KV stores
    use count: a hybrid's hand-over inputs sit among the caches too."""
    used = set()
    for op in graph.ops:
        if isinstance(op, (Attention, KvStore, PastAttention)):
            used.update((op.cache_k, op.cache_v))
    return min((graph.caches[c].slots for c in used if c in graph.caches), default=None)


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


@dataclass(frozen=True)
class EmbedLookup(Op):
    """out[r] = dequant(table[tokens[r]]) * scale."""
    kind: ClassVar[str] = "embed"
    out: str
    table: str
    scale: float


@dataclass(frozen=True)
class MatMul(Op):
    """out[r, o] = sum_i x[r, i] * W[o, i]  (W dequantized from its GGUF blocks, f32 accumulate)."""
    kind: ClassVar[str] = "matmul"
    out: str
    x: str
    weight: str
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class RmsNorm(Op):
    """Each run of `group` columns: v / sqrt(mean(v^2) + eps), times weight[group] if given."""
    kind: ClassVar[str] = "rmsnorm"
    out: str
    x: str
    weight: Optional[str]
    eps: float
    group: int
    _read_fields: ClassVar = ("x",)


def inverse_frequencies(base: float, n_rot: int, factors: Optional[np.ndarray] = None) -> np.ndarray:
    """RoPE's n_rot/2 pair frequencies base^(-2i/n_rot) / factors[i], float64 (Rope.inverse_frequencies)."""
    inv = base ** (-np.arange(0, n_rot // 2, dtype=np.float64) * 2.0 / n_rot)
    if factors is not None:
        inv = inv / np.asarray(factors, dtype=np.float64).reshape(-1)[: n_rot // 2]
    return np.ascontiguousarray(inv)


@dataclass(frozen=True)
class Rope(Op):
    """NeoX-style rotary embedding on each head of `head_dim` columns, at the row's position.

    Pair (i, i + n_rot/2) for i < n_rot/2 turns by angle pos * base^(-2i/n_rot) / freq_factors[i];
    columns past n_rot are left as they are."""
    kind: ClassVar[str] = "rope"
    out: str
    x: str
    head_dim: int
    n_rot: int
    base: float
    freq_factors: Optional[str]
    _read_fields: ClassVar = ("x",)

    def inverse_frequencies(self, factors: Optional[np.ndarray] = None) -> np.ndarray:
        """The n_rot/2 pair frequencies base^(-2i/n_rot) / factors[i] in float64 (radians per
        position): the one definition every backend derives its angles or tables from.
        factors: the values of `freq_factors` (at least n_rot/2 of them), when the op has it."""
        return inverse_frequencies(self.base, self.n_rot, factors)


@dataclass(frozen=True)
class Attention(Op):
    """Causal softmax(scale * q.k) v per head, GQA (q head h reads kv head h // (n_head/n_kv_head)).

    Per segment (one sequence, first position pos0, cache slot s): query row at position p attends
    to that sequence's positions max(0, p - window + 1) .. p (window 0: all). Positions >= pos0
    come from the segment's own k/v rows, earlier ones from slot s of the caches. Rows never see
    another segment's keys."""
    kind: ClassVar[str] = "attention"
    out: str
    q: str
    k: str
    v: str
    cache_k: str
    cache_v: str
    n_head: int
    n_kv_head: int
    head_dim: int
    window: int
    scale: float
    #: An input [rows, 1] (f32 holding integers >= 0), or None: row r also sees the next
    #: ahead[r] rows of its segment (positions p+1 .. p+ahead[r], all in this call), the window
    #: still applied: allowed = (p - kv < window) AND (kv <= p + ahead[r]). An image's soft tokens
    #: see their whole image this way. With it the op runs as one batch (never row by row).
    ahead: Optional[str] = None
    _read_fields: ClassVar = ("q", "k", "v", "cache_k", "cache_v", "ahead")


@dataclass(frozen=True)
class KvStore(Op):
    """Write each segment's k/v rows into its slot of the caches (position p of slot s at row
    s * rows + p % rows; of a segment longer than the ring its last rows win)."""
    kind: ClassVar[str] = "kv_store"
    cache_k: str
    cache_v: str
    k: str
    v: str
    _read_fields: ClassVar = ("k", "v")

    @property
    def out(self) -> str:
        """What passes that treat every op alike (splits, observers) see it write: its K cache."""
        return self.cache_k


@dataclass(frozen=True)
class GeluMul(Op):
    """out = gelu_tanh(gate) * up."""
    kind: ClassVar[str] = "gelu_mul"
    out: str
    gate: str
    up: str
    _read_fields: ClassVar = ("gate", "up")


@dataclass(frozen=True)
class Gelu(Op):
    kind: ClassVar[str] = "gelu"
    out: str
    x: str
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class Add(Op):
    kind: ClassVar[str] = "add"
    out: str
    a: str
    b: str
    _read_fields: ClassVar = ("a", "b")


@dataclass(frozen=True)
class Mul(Op):
    kind: ClassVar[str] = "mul"
    out: str
    a: str
    b: str
    _read_fields: ClassVar = ("a", "b")


@dataclass(frozen=True)
class Scale(Op):
    """out = x * scale, and times the one-element weight `by` when given."""
    kind: ClassVar[str] = "scale"
    out: str
    x: str
    scale: float
    by: Optional[str] = None
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class Softcap(Op):
    """out = cap * tanh(x / cap)."""
    kind: ClassVar[str] = "softcap"
    out: str
    x: str
    cap: float
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class Slice(Op):
    """out = x[row0 : row0 + out.rows, col0 : col0 + out.cols] (a copy)."""
    kind: ClassVar[str] = "slice"
    out: str
    x: str
    row0: int
    col0: int
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class MoeRoute(Op):
    """Mixture-of-experts routing. logits [rows, n_expert] -> out [rows, 2k]: columns 0..k-1 the
    weights, k..2k-1 the expert indices (as floats, exact).

    The k experts with the largest logits (= the largest softmax probabilities; equal logits: the
    lower index first), in that order; weight_j = p_j / sum of the k selected p (computed in double),
    times expert_scale[e_j] when given."""
    kind: ClassVar[str] = "moe_route"
    out: str
    logits: str
    k: int
    expert_scale: Optional[str] = None
    _read_fields: ClassVar = ("logits",)


@dataclass(frozen=True)
class MoeMatMul(Op):
    """out[r*k + j, o] = sum_i x[row, i] * W[e*N + o, i], e = route expert j of row r, N = out.cols.

    W holds every expert's [N, K] matrix one after another (a 3-D GGUF tensor, blocks as stored).
    x has either one row per token (row = r, the input every selected expert shares) or one per
    selection (row = r*k + j). Only the selected experts' rows of W are read."""
    kind: ClassVar[str] = "moe_matmul"
    out: str
    x: str
    route: str
    weight: str
    n_expert: int
    _read_fields: ClassVar = ("x", "route")


@dataclass(frozen=True)
class MoeSum(Op):
    """out[r] = sum over j = 0..k-1, in order, of route weight j of row r times y[r*k + j]."""
    kind: ClassVar[str] = "moe_sum"
    out: str
    y: str
    route: str
    _read_fields: ClassVar = ("y", "route")


@dataclass(frozen=True)
class LayerNorm(Op):
    """Per row: (v - mean) / sqrt(var + eps) (population variance, statistics in double), then
    times weight and plus bias (each one row of cols values) when given."""
    kind: ClassVar[str] = "layernorm"
    out: str
    x: str
    weight: Optional[str]
    bias: Optional[str]
    eps: float
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class AddVector(Op):
    """out[r] = x[r] + weight (one row of cols values): a bias."""
    kind: ClassVar[str] = "add_vector"
    out: str
    x: str
    weight: str
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class GatherAdd(Op):
    """out[r] = x[r] + sum over j of table[index[r, j]]: rows of a weight table named per row by
    an input [rows, J] (f32 holding integers; an index outside the table is an error of the
    caller, checked before the call). A factorized position embedding (x and y tables)."""
    kind: ClassVar[str] = "gather_add"
    out: str
    x: str
    table: str
    index: str
    _read_fields: ClassVar = ("x", "index")


@dataclass(frozen=True)
class TakeRows(Op):
    """out[r] = src[r] where take[r, 0] != 0, else x[r]: src and take are inputs of the call
    (e.g. soft tokens replacing the embeddings of a prompt's media placeholders)."""
    kind: ClassVar[str] = "take_rows"
    out: str
    x: str
    src: str
    take: str
    _read_fields: ClassVar = ("x", "src", "take")


@dataclass(frozen=True)
class PastAttention(Op):
    """Query-only attention over a cache another graph wrote (an MTP drafter reading its target's
    KV): per segment (cache slot s), each row at position p attends, as Attention does (GQA,
    scale), to the cached positions max(0, p - window + 1) .. p - 1 (window 0: 0 .. p - 1) of
    slot s; there are no new K/V rows and p itself is not attended (it is not cached). p >= 1,
    and each segment is one row (one drafted sequence)."""
    kind: ClassVar[str] = "past_attention"
    out: str
    q: str
    cache_k: str
    cache_v: str
    n_head: int
    n_kv_head: int
    head_dim: int
    window: int
    scale: float
    _read_fields: ClassVar = ("q", "cache_k", "cache_v")


# ---- audio encoder ops (the gemma4a conformer: runtime/mmproj/audio_conformer.py; its clipped
# linears use the vision section's Clamp) -------------------------------------------------------
@dataclass(frozen=True)
class Silu(Op):
    """out = x * sigmoid(x)."""
    kind: ClassVar[str] = "silu"
    out: str
    x: str
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class Glu(Op):
    """out[r, j] = x[r, j] * sigmoid(x[r, j + C]), C = out.cols (x has 2C cols; torch's glu)."""
    kind: ClassVar[str] = "glu"
    out: str
    x: str
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class Conv2dNormRelu(Op):
    """One subsampling block: Conv2d 3x3, stride 2, padding 1, no bias, over (time = rows,
    frequency), then LayerNorm over the channels (weight `norm`, no bias; statistics in double),
    then ReLU. x [T, F * Ci] and out [ceil(T/2), ceil(F/2) * Co] hold (frequency, channel) per
    row, channel fastest. weight: the GGUF conv kernel ne [3, 3, Ci, Co] (torch [Co, Ci, 3, 3]).
    Input rows r with mask[r, 0] == 0 (mask: an input, or None) count as zeros (padded frames).
    out[t, f, o] = sum_{i, kt, kf} W[o, i, kt, kf] * x[2t + kt - 1, 2f + kf - 1, i], accumulated in
    double and rounded to float before the norm."""
    kind: ClassVar[str] = "conv2d_norm_relu"
    out: str
    x: str
    mask: Optional[str]
    weight: str
    norm: str
    in_channels: int
    out_channels: int
    eps: float
    _read_fields: ClassVar = ("x", "mask")


@dataclass(frozen=True)
class DepthwiseConv1d(Op):
    """Causal depthwise convolution over rows (time): out[t, c] = sum_k W[c, k] * x[t - K + 1 + k, c]
    (rows before 0 are zeros), W: the GGUF tensor ne [K, C]; accumulated in double."""
    kind: ClassVar[str] = "depthwise_conv1d"
    out: str
    x: str
    weight: str
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class ChunkedAttention(Op):
    """The Gemma 4 conformer's local self-attention (transformers Gemma4AudioAttention: chunks of
    12 with 12 past positions and 13 relative-position entries; the chunking is only its way of
    computing this). Per head h and row t, over the keys u = t - d, d = 0 .. window - 1, u >= 0 and
    u < valid (the padded frames' keys are masked):
      q' = q * q_scale * by[i]  (by: per-dim scale, already softplus'ed by the converter; or None),
      k' = k * k_scale, s(u) = q'.k'(u) + q'.rel[window - d], s = cap * tanh(s / cap), softmax,
      out = sum p(u) v(u).
    rel [window + 1, n_head * head_dim] = sinusoids @ weight^T, weight the relative-key projection
    [n_head * head_dim, width]: row r is the position p = window - r embedded as
    [sin(p * f_i), cos(p * f_i)], f_i = exp(-i * ln(1e4) / max(width/2 - 1, 1)), i < width/2, in
    float32 (as transformers), the product in double, rounded to float. float32 scores."""
    kind: ClassVar[str] = "chunked_attention"
    out: str
    q: str
    k: str
    v: str
    weight: str
    by: Optional[str]
    n_head: int
    head_dim: int
    q_scale: float
    k_scale: float
    cap: float
    window: int
    valid: int
    _read_fields: ClassVar = ("q", "k", "v")

    def relative_table(self, w: np.ndarray) -> np.ndarray:
        """rel [window + 1, n_head*head_dim] from the projection w [n_head*head_dim, width] (f32)."""
        width = w.shape[1]
        half = width // 2
        inv = np.exp(np.arange(half, dtype=np.float32) * np.float32(-np.log(10000.0) / max(half - 1, 1)))
        pos = np.arange(self.window, -1, -1, dtype=np.float32)[:, None] * inv[None, :]
        table = np.concatenate([np.sin(pos), np.cos(pos)], axis=1).astype(np.float64)
        return np.ascontiguousarray((table @ w.astype(np.float64).T).astype(np.float32))


#: Part of the contract: a batch of up to this many rows is row-exact on every backend (each row
#: gets the bits a one-row batch, a decode step, gives it), so speculative verification and several
#: sequences decoded together reproduce plain decoding. shaders/cpu/g4cpu.h has the same number.
ROW_EXACT_MAX = 16


OP_TYPES = (EmbedLookup, MatMul, RmsNorm, Rope, Attention, KvStore, GeluMul, Gelu, Add, Mul, Scale,
            Softcap, Slice, MoeRoute, MoeMatMul, MoeSum, LayerNorm, AddVector, GatherAdd, TakeRows,
            PastAttention, Silu, Glu, Conv2dNormRelu, DepthwiseConv1d, ChunkedAttention)


def op_weights(op: Op) -> list[str]:
    """Names of the weights an op reads."""
    names = []
    for attr in ("table", "weight", "bias", "freq_factors", "by", "expert_scale", "norm"):
        v = getattr(op, attr, None)
        if v is not None:
            names.append(v)
    return names


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


def op_classes() -> tuple[type, ...]:
    """Every op of the contract (the dataclasses below Op), in definition order."""
    found, todo = [], list(Op.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return tuple(found)


def table_by_kind(namespace: dict, prefix: str) -> dict[type, object]:
    """A backend's dispatch table {op class: namespace[prefix + op.kind]}: a backend names its
    per-op functions after the op kinds (lower_matmul, lower_kv_store, ...), so the table is never
    written out by hand (an op without such a function is simply absent: unsupported)."""
    return {cls: namespace[prefix + cls.kind] for cls in op_classes() if prefix + cls.kind in namespace}


# ---- vision encoder ops (gemma4v: the Gemma 4 ViT, runtime/mmproj/vision_vit.py) --------------
# A ViT graph's rows are the image's patches (n_tokens = patches), its output the pooled soft
# tokens. None of these ops reads a cache or a segment.
@dataclass(frozen=True)
class Clamp(Op):
    """out = min(max(x, lo), hi), lo and hi as float32 (a clipped linear's bounds)."""
    kind: ClassVar[str] = "clamp"
    out: str
    x: str
    lo: float
    hi: float
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class Rope2D(Op):
    """Axial 2-D NeoX rotary embedding on each head of head_dim columns (head_dim % 4 == 0): the
    first head_dim/2 columns of a head turn as Rope with n_rot = head_dim/2 at the row's x
    position pos[r, 0], the second half the same way at its y position pos[r, 1]; pair i of a half
    by angle p * base^(-2i/(head_dim/2)) (angles and cos/sin in double). pos: a per-call input
    [rows, 2] (f32 holding integers)."""
    kind: ClassVar[str] = "rope2d"
    out: str
    x: str
    pos: str
    head_dim: int
    base: float
    _read_fields: ClassVar = ("x", "pos")


@dataclass(frozen=True)
class FullAttention(Op):
    """Non-causal softmax(scale * q.k) v per head over every row of the call (each row sees all
    rows, itself included), GQA as Attention (q head h reads kv head h // (n_head/n_kv_head));
    scores and softmax in float32. No cache, no segments: an encoder's self-attention."""
    kind: ClassVar[str] = "full_attention"
    out: str
    q: str
    k: str
    v: str
    n_head: int
    n_kv_head: int
    head_dim: int
    scale: float
    _read_fields: ClassVar = ("q", "k", "v")


@dataclass(frozen=True)
class PoolRows(Op):
    """out[r] = scale * mean of x's rows r*group .. r*group + group - 1 (summed in double, then
    rounded to float32 and scaled in float32): average pooling of groups of consecutive rows (out
    has x.rows / group rows)."""
    kind: ClassVar[str] = "pool_rows"
    out: str
    x: str
    group: int
    scale: float
    _read_fields: ClassVar = ("x",)


@dataclass(frozen=True)
class Standardize(Op):
    """out[r] = (x[r] - bias) * weight in float32 (bias and weight, the scale: one row of cols
    values each)."""
    kind: ClassVar[str] = "standardize"
    out: str
    x: str
    bias: str
    weight: str
    _read_fields: ClassVar = ("x",)


OP_TYPES = OP_TYPES + (Clamp, Rope2D, FullAttention, PoolRows, Standardize)
