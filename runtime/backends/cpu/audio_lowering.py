"""The native CPU lowering of the audio encoder ops (ops.py "audio encoder ops": the gemma4a
conformer; kernels in shaders/cpu/conformer_ops.c). lowering.py's table picks these up."""

from __future__ import annotations

import numpy as np

from ... import ops
from ...errors import G4rtError

# op kinds of g4cpu.h (numbered apart from the others)
OP_SILU, OP_GLU, OP_CONV2D_NORM_RELU, OP_DEPTHWISE_CONV1D, OP_CHUNKED_ATTENTION = range(50, 55)
MAX_CH, MAX_HEAD_DIM, MAX_WINDOW = 1024, 512, 64      # g4cpu.h G4_CONV_MAX_*


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _f32(lw, name: str) -> np.ndarray:
    """A weight as contiguous f32 [rows, cols], kept alive with the commands."""
    spec = lw.graph.weights[name]
    v = np.ascontiguousarray(np.asarray(lw.vector(name), np.float32).reshape(spec.rows, spec.cols))
    lw.keep.append(v)
    return v


def lower_silu(lw, c, op: ops.Silu) -> None:
    c.op, c.a = OP_SILU, _ptr(lw.buf(op.x))


def lower_glu(lw, c, op: ops.Glu) -> None:
    x = lw.buf(op.x)
    if x.shape[1] != 2 * c.cols or x.shape[0] < c.rows:
        raise G4rtError(f"CPU backend: glu of {op.x} ({list(x.shape)}) into {c.cols} columns")
    c.op, c.a, c.in_cols = OP_GLU, _ptr(x), x.shape[1]


def lower_conv2d_norm_relu(lw, c, op: ops.Conv2dNormRelu) -> None:
    x = lw.buf(op.x)
    rows_in = lw.graph.buffers[op.x].rows if op.x in lw.graph.buffers else lw.graph.n_tokens
    ci, co = op.in_channels, op.out_channels
    f = x.shape[1] // ci
    if co > MAX_CH or x.shape[1] % ci or c.cols != ((f + 1) // 2) * co or c.rows != (rows_in - 1) // 2 + 1:
        raise G4rtError(f"CPU backend: conv2d {op.weight}: shapes {list(x.shape)} -> [{c.rows}, {c.cols}] do not fit "
                        f"{ci} -> {co} channels")
    w = _f32(lw, op.weight)
    if w.size != co * ci * 9:
        raise G4rtError(f"CPU backend: conv2d kernel {op.weight} has {w.size} values, not {co * ci * 9}")
    c.op, c.a, c.in_cols, c.group, c.n_head, c.n_rot = OP_CONV2D_NORM_RELU, _ptr(x), x.shape[1], ci, co, rows_in
    c.w, c.d, c.eps = _ptr(w), lw.small_vector(op.norm), op.eps
    if op.mask:
        m = lw.buf(op.mask)
        if m.shape[0] < rows_in:
            raise G4rtError(f"CPU backend: conv2d mask {op.mask} has {m.shape[0]} rows, the input {rows_in}")
        c.c = _ptr(m)


def lower_depthwise_conv1d(lw, c, op: ops.DepthwiseConv1d) -> None:
    w = _f32(lw, op.weight)
    if w.shape[0] != c.cols:
        raise G4rtError(f"CPU backend: depthwise conv {op.weight} is {w.shape[0]} channels, the rows {c.cols}")
    c.op, c.a, c.w, c.group = OP_DEPTHWISE_CONV1D, _ptr(lw.buf(op.x)), _ptr(w), w.shape[1]


def lower_chunked_attention(lw, c, op: ops.ChunkedAttention) -> None:
    if op.head_dim > MAX_HEAD_DIM or op.window > MAX_WINDOW or op.n_head * op.head_dim != c.cols:
        raise G4rtError(f"CPU backend: chunked attention of {op.n_head} x {op.head_dim} (window {op.window}) "
                        f"is not supported")
    rel = op.relative_table(_f32(lw, op.weight))
    lw.keep.append(rel)
    c.op, c.a, c.b, c.c, c.w = OP_CHUNKED_ATTENTION, _ptr(lw.buf(op.q)), _ptr(lw.buf(op.k)), _ptr(lw.buf(op.v)), _ptr(rel)
    if op.by:
        c.d = lw.small_vector(op.by)
    c.n_head, c.group, c.window, c.row0 = op.n_head, op.head_dim, op.window, op.valid
    c.scale, c.eps, c.cap = op.q_scale, op.k_scale, op.cap
