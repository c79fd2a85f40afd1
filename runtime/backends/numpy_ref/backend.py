"""The numpy reference backend: defines what every op means (the oracle of the other backends).

float32 activations and KV cache; weights dequantized exactly (gguf.quants) one tensor at a time,
kept in an LRU cache under a byte cap so a large model never sits dequantized in RAM at once.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np
from threadpoolctl import threadpool_limits

from ... import ops as O
from ...gguf.quant_types import dequantize_rows
from ..base import Backend, CompiledGraph, OpObserver, WeightSource

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
    inv = base ** (-np.arange(0, n_rot // 2, dtype=np.float64) * 2.0 / n_rot)
    if freq_factors is not None:
        inv = inv / freq_factors.astype(np.float64)
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
              window: int, scale: float) -> np.ndarray:
    n = q.shape[0]
    ring = cache_k.shape[0]
    first = max(0, pos0 - window + 1) if window else 0
    past = np.arange(first, pos0)
    keys = np.concatenate([cache_k[past % ring], k], axis=0) if len(past) else k
    vals = np.concatenate([cache_v[past % ring], v], axis=0) if len(past) else v
    kpos = np.concatenate([past, pos0 + np.arange(n)])
    return _attend(q, keys, vals, kpos, pos0 + np.arange(n), n_head, n_kv_head, head_dim, window, scale)


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
            scale: float) -> np.ndarray:
    n, T = q.shape[0], len(kpos)
    allowed = kpos[None, :] <= qpos[:, None]
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


def matmul_rows_exact(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T one row at a time (a matrix-vector product each): a row's result does not depend
    on the other rows of a small batch."""
    wt = w.T
    return np.stack([x[i] @ wt for i in range(x.shape[0])])


class NumpyBackend(Backend):
    name = "numpy"
    supports_segments = True

    def __init__(self, cache_bytes: int = DEFAULT_CACHE_BYTES, kv_dtype: str = "f32"):
        self.cache_bytes = cache_bytes
        self.kv_dtype = np.float16 if kv_dtype == "f16" else np.float32
        self.specs: dict[str, O.WeightSpec] = {}
        self.source: Optional[WeightSource] = None
        self._dequant: OrderedDict[str, np.ndarray] = OrderedDict()
        self._dequant_bytes = 0
        self.caches: dict[str, np.ndarray] = {}

    @property
    def device_name(self) -> str:
        return "numpy (CPU reference)"

    def load_weights(self, specs, source, progress: Optional[Callable[[int], None]] = None) -> None:
        # Nothing to upload: weights stay memory-mapped and are dequantized on first use (so no
        # progress to report).
        self.specs = dict(specs)
        self.source = source

    def allocate_caches(self, caches) -> None:
        self.caches = {c.name: np.zeros((c.slots * c.rows, c.cols), self.kv_dtype) for c in caches.values()}
        self.cache_rows = {c.name: c.rows for c in caches.values()}

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

    def embedding_rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        spec = self.specs[name]
        raw = self.source.weight_bytes(name)
        return dequantize_rows(raw[ids], spec.qtype, spec.cols)

    def compile(self, graph: O.Graph) -> "NumpyGraph":
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
    exact = rows <= O.ROW_EXACT_MAX
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


