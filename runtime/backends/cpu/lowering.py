"""Lower an op list (ops.Graph) into the native command array: one g4_cmd per op, every pointer
resolved once (activation arena, KV caches, memory-mapped GGUF weights), so a token is one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ... import ops
from ...errors import G4rtError
from ...gguf.quant_types import row_bytes
from . import native as N

ALIGN = 64


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


@dataclass
class Lowered:
    cmds: object                    # ctypes array of native.G4Cmd, one per op
    arena: np.ndarray               # every activation buffer, 64-byte aligned slices
    buffers: dict[str, np.ndarray]  # name -> [rows, cols] float32 view into the arena
    tokens: np.ndarray              # int32 [n_tokens], read by EMBED
    keep: list                      # arrays the commands point into (kept alive)


def _arena(graph: ops.Graph) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    offs, total = {}, 0
    for b in graph.buffers.values():
        if b.dtype != "f32":
            continue
        offs[b.name] = total
        total += (b.rows * b.cols * 4 + ALIGN - 1) // ALIGN * ALIGN
    raw = np.zeros(total + ALIGN, np.uint8)
    base = (-raw.ctypes.data) % ALIGN
    arena = raw[base:base + total]
    views = {}
    for name, off in offs.items():
        b = graph.buffers[name]
        views[name] = arena[off:off + b.rows * b.cols * 4].view(np.float32).reshape(b.rows, b.cols)
    return raw, views


class _Lowering:
    """What the per-op functions share: the arena's views, caches, hybrid inputs, weights, and
    the arrays the commands point into (kept alive with the command array)."""

    def __init__(self, graph: ops.Graph, weight_raw, vector, caches, inputs, cache_f16: bool,
                 act_for: Callable[[ops.WeightSpec], int], repacked: Callable[[str], Optional[np.ndarray]]):
        self.graph, self.weight_raw, self.vector, self.act_for = graph, weight_raw, vector, act_for
        self.repacked = repacked
        self.caches, self.inputs, self.cache_f16 = caches, inputs, cache_f16
        self.raw, self.bufs = _arena(graph)
        self.tokens = np.zeros(graph.n_tokens, np.int32)
        self.keep: list = [self.raw, self.tokens]

    def buf(self, name: str) -> np.ndarray:
        if name in self.bufs:
            return self.bufs[name]
        if name in self.inputs:
            return self.inputs[name]
        if name in self.caches and not self.cache_f16:
            return self.caches[name]
        raise G4rtError(f"CPU backend: buffer {name!r} is not an f32 activation")

    def weight(self, c, name: str) -> ops.WeightSpec:
        """Point the command at a GGUF weight's blocks; returns its spec."""
        spec = self.graph.weights[name]
        w = self.weight_raw(name)
        c.qtype, c.w, c.w_rows, c.w_row_bytes = int(spec.qtype), _ptr(w), spec.rows, row_bytes(spec.qtype, spec.cols)
        self.keep.append(w)
        return spec

    def small_vector(self, name: str) -> int:
        """A pointer to a small weight as f32 (norms, scales)."""
        v = self.vector(name)
        self.keep.append(v)
        return _ptr(v)


# ---- one function per op kind: fill the command (out, rows, cols and in_cols are set) ----------
def lower_embed(lw: _Lowering, c, op: ops.EmbedLookup) -> None:
    lw.weight(c, op.table)
    c.op, c.scale = N.OP_EMBED, op.scale


def lower_matmul(lw: _Lowering, c, op: ops.MatMul) -> None:
    if op.x == op.out:
        raise G4rtError(f"CPU backend: matmul {op.weight} writes its own input")
    spec = lw.weight(c, op.weight)
    c.op, c.in_cols, c.a, c.act = N.OP_MATMUL, spec.cols, _ptr(lw.buf(op.x)), lw.act_for(spec)
    packed = lw.repacked(op.weight) if c.act != N.ACT_EXACT else None
    if packed is not None:                   # the integer kernels on 8-row groups (repack.c)
        c.w, c.act = _ptr(packed), c.act | N.ACT_REPACKED
        lw.keep.append(packed)


def lower_rmsnorm(lw: _Lowering, c, op: ops.RmsNorm) -> None:
    c.op, c.eps, c.group, c.a = N.OP_RMSNORM, op.eps, op.group, _ptr(lw.buf(op.x))
    if op.weight:
        c.w = lw.small_vector(op.weight)


