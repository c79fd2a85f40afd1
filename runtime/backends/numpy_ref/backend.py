"""The numpy reference backend: defines what every op means (the oracle of the other backends).

float32 activations and KV cache (f16 on request); weights dequantized exactly (gguf.quants) one
tensor at a time, kept in an LRU cache under a byte cap so a large model never sits dequantized
in RAM at once. The maths of each op is a module-level function (the CUDA emulator calls them
too); `OP_FUNCTIONS` maps each op class to the small function that applies it in a run.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from ... import ops
from ...errors import G4rtError
from ...gguf.quant_types import dequantize_rows
from ..base import Backend, CompiledGraph, OpObserver, WeightSource, checked_precision

DEFAULT_CACHE_BYTES = 4 << 30
_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def rms_norm(x: np.ndarray, weight: Optional[np.ndarray], eps: float, group: int) -> np.ndarray:
    rows, cols = x.shape
    v = x.reshape(rows, cols // group, group).astype(np.float32)
    ms = np.mean(np.square(v, dtype=np.float64), axis=-1, keepdims=True)
    y = v * (1.0 / np.sqrt(ms + eps)).astype(np.float32)
    if weight is not None:
        y = y * weight.reshape(1, 1, group)
    return y.reshape(rows, cols)


def rope_angles(positions: np.ndarray, n_rot: int, base: float, freq_factors: Optional[np.ndarray]) -> np.ndarray:
    """[rows, n_rot/2] angles: each row's position times the pair frequencies of ops.Rope."""
    inv = ops.inverse_frequencies(base, n_rot, freq_factors)
    return positions.astype(np.float64)[:, None] * inv[None, :]


