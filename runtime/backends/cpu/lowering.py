"""Lower an op list (ops.Graph) into the native command array: one g4_cmd per op, every pointer
resolved once (activation arena, KV caches, memory-mapped GGUF weights), so a token is one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ... import ops as O
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


def _arena(graph: O.Graph) -> tuple[np.ndarray, dict[str, np.ndarray]]:
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


def rope_frequencies(op: O.Rope, factors: np.ndarray | None) -> np.ndarray:
    """Inverse frequencies (float64) of the NeoX pairs, frequency factors applied (numpy_ref)."""
    inv = op.base ** (-np.arange(0, op.n_rot // 2, dtype=np.float64) * 2.0 / op.n_rot)
    if factors is not None:
        inv = inv / factors.reshape(-1)[: op.n_rot // 2].astype(np.float64)
    return np.ascontiguousarray(inv)


def lower(graph: O.Graph, weight_raw: Callable[[str], np.ndarray], vector: Callable[[str], np.ndarray],
          caches: dict[str, np.ndarray], inputs: dict[str, np.ndarray], cache_f16: bool) -> Lowered:
    """weight_raw(name): the GGUF bytes [rows, row_bytes] (uint8, C-contiguous); vector(name): a
    small weight as contiguous float32; caches: KV caches (f16 when cache_f16, else f32); inputs:
    f32 arrays the hybrid backend writes (read like caches by Slice)."""
    raw, bufs = _arena(graph)
    tokens = np.zeros(graph.n_tokens, np.int32)
    keep: list = [raw, tokens]
    cmds = (N.G4Cmd * len(graph.ops))()

    def buf(name: str) -> np.ndarray:
        if name in bufs:
            return bufs[name]
        if name in inputs:
            return inputs[name]
        if name in caches and not cache_f16:
            return caches[name]
        raise G4rtError(f"CPU backend: buffer {name!r} is not an f32 activation")

    for i, op in enumerate(graph.ops):
        c = cmds[i]
        if isinstance(op, O.KvStore):
            ck, cv = caches[op.out], caches[op.cache_v]
            k = buf(op.k)
            c.op, c.rows, c.cols, c.in_cols = N.OP_KV_STORE, k.shape[0], k.shape[1], k.shape[1]
            c.cache_rows, c.cache_f16 = graph.caches[op.out].rows, int(cache_f16)
            c.a, c.b, c.cache_k, c.cache_v = _ptr(k), _ptr(buf(op.v)), _ptr(ck), _ptr(cv)
            continue
        out = inputs[op.out] if isinstance(op, O.Slice) and op.out in inputs else bufs[op.out]
        c.rows, c.cols, c.in_cols = out.shape[0], out.shape[1], out.shape[1]
        c.out = _ptr(out)
        if isinstance(op, O.EmbedLookup):
            spec = graph.weights[op.table]
            w = weight_raw(op.table)
            c.op, c.qtype, c.scale = N.OP_EMBED, int(spec.qtype), op.scale
            c.w, c.w_rows, c.w_row_bytes = _ptr(w), spec.rows, row_bytes(spec.qtype, spec.cols)
            keep.append(w)
        elif isinstance(op, O.MatMul):
            spec = graph.weights[op.weight]
            w, x = weight_raw(op.weight), buf(op.x)
            if op.x == op.out:
                raise G4rtError(f"CPU backend: matmul {op.weight} writes its own input")
            c.op, c.qtype, c.in_cols = N.OP_MATMUL, int(spec.qtype), spec.cols
            c.w, c.w_rows, c.w_row_bytes = _ptr(w), spec.rows, row_bytes(spec.qtype, spec.cols)
            c.a = _ptr(x)
            keep.append(w)
        elif isinstance(op, O.RmsNorm):
            c.op, c.eps, c.group, c.a = N.OP_RMSNORM, op.eps, op.group, _ptr(buf(op.x))
            if op.weight:
                v = vector(op.weight)
                c.w = _ptr(v)
                keep.append(v)
        elif isinstance(op, O.Rope):
            ff = vector(op.freq_factors) if op.freq_factors else None
            freqs = rope_frequencies(op, ff)
            keep.append(freqs)
            c.op, c.group, c.n_rot, c.a, c.freqs = N.OP_ROPE, op.head_dim, op.n_rot, _ptr(buf(op.x)), _ptr(freqs)
        elif isinstance(op, O.Attention):
            ck, cv = caches[op.cache_k], caches[op.cache_v]
            c.op, c.group, c.n_head, c.n_kv_head = N.OP_ATTENTION, op.head_dim, op.n_head, op.n_kv_head
            c.window, c.scale, c.cache_f16 = op.window, op.scale, int(cache_f16)
            c.cache_rows = graph.caches[op.cache_k].rows      # per slot
            c.a, c.b, c.c = _ptr(buf(op.q)), _ptr(buf(op.k)), _ptr(buf(op.v))
            c.cache_k, c.cache_v = _ptr(ck), _ptr(cv)
        elif isinstance(op, O.GeluMul):
            c.op, c.a, c.b = N.OP_GELU_MUL, _ptr(buf(op.gate)), _ptr(buf(op.up))
        elif isinstance(op, O.Gelu):
            c.op, c.a = N.OP_GELU, _ptr(buf(op.x))
        elif isinstance(op, (O.Add, O.Mul)):
            c.op = N.OP_ADD if isinstance(op, O.Add) else N.OP_MUL
            c.a, c.b = _ptr(buf(op.a)), _ptr(buf(op.b))
        elif isinstance(op, O.Scale):
            s = np.float32(op.scale)
            if op.by:
                s = np.float32(s * vector(op.by).reshape(-1)[0])
            c.op, c.scale, c.a = N.OP_SCALE, float(s), _ptr(buf(op.x))
        elif isinstance(op, O.Softcap):
            c.op, c.cap, c.a = N.OP_SOFTCAP, op.cap, _ptr(buf(op.x))
        elif isinstance(op, O.Slice):
            src = buf(op.x)
            if op.row0 + c.rows > src.shape[0] or op.col0 + c.cols > src.shape[1]:
                raise G4rtError(f"CPU backend: slice of {op.x} out of range")
            c.op, c.row0, c.col0, c.in_cols, c.a = N.OP_SLICE, op.row0, op.col0, src.shape[1], _ptr(src)
        elif isinstance(op, O.MoeRoute):
            lg = buf(op.logits)
            c.op, c.group, c.in_cols, c.a = N.OP_MOE_ROUTE, op.k, lg.shape[1], _ptr(lg)
            if op.expert_scale:
                v = vector(op.expert_scale)
                c.w = _ptr(v)
                keep.append(v)
        elif isinstance(op, O.MoeMatMul):
            spec = graph.weights[op.weight]
            w, x, route = weight_raw(op.weight), buf(op.x), buf(op.route)
            k = route.shape[1] // 2
            if x.shape[0] not in (route.shape[0], route.shape[0] * k) or spec.rows != op.n_expert * c.cols:
                raise G4rtError(f"CPU backend: expert matmul {op.weight} has inconsistent shapes")
            c.op, c.qtype, c.in_cols, c.rows = N.OP_MOE_MATMUL, int(spec.qtype), spec.cols, route.shape[0]
            c.group, c.n_head, c.row0 = k, op.n_expert, int(x.shape[0] == route.shape[0] * k and k > 1)
            c.w, c.w_rows, c.w_row_bytes = _ptr(w), spec.rows, row_bytes(spec.qtype, spec.cols)
            c.a, c.b = _ptr(x), _ptr(route)
            keep.append(w)
        elif isinstance(op, O.MoeSum):
            route = buf(op.route)
            c.op, c.group, c.a, c.b = N.OP_MOE_SUM, route.shape[1] // 2, _ptr(buf(op.y)), _ptr(route)
        else:
            raise G4rtError(f"CPU backend: op {op.kind} is not supported")
    return Lowered(cmds=cmds, arena=raw, buffers=bufs, tokens=tokens, keep=keep)
