"""Per-op planning: each op of the list becomes one or more dispatches (kernel variant, bound
buffers, grid, push constants), by one small function per op kind (LOWERINGS).

An op whose buffers are split into row bands (arena.py) is dispatched band by band; a matmul or
embedding lookup also once per weight chunk. The push-constant words follow the `PC` blocks of
shaders/glsl/*.comp in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ... import ops
from ...errors import G4rtError
from .arena import BufferLocation, CacheLocation, bands
from .dispatch import Dispatch, push_words, workgroups
from .shader_build import QTYPE_IDS, variant

MATVEC_MAX_TOKENS = 8         # tokens per matrix-vector dispatch (more: several dispatches)
ATTN_MAX_HEAD_DIM = 512       # MAXD in attention.comp


@dataclass
class LoweringContext:
    """What planning one graph reads: its buffers' locations, the parameters buffer (token ids,
    positions) and the backend (weights, caches, derived tensors, kernel set, KV dtype)."""
    backend: object               # the VulkanBackend
    locs: dict[str, BufferLocation]
    params: object
    n_tokens: int

    def loc(self, name: str) -> BufferLocation:
        return self.locs[name]

    def cache(self, name: str) -> CacheLocation:
        c = self.backend.caches.get(name)
        if c is None:
            raise G4rtError(f"KV cache {name!r} was not allocated")
        return c


def lower(ctx: LoweringContext, op: ops.Op) -> list[Dispatch]:
    fn = LOWERINGS.get(type(op))
    if fn is None:
        raise G4rtError(f"the Vulkan backend has no kernel for op {op.kind!r}")
    return fn(ctx, op)


# ---- row-wise element kernels -------------------------------------------------------------------
def _elementwise(ctx: LoweringContext, op, shader: str, ins: list[tuple[str, int, int]], flag=0, f=0.0,
                 by=None) -> list[Dispatch]:
    """ins: (buffer, row shift, column offset) per input. Output has the out buffer's shape."""
    out = ctx.loc(op.out)
    srcs = [(ctx.loc(n), rs, co) for n, rs, co in ins]
    res = []
    for r0, r1 in bands(out.rows, [(loc, rs) for loc, rs, _ in srcs] + [(out, 0)]):
        ot, oo = out.at(r0, r1)
        rows, cols = r1 - r0, out.cols
        bound, words = [], []
        for loc, rs, co in srcs:
            t, o = loc.at(r0 + rs, r1 + rs)
            bound.append(t)
            words += [o + co, loc.cols]
        if len(srcs) == 1:
            bt, bo = by if by is not None else (ctx.backend.dummy, 0)
            bound.append(bt)
            pc = push_words(*words, oo, cols, rows, cols, flag, float(f), bo)
        else:
            pc = push_words(*words, oo, cols, rows, cols)
        res.append(Dispatch(variant(shader), tuple(bound) + (ot,), workgroups(-(-rows * cols // 256)), pc))
    return res


def lower_add(ctx, op: ops.Add):
    return _elementwise(ctx, op, "add", [(op.a, 0, 0), (op.b, 0, 0)])


def lower_mul(ctx, op: ops.Mul):
    return _elementwise(ctx, op, "mul", [(op.a, 0, 0), (op.b, 0, 0)])


def lower_gelu_mul(ctx, op: ops.GeluMul):
    return _elementwise(ctx, op, "gelu_mul", [(op.gate, 0, 0), (op.up, 0, 0)])


def lower_gelu(ctx, op: ops.Gelu):
    return _elementwise(ctx, op, "gelu", [(op.x, 0, 0)])


def lower_softcap(ctx, op: ops.Softcap):
    return _elementwise(ctx, op, "softcap", [(op.x, 0, 0)], f=float(op.cap))


def lower_scale(ctx, op: ops.Scale):
    by = ctx.backend.derived.vector_f32(op.by) if op.by else None
    return _elementwise(ctx, op, "scale", [(op.x, 0, 0)], flag=1 if op.by else 0, f=float(op.scale), by=by)


def lower_slice(ctx, op: ops.Slice):
    x = ctx.loc(op.x)
    out = ctx.loc(op.out)
    if op.row0 + out.rows > x.rows or op.col0 + out.cols > x.cols:
        raise G4rtError(f"slice of {op.x} out of range")
    return _elementwise(ctx, op, "slice", [(op.x, op.row0, op.col0)])


# ---- norms and rotary embedding -----------------------------------------------------------------
def lower_rmsnorm(ctx, op: ops.RmsNorm):
    be = ctx.backend
    x, out = ctx.loc(op.x), ctx.loc(op.out)
    if x.cols % op.group:
        raise G4rtError(f"rmsnorm group {op.group} does not divide {x.cols} columns")
    wt, wo = be.derived.vector_f32(op.weight) if op.weight else (be.dummy, 0)
    res = []
    for r0, r1 in bands(out.rows, [(x, 0), (out, 0)]):
        xt, xo = x.at(r0, r1)
        ot, oo = out.at(r0, r1)
        rows = r1 - r0
        pc = push_words(xo, x.cols, oo, out.cols, rows, x.cols, op.group, 1 if op.weight else 0, float(op.eps), wo)
        res.append(Dispatch(variant("rmsnorm"), (xt, wt, ot), workgroups(rows * (x.cols // op.group)), pc))
    return res


def lower_rope(ctx, op: ops.Rope):
    x, out = ctx.loc(op.x), ctx.loc(op.out)
    if x.cols % op.head_dim or op.n_rot > op.head_dim or op.n_rot % 2:
        raise G4rtError(f"rope: bad head_dim {op.head_dim} / n_rot {op.n_rot} for {x.cols} columns")
    table = ctx.backend.derived.rope_table(op)
    n_heads = x.cols // op.head_dim
    per_head = op.n_rot // 2 + (op.head_dim - op.n_rot)
    res = []
    for r0, r1 in bands(out.rows, [(x, 0), (out, 0)]):
        xt, xo = x.at(r0, r1)
        ot, oo = out.at(r0, r1)
        rows = r1 - r0
        pc = push_words(xo, x.cols, oo, out.cols, rows, n_heads, op.head_dim, op.n_rot, r0)
        res.append(Dispatch(variant("rope"), (ctx.params, xt, table, ot),
                            workgroups(-(-rows * n_heads * per_head // 64)), pc))
    return res


# ---- attention and the KV cache -----------------------------------------------------------------
def lower_attention(ctx, op: ops.Attention):
    be, n = ctx.backend, ctx.n_tokens
    q, k, v, out = ctx.loc(op.q), ctx.loc(op.k), ctx.loc(op.v), ctx.loc(op.out)
    if op.head_dim > ATTN_MAX_HEAD_DIM:
        raise G4rtError(f"attention head_dim {op.head_dim} > {ATTN_MAX_HEAD_DIM} is not supported")
    if op.n_head % op.n_kv_head:
        raise G4rtError(f"attention: {op.n_head} heads are not a multiple of {op.n_kv_head} KV heads")
    if op.head_dim % 8:
        raise G4rtError(f"attention head_dim {op.head_dim} is not a multiple of 8")
    ck, cv = ctx.cache(op.cache_k), ctx.cache(op.cache_v)
    if be.info.is_cpu:
        # llvmpipe ends a loop nest after 65535 iterations per invocation (common.glsl);
        # attention.comp runs about D/8 + 72 per block of 64 keys
        keys = min(op.window, ck.cache.rows + n) if op.window else ck.cache.rows + n
        if -(-keys // 64) * (op.head_dim // 8 + 72) > 60000:
            raise G4rtError(f"attention over {keys} keys (head_dim {op.head_dim}) is beyond what the "
                            f"CPU Vulkan driver can loop over; use a smaller context")
    kt, ko = k.whole(f"attention keys {op.k}")
    vt, vo = v.whole(f"attention values {op.v}")
    kv = dict(KV_F16=True) if be.kv_f16 else {}
    # the barrier-free kernel for batches on CPU drivers, where its loops stay short enough
    span = (op.window + 8) if op.window else ck.cache.rows + n
    # row-exact batches (ops.ROW_EXACT_MAX): attention.comp per row, earlier rows as cached
    exact = 1 < n <= ops.ROW_EXACT_MAX
    # (attention_rows.comp reads one sequence per call: not for caches of several slots, whose
    # graphs may carry several sequences)
    use_rows = (be.kernels == "cpu" and n > 1 and not exact and op.head_dim % 32 == 0
                and span * (2 * op.head_dim // 32 + 1) < 60000 and ck.cache.slots == 1)
    ahead = None
    if op.ahead is not None:        # media rows see later rows: one batch, attention.comp
        ahead = ctx.loc(op.ahead)
        at, ao = ahead.whole(f"attention keys ahead {op.ahead}")
        use_rows, exact, kv = False, False, dict(kv, AHEAD=True)
    if exact and be.kv_f16:
        kv = dict(kv, ROUND_BATCH=True)     # earlier rows of the batch, as the f16 cache holds them
    res = []
    for r0, r1 in bands(out.rows, [(q, 0), (out, 0)]):
        qt, qo = q.at(r0, r1)
        ot, oo = out.at(r0, r1)
        rows = r1 - r0
        pc = push_words(qo, q.cols, ko, k.cols, vo, v.cols, oo, out.cols, rows, r0, op.n_head, op.n_kv_head,
                        op.head_dim, op.window, ck.cache.rows, ck.cache.cols, float(op.scale), ck.off, cv.off,
                        *((ao,) if ahead is not None else ()))
        if ahead is not None:
            res.append(Dispatch(variant("attention", **kv), (ctx.params, qt, kt, vt, ck.tensor, cv.tensor, ot, at),
                                workgroups(rows * op.n_head), pc))
            continue
        if use_rows:
            var, groups = variant("attention_rows", **kv), workgroups(-(-rows // 8) * op.n_head)
        else:
            var, groups = variant("attention", **kv), workgroups(rows * op.n_head)
        res.append(Dispatch(var, (ctx.params, qt, kt, vt, ck.tensor, cv.tensor, ot), groups, pc))
    return res


def lower_past_attention(ctx, op: ops.PastAttention):
    """attention.comp with PAST: each row's keys are its slot's cached positions before it (the
    window applied), the same arithmetic as a decode row's attention."""
    be = ctx.backend
    q, out = ctx.loc(op.q), ctx.loc(op.out)
    if op.head_dim > ATTN_MAX_HEAD_DIM or op.head_dim % 8 or op.n_head % op.n_kv_head:
        raise G4rtError(f"past attention: head_dim {op.head_dim} (at most {ATTN_MAX_HEAD_DIM}, a multiple of 8), "
                        f"{op.n_head} heads over {op.n_kv_head} KV heads is not supported")
    ck, cv = ctx.cache(op.cache_k), ctx.cache(op.cache_v)
    if ck.cache.cols != op.n_kv_head * op.head_dim or cv.cache.cols != ck.cache.cols:
        raise G4rtError(f"past attention: caches of {ck.cache.cols} columns for {op.n_kv_head} x {op.head_dim}")
    keys = min(op.window, ck.cache.rows) if op.window else ck.cache.rows
    if be.info.is_cpu and -(-keys // 64) * (op.head_dim // 8 + 72) > 60000:
        raise G4rtError(f"past attention over {keys} keys (head_dim {op.head_dim}) is beyond what the "
                        f"CPU Vulkan driver can loop over; use a smaller context")
    var = variant("attention", KV_F16=True, PAST=True) if be.kv_f16 else variant("attention", PAST=True)
    res = []
    for r0, r1 in bands(out.rows, [(q, 0), (out, 0)]):
        qt, qo = q.at(r0, r1)
        ot, oo = out.at(r0, r1)
        rows = r1 - r0
        # the k/v bindings (fresh rows) are never read with PAST: the query buffer stands in
        pc = push_words(qo, q.cols, qo, q.cols, qo, q.cols, oo, out.cols, rows, r0, op.n_head, op.n_kv_head,
                        op.head_dim, op.window, ck.cache.rows, ck.cache.cols, float(op.scale), ck.off, cv.off)
        res.append(Dispatch(var, (ctx.params, qt, qt, qt, ck.tensor, cv.tensor, ot), workgroups(rows * op.n_head), pc))
    return res


def lower_take_rows(ctx, op: ops.TakeRows):
    x, src, take, out = ctx.loc(op.x), ctx.loc(op.src), ctx.loc(op.take), ctx.loc(op.out)
    if src.cols != out.cols or src.rows < out.rows or take.rows < out.rows:
        raise G4rtError(f"take_rows: source {op.src} does not match {op.out}")
    res = []
    for r0, r1 in bands(out.rows, [(x, 0), (src, 0), (take, 0), (out, 0)]):
        (xt, xo), (st, so), (tt, to), (ot, oo) = (loc.at(r0, r1) for loc in (x, src, take, out))
        rows = r1 - r0
        pc = push_words(xo, x.cols, so, src.cols, to, take.cols, oo, out.cols, rows, out.cols)
        res.append(Dispatch(variant("take_rows"), (xt, st, tt, ot), workgroups(-(-rows * out.cols // 256)), pc))
    return res


def lower_kv_store(ctx, op: ops.KvStore):
    be = ctx.backend
    k, v = ctx.loc(op.k), ctx.loc(op.v)
    ck, cv = ctx.cache(op.cache_k), ctx.cache(op.cache_v)
    if k.cols != ck.cache.cols or v.cols != cv.cache.cols:
        raise G4rtError(f"kv_store: k/v width {k.cols}/{v.cols} differs from the caches' {ck.cache.cols}")
    var = variant("kv_store", KV_F16=True) if be.kv_f16 else variant("kv_store")
    per_row = k.cols // 2 if be.kv_f16 else k.cols
    res = []
    one_sequence = ck.cache.slots == 1     # then every call is one segment of all rows
    for r0, r1 in bands(k.rows, [(k, 0), (v, 0)]):
        if one_sequence and r1 + ck.cache.rows <= k.rows:
            continue   # rows that a later row of this batch overwrites
        kt, ko = k.at(r0, r1)
        vt, vo = v.at(r0, r1)
        rows = r1 - r0
        pc = push_words(ko, k.cols, vo, v.cols, rows, r0, k.rows, ck.cache.rows, k.cols, ck.off, cv.off)
        res.append(Dispatch(var, (ctx.params, kt, vt, ck.tensor, cv.tensor),
                            workgroups(-(-rows * per_row // 64)), pc))
    return res


# ---- weights: embedding lookup and matmul -------------------------------------------------------
def lower_embed(ctx, op: ops.EmbedLookup):
    out = ctx.loc(op.out)
    w = ctx.backend.weights[op.table]
    if w.spec.cols != out.cols:
        raise G4rtError(f"embedding {op.table} has {w.spec.cols} columns, output {out.cols}")
    var = variant("embed", QTYPE=QTYPE_IDS[w.spec.qtype.name])
    res = []
    for r0, r1 in bands(out.rows, [(out, 0)]):
        ot, oo = out.at(r0, r1)
        rows = r1 - r0
        n_items = rows * -(-out.cols // 32)
        for c in w.chunks:
            pc = push_words(oo, out.cols, rows, out.cols, w.row_bytes, c.row0, c.row1 - c.row0, r0, float(op.scale),
                            c.byte_off)
            res.append(Dispatch(var, (ctx.params, c.tensor, ot), workgroups(-(-n_items // 64)), pc))
    return res


def _matmul_kernel(kernels: str, qid: int, n: int, exact: bool, weight_rows: int):
    """(variant, grid) of one matmul dispatch over n tokens and weight_rows output columns."""
    if kernels == "cpu" and (n == 1 or exact):
        # per-token sums independent of NTOK: decode and small batches agree bit for bit
        ntok = 1 if n == 1 else MATVEC_MAX_TOKENS
        return (variant("matmul_rows", QTYPE=qid, NTOK=ntok),
                workgroups(-(-weight_rows // 8) * -(-n // ntok)))
    if kernels == "cpu":
        return variant("matmul_tokens", QTYPE=qid), workgroups(-(-weight_rows // 8) * -(-n // 8))
    if n <= MATVEC_MAX_TOKENS:
        return (variant("matvec", QTYPE=qid, NTOK=1 if n == 1 else MATVEC_MAX_TOKENS),
                workgroups(-(-weight_rows // 4)))
    return variant("matmul", QTYPE=qid), workgroups(-(-weight_rows // 32) * -(-n // 32))


def lower_matmul(ctx, op: ops.MatMul):
    be = ctx.backend
    x, out = ctx.loc(op.x), ctx.loc(op.out)
    w = be.weights[op.weight]
    if w.spec.cols != x.cols or w.spec.rows != out.cols:
        raise G4rtError(f"matmul {op.weight} [{w.spec.rows} x {w.spec.cols}] does not fit "
                        f"{op.x} ({x.cols} cols) -> {op.out} ({out.cols} cols)")
    qid = QTYPE_IDS[w.spec.qtype.name]
    res = []
    exact = out.rows <= ops.ROW_EXACT_MAX     # row-exact: the decode kernels, per-token sums
    for r0, r1 in bands(out.rows, [(x, 0), (out, 0)]):
        # row-exact batches on GPU kernels: the decode matvec, MATVEC_MAX_TOKENS rows a dispatch
        step = MATVEC_MAX_TOKENS if exact and be.kernels != "cpu" else r1 - r0
        for t0 in range(r0, r1, step):
            t1 = min(r1, t0 + step)
            xt, xo = x.at(t0, t1)
            ot, oo = out.at(t0, t1)
            n = t1 - t0
            for c in w.chunks:
                wr = c.row1 - c.row0
                pc = push_words(xo, x.cols, oo, out.cols, n, x.cols, wr, w.row_bytes, c.row0, c.byte_off)
                var, groups = _matmul_kernel(be.kernels, qid, n, exact, wr)
                res.append(Dispatch(var, (c.tensor, xt, ot), groups, pc))
    return res


# ---- mixture of experts (whole buffers: the route is read by every dispatch) --------------------
def lower_moe_route(ctx, op: ops.MoeRoute):
    be = ctx.backend
    logits, out = ctx.loc(op.logits), ctx.loc(op.out)
    lt, lo = logits.whole(f"router logits {op.logits}")
    ot, oo = out.whole(f"route {op.out}")
    st, so = be.derived.vector_f32(op.expert_scale) if op.expert_scale else (be.dummy, 0)
    pc = push_words(lo, logits.cols, oo, out.cols, out.rows, logits.cols, op.k, 1 if op.expert_scale else 0, so)
    return [Dispatch(variant("moe_route"), (lt, st, ot), workgroups(-(-out.rows // 64)), pc)]


def lower_moe_sum(ctx, op: ops.MoeSum):
    y, route, out = ctx.loc(op.y), ctx.loc(op.route), ctx.loc(op.out)
    yt, yo = y.whole(f"expert outputs {op.y}")
    rt, ro = route.whole(f"route {op.route}")
    ot, oo = out.whole(f"expert sum {op.out}")
    pc = push_words(yo, y.cols, ro, route.cols, oo, out.cols, out.rows, out.cols, route.cols // 2)
    return [Dispatch(variant("moe_sum"), (yt, rt, ot), workgroups(-(-out.rows * out.cols // 256)), pc)]


def lower_moe_matmul(ctx, op: ops.MoeMatMul):
    x, route, out = ctx.loc(op.x), ctx.loc(op.route), ctx.loc(op.out)
    w = ctx.backend.weights[op.weight]
    k = route.cols // 2
    cols = out.cols
    if w.spec.cols != x.cols or w.spec.rows != op.n_expert * cols or x.rows not in (route.rows, route.rows * k):
        raise G4rtError(f"expert matmul {op.weight} [{w.spec.rows} x {w.spec.cols}] does not fit "
                        f"{op.x} ({x.rows} x {x.cols}) -> {op.out} ({out.rows} x {cols})")
    xt, xo = x.whole(f"expert input {op.x}")
    rt, ro = route.whole(f"route {op.route}")
    ot, oo = out.whole(f"expert output {op.out}")
    n_sel = route.rows * k
    per_sel = int(x.rows == n_sel and k > 1)
    var = variant("moe_matvec", QTYPE=QTYPE_IDS[w.spec.qtype.name])
    res = []
    for c in w.chunks:      # each dispatch computes the selected rows that lie in its chunk
        pc = push_words(xo, x.cols, ro, route.cols, oo, cols, n_sel, x.cols, cols, w.row_bytes, c.byte_off, k,
                        per_sel, c.row0, c.row1)
        res.append(Dispatch(var, (c.tensor, xt, rt, ot), workgroups(n_sel * -(-cols // 4)), pc))
    return res


from .media_lowering import *  # noqa: E402,F401,F403 - the encoders' ops (lower_layernorm .. lower_chunked_attention)

#: op class -> its lowering
LOWERINGS: dict[type, Callable[[LoweringContext, ops.Op], list[Dispatch]]] = ops.table_by_kind(globals(), "lower_")