class NumpyGraph(CompiledGraph):
    def __init__(self, backend: "NumpyBackend", graph: O.Graph):
        self.backend, self.graph = backend, graph

    def run(self, tokens: np.ndarray, pos0, observer: Optional[OpObserver] = None) -> np.ndarray:
        # One-row products are memory-bound: BLAS threads only add wake-up and spin costs there
        # (measured 665 ms vs 89 ms per Gemma 3 270M decode step on 2 cores), so decode runs the
        # BLAS single-threaded; batched prefill keeps all threads for its GEMMs.
        limit = threadpool_limits(1, user_api="blas") if self.graph.n_tokens <= O.ROW_EXACT_MAX \
            else contextlib.nullcontext()
        with limit:
            return self._run(tokens, pos0, observer)

    def _run(self, tokens: np.ndarray, at, observer: Optional[OpObserver] = None) -> np.ndarray:
        be, g = self.backend, self.graph
        n = g.n_tokens
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        assert len(tokens) == n, (len(tokens), n)
        bufs: dict[str, np.ndarray] = {}
        caches = be.caches
        segs = O.placement(at, n, O.graph_slots(g))
        positions = np.array(O.segment_positions(segs))

        def slot_view(name, s):
            """A segment's slot of a cache (its own ring of rows)."""
            rows = be.cache_rows[name]
            return caches[name][s.slot * rows:(s.slot + 1) * rows]

        def get(name):
            return caches[name] if name in caches else bufs[name]

        for idx, op in enumerate(g.ops):
            if isinstance(op, O.EmbedLookup):
                res = be.embedding_rows(op.table, tokens) * np.float32(op.scale)
            elif isinstance(op, O.MatMul):
                x = get(op.x)
                res = matmul_rows_exact(x, be.weight(op.weight)) if n <= O.ROW_EXACT_MAX else x @ be.weight(op.weight).T
            elif isinstance(op, O.RmsNorm):
                w = be.weight(op.weight).reshape(-1) if op.weight else None
                res = rms_norm(get(op.x), w, op.eps, op.group)
            elif isinstance(op, O.Rope):
                ff = be.weight(op.freq_factors).reshape(-1) if op.freq_factors else None
                res = rope(get(op.x), positions, op.head_dim, op.n_rot, op.base, ff)
            elif isinstance(op, O.Attention):
                parts = []
                for s in segs:      # each sequence sees only its own rows and cache slot
                    rows = slice(s.row0, s.row0 + s.rows)
                    args = (get(op.q)[rows], get(op.k)[rows], get(op.v)[rows],
                            slot_view(op.cache_k, s).astype(np.float32), slot_view(op.cache_v, s).astype(np.float32),
                            s.pos0, op.n_head, op.n_kv_head, op.head_dim, op.window, op.scale)
                    # row-exact within the segment: a sequence's rows get the bits they get alone
                    parts.append(attention_rows_exact(*args, caches[op.cache_k].dtype)
                                 if 1 < s.rows <= O.ROW_EXACT_MAX else attention(*args))
                res = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            elif isinstance(op, O.KvStore):
                for s in segs:
                    ck, cv = slot_view(op.out, s), slot_view(op.cache_v, s)
                    ring = ck.shape[0]
                    keep = list(range(s.row0 + max(0, s.rows - ring), s.row0 + s.rows))
                    rows = [(s.pos0 + r - s.row0) % ring for r in keep]
                    ck[rows] = get(op.k)[keep]
                    cv[rows] = get(op.v)[keep]
                if observer:
                    ck = caches[op.out]
                    observer(idx, op, ck.copy())
                continue
            elif isinstance(op, O.GeluMul):
                res = gelu_tanh(get(op.gate)) * get(op.up)
            elif isinstance(op, O.Gelu):
                res = gelu_tanh(get(op.x))
            elif isinstance(op, O.Add):
                res = get(op.a) + get(op.b)
            elif isinstance(op, O.Mul):
                res = get(op.a) * get(op.b)
            elif isinstance(op, O.Scale):
                res = get(op.x) * np.float32(op.scale)
                if op.by:
                    res = res * be.weight(op.by).reshape(-1)[0]
            elif isinstance(op, O.Softcap):
                res = np.float32(op.cap) * np.tanh(get(op.x) / np.float32(op.cap))
            elif isinstance(op, O.Slice):
                shape = g.buffers[op.out]
                res = get(op.x)[op.row0:op.row0 + shape.rows, op.col0:op.col0 + shape.cols].copy()
            elif isinstance(op, O.MoeRoute):
                scale = be.weight(op.expert_scale).reshape(-1) if op.expert_scale else None
                res = moe_route(get(op.logits), op.k, scale)
            elif isinstance(op, O.MoeMatMul):
                res = moe_matmul(get(op.x), get(op.route), be.weight(op.weight), op.n_expert)
            elif isinstance(op, O.MoeSum):
                res = moe_sum(get(op.y), get(op.route))
            else:
                raise NotImplementedError(f"numpy backend: op {op.kind}")
            bufs[op.out] = np.ascontiguousarray(res, dtype=np.float32)
            if observer:
                observer(idx, op, bufs[op.out].copy())
        return get(g.output)
