"""The ops of the language models (Gemma 3 / Gemma 4 text, MoE, the MTP drafter) and the 12B's
encoder-free embedders (LayerNorm, AddVector, GatherAdd, TakeRows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from .contract import Op


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



def graph_slots(graph) -> Optional[int]:
    """How many sequence slots a graph's KV caches hold (None: it uses none, e.g. the output head
    of a hybrid split, and takes segments of any slot). Only caches that attention and KV stores
    use count: a hybrid's hand-over inputs sit among the caches too."""
    used = set()
    for op in graph.ops:
        if isinstance(op, (Attention, KvStore, PastAttention)):
            used.update((op.cache_k, op.cache_v))
    return min((graph.caches[c].slots for c in used if c in graph.caches), default=None)

__all__ = ["EmbedLookup", "MatMul", "RmsNorm", "inverse_frequencies", "Rope", "Attention", "KvStore",
           "GeluMul", "Gelu", "Add", "Mul", "Scale", "Softcap", "Slice", "MoeRoute", "MoeMatMul", "MoeSum",
           "LayerNorm", "AddVector", "GatherAdd", "TakeRows", "PastAttention", "graph_slots"]