def rope(x: np.ndarray, positions: np.ndarray, head_dim: int, n_rot: int, base: float,
         freq_factors: Optional[np.ndarray]) -> np.ndarray:
    rows, cols = x.shape
    v = x.reshape(rows, cols // head_dim, head_dim).copy()
    ang = rope_angles(positions, n_rot, base, freq_factors)
    cos = np.cos(ang).astype(np.float32)[:, None, :]
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    half = n_rot // 2
    a, b = v[:, :, :half].copy(), v[:, :, half:n_rot].copy()
    v[:, :, :half] = a * cos - b * sin
    v[:, :, half:n_rot] = a * sin + b * cos
    return v.reshape(rows, cols)


def attention(q, k, v, cache_k, cache_v, pos0: int, n_head: int, n_kv_head: int, head_dim: int,
              window: int, scale: float, ahead: Optional[np.ndarray] = None) -> np.ndarray:
    """ahead: per row, how many later rows of the batch it also sees (ops.Attention.ahead)."""
    n = q.shape[0]
    ring = cache_k.shape[0]
    first = max(0, pos0 - window + 1) if window else 0
    past = np.arange(first, pos0)
    keys = np.concatenate([cache_k[past % ring], k], axis=0) if len(past) else k
    vals = np.concatenate([cache_v[past % ring], v], axis=0) if len(past) else v
    kpos = np.concatenate([past, pos0 + np.arange(n)])
    return _attend(q, keys, vals, kpos, pos0 + np.arange(n), n_head, n_kv_head, head_dim, window, scale, ahead)


def attention_rows_exact(q, k, v, cache_k, cache_v, pos0: int, n_head: int, n_kv_head: int, head_dim: int,
                         window: int, scale: float, cache_dtype) -> np.ndarray:
    """A small batch, each row exactly as a one-row decode step computes it: its own key range,
    and the batch's earlier rows as the cache would hold them (rounded to `cache_dtype`)."""
    rounded_k = k.astype(cache_dtype).astype(np.float32)
    rounded_v = v.astype(cache_dtype).astype(np.float32)
    ring = cache_k.shape[0]
    out = []
    for j in range(q.shape[0]):
        p = pos0 + j
        first = max(0, p - window + 1) if window else 0
        past = np.arange(first, p)
        old, new = past[past < pos0], past[past >= pos0] - pos0
        keys = np.concatenate([cache_k[old % ring], rounded_k[new], k[j:j + 1]], axis=0)
        vals = np.concatenate([cache_v[old % ring], rounded_v[new], v[j:j + 1]], axis=0)
        kpos = np.concatenate([past, [p]])
        out.append(_attend(q[j:j + 1], keys, vals, kpos, np.array([p]), n_head, n_kv_head, head_dim, window, scale))
    return np.concatenate(out, axis=0)


def _attend(q, keys, vals, kpos, qpos, n_head: int, n_kv_head: int, head_dim: int, window: int,
            scale: float, ahead: Optional[np.ndarray] = None) -> np.ndarray:
    n, T = q.shape[0], len(kpos)
    last = qpos if ahead is None else qpos + ahead.reshape(-1).astype(np.int64)
    allowed = kpos[None, :] <= last[:, None]
    if window:
        allowed &= kpos[None, :] > qpos[:, None] - window
    qh = q.reshape(n, n_head, head_dim).transpose(1, 0, 2)                  # [H, n, D]
    kh = keys.reshape(T, n_kv_head, head_dim).transpose(1, 0, 2)           # [Hkv, T, D]
    vh = vals.reshape(T, n_kv_head, head_dim).transpose(1, 0, 2)
    rep = n_head // n_kv_head
    kh = np.repeat(kh, rep, axis=0)
    vh = np.repeat(vh, rep, axis=0)
    s = np.matmul(qh, kh.transpose(0, 2, 1)) * np.float32(scale)            # [H, n, T]
    s = np.where(allowed[None], s, -np.inf)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    out = np.matmul(p, vh)                                                   # [H, n, D]
    return out.transpose(1, 0, 2).reshape(n, n_head * head_dim).astype(np.float32)


def layer_norm(x: np.ndarray, weight: Optional[np.ndarray], bias: Optional[np.ndarray], eps: float) -> np.ndarray:
    """ops.LayerNorm: statistics in double, the normalized row in float32."""
    v = x.astype(np.float64)
    mean = v.mean(axis=1, keepdims=True)
    var = np.square(v - mean).mean(axis=1, keepdims=True)
    y = ((v - mean) / np.sqrt(var + eps)).astype(np.float32)
    if weight is not None:
        y = y * weight.reshape(1, -1)
    if bias is not None:
        y = y + bias.reshape(1, -1)
    return y


def gather_add(x: np.ndarray, table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """ops.GatherAdd: x plus the table rows each row's indexes name, added in index order."""
    idx = index.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= table.shape[0]):
        raise IndexError(f"gather_add: index outside the {table.shape[0]}-row table")
    out = x.astype(np.float32, copy=True)
    for j in range(idx.shape[1]):
        out = out + table[idx[:, j]]
    return out


def matmul_rows_exact(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T one row at a time (a matrix-vector product each): a row's result does not depend
    on the other rows of a small batch."""
    wt = w.T
    return np.stack([x[i] @ wt for i in range(x.shape[0])])


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, cache_bytes: int = DEFAULT_CACHE_BYTES, kv_dtype: str = "f32", precision: str = "auto"):
        # the reference defines the ops in float32: exact is its only activation path
        self.precision = checked_precision(self.name, precision, ("auto", "exact"))
        self.cache_bytes = cache_bytes
        self.kv_dtype = "f16" if kv_dtype == "f16" else "f32"
        self._cache_dtype = np.float16 if self.kv_dtype == "f16" else np.float32
        self.specs: dict[str, ops.WeightSpec] = {}
        self.source: Optional[WeightSource] = None
        self._dequant: OrderedDict[str, np.ndarray] = OrderedDict()
        self._dequant_bytes = 0
        #: KV caches, and the f32 hand-over inputs of a hybrid (read by name like caches)
        self.caches: dict[str, np.ndarray] = {}

    @property
    def device_name(self) -> str:
        return "numpy reference"

    def load_weights(self, specs, source, progress: Optional[Callable[[int], None]] = None) -> None:
        # Nothing to upload: weights stay memory-mapped and are dequantized on first use (so no
        # progress to report).
        self.specs = dict(specs)
        self.source = source

    def allocate_caches(self, caches) -> None:
        self.caches = {c.name: np.zeros((c.slots * c.rows, c.cols), self._cache_dtype) for c in caches.values()}
        self.cache_rows = {c.name: c.rows for c in caches.values()}

    def declare_inputs(self, shapes: dict[str, tuple[int, int]]) -> None:
        for name, (rows, cols) in shapes.items():
            self.caches[name] = np.zeros((rows, cols), np.float32)

    def write_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        for name, a in arrays.items():
            self.caches[name] = np.array(a, dtype=np.float32, copy=True)

    def weight(self, name: str) -> np.ndarray:
        w = self._dequant.get(name)
        if w is not None:
            self._dequant.move_to_end(name)
            return w
        spec = self.specs[name]
        w = dequantize_rows(self.source.weight_bytes(name), spec.qtype, spec.cols)
        self._dequant[name] = w
        self._dequant_bytes += w.nbytes
        while self._dequant_bytes > self.cache_bytes and len(self._dequant) > 1:
            _, old = self._dequant.popitem(last=False)
            self._dequant_bytes -= old.nbytes
        return w

    def vector(self, name: Optional[str]) -> Optional[np.ndarray]:
        """A small weight (norm, RoPE factors, scales) as a flat array; None for no weight."""
        return self.weight(name).reshape(-1) if name else None

    def embedding_rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        spec = self.specs[name]
        raw = self.source.weight_bytes(name)
        return dequantize_rows(raw[ids], spec.qtype, spec.cols)

    def compile(self, graph: ops.Graph) -> "NumpyGraph":
        return NumpyGraph(self, graph)


def moe_route(logits: np.ndarray, k: int, expert_scale: Optional[np.ndarray] = None) -> np.ndarray:
    """[rows, 2k]: the top-k experts' weights, then their indices (see ops.MoeRoute)."""
    rows, n = logits.shape
    # a stable sort of -logits: equal logits keep the lower expert first
    sel = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(logits, sel, axis=1).astype(np.float64)
    p = np.exp(chosen - chosen[:, :1])          # the softmax's denominator cancels in the renormalisation
    w = p / p.sum(axis=1, keepdims=True)
    if expert_scale is not None:
        w = w * expert_scale.astype(np.float64)[sel]
    return np.concatenate([w, sel.astype(np.float64)], axis=1).astype(np.float32)


def moe_matmul(x: np.ndarray, route: np.ndarray, w: np.ndarray, n_expert: int) -> np.ndarray:
    """[rows * k, N]: each selection's expert applied to its input row (see ops.MoeMatMul)."""
    rows, k = route.shape[0], route.shape[1] // 2
    N = w.shape[0] // n_expert
    ids = route[:, k:].astype(np.int64).reshape(-1)                 # selection s = r*k + j
    src = np.arange(rows * k) if x.shape[0] == rows * k else np.repeat(np.arange(rows), k)
    out = np.empty((rows * k, N), np.float32)
    exact = rows <= ops.ROW_EXACT_MAX
    for e in np.unique(ids):                                        # each expert's rows at once
        s = np.flatnonzero(ids == e)
        we = w[e * N:(e + 1) * N]
        out[s] = matmul_rows_exact(x[src[s]], we) if exact else x[src[s]] @ we.T
    return out


def moe_sum(y: np.ndarray, route: np.ndarray) -> np.ndarray:
    rows, k = route.shape[0], route.shape[1] // 2
    yk = y.reshape(rows, k, -1)
    out = np.zeros((rows, y.shape[1]), np.float32)
    for j in range(k):
        out += route[:, j:j + 1] * yk[:, j]
    return out


class _Call:
    """One run of a graph: its rows' placement and the buffers written so far."""

    def __init__(self, backend: NumpyBackend, graph: ops.Graph, tokens: np.ndarray, segs: tuple[ops.Segment, ...]):
        self.backend, self.graph, self.tokens, self.segs = backend, graph, tokens, segs
        self.n = graph.n_tokens
        self.positions = np.array(ops.segment_positions(segs))
        self.caches = backend.caches
        self.bufs: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray:
        if name in self.graph.inputs:       # an input's first n rows (ops.Graph.inputs)
            return self.caches[name][:self.n]
        return self.caches[name] if name in self.caches else self.bufs[name]

    def slot_view(self, name: str, s: ops.Segment) -> np.ndarray:
        """A segment's slot of a cache (its own ring of rows)."""
        rows = self.backend.cache_rows[name]
        return self.caches[name][s.slot * rows:(s.slot + 1) * rows]


# ---- one function per op kind: the op's result (None: it wrote caches) -------------------------
def apply_embed(c: _Call, op: ops.EmbedLookup):
    return c.backend.embedding_rows(op.table, c.tokens) * np.float32(op.scale)


def apply_matmul(c: _Call, op: ops.MatMul):
    x, w = c.get(op.x), c.backend.weight(op.weight)
    return matmul_rows_exact(x, w) if c.n <= ops.ROW_EXACT_MAX else x @ w.T


def apply_rmsnorm(c: _Call, op: ops.RmsNorm):
    return rms_norm(c.get(op.x), c.backend.vector(op.weight), op.eps, op.group)


def apply_rope(c: _Call, op: ops.Rope):
    return rope(c.get(op.x), c.positions, op.head_dim, op.n_rot, op.base, c.backend.vector(op.freq_factors))


def apply_attention(c: _Call, op: ops.Attention):
    parts = []
    for s in c.segs:      # each sequence sees only its own rows and cache slot
        rows = slice(s.row0, s.row0 + s.rows)
        args = (c.get(op.q)[rows], c.get(op.k)[rows], c.get(op.v)[rows],
                c.slot_view(op.cache_k, s).astype(np.float32), c.slot_view(op.cache_v, s).astype(np.float32),
                s.pos0, op.n_head, op.n_kv_head, op.head_dim, op.window, op.scale)
        if op.ahead is not None:     # rows see later rows: one batch (see ops.Attention.ahead)
            ahead = c.get(op.ahead)[rows, 0].astype(np.int64)
            ahead = np.minimum(ahead, s.rows - 1 - np.arange(s.rows))
            parts.append(attention(*args, ahead=ahead))
            continue
        # row-exact within the segment: a sequence's rows get the bits they get alone
        parts.append(attention_rows_exact(*args, c.caches[op.cache_k].dtype)
                     if 1 < s.rows <= ops.ROW_EXACT_MAX else attention(*args))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def apply_past_attention(c: _Call, op: ops.PastAttention):
    out = []
    for s in c.segs:      # one row per segment: its position's key range in its slot
        if s.rows != 1:
            raise G4rtError(f"past attention takes one row per segment, got a segment of {s.rows}")
        p = s.pos0
        if p < 1:
            raise G4rtError("past attention at position 0: there is no cached position before it")
        kpos = np.arange(max(0, p - op.window + 1) if op.window else 0, p)
        ck, cv = c.slot_view(op.cache_k, s), c.slot_view(op.cache_v, s)
        keys, vals = ck[kpos % len(ck)].astype(np.float32), cv[kpos % len(cv)].astype(np.float32)
        out.append(_attend(c.get(op.q)[s.row0:s.row0 + 1], keys, vals, kpos, np.array([p]), op.n_head,
                           op.n_kv_head, op.head_dim, op.window, op.scale))
    return np.concatenate(out, axis=0)


def apply_kv_store(c: _Call, op: ops.KvStore):
    for s in c.segs:
        ck, cv = c.slot_view(op.cache_k, s), c.slot_view(op.cache_v, s)
        ring = ck.shape[0]
        keep = list(range(s.row0 + max(0, s.rows - ring), s.row0 + s.rows))
        rows = [(s.pos0 + r - s.row0) % ring for r in keep]
        ck[rows] = c.get(op.k)[keep]
        cv[rows] = c.get(op.v)[keep]
    return None


def apply_gelu_mul(c: _Call, op: ops.GeluMul):
    return gelu_tanh(c.get(op.gate)) * c.get(op.up)


def apply_gelu(c: _Call, op: ops.Gelu):
    return gelu_tanh(c.get(op.x))


def apply_add(c: _Call, op: ops.Add):
    return c.get(op.a) + c.get(op.b)


def apply_mul(c: _Call, op: ops.Mul):
    return c.get(op.a) * c.get(op.b)


def apply_scale(c: _Call, op: ops.Scale):
    res = c.get(op.x) * np.float32(op.scale)
    if op.by:
        res = res * c.backend.vector(op.by)[0]
    return res


def apply_softcap(c: _Call, op: ops.Softcap):
    return np.float32(op.cap) * np.tanh(c.get(op.x) / np.float32(op.cap))


def apply_slice(c: _Call, op: ops.Slice):
    shape = c.graph.buffers[op.out]
    return c.get(op.x)[op.row0:op.row0 + shape.rows, op.col0:op.col0 + shape.cols].copy()


def apply_moe_route(c: _Call, op: ops.MoeRoute):
    return moe_route(c.get(op.logits), op.k, c.backend.vector(op.expert_scale))


def apply_moe_matmul(c: _Call, op: ops.MoeMatMul):
    return moe_matmul(c.get(op.x), c.get(op.route), c.backend.weight(op.weight), op.n_expert)


def apply_moe_sum(c: _Call, op: ops.MoeSum):
    return moe_sum(c.get(op.y), c.get(op.route))


def apply_layernorm(c: _Call, op: ops.LayerNorm):
    return layer_norm(c.get(op.x), c.backend.vector(op.weight), c.backend.vector(op.bias), op.eps)


def apply_add_vector(c: _Call, op: ops.AddVector):
    return c.get(op.x) + c.backend.vector(op.weight).reshape(1, -1)


def apply_gather_add(c: _Call, op: ops.GatherAdd):
    return gather_add(c.get(op.x), c.backend.weight(op.table), c.get(op.index))


def apply_take_rows(c: _Call, op: ops.TakeRows):
    take = c.get(op.take)[:c.n, :1] != 0
    return np.where(take, c.get(op.src)[:c.n], c.get(op.x))


from .audio_ops import (apply_chunked_attention, apply_conv2d_norm_relu,  # noqa: E402,F401
                        apply_depthwise_conv1d, apply_glu, apply_silu)

# ---- vision encoder ops (gemma4v; ops.py's "vision encoder ops") ---------------------------------
def rope2d(x: np.ndarray, pos: np.ndarray, head_dim: int, base: float) -> np.ndarray:
    """ops.Rope2D: each head's first half NeoX-rotated at pos[:, 0], its second half at pos[:, 1]."""
    rows, cols = x.shape
    half = head_dim // 2
    v = x.reshape(rows, cols // head_dim, 2, half)
    out = np.empty_like(v)
    for axis in (0, 1):
        out[:, :, axis] = rope(np.ascontiguousarray(v[:, :, axis]).reshape(rows, -1), pos[:, axis], half, half,
                               base, None).reshape(rows, -1, half)
    return out.reshape(rows, cols)


def full_attention(q, k, v, n_head: int, n_kv_head: int, head_dim: int, scale: float) -> np.ndarray:
    """ops.FullAttention: every row attends to every row."""
    n = q.shape[0]
    kpos = np.zeros(n, np.int64)
    return _attend(q, k, v, kpos, kpos, n_head, n_kv_head, head_dim, 0, scale)


def pool_rows(x: np.ndarray, group: int, scale: float) -> np.ndarray:
    """ops.PoolRows: the mean of each run of `group` rows (double), times scale (float32)."""
    rows, cols = x.shape
    mean = x.astype(np.float64).reshape(rows // group, group, cols).mean(axis=1).astype(np.float32)
    return mean * np.float32(scale)


def apply_clamp(c: _Call, op: ops.Clamp):
    return np.minimum(np.maximum(c.get(op.x), np.float32(op.lo)), np.float32(op.hi))


def apply_rope2d(c: _Call, op: ops.Rope2D):
    return rope2d(c.get(op.x), c.get(op.pos)[:c.n].astype(np.int64), op.head_dim, op.base)


def apply_full_attention(c: _Call, op: ops.FullAttention):
    return full_attention(c.get(op.q), c.get(op.k), c.get(op.v), op.n_head, op.n_kv_head, op.head_dim, op.scale)


def apply_pool_rows(c: _Call, op: ops.PoolRows):
    return pool_rows(c.get(op.x), op.group, op.scale)


def apply_standardize(c: _Call, op: ops.Standardize):
    return (c.get(op.x) - c.backend.vector(op.bias).reshape(1, -1)) * c.backend.vector(op.weight).reshape(1, -1)


OP_FUNCTIONS: dict[type, Callable[[_Call, ops.Op], Optional[np.ndarray]]] = ops.table_by_kind(globals(), "apply_")


class NumpyGraph(CompiledGraph):
    def __init__(self, backend: NumpyBackend, graph: ops.Graph):
        self.backend, self.graph = backend, graph
        self._slots = ops.graph_slots(graph)
        self._last: dict[str, np.ndarray] = {}       # the last run's buffers (read_buffers)

    def run(self, tokens: np.ndarray, segments: Sequence[ops.Segment],
            observer: Optional[OpObserver] = None) -> np.ndarray:
        # One-row products are memory-bound: BLAS threads only add wake-up and spin costs there
        # (measured 665 ms vs 89 ms per Gemma 3 270M decode step on 2 cores), so decode runs the
        # BLAS single-threaded; batched prefill keeps all threads for its GEMMs.
        limit = threadpool_limits(1, user_api="blas") if self.graph.n_tokens <= ops.ROW_EXACT_MAX \
            else contextlib.nullcontext()
        with limit:
            return self._run(tokens, segments, observer)

    def _run(self, tokens: np.ndarray, segments: Sequence[ops.Segment], observer: Optional[OpObserver]) -> np.ndarray:
        g = self.graph
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        assert len(tokens) == g.n_tokens, (len(tokens), g.n_tokens)
        call = _Call(self.backend, g, tokens, ops.placement(segments, g.n_tokens, self._slots))
        self._last = call.bufs
        for idx, op in enumerate(g.ops):
            apply = OP_FUNCTIONS.get(type(op))
            if apply is None:
                raise NotImplementedError(f"numpy backend: op {op.kind}")
            res = apply(call, op)
            if res is None:                 # caches written in place
                if observer:
                    observer(idx, op, call.caches[op.out].copy())
                continue
            call.bufs[op.out] = np.ascontiguousarray(res, dtype=np.float32)
            if observer:
                observer(idx, op, call.bufs[op.out].copy())
        return call.get(g.output)

    def read_buffers(self, names) -> dict[str, np.ndarray]:
        return {name: self._last[name].copy() for name in names}
