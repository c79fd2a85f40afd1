"""The Gemma 4 conformer's ops (gemma4a: runtime/mmproj/audio_conformer.py; its clipped linears
use vision.Clamp)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from .contract import Op


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


__all__ = ["Silu", "Glu", "Conv2dNormRelu", "DepthwiseConv1d", "ChunkedAttention"]
