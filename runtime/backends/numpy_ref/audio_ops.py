"""The numpy reference of the audio encoder ops (ops.py, "audio encoder ops": the gemma4a
conformer). Module-level maths plus the `apply_*` functions backend.py's OP_FUNCTIONS picks up."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ... import ops


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def glu(x: np.ndarray) -> np.ndarray:
    c = x.shape[1] // 2
    return (x[:, :c].astype(np.float64) / (1.0 + np.exp(-x[:, c:].astype(np.float64)))).astype(np.float32)


def conv2d_norm_relu(x: np.ndarray, mask: Optional[np.ndarray], w: np.ndarray, norm: np.ndarray, ci: int, co: int,
                     eps: float, out_rows: int) -> np.ndarray:
    """ops.Conv2dNormRelu. x [T, F*ci]; w [co*ci*3, 3] (GGUF rows) -> [co, ci, 3, 3]."""
    T, F = x.shape[0], x.shape[1] // ci
    v = x.reshape(T, F, ci).astype(np.float64)
    if mask is not None:
        v = v * (mask[:T, 0] != 0)[:, None, None]
    To, Fo = out_rows, (F + 1) // 2
    pad = np.zeros((2 * To + 2, 2 * Fo + 2, ci))
    pad[1:1 + T, 1:1 + F] = v[:min(T, 2 * To + 1)]
    k = w.reshape(co, ci, 3, 3).astype(np.float64)
    acc = np.zeros((To, Fo, co))
    for kt in range(3):
        for kf in range(3):
            patch = pad[kt:kt + 2 * To:2, kf:kf + 2 * Fo:2]          # [To, Fo, ci]
            acc += patch @ k[:, :, kt, kf].T
    y = acc.astype(np.float32).astype(np.float64)
    mean = y.mean(axis=-1, keepdims=True)
    var = np.square(y - mean).mean(axis=-1, keepdims=True)
    y = ((y - mean) / np.sqrt(var + eps)).astype(np.float32) * norm.reshape(1, 1, co)
    return np.maximum(y, 0).reshape(To, Fo * co)


def depthwise_conv1d(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ops.DepthwiseConv1d: w [C, K]."""
    T, C = x.shape
    K = w.shape[1]
    pad = np.concatenate([np.zeros((K - 1, C)), x.astype(np.float64)], axis=0)
    out = np.zeros((T, C))
    for k in range(K):
        out += pad[k:k + T] * w[:, k].astype(np.float64)[None, :]
    return out.astype(np.float32)


def chunked_attention(q, k, v, rel, scale: Optional[np.ndarray], n_head: int, head_dim: int, q_scale: float,
                      k_scale: float, cap: float, window: int, valid: int) -> np.ndarray:
    T = q.shape[0]
    H, D = n_head, head_dim
    qs = q.reshape(T, H, D) * np.float32(q_scale)
    if scale is not None:
        qs = qs * scale.reshape(1, 1, D)
    ks = k.reshape(T, H, D) * np.float32(k_scale)
    vs = v.reshape(T, H, D)
    r = rel.reshape(window + 1, H, D)
    out = np.zeros((T, H, D), np.float32)
    for t in range(T):
        d = np.arange(min(window, t + 1))
        u = t - d
        keep = u < valid
        d, u = d[keep], u[keep]
        if len(u) == 0:
            continue
        s = np.einsum("hd,uhd->hu", qs[t], ks[u]) + np.einsum("hd,uhd->hu", qs[t], r[window - d])
        s = np.float32(cap) * np.tanh(s / np.float32(cap))
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[t] = np.einsum("hu,uhd->hd", p, vs[u])
    return out.reshape(T, H * D)


# ---- apply functions (backend.py: OP_FUNCTIONS) ------------------------------------------------
def apply_silu(c, op: ops.Silu):
    return silu(c.get(op.x))


def apply_glu(c, op: ops.Glu):
    return glu(c.get(op.x))


def apply_conv2d_norm_relu(c, op: ops.Conv2dNormRelu):
    x = c.get(op.x)
    x = x[:c.graph.buffers[op.x].rows] if op.x in c.graph.buffers else x
    return conv2d_norm_relu(x, c.get(op.mask) if op.mask else None, c.backend.weight(op.weight),
                            c.backend.vector(op.norm), op.in_channels, op.out_channels, op.eps,
                            c.graph.buffers[op.out].rows)


def apply_depthwise_conv1d(c, op: ops.DepthwiseConv1d):
    return depthwise_conv1d(c.get(op.x), c.backend.weight(op.weight))


def apply_chunked_attention(c, op: ops.ChunkedAttention):
    rel = op.relative_table(c.backend.weight(op.weight))
    return chunked_attention(c.get(op.q), c.get(op.k), c.get(op.v), rel, c.backend.vector(op.by), op.n_head,
                             op.head_dim, op.q_scale, op.k_scale, op.cap, op.window, op.valid)