def lower_rope(lw: _Lowering, c, op: ops.Rope) -> None:
    freqs = op.inverse_frequencies(lw.vector(op.freq_factors) if op.freq_factors else None)
    lw.keep.append(freqs)
    c.op, c.group, c.n_rot, c.a, c.freqs = N.OP_ROPE, op.head_dim, op.n_rot, _ptr(lw.buf(op.x)), _ptr(freqs)


def lower_attention(lw: _Lowering, c, op: ops.Attention) -> None:
    c.op, c.group, c.n_head, c.n_kv_head = N.OP_ATTENTION, op.head_dim, op.n_head, op.n_kv_head
    c.window, c.scale, c.cache_f16 = op.window, op.scale, int(lw.cache_f16)
    c.cache_rows = lw.graph.caches[op.cache_k].rows      # per slot
    c.a, c.b, c.c = _ptr(lw.buf(op.q)), _ptr(lw.buf(op.k)), _ptr(lw.buf(op.v))
    c.cache_k, c.cache_v = _ptr(lw.caches[op.cache_k]), _ptr(lw.caches[op.cache_v])
    if op.ahead is not None:
        c.d = _ptr(lw.buf(op.ahead))


def lower_past_attention(lw: _Lowering, c, op: ops.PastAttention) -> None:
    """The attention kernel with ahead = -1 on every row: keys end before the row's position, so
    only the cache is read (one row per segment: the rows a drafter step has)."""
    q = lw.buf(op.q)
    past = np.full((q.shape[0], 1), -1.0, np.float32)
    lw.keep.append(past)
    c.op, c.group, c.n_head, c.n_kv_head = N.OP_ATTENTION, op.head_dim, op.n_head, op.n_kv_head
    c.window, c.scale, c.cache_f16 = op.window, op.scale, int(lw.cache_f16)
    c.cache_rows = lw.graph.caches[op.cache_k].rows
    c.a = c.b = c.c = _ptr(q)      # no K/V rows of the call: never read, every key lies before
    c.cache_k, c.cache_v = _ptr(lw.caches[op.cache_k]), _ptr(lw.caches[op.cache_v])
    c.d = _ptr(past)


def lower_kv_store(lw: _Lowering, c, op: ops.KvStore) -> None:
    k = lw.buf(op.k)
    c.op, c.rows, c.cols, c.in_cols = N.OP_KV_STORE, k.shape[0], k.shape[1], k.shape[1]
    c.cache_rows, c.cache_f16 = lw.graph.caches[op.cache_k].rows, int(lw.cache_f16)
    c.a, c.b = _ptr(k), _ptr(lw.buf(op.v))
    c.cache_k, c.cache_v = _ptr(lw.caches[op.cache_k]), _ptr(lw.caches[op.cache_v])


def lower_gelu_mul(lw: _Lowering, c, op: ops.GeluMul) -> None:
    c.op, c.a, c.b = N.OP_GELU_MUL, _ptr(lw.buf(op.gate)), _ptr(lw.buf(op.up))


def lower_gelu(lw: _Lowering, c, op: ops.Gelu) -> None:
    c.op, c.a = N.OP_GELU, _ptr(lw.buf(op.x))


def lower_add(lw: _Lowering, c, op: ops.Add) -> None:
    c.op, c.a, c.b = N.OP_ADD, _ptr(lw.buf(op.a)), _ptr(lw.buf(op.b))


def lower_mul(lw: _Lowering, c, op: ops.Mul) -> None:
    c.op, c.a, c.b = N.OP_MUL, _ptr(lw.buf(op.a)), _ptr(lw.buf(op.b))


def lower_scale(lw: _Lowering, c, op: ops.Scale) -> None:
    s = np.float32(op.scale)
    if op.by:
        s = np.float32(s * lw.vector(op.by).reshape(-1)[0])
    c.op, c.scale, c.a = N.OP_SCALE, float(s), _ptr(lw.buf(op.x))


def lower_softcap(lw: _Lowering, c, op: ops.Softcap) -> None:
    c.op, c.cap, c.a = N.OP_SOFTCAP, op.cap, _ptr(lw.buf(op.x))


def lower_slice(lw: _Lowering, c, op: ops.Slice) -> None:
    src = lw.buf(op.x)
    if op.row0 + c.rows > src.shape[0] or op.col0 + c.cols > src.shape[1]:
        raise G4rtError(f"CPU backend: slice of {op.x} out of range")
    c.op, c.row0, c.col0, c.in_cols, c.a = N.OP_SLICE, op.row0, op.col0, src.shape[1], _ptr(src)


