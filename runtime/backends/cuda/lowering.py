"""Lowering one op list for the CUDA backend: the activation arena's layout and, for each op,
the kernel launches that compute it (pure host code: nothing touches the device here).

A launch's arguments are numbers or symbolic references that graph.py resolves to device
pointers when it records the graph (the arena and the caches can move before that):
("A", offset) a place in the activation arena, ("C", name) a KV cache or hybrid input,
("W", name) a weight as uploaded, ("V", name) a weight's f32 copy, ("PARAMS",) the per-call
parameters buffer, ("NULL",) a null pointer.

`LOWERINGS` maps each op class to the function that lowers it; every function checks the op's
shapes against the graph and raises a G4rtError saying what does not fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ... import ops
from ...errors import G4rtError
from . import kernels
from .plan import align

if TYPE_CHECKING:
    from .backend import CudaBackend, DeviceWeight

from .launch import NULL, PARAMS, Launch, copy_launch  # noqa: F401 - Launch is this module's currency


def rows_below(ref: tuple, row0: int, cols: int) -> tuple:
    """An arena reference moved down `row0` rows of `cols` floats (row 0: any reference, e.g. an
    input such as an MTP drafter's hidden state)."""
    if row0 == 0:
        return ref
    if ref[0] != "A":
        raise G4rtError("a row offset needs an activation buffer")
    return ("A", ref[1] + row0 * cols * 4)


class GraphLowering:
    """One graph laid out in the arena and lowered to launches, op by op (`op_launches`)."""

    def __init__(self, backend: "CudaBackend", graph: ops.Graph, labels: list[str]):
        self.backend, self.graph = backend, graph
        self.n = int(graph.n_tokens)
        # 1. arena layout: every f32 buffer the ops touch (and the output)
        self.offsets: dict[str, int] = {}
        end = 0
        for op in graph.ops:
            for name in list(op.reads()) + [op.out]:
                if name in graph.buffers and name not in graph.caches and name not in self.offsets:
                    buf = graph.buffers[name]
                    if buf.dtype != "f32":
                        raise G4rtError(f"buffer {name!r} has dtype {buf.dtype}; ops read f32 buffers only")
                    self.offsets[name] = end
                    end = align(end + buf.rows * buf.cols * 4)
        if graph.output in graph.buffers and graph.output not in self.offsets and graph.output not in graph.caches:
            buf = graph.buffers[graph.output]
            self.offsets[graph.output] = end
            end = align(end + buf.rows * buf.cols * 4)
        self._end = end                      # scratch (attention partials, temps) goes after
        # 2. the ops
        self._written: set[str] = set()
        self._q8: dict[str, tuple] = {}      # int8 copies of activation buffers, until rewritten
        self.op_launches: list[list[Launch]] = []
        for label, op in zip(labels, graph.ops):
            try:
                self.op_launches.append(self._lower(op))
            except G4rtError as e:
                raise G4rtError(f"CUDA backend, {label} ({op.kind}): {e}") from None
            self._q8.pop(op.out, None)
        self.arena_bytes = align(self._end)

    def _lower(self, op: ops.Op) -> list[Launch]:
        lower = LOWERINGS.get(type(op))
        if lower is None:
            raise G4rtError(f"the CUDA backend has no kernel for op {op.kind!r}")
        launches = lower(self, op)
        if not isinstance(op, ops.KvStore):      # a KV store writes caches, not a buffer
            self._written.add(op.out)
        return launches

    # ---- what the per-op functions use -------------------------------------------------------
    def scratch(self, nbytes: int) -> tuple:
        off = self._end
        self._end = align(off + max(int(nbytes), 4))
        return ("A", off)

    def ref(self, name: str, write: bool = False) -> tuple:
        g = self.graph
        if name in g.caches or name in g.inputs:
            if write:
                raise G4rtError(f"{name!r} is a cache; only kv_store writes caches")
            be = self.backend
            if name not in be.caches and name not in be.inputs:
                raise G4rtError(f"cache {name!r} is not allocated on the CUDA backend")
            return ("C", name)
        if name in self.offsets:
            if not write and name not in self._written:
                raise G4rtError(f"reads buffer {name!r} before any op wrote it")
            return ("A", self.offsets[name])
        raise G4rtError(f"unknown buffer {name!r}")

    def shape(self, name: str) -> tuple[int, int]:
        g = self.graph
        if name in g.caches:
            c = g.caches[name]
            return c.rows, c.cols
        if name in g.inputs:                 # ops read an input's first n_tokens rows (ops.Graph)
            c = g.inputs[name]
            return min(c.rows, self.n), c.cols
        b = g.buffers[name]
        return b.rows, b.cols

    def weight(self, name: str) -> "DeviceWeight":
        w = self.backend.weights.get(name)
        if w is None:
            raise G4rtError(f"weight {name!r} is not loaded on the CUDA backend")
        return w

    def vector(self, name: str, min_len: int) -> tuple:
        spec = self.backend.specs.get(name)
        if spec is None:
            raise G4rtError(f"weight {name!r} is not loaded on the CUDA backend")
        if spec.rows * spec.cols < min_len:
            raise G4rtError(f"weight {name!r} has {spec.rows * spec.cols} values, needs {min_len}")
        self.backend.vector(name)
        return ("V", name)

    def out(self, op: ops.Op, shape: tuple[int, int]) -> tuple:
        if op.out not in self.graph.buffers or op.out in self.graph.caches:
            raise G4rtError(f"output {op.out!r} must be an activation buffer")
        if self.shape(op.out) != tuple(shape):
            raise G4rtError(f"output {op.out!r} is {self.shape(op.out)}, expected {tuple(shape)}")
        return ("A", self.offsets[op.out])

    def int8_ok(self, qtype, cols: int) -> bool:
        return self.backend.int8_matvec and cols % 32 == 0 and qtype in kernels.family_types("matvec8")

    def quantized(self, name: str, x: tuple, rows: int, cols: int, launches: list) -> tuple:
        """The int8 copy (values, scales) of activation buffer `name`, quantizing it first unless
        an earlier launch did and nothing has rewritten the buffer since (Q/K/V, gate/up)."""
        if name not in self._q8:               # a buffer's shape is fixed within a graph
            groups = cols // 32
            q, ds = self.scratch(rows * cols), self.scratch(rows * groups * 8)
            launches.append(Launch("quantize_q8", (-(-groups // kernels.Q8_GROUPS_PER_BLOCK), rows, 1),
                                   32 * kernels.Q8_GROUPS_PER_BLOCK, [x, q, ds, cols, rows]))
            self._q8[name] = (q, ds)
        return self._q8[name]


# ---- one function per op kind ---------------------------------------------------------------
def lower_embed(lw: GraphLowering, op: ops.EmbedLookup) -> list[Launch]:
    w = lw.weight(op.table)
    k = w.spec.cols
    rows, cols = lw.shape(op.out)
    if cols != k or rows > lw.n:
        raise G4rtError(f"output is [{rows}, {cols}] for a table of {k} columns and {lw.n} tokens")
    out = lw.out(op, (rows, cols))
    groups = -(-k // 32)
    return [Launch(kernels.typed_kernel("embed", w.spec.qtype),
                   (-(-groups // kernels.EMBED_THREADS), rows, 1), kernels.EMBED_THREADS,
                   [("W", op.table), w.row_bytes, w.spec.rows, PARAMS, out, k, float(op.scale)])]


def lower_matmul(lw: GraphLowering, op: ops.MatMul) -> list[Launch]:
    launches: list[Launch] = []
    w = lw.weight(op.weight)
    k, n_out = w.spec.cols, w.spec.rows
    rows, xc = lw.shape(op.x)
    if xc != k:
        raise G4rtError(f"input {op.x!r} has {xc} columns, weight {op.weight!r} has {k}")
    x = lw.ref(op.x)
    inplace = op.out == op.x
    dst = lw.scratch(rows * n_out * 4) if inplace else lw.out(op, (rows, n_out))
    if rows > 65535 * kernels.MM_BT:
        raise G4rtError(f"batch of {rows} rows is too large")
    weight = ("W", op.weight)
    mv_grid = (-(-n_out // kernels.MV_WARPS), 1, 1)
    if rows <= kernels.MV_MAXN and lw.int8_ok(w.spec.qtype, k):
        q, ds = lw.quantized(op.x, x, rows, k, launches)
        launches.append(Launch(kernels.typed_kernel("matvec8", w.spec.qtype), mv_grid, kernels.MV_WARPS * 32,
                               [weight, w.row_bytes, q, ds, dst, n_out, k, rows]))
    elif rows <= ops.ROW_EXACT_MAX:
        # decode's matvec, MV_MAXN rows a launch: a row's sums do not depend on the batch
        for r0 in range(0, rows, kernels.MV_MAXN):
            rn = min(kernels.MV_MAXN, rows - r0)
            launches.append(Launch(kernels.typed_kernel("matvec", w.spec.qtype), mv_grid, kernels.MV_WARPS * 32,
                                   [weight, w.row_bytes, rows_below(x, r0, k), rows_below(dst, r0, n_out),
                                    n_out, k, rn]))
    else:
        launches.append(Launch(kernels.typed_kernel("matmul", w.spec.qtype),
                               (-(-n_out // kernels.MM_BO), -(-rows // kernels.MM_BT), 1), kernels.MM_THREADS,
                               [weight, w.row_bytes, x, dst, n_out, k, rows]))
    if inplace:
        launches.append(copy_launch(dst, lw.out(op, (rows, n_out)), rows, n_out))
    return launches


def lower_rmsnorm(lw: GraphLowering, op: ops.RmsNorm) -> list[Launch]:
    rows, cols = lw.shape(op.x)
    if op.group <= 0 or cols % op.group:
        raise G4rtError(f"group {op.group} does not divide {cols} columns")
    if rows > 65535:
        raise G4rtError(f"{rows} rows is too many for one launch")
    x = lw.ref(op.x)
    out = lw.out(op, (rows, cols))
    weight = lw.vector(op.weight, op.group) if op.weight else NULL
    return [Launch("rmsnorm", (cols // op.group, rows, 1), kernels.rmsnorm_block(op.group),
                   [x, out, weight, cols, op.group, float(op.eps)])]


def lower_rope(lw: GraphLowering, op: ops.Rope) -> list[Launch]:
    launches: list[Launch] = []
    rows, cols = lw.shape(op.x)
    if op.head_dim <= 0 or cols % op.head_dim:
        raise G4rtError(f"head_dim {op.head_dim} does not divide {cols} columns")
    if op.n_rot % 2 or op.n_rot > op.head_dim or op.n_rot < 0:
        raise G4rtError(f"n_rot {op.n_rot} must be even and at most head_dim {op.head_dim}")
    if rows > lw.n:
        raise G4rtError(f"{rows} rows but only {lw.n} positions")
    x = lw.ref(op.x)
    out = lw.out(op, (rows, cols))
    if op.out != op.x:
        launches.append(copy_launch(x, out, rows, cols))     # the kernel turns pairs in place
    # the kernel derives each pair's frequency from base and the factors itself (norm_rope.cu)
    factors = lw.vector(op.freq_factors, op.n_rot // 2) if op.freq_factors else NULL
    total = rows * (cols // op.head_dim) * (op.n_rot // 2)
    if total:
        launches.append(Launch("rope", (kernels.ew_grid(total), 1, 1), kernels.EW_THREADS,
                               [out, factors, PARAMS, rows, cols, op.head_dim, op.n_rot, float(op.base)]))
    return launches


def _attention_checks(lw: GraphLowering, op, new_kv: bool) -> tuple:
    """(rows, cache K, kernel) of an Attention (new_kv: its k / v rows checked too) or a
    PastAttention, after the checks both need: GQA heads, q's width, the row count, the caches
    allocated alike, a kernel for the head dim."""
    be = lw.backend
    heads, kv_heads, dim = op.n_head, op.n_kv_head, op.head_dim
    if kv_heads <= 0 or heads % kv_heads:
        raise G4rtError(f"{heads} heads are not a multiple of {kv_heads} KV heads")
    rows, qc = lw.shape(op.q)
    if qc != heads * dim:
        raise G4rtError(f"q has {qc} columns, expected {heads} x {dim}")
    if new_kv:
        for name in (op.k, op.v):
            if lw.shape(name) != (rows, kv_heads * dim):
                raise G4rtError(f"{name!r} is {lw.shape(name)}, expected ({rows}, {kv_heads * dim})")
    if rows > lw.n or rows > 65535:
        raise G4rtError(f"{rows} query rows for {lw.n} positions")
    ck, cv = be.caches.get(op.cache_k), be.caches.get(op.cache_v)
    if ck is None or cv is None:
        raise G4rtError(f"KV caches {op.cache_k!r}/{op.cache_v!r} are not allocated")
    if ck.cols != kv_heads * dim or cv.cols != kv_heads * dim or (ck.rows, ck.ring) != (cv.rows, cv.ring):
        raise G4rtError(f"caches are [{ck.rows}, {ck.cols}] / [{cv.rows}, {cv.cols}], "
                        f"expected {kv_heads * dim} columns")
    try:
        kernel = kernels.attn_variant(dim, ck.f16)
    except ValueError as e:
        raise G4rtError(str(e)) from None
    return rows, ck, kernel


def lower_attention(lw: GraphLowering, op: ops.Attention) -> list[Launch]:
    launches: list[Launch] = []
    be = lw.backend
    rows, ck, kernel = _attention_checks(lw, op, new_kv=True)
    heads, kv_heads, dim = op.n_head, op.n_kv_head, op.head_dim
    ring = ck.ring
    # each row split as a one-row decode step splits it; rows that see later rows (media): one batch
    exact = rows <= ops.ROW_EXACT_MAX and op.ahead is None
    rows_seen = 1 if exact else rows
    max_keys = min(op.window + (rows if op.ahead is not None else 0), ring + rows_seen) if op.window > 0 \
        else ring + rows_seen
    n_split = kernels.attn_splits(max_keys, rows_seen, heads, be.sm_count)
    part = lw.scratch(rows * heads * n_split * (dim + 2) * 4)
    q, k, v = lw.ref(op.q), lw.ref(op.k), lw.ref(op.v)
    inplace = op.out in (op.q, op.k, op.v)
    dst = lw.scratch(rows * heads * dim * 4) if inplace else lw.out(op, (rows, heads * dim))
    launches.append(Launch(kernel, (n_split, heads, rows), kernels.ATT_THREADS,
                           [q, k, v, ("C", op.cache_k), ("C", op.cache_v), part, PARAMS,
                            heads, kv_heads, dim, int(op.window), ring, float(op.scale), n_split,
                            int(exact and rows > 1 and ck.f16),
                            lw.ref(op.ahead) if op.ahead is not None else 0]))
    launches.append(Launch("attn_combine", (heads, rows, 1), kernels.ATT_THREADS,
                           [part, dst, heads, dim, n_split]))
    if inplace:
        launches.append(copy_launch(dst, lw.out(op, (rows, heads * dim)), rows, heads * dim))
    return launches


def lower_past_attention(lw: GraphLowering, op: ops.PastAttention) -> list[Launch]:
    """The attention kernels with ATT_PAST (attention.cu): each row's keys are its slot's cached
    positions before it, the window applied; split as a one-row decode step over the cache."""
    be = lw.backend
    rows, ck, kernel = _attention_checks(lw, op, new_kv=False)
    heads, kv_heads, dim = op.n_head, op.n_kv_head, op.head_dim
    max_keys = min(op.window, ck.ring) if op.window > 0 else ck.ring
    n_split = kernels.attn_splits(max_keys, 1, heads, be.sm_count)
    part = lw.scratch(rows * heads * n_split * (dim + 2) * 4)
    q = lw.ref(op.q)
    inplace = op.out == op.q
    dst = lw.scratch(rows * heads * dim * 4) if inplace else lw.out(op, (rows, heads * dim))
    past = 2                                      # ATT_PAST: k and v (q stands in) are not read
    launches = [Launch(kernel, (n_split, heads, rows), kernels.ATT_THREADS,
                       [q, q, q, ("C", op.cache_k), ("C", op.cache_v), part, PARAMS, heads, kv_heads, dim,
                        int(op.window), ck.ring, float(op.scale), n_split, past, 0]),
                Launch("attn_combine", (heads, rows, 1), kernels.ATT_THREADS, [part, dst, heads, dim, n_split])]
    if inplace:
        launches.append(copy_launch(dst, lw.out(op, (rows, heads * dim)), rows, heads * dim))
    return launches


def lower_take_rows(lw: GraphLowering, op: ops.TakeRows) -> list[Launch]:
    shape = lw.shape(op.x)
    src, take = lw.shape(op.src), lw.shape(op.take)
    if src[1] != shape[1] or src[0] < shape[0] or take[1] != 1 or take[0] < shape[0]:
        raise G4rtError(f"take_rows: {op.src} {lw.shape(op.src)} / {op.take} {lw.shape(op.take)} for {shape}")
    x, src, take = lw.ref(op.x), lw.ref(op.src), lw.ref(op.take)
    out = lw.out(op, shape)
    return [Launch("take_rows", (kernels.ew_grid(shape[0] * shape[1]), 1, 1), kernels.EW_THREADS,
                   [x, src, take, out, shape[0], shape[1]])]


def lower_kv_store(lw: GraphLowering, op: ops.KvStore) -> list[Launch]:
    be = lw.backend
    ck, cv = be.caches.get(op.cache_k), be.caches.get(op.cache_v)
    if ck is None or cv is None:
        raise G4rtError(f"KV caches {op.cache_k!r}/{op.cache_v!r} are not allocated")
    rows, cols = lw.shape(op.k)
    if lw.shape(op.v) != (rows, cols) or ck.cols != cols or cv.cols != cols or (ck.rows, ck.ring) != (cv.rows, cv.ring):
        raise G4rtError(f"k/v {lw.shape(op.k)}/{lw.shape(op.v)} do not match caches "
                        f"[{ck.rows}, {ck.cols}]")
    if rows > lw.n:
        raise G4rtError(f"{rows} rows for {lw.n} positions")
    total = rows * cols             # each row checks whether a later row of its sequence wins
    kernel = "kv_store_f16" if ck.f16 else "kv_store_f32"
    return [Launch(kernel, (kernels.ew_grid(total), 1, 1), kernels.EW_THREADS,
                   [lw.ref(op.k), lw.ref(op.v), ("C", op.cache_k), ("C", op.cache_v), PARAMS, rows, cols, ck.ring])]


def _pairwise(lw: GraphLowering, op: ops.Op, a_name: str, b_name: str, kernel: str) -> list[Launch]:
    """out = f(a, b) element by element (two operands of one shape)."""
    shape = lw.shape(a_name)
    if lw.shape(b_name) != shape:
        raise G4rtError(f"operands are {shape} and {lw.shape(b_name)}")
    a, b = lw.ref(a_name), lw.ref(b_name)
    out = lw.out(op, shape)
    nel = shape[0] * shape[1]
    return [Launch(kernel, (kernels.ew_grid(nel), 1, 1), kernels.EW_THREADS, [a, b, out, nel])]


def lower_gelu_mul(lw: GraphLowering, op: ops.GeluMul) -> list[Launch]:
    return _pairwise(lw, op, op.gate, op.up, "gelu_mul")


def lower_add(lw: GraphLowering, op: ops.Add) -> list[Launch]:
    return _pairwise(lw, op, op.a, op.b, "add")


def lower_mul(lw: GraphLowering, op: ops.Mul) -> list[Launch]:
    return _pairwise(lw, op, op.a, op.b, "mul")


def _unary(lw: GraphLowering, op: ops.Op, kernel: str, extra: Callable[[], list]) -> list[Launch]:
    """out = f(x) element by element; `extra()` gives the kernel's arguments after n."""
    shape = lw.shape(op.x)
    x = lw.ref(op.x)
    out = lw.out(op, shape)
    nel = shape[0] * shape[1]
    return [Launch(kernel, (kernels.ew_grid(nel), 1, 1), kernels.EW_THREADS, [x, out, nel] + extra())]


def lower_gelu(lw: GraphLowering, op: ops.Gelu) -> list[Launch]:
    return _unary(lw, op, "gelu", lambda: [])


def lower_scale(lw: GraphLowering, op: ops.Scale) -> list[Launch]:
    return _unary(lw, op, "scale", lambda: [float(op.scale), lw.vector(op.by, 1) if op.by else NULL])


def lower_softcap(lw: GraphLowering, op: ops.Softcap) -> list[Launch]:
    return _unary(lw, op, "softcap", lambda: [float(op.cap)])


def lower_slice(lw: GraphLowering, op: ops.Slice) -> list[Launch]:
    be, g = lw.backend, lw.graph
    x_rows, x_cols = lw.shape(op.x)
    kept = op.out in g.caches and op.out in be.inputs      # a hybrid's persistent copy
    if op.out not in g.buffers and not kept:
        raise G4rtError(f"output {op.out!r} must be an activation buffer")
    rows, cols = lw.shape(op.out)
    if op.row0 < 0 or op.col0 < 0 or op.row0 + rows > x_rows or op.col0 + cols > x_cols:
        raise G4rtError(f"slice [{op.row0}:{op.row0 + rows}, {op.col0}:{op.col0 + cols}] is outside "
                        f"{op.x!r} [{x_rows}, {x_cols}]")
    if op.x in g.caches:
        src = be.caches.get(op.x) or be.inputs.get(op.x)
        if src is None:
            raise G4rtError(f"{op.x!r} is not allocated on the CUDA backend")
        if src.f16:
            raise G4rtError(f"slicing the f16 cache {op.x!r} is not supported")
    x = lw.ref(op.x)
    out = ("C", op.out) if kept else lw.out(op, (rows, cols))
    return [Launch("slice", (kernels.ew_grid(rows * cols), 1, 1), kernels.EW_THREADS,
                   [x, out, rows, cols, x_cols, op.row0, op.col0])]


def lower_moe_route(lw: GraphLowering, op: ops.MoeRoute) -> list[Launch]:
    rows, n_exp = lw.shape(op.logits)
    out = lw.out(op, (rows, 2 * op.k))
    scale = lw.vector(op.expert_scale, n_exp) if op.expert_scale else NULL
    return [Launch("moe_route", (max(1, -(-rows // 128)), 1, 1), 128,
                   [lw.ref(op.logits), out, scale, rows, n_exp, op.k])]


def lower_moe_matmul(lw: GraphLowering, op: ops.MoeMatMul) -> list[Launch]:
    w = lw.weight(op.weight)
    rows, rc = lw.shape(op.route)
    k = rc // 2
    x_rows, cols = lw.shape(op.x)
    n_out = w.spec.rows // op.n_expert
    if cols != w.spec.cols or w.spec.rows != op.n_expert * n_out or x_rows not in (rows, rows * k):
        raise G4rtError(f"expert matmul {op.weight!r} [{w.spec.rows} x {w.spec.cols}] does not fit "
                        f"{op.x!r} [{x_rows}, {cols}] with {rows} x {k} selections")
    if rows * k > 65535:
        raise G4rtError(f"{rows * k} expert selections is too many for one launch")
    out = lw.out(op, (rows * k, n_out))
    per_selection = int(x_rows == rows * k and k > 1)      # x holds a row per selection
    return [Launch(kernels.typed_kernel("moe_matvec", w.spec.qtype), (-(-n_out // kernels.MV_WARPS), rows * k, 1),
                   kernels.MV_WARPS * 32, [("W", op.weight), w.row_bytes, lw.ref(op.x), lw.ref(op.route),
                                           out, n_out, cols, k, per_selection])]


def lower_moe_sum(lw: GraphLowering, op: ops.MoeSum) -> list[Launch]:
    rows, rc = lw.shape(op.route)
    k = rc // 2
    _, cols = lw.shape(op.y)
    out = lw.out(op, (rows, cols))
    return [Launch("moe_sum", (kernels.ew_grid(rows * cols), 1, 1), kernels.EW_THREADS,
                   [lw.ref(op.y), lw.ref(op.route), out, rows, cols, k])]


from .media_lowering import (lower_add_vector, lower_chunked_attention, lower_clamp,  # noqa: E402,F401
                             lower_conv2d_norm_relu, lower_depthwise_conv1d, lower_full_attention,
                             lower_gather_add, lower_glu, lower_layernorm, lower_pool_rows, lower_rope2d,
                             lower_silu, lower_standardize)

LOWERINGS: dict[type, Callable[[GraphLowering, ops.Op], list[Launch]]] = ops.table_by_kind(globals(), "lower_")
