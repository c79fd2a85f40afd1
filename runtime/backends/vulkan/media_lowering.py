"""Lowerings of the multimodal encoders' ops (the gemma4uv / gemma4v image and gemma4ua / gemma4a
audio projectors' op lists): LayerNorm, AddVector, GatherAdd (text.py's media ops), Clamp, Rope2D,
FullAttention, PoolRows, Standardize (vision.py), Silu, Glu, Conv2dNormRelu, DepthwiseConv1d,
ChunkedAttention (audio.py). lowering.py imports the lower_* functions into its LOWERINGS table.

Kernels (shaders/glsl): media_elem.comp (the row-wise element ops and the row pooling, one
variant per op), layernorm.comp, rope2d.comp, full_attention.comp, chunked_attention.comp,
conv.comp (the conformer's two convolutions). Every operand is addressed by *global* row numbers:
its push-constant base is the word offset its row 0 would have (modulo 2^32) in the band's
tensor, so an op whose output is split into row bands (arena.py) reads, for the output rows
r0 .. r1 - 1, whatever input rows it needs, as long as they lie in one band of each input
(`_bands` finds the largest such bands; where even one output row would need rows of two bands,
e.g. attention over every row or a convolution across a band's edge, the op is refused with a
G4rtError naming the buffer).

Small weights (norm weights and biases, position tables, conv kernels, the per-dim scale) are
read as f32 through derived.vector_f32 (in place when F32, else a dequantized copy); the
conformer's relative-position table is made on the host (ops.ChunkedAttention.relative_table).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ... import ops
from ...errors import G4rtError
from ...gguf.quant_types import dequantize_rows
from .arena import BufferLocation
from .dispatch import PUSH_WORDS, Dispatch, push_words, workgroups
from .shader_build import variant

#: push-constant words of the PC blocks of the media kernels (dispatch.PipelineCache reads them)
MEDIA_PUSH_WORDS = {"media_elem": 15, "layernorm": 12, "rope2d": 10, "full_attention": 15,
                    "chunked_attention": 19, "conv": 17}
PUSH_WORDS.update(MEDIA_PUSH_WORDS)

#: media_elem.comp's OP ids
OP_CLAMP, OP_ADD_VECTOR, OP_STANDARDIZE, OP_SILU, OP_GLU, OP_GATHER_ADD, OP_POOL = range(1, 8)
FULL_ATTN_MAX_HEAD_DIM = 256      # MAXD in full_attention.comp
FULL_ATTN_HEAD_DIMS = (32, 64, 128)   # its HEAD_DIM variants (shader_build.all_variants)
CHUNK_MAX_HEAD_DIM, CHUNK_MAX_WINDOW = 256, 64     # MAXD, MAXW in chunked_attention.comp
CONV_MAX_CHANNELS = 1024          # MAXCO in conv.comp
LOOP_LIMIT = 60000                # llvmpipe ends a loop nest after 65535 iterations (common.glsl)

Need = Callable[[int, int], tuple[int, int]]


# ---- row bands with global row numbers ----------------------------------------------------------
def _piece(loc: BufferLocation, lo: int, hi: int):
    """The band of loc holding rows lo .. hi - 1 (the first band when no row is read), or None."""
    if hi <= lo:
        return loc.pieces[0]
    for p in loc.pieces:
        if p.row0 <= lo and hi <= p.row1:
            return p
    return None


def _bands(rows: int, operands: list[tuple[str, BufferLocation, Need]], what: str) -> list[tuple[int, int]]:
    """Output rows [0, rows) cut into bands [r0, r1) such that each operand's rows need(r0, r1)
    (the rows those output rows read) lie in one band of that operand: the longest bands, greedily."""
    out, r0 = [], 0
    while r0 < rows:
        for name, loc, need in operands:
            if _piece(loc, *need(r0, r0 + 1)) is None:
                lo, hi = need(r0, r0 + 1)
                raise G4rtError(f"{what}: rows {lo} .. {hi - 1} of {name} ({loc.rows} x {loc.cols}) that output row "
                                f"{r0} reads are split across two Vulkan storage buffers; this op cannot be cut "
                                f"into row bands there (use a smaller input)")
        r1 = r0 + 1
        while r1 < rows and all(_piece(loc, *need(r0, r1 + 1)) is not None for _, loc, need in operands):
            r1 += 1
        out.append((r0, r1))
        r0 = r1
    return out


def _base(loc: BufferLocation, lo: int, hi: int) -> tuple[object, int]:
    """(tensor, word offset of the buffer's row 0 in it, modulo 2^32) of the band holding rows lo .. hi-1."""
    p = _piece(loc, lo, hi)
    return p.tensor, (p.off - p.row0 * loc.cols) % (1 << 32)


def _same(r0: int, r1: int) -> tuple[int, int]:
    return r0, r1


def _all_rows(n: int) -> Need:
    return lambda r0, r1: (0, n)


def _plan(ctx, op, out_name: str, ins: list[tuple[str, Need]], what: str):
    """Yield (r0, r1, [(tensor, base) per input], (out tensor, out base)) per band of the output."""
    out = ctx.loc(out_name)
    locs = [(name, ctx.loc(name), need) for name, need in ins]
    for r0, r1 in _bands(out.rows, locs + [(out_name, out, _same)], what):
        yield r0, r1, [_base(loc, *need(r0, r1)) for _, loc, need in locs], _base(out, r0, r1)


def _vector(ctx, name: str, cols: int, what: str) -> tuple[object, int]:
    """A weight as f32 words (tensor, word offset), checked to hold `cols` values per row."""
    be = ctx.backend
    w = be.weights.get(name)
    if w is None:
        raise G4rtError(f"{what}: weight {name!r} was not loaded")
    if w.spec.cols != cols:
        raise G4rtError(f"{what}: weight {name} has {w.spec.cols} columns, not {cols}")
    return be.derived.vector_f32(name)


def _derived_table(ctx, weight: str, key: str, make: Callable[[], np.ndarray]):
    """A table the host makes from weight `weight` (f32 words), uploaded once: kept with the
    derived vectors (so it goes when they are cleared, before the device), under its own key, and
    made again when the weight has been uploaded again (a new PlacedWeight)."""
    d = ctx.backend.derived
    placed = ctx.backend.weights[weight]
    t = d._vectors.get(key)
    if t is None or t[2] is not placed:
        words = np.ascontiguousarray(make(), np.float32).reshape(-1).view(np.uint32)
        t = d._vectors[key] = (d.uploader.upload_words(words), 0, placed)
    return t[0]


# ---- media_elem.comp: element ops -------------------------------------------------------------
def _elem(ctx, op, op_id: int, x_name: str, *, x_need: Need = _same, aux=None, aux_need: Need = _same,
          w=None, n_idx=0, w_rows=0, group=1, f0=0.0, f1=0.0, what="") -> list[Dispatch]:
    be = ctx.backend
    out = ctx.loc(op.out)
    x = ctx.loc(x_name)
    ins = [(x_name, x_need)] + ([(aux, aux_need)] if isinstance(aux, str) else [])
    wt, wo = w if w is not None else (be.dummy, 0)
    res = []
    for r0, r1, bound, (ot, ob) in _plan(ctx, op, op.out, ins, what or op.kind):
        (xt, xb) = bound[0]
        if isinstance(aux, str):
            at, ab = bound[1]
            a_stride = ctx.loc(aux).cols
        elif aux is not None:           # a weight (tensor, word offset)
            (at, ab), a_stride = aux, 0
        else:
            at, ab, a_stride = be.dummy, 0, 0
        pc = push_words(xb, x.cols, ab, a_stride, ob, out.cols, r0, r1, out.cols, wo, n_idx, w_rows, group,
                        float(f0), float(f1))
        res.append(Dispatch(variant("media_elem", OP=op_id), (xt, at, wt, ot),
                            workgroups(-(-(r1 - r0) * out.cols // 256)), pc))
    return res


def _check_rows(ctx, op, *names):
    out = ctx.loc(op.out)
    for n in names:
        loc = ctx.loc(n)
        if loc.cols != out.cols or loc.rows < out.rows:
            raise G4rtError(f"{op.kind}: {n} ({loc.rows} x {loc.cols}) does not match {op.out} "
                            f"({out.rows} x {out.cols})")


def lower_clamp(ctx, op: ops.Clamp):
    _check_rows(ctx, op, op.x)
    return _elem(ctx, op, OP_CLAMP, op.x, f0=float(op.lo), f1=float(op.hi))


def lower_add_vector(ctx, op: ops.AddVector):
    _check_rows(ctx, op, op.x)
    out = ctx.loc(op.out)
    return _elem(ctx, op, OP_ADD_VECTOR, op.x, w=_vector(ctx, op.weight, out.cols, "add_vector"))


def lower_standardize(ctx, op: ops.Standardize):
    _check_rows(ctx, op, op.x)
    cols = ctx.loc(op.out).cols
    return _elem(ctx, op, OP_STANDARDIZE, op.x, w=_vector(ctx, op.weight, cols, "standardize"),
                 aux=_vector(ctx, op.bias, cols, "standardize"))


def lower_silu(ctx, op: ops.Silu):
    _check_rows(ctx, op, op.x)
    return _elem(ctx, op, OP_SILU, op.x)


def lower_glu(ctx, op: ops.Glu):
    x, out = ctx.loc(op.x), ctx.loc(op.out)
    if x.cols != 2 * out.cols or x.rows < out.rows or op.x == op.out:
        raise G4rtError(f"glu of {op.x} ({x.rows} x {x.cols}) into {op.out} ({out.rows} x {out.cols})")
    return _elem(ctx, op, OP_GLU, op.x)


def lower_gather_add(ctx, op: ops.GatherAdd):
    _check_rows(ctx, op, op.x)
    out, index = ctx.loc(op.out), ctx.loc(op.index)
    spec = ctx.backend.weights[op.table].spec
    if spec.cols != out.cols or index.rows < out.rows:
        raise G4rtError(f"gather_add: table {op.table} is {spec.cols} wide and index {op.index} has {index.rows} "
                        f"rows, the output {out.rows} x {out.cols}")
    return _elem(ctx, op, OP_GATHER_ADD, op.x, aux=op.index, w=_vector(ctx, op.table, out.cols, "gather_add"),
                 n_idx=index.cols, w_rows=spec.rows)


def lower_pool_rows(ctx, op: ops.PoolRows):
    x, out = ctx.loc(op.x), ctx.loc(op.out)
    g = op.group
    if g < 1 or x.rows != out.rows * g or x.cols != out.cols:
        raise G4rtError(f"pool_rows {op.out}: {x.rows} rows of {op.x} do not make {out.rows} groups of {g}")
    return _elem(ctx, op, OP_POOL, op.x, x_need=lambda r0, r1: (r0 * g, r1 * g), group=g, f0=float(op.scale))


# ---- layernorm.comp -----------------------------------------------------------------------------
def lower_layernorm(ctx, op: ops.LayerNorm):
    be = ctx.backend
    _check_rows(ctx, op, op.x)
    x, out = ctx.loc(op.x), ctx.loc(op.out)
    wt, wo = _vector(ctx, op.weight, out.cols, "layernorm") if op.weight else (be.dummy, 0)
    bt, bo = _vector(ctx, op.bias, out.cols, "layernorm") if op.bias else (be.dummy, 0)
    flags = (1 if op.weight else 0) | (2 if op.bias else 0)
    res = []
    for r0, r1, [(xt, xb)], (ot, ob) in _plan(ctx, op, op.out, [(op.x, _same)], "layernorm"):
        pc = push_words(xb, x.cols, ob, out.cols, r0, r1, out.cols, out.cols, flags, float(op.eps), wo, bo)
        res.append(Dispatch(variant("layernorm"), (xt, wt, bt, ot), workgroups(r1 - r0), pc))
    return res


# ---- rope2d.comp --------------------------------------------------------------------------------
def lower_rope2d(ctx, op: ops.Rope2D):
    x, out, pos = ctx.loc(op.x), ctx.loc(op.out), ctx.loc(op.pos)
    _check_rows(ctx, op, op.x)
    if op.head_dim % 4 or out.cols % op.head_dim or pos.rows < out.rows or pos.cols != 2:
        raise G4rtError(f"rope2d on {op.x}: head size {op.head_dim} / positions {op.pos} "
                        f"({pos.rows} x {pos.cols}) do not fit {out.cols} columns")
    # each half of a head turns as Rope with n_rot = head_dim / 2: the same fixed-point table
    half = op.head_dim // 2
    table = ctx.backend.derived.rope_table(ops.Rope(op.out, op.x, half, half, op.base, None))
    n_heads = out.cols // op.head_dim
    res = []
    for r0, r1, [(xt, xb), (pt, pb)], (ot, ob) in _plan(ctx, op, op.out, [(op.x, _same), (op.pos, _same)], "rope2d"):
        pc = push_words(xb, x.cols, pb, pos.cols, ob, out.cols, r0, r1, n_heads, op.head_dim)
        res.append(Dispatch(variant("rope2d"), (xt, pt, table, ot),
                            workgroups(-(-(r1 - r0) * n_heads * (op.head_dim // 2) // 64)), pc))
    return res


# ---- full_attention.comp ------------------------------------------------------------------------
def lower_full_attention(ctx, op: ops.FullAttention):
    q, k, v, out = ctx.loc(op.q), ctx.loc(op.k), ctx.loc(op.v), ctx.loc(op.out)
    D, H, Hkv = op.head_dim, op.n_head, op.n_kv_head
    n = out.rows
    if (Hkv < 1 or H % Hkv or q.cols != H * D or out.cols != H * D or k.cols != Hkv * D or v.cols != Hkv * D
            or min(q.rows, k.rows, v.rows) < n):
        raise G4rtError(f"full attention {op.out}: q/k/v/out ({q.cols}, {k.cols}, {v.cols}, {out.cols} columns) "
                        f"do not fit {H} heads over {Hkv} KV heads of {D}")
    if D > FULL_ATTN_MAX_HEAD_DIM:
        raise G4rtError(f"full attention head_dim {D} > {FULL_ATTN_MAX_HEAD_DIM} is not supported")
    if n * (2 * -(-D // 32) + 1) > LOOP_LIMIT:
        raise G4rtError(f"full attention over {n} rows (head_dim {D}) is beyond what one Vulkan invocation can "
                        f"loop over (llvmpipe's 65535-iteration limit); use a smaller image")
    # the usual head sizes compiled in (loops unrolled, q and the accumulator in registers: ~2.4x faster)
    var = variant("full_attention", HEAD_DIM=D) if D in FULL_ATTN_HEAD_DIMS else variant("full_attention")
    res = []
    ins = [(op.q, _same), (op.k, _all_rows(n)), (op.v, _all_rows(n))]
    for r0, r1, [(qt, qb), (kt, kb), (vt, vb)], (ot, ob) in _plan(ctx, op, op.out, ins, "full attention"):
        pc = push_words(qb, q.cols, kb, k.cols, vb, v.cols, ob, out.cols, r0, r1, n, H, Hkv, D, float(op.scale))
        res.append(Dispatch(var, (qt, kt, vt, ot), workgroups(-(-(r1 - r0) // 8) * H), pc))
    return res


# ---- chunked_attention.comp ---------------------------------------------------------------------
def lower_chunked_attention(ctx, op: ops.ChunkedAttention):
    be = ctx.backend
    q, k, v, out = ctx.loc(op.q), ctx.loc(op.k), ctx.loc(op.v), ctx.loc(op.out)
    H, D, W = op.n_head, op.head_dim, op.window
    HD = H * D
    if D > CHUNK_MAX_HEAD_DIM or W > CHUNK_MAX_WINDOW or W < 1 or out.cols != HD:
        raise G4rtError(f"chunked attention of {H} x {D} (window {W}) into {out.cols} columns is not supported "
                        f"(head_dim at most {CHUNK_MAX_HEAD_DIM}, window at most {CHUNK_MAX_WINDOW})")
    for name, loc in ((op.q, q), (op.k, k), (op.v, v)):
        if loc.cols != HD or loc.rows < out.rows:
            raise G4rtError(f"chunked attention: {name} ({loc.rows} x {loc.cols}) does not match {op.out}")
    spec = be.weights[op.weight].spec
    if spec.rows != HD:
        raise G4rtError(f"chunked attention: relative projection {op.weight} has {spec.rows} rows, not {HD}")

    def rel_table():
        w = dequantize_rows(be.derived.source.weight_bytes(op.weight), spec.qtype, spec.cols)
        w = np.asarray(w, np.float32).reshape(spec.rows, spec.cols)
        return np.ascontiguousarray(op.relative_table(w), np.float32)

    rel = _derived_table(ctx, op.weight, f"\0chunked_rel:{op.weight}:{W}", rel_table)
    st, so = _vector(ctx, op.by, D, "chunked attention") if op.by else (be.dummy, 0)
    window = lambda r0, r1: (max(0, r0 - W + 1), r1)   # noqa: E731 - the keys rows r0 .. r1-1 read
    res = []
    ins = [(op.q, _same), (op.k, window), (op.v, window)]
    for r0, r1, [(qt, qb), (kt, kb), (vt, vb)], (ot, ob) in _plan(ctx, op, op.out, ins, "chunked attention"):
        pc = push_words(qb, q.cols, kb, k.cols, vb, v.cols, ob, out.cols, r0, r1, H, D, W, op.valid,
                        1 if op.by else 0, so, float(op.q_scale), float(op.k_scale), float(op.cap))
        res.append(Dispatch(variant("chunked_attention"), (qt, kt, vt, rel, st, ot),
                            workgroups(-(-(r1 - r0) * H // 64)), pc))
    return res


# ---- conv.comp ----------------------------------------------------------------------------------
def lower_conv2d_norm_relu(ctx, op: ops.Conv2dNormRelu):
    be = ctx.backend
    x, out = ctx.loc(op.x), ctx.loc(op.out)
    # the input's rows: a graph buffer's, or (an input of the call, padded to more rows) the call's
    inp = be.inputs.get(op.x) or be.kept.get(op.x)
    rows_in = ctx.n_tokens if inp is not None and x.pieces[0].tensor is inp[0] else x.rows
    ci, co = op.in_channels, op.out_channels
    f_in = x.cols // ci if ci > 0 else 0
    f_out = (f_in + 1) // 2
    if (ci < 1 or co < 1 or x.cols % ci or out.cols != f_out * co or out.rows != (rows_in - 1) // 2 + 1
            or rows_in > x.rows):
        raise G4rtError(f"conv2d {op.weight}: {op.x} ({rows_in} x {x.cols}) -> {op.out} ({out.rows} x {out.cols}) "
                        f"does not fit {ci} -> {co} channels")
    if co > CONV_MAX_CHANNELS or -(-co // 64) * 9 * (ci + 1) > LOOP_LIMIT:
        raise G4rtError(f"conv2d {op.weight}: {ci} -> {co} channels is beyond the Vulkan kernel (at most "
                        f"{CONV_MAX_CHANNELS} output channels, {LOOP_LIMIT} loop iterations per invocation)")
    spec = be.weights[op.weight].spec
    if spec.rows * spec.cols != co * ci * 9:
        raise G4rtError(f"conv2d kernel {op.weight} has {spec.rows * spec.cols} values, not {co * ci * 9}")
    wt, wo = be.derived.vector_f32(op.weight)
    nt, no = _vector(ctx, op.norm, co, "conv2d norm")
    ins = [(op.x, lambda r0, r1: (max(0, 2 * r0 - 1), min(rows_in, 2 * r1 + 1)))]
    if op.mask:
        m = ctx.loc(op.mask)
        if m.rows < rows_in:
            raise G4rtError(f"conv2d mask {op.mask} has {m.rows} rows, the input {rows_in}")
        ins.append((op.mask, ins[0][1]))
    res = []
    for r0, r1, bound, (ot, ob) in _plan(ctx, op, op.out, ins, f"conv2d {op.weight}"):
        xt, xb = bound[0]
        mt, mb, ms = (*bound[1], ctx.loc(op.mask).cols) if op.mask else (be.dummy, 0, 0)
        pc = push_words(xb, x.cols, mb, ms, ob, out.cols, r0, r1, rows_in, f_in, ci, co, f_out,
                        1 if op.mask else 0, wo, no, float(op.eps))
        res.append(Dispatch(variant("conv", MODE=1), (xt, mt, wt, nt, ot), workgroups((r1 - r0) * f_out), pc))
    return res


def lower_depthwise_conv1d(ctx, op: ops.DepthwiseConv1d):
    be = ctx.backend
    x, out = ctx.loc(op.x), ctx.loc(op.out)
    _check_rows(ctx, op, op.x)
    spec = be.weights[op.weight].spec
    K, C = spec.cols, out.cols
    if spec.rows != C or K < 1 or K > LOOP_LIMIT or op.x == op.out:
        raise G4rtError(f"depthwise conv {op.weight} ({spec.rows} channels x {K} taps) does not fit {op.out} "
                        f"({C} columns){' (in place)' if op.x == op.out else ''}")
    wt, wo = be.derived.vector_f32(op.weight)
    res = []
    ins = [(op.x, lambda r0, r1: (max(0, r0 - K + 1), r1))]
    for r0, r1, [(xt, xb)], (ot, ob) in _plan(ctx, op, op.out, ins, f"depthwise conv {op.weight}"):
        pc = push_words(xb, x.cols, 0, 0, ob, out.cols, r0, r1, 0, 0, K, C, 0, 0, wo, 0, 0.0)
        res.append(Dispatch(variant("conv", MODE=2), (xt, be.dummy, wt, be.dummy, ot),
                            workgroups(-(-(r1 - r0) * C // 64)), pc))
    return res


__all__ = ["lower_add_vector", "lower_chunked_attention", "lower_clamp", "lower_conv2d_norm_relu",
           "lower_depthwise_conv1d", "lower_full_attention", "lower_gather_add", "lower_glu", "lower_layernorm",
           "lower_pool_rows", "lower_rope2d", "lower_silu", "lower_standardize"]