def lower_moe_route(lw: _Lowering, c, op: ops.MoeRoute) -> None:
    lg = lw.buf(op.logits)
    c.op, c.group, c.in_cols, c.a = N.OP_MOE_ROUTE, op.k, lg.shape[1], _ptr(lg)
    if op.expert_scale:
        c.w = lw.small_vector(op.expert_scale)


def lower_moe_matmul(lw: _Lowering, c, op: ops.MoeMatMul) -> None:
    spec = lw.graph.weights[op.weight]
    x, route = lw.buf(op.x), lw.buf(op.route)
    k = route.shape[1] // 2
    if x.shape[0] not in (route.shape[0], route.shape[0] * k) or spec.rows != op.n_expert * c.cols:
        raise G4rtError(f"CPU backend: expert matmul {op.weight} has inconsistent shapes")
    lw.weight(c, op.weight)
    c.op, c.in_cols, c.rows, c.act = N.OP_MOE_MATMUL, spec.cols, route.shape[0], lw.act_for(spec)
    c.group, c.n_head, c.row0 = k, op.n_expert, int(x.shape[0] == route.shape[0] * k and k > 1)
    c.a, c.b = _ptr(x), _ptr(route)
    packed = lw.repacked(op.weight) if c.act != N.ACT_EXACT else None
    if packed is not None:                   # every expert's rows in 8-row groups (moe.c: moe_expert)
        c.w, c.act = _ptr(packed), c.act | N.ACT_REPACKED
        lw.keep.append(packed)


def lower_moe_sum(lw: _Lowering, c, op: ops.MoeSum) -> None:
    route = lw.buf(op.route)
    c.op, c.group, c.a, c.b = N.OP_MOE_SUM, route.shape[1] // 2, _ptr(lw.buf(op.y)), _ptr(route)


def lower_layernorm(lw: _Lowering, c, op: ops.LayerNorm) -> None:
    c.op, c.eps, c.a = N.OP_LAYERNORM, op.eps, _ptr(lw.buf(op.x))
    if op.weight:
        c.w = lw.small_vector(op.weight)
    if op.bias:
        c.d = lw.small_vector(op.bias)


def lower_add_vector(lw: _Lowering, c, op: ops.AddVector) -> None:
    c.op, c.a, c.w = N.OP_ADD_VECTOR, _ptr(lw.buf(op.x)), lw.small_vector(op.weight)


def lower_gather_add(lw: _Lowering, c, op: ops.GatherAdd) -> None:
    spec, index = lw.graph.weights[op.table], lw.buf(op.index)
    if spec.cols != c.cols or index.shape[0] < c.rows:
        raise G4rtError(f"CPU backend: gather_add table {op.table} is {spec.cols} wide, the rows {c.cols}")
    # the table as f32 rows (a small weight: position embeddings)
    c.op, c.a, c.b, c.group = N.OP_GATHER_ADD, _ptr(lw.buf(op.x)), _ptr(index), index.shape[1]
    c.w, c.w_rows = lw.small_vector(op.table), spec.rows


def lower_take_rows(lw: _Lowering, c, op: ops.TakeRows) -> None:
    src, take = lw.buf(op.src), lw.buf(op.take)
    if src.shape[1] != c.cols or src.shape[0] < c.rows or take.shape[0] < c.rows:
        raise G4rtError(f"CPU backend: take_rows source {op.src} does not match {op.out}")
    c.op, c.a, c.b, c.c = N.OP_TAKE_ROWS, _ptr(lw.buf(op.x)), _ptr(src), _ptr(take)


# ---- vision encoder ops (vit_ops.c) ------------------------------------------------------------
def lower_clamp(lw: _Lowering, c, op: ops.Clamp) -> None:
    c.op, c.a, c.scale, c.cap = N.OP_CLAMP, _ptr(lw.buf(op.x)), op.lo, op.hi


