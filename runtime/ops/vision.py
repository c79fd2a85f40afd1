"""The Gemma 4 ViT's ops (gemma4v: runtime/mmproj/vision_vit.py). A ViT graph's rows are the
image's patches (n_tokens = patches), its output the pooled soft tokens. None of these ops reads a
cache or a segment. Clamp also serves the conformer's clipped linears."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .contract import Op


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


__all__ = ["Clamp", "Rope2D", "FullAttention", "PoolRows", "Standardize"]