def lower_rope2d(lw: _Lowering, c, op: ops.Rope2D) -> None:
    pos = lw.buf(op.pos)
    if op.head_dim % 4 or c.cols % op.head_dim or pos.shape[0] < c.rows or pos.shape[1] != 2:
        raise G4rtError(f"CPU backend: rope2d on {op.x}: head size {op.head_dim} / positions {op.pos} do not fit")
    freqs = ops.inverse_frequencies(op.base, op.head_dim // 2)
    lw.keep.append(freqs)
    c.op, c.group, c.a, c.b, c.freqs = N.OP_ROPE2D, op.head_dim, _ptr(lw.buf(op.x)), _ptr(pos), _ptr(freqs)


def lower_full_attention(lw: _Lowering, c, op: ops.FullAttention) -> None:
    q, k, v = lw.buf(op.q), lw.buf(op.k), lw.buf(op.v)
    if op.n_head % op.n_kv_head or k.shape[0] != c.rows or v.shape[0] != c.rows:
        raise G4rtError(f"CPU backend: full attention {op.out} has inconsistent shapes")
    c.op, c.group, c.n_head, c.n_kv_head, c.scale = N.OP_FULL_ATTENTION, op.head_dim, op.n_head, op.n_kv_head, op.scale
    c.a, c.b, c.c = _ptr(q), _ptr(k), _ptr(v)


def lower_pool_rows(lw: _Lowering, c, op: ops.PoolRows) -> None:
    x = lw.buf(op.x)
    if x.shape[0] != c.rows * op.group or x.shape[1] != c.cols:
        raise G4rtError(f"CPU backend: pool_rows {op.out}: {x.shape[0]} rows do not make {c.rows} groups of {op.group}")
    c.op, c.group, c.scale, c.a = N.OP_POOL_ROWS, op.group, op.scale, _ptr(x)


def lower_standardize(lw: _Lowering, c, op: ops.Standardize) -> None:
    c.op, c.a, c.w, c.d = N.OP_STANDARDIZE, _ptr(lw.buf(op.x)), lw.small_vector(op.weight), lw.small_vector(op.bias)


from .audio_lowering import (lower_chunked_attention, lower_conv2d_norm_relu,  # noqa: E402,F401
                             lower_depthwise_conv1d, lower_glu, lower_silu)

LOWERINGS: dict[type, Callable[[_Lowering, object, ops.Op], None]] = ops.table_by_kind(globals(), "lower_")


def lower(graph: ops.Graph, weight_raw: Callable[[str], np.ndarray], vector: Callable[[str], np.ndarray],
          caches: dict[str, np.ndarray], inputs: dict[str, np.ndarray], cache_f16: bool,
          act_for: Callable[[ops.WeightSpec], int] = lambda spec: N.ACT_EXACT,
          repacked: Callable[[str], Optional[np.ndarray]] = lambda name: None) -> Lowered:
    """weight_raw(name): the GGUF bytes [rows, row_bytes] (uint8, C-contiguous); vector(name): a
    small weight as contiguous float32; caches: KV caches (f16 when cache_f16, else f32); inputs:
    f32 arrays the hybrid backend writes (read like caches by Slice); act_for(spec): a matmul's
    activation path (native.ACT_*); repacked(name): a weight's 8-row repacked copy, or None."""
    lw = _Lowering(graph, weight_raw, vector, caches, inputs, cache_f16, act_for, repacked)
    cmds = (N.G4Cmd * len(graph.ops))()
    for i, op in enumerate(graph.ops):
        fill = LOWERINGS.get(type(op))
        if fill is None:
            raise G4rtError(f"CPU backend: op {op.kind} is not supported")
        c = cmds[i]
        if not isinstance(op, ops.KvStore):       # a KV store writes caches, not an activation
            out = inputs[op.out] if isinstance(op, ops.Slice) and op.out in inputs else lw.bufs[op.out]
            c.rows, c.cols, c.in_cols = out.shape[0], out.shape[1], out.shape[1]
            c.out = _ptr(out)
        fill(lw, c, op)
    # A graph with integer (q8 / i16) matmuls runs every attention batch row by row: a prefill
    # then gives each row its decode-step bits, which the int8 rounding downstream would not
    # forgive, so a prompt decodes the same after a cache hit or in another chunking.
    # The exact matmuls of such a graph (float weights) run row by row at any size for the same
    # reason (gemm.c's G4_ACT_ROW_EXACT).
    if any(c.act != N.ACT_EXACT for c in cmds if c.op in (N.OP_MATMUL, N.OP_MOE_MATMUL)):
        for c in cmds:
            if c.op == N.OP_ATTENTION:
                c.act = 1
            elif c.op == N.OP_MATMUL and c.act == N.ACT_EXACT:
                c.act = N.ACT_ROW_EXACT
    return Lowered(cmds=cmds, arena=lw.raw, buffers=lw.bufs, tokens=lw.tokens, keep=lw.keep)
