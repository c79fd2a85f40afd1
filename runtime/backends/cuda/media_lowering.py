"""The CUDA lowerings of the media encoders' ops (kernels: shaders/cuda/media.cu for the gemma4uv
embedder and the gemma4v ViT, shaders/cuda/conformer.cu for the gemma4a conformer). lowering.py's
LOWERINGS table picks these functions up by name; each checks the op's shapes and raises a
G4rtError saying what does not fit (lowering.py prefixes the op's label).

Weights these ops read (norm weights and biases, position tables, convolution kernels, the
relative-position projection) are bound as their f32 copies (("V", name): CudaBackend.vector,
any GGUF type dequantized once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import ops
from ...errors import G4rtError
from . import kernels
from .launch import NULL, Launch, copy_launch

if TYPE_CHECKING:
    from .lowering import GraphLowering


def _ew(n: int) -> tuple[tuple[int, int, int], int]:
    return (kernels.ew_grid(n), 1, 1), kernels.EW_THREADS


def _row_vector(lw: "GraphLowering", name: str, n: int, what: str) -> tuple:
    """("V", name) of a weight of exactly n values (one row of the op's width)."""
    spec = lw.backend.specs.get(name)
    if spec is None:
        raise G4rtError(f"weight {name!r} is not loaded on the CUDA backend")
    if spec.rows * spec.cols != n:
        raise G4rtError(f"{what} {name!r} has {spec.rows * spec.cols} values, the rows {n}")
    return lw.vector(name, n)


def _dst(lw: "GraphLowering", op: ops.Op, shape: tuple[int, int], unsafe: tuple) -> tuple[tuple, list]:
    """Where a kernel writes when its output must not be one of `unsafe` (buffers that other
    threads still read): a scratch area plus the launch copying it to the output, or the output."""
    out = lw.out(op, shape)
    if op.out in unsafe:
        tmp = lw.scratch(shape[0] * shape[1] * 4)
        return tmp, [copy_launch(tmp, out, *shape)]
    return out, []


# ---- gemma4uv embedder: LayerNorm, bias, position lookup --------------------------------------
def lower_layernorm(lw: "GraphLowering", op: ops.LayerNorm) -> list[Launch]:
    rows, cols = lw.shape(op.x)
    x = lw.ref(op.x)
    out = lw.out(op, (rows, cols))
    w = _row_vector(lw, op.weight, cols, "LayerNorm weight") if op.weight else NULL
    b = _row_vector(lw, op.bias, cols, "LayerNorm bias") if op.bias else NULL
    return [Launch("layernorm", (rows, 1, 1), kernels.rmsnorm_block(cols), [x, out, w, b, cols, float(op.eps)])]


def lower_add_vector(lw: "GraphLowering", op: ops.AddVector) -> list[Launch]:
    rows, cols = lw.shape(op.x)
    x = lw.ref(op.x)
    out = lw.out(op, (rows, cols))
    w = _row_vector(lw, op.weight, cols, "bias")
    return [Launch("add_vector", *_ew(rows * cols), [x, w, out, rows, cols])]


def lower_gather_add(lw: "GraphLowering", op: ops.GatherAdd) -> list[Launch]:
    rows, cols = lw.shape(op.x)
    spec = lw.backend.specs.get(op.table)
    if spec is None:
        raise G4rtError(f"weight {op.table!r} is not loaded on the CUDA backend")
    total = spec.rows * spec.cols
    if total % cols:
        raise G4rtError(f"table {op.table!r} ({spec.rows} x {spec.cols}) is not rows of {cols} values")
    i_rows, J = lw.shape(op.index)
    if i_rows < rows or J < 1:
        raise G4rtError(f"index {op.index!r} is [{i_rows}, {J}] for {rows} rows")
    x, index = lw.ref(op.x), lw.ref(op.index)
    out = lw.out(op, (rows, cols))
    table = lw.vector(op.table, total)
    return [Launch("gather_add", *_ew(rows * cols), [x, table, index, out, rows, cols, J, total // cols])]


# ---- gemma4v ViT ------------------------------------------------------------------------------
def lower_clamp(lw: "GraphLowering", op: ops.Clamp) -> list[Launch]:
    rows, cols = lw.shape(op.x)
    x = lw.ref(op.x)
    out = lw.out(op, (rows, cols))
    return [Launch("clamp", *_ew(rows * cols), [x, out, rows * cols, float(op.lo), float(op.hi)])]


def lower_rope2d(lw: "GraphLowering", op: ops.Rope2D) -> list[Launch]:
    rows, cols = lw.shape(op.x)
    if op.head_dim <= 0 or op.head_dim % 4 or cols % op.head_dim:
        raise G4rtError(f"head_dim {op.head_dim} must be a multiple of 4 dividing {cols} columns")
    p_rows, p_cols = lw.shape(op.pos)
    if p_rows < rows or p_cols != 2:
        raise G4rtError(f"positions {op.pos!r} are [{p_rows}, {p_cols}], need [{rows}, 2]")
    x, pos = lw.ref(op.x), lw.ref(op.pos)
    out = lw.out(op, (rows, cols))          # in place is fine: each thread turns its own pair
    return [Launch("rope2d", *_ew(rows * cols // 2), [x, pos, out, rows, cols, op.head_dim, float(op.base)])]


def lower_full_attention(lw: "GraphLowering", op: ops.FullAttention) -> list[Launch]:
    H, Hkv, D = op.n_head, op.n_kv_head, op.head_dim
    if Hkv <= 0 or H % Hkv:
        raise G4rtError(f"{H} heads are not a multiple of {Hkv} KV heads")
    if not 0 < D <= kernels.FA_DMAX:
        raise G4rtError(f"head dim {D} is larger than the CUDA full attention's {kernels.FA_DMAX}")
    n, qc = lw.shape(op.q)
    if qc != H * D:
        raise G4rtError(f"q has {qc} columns, expected {H} x {D}")
    for name in (op.k, op.v):
        if lw.shape(name) != (n, Hkv * D):
            raise G4rtError(f"{name!r} is {lw.shape(name)}, expected ({n}, {Hkv * D})")
    if H > 65535:
        raise G4rtError(f"{H} heads is too many for one launch")
    q, k, v = lw.ref(op.q), lw.ref(op.k), lw.ref(op.v)
    # a block reads only its own q rows before writing them; every block reads all of k and v
    dst, copies = _dst(lw, op, (n, H * D), (op.k, op.v))
    return [Launch("full_attention", (-(-n // kernels.FA_ROWS), H, 1), kernels.FA_THREADS,
                   [q, k, v, dst, n, H, Hkv, D, float(op.scale)])] + copies


def lower_pool_rows(lw: "GraphLowering", op: ops.PoolRows) -> list[Launch]:
    x_rows, cols = lw.shape(op.x)
    rows, o_cols = lw.shape(op.out)
    if op.group <= 0 or x_rows != rows * op.group or o_cols != cols:
        raise G4rtError(f"{op.x!r} [{x_rows}, {cols}] does not pool in groups of {op.group} rows into "
                        f"[{rows}, {o_cols}]")
    x = lw.ref(op.x)
    dst, copies = _dst(lw, op, (rows, cols), (op.x,))
    return [Launch("pool_rows", *_ew(rows * cols), [x, dst, rows, cols, op.group, float(op.scale)])] + \
        copies


def lower_standardize(lw: "GraphLowering", op: ops.Standardize) -> list[Launch]:
    rows, cols = lw.shape(op.x)
    x = lw.ref(op.x)
    out = lw.out(op, (rows, cols))
    bias = _row_vector(lw, op.bias, cols, "standardize bias")
    w = _row_vector(lw, op.weight, cols, "standardize scale")
    return [Launch("standardize", *_ew(rows * cols), [x, bias, w, out, rows, cols])]


# ---- gemma4a conformer ------------------------------------------------------------------------
def lower_silu(lw: "GraphLowering", op: ops.Silu) -> list[Launch]:
    rows, cols = lw.shape(op.x)
    x = lw.ref(op.x)
    out = lw.out(op, (rows, cols))
    return [Launch("silu", *_ew(rows * cols), [x, out, rows * cols])]


def lower_glu(lw: "GraphLowering", op: ops.Glu) -> list[Launch]:
    rows, xc = lw.shape(op.x)
    o_rows, cols = lw.shape(op.out)
    if xc != 2 * cols or o_rows != rows:
        raise G4rtError(f"glu of {op.x!r} [{rows}, {xc}] into [{o_rows}, {cols}]: needs twice the columns")
    x = lw.ref(op.x)
    dst, copies = _dst(lw, op, (rows, cols), (op.x,))
    return [Launch("glu", *_ew(rows * cols), [x, dst, rows, cols])] + copies


def lower_depthwise_conv1d(lw: "GraphLowering", op: ops.DepthwiseConv1d) -> list[Launch]:
    rows, cols = lw.shape(op.x)
    spec = lw.backend.specs.get(op.weight)
    if spec is None:
        raise G4rtError(f"weight {op.weight!r} is not loaded on the CUDA backend")
    if spec.rows != cols:
        raise G4rtError(f"depthwise kernel {op.weight!r} has {spec.rows} channels, the rows {cols}")
    K = spec.cols
    x = lw.ref(op.x)
    w = lw.vector(op.weight, cols * K)
    dst, copies = _dst(lw, op, (rows, cols), (op.x,))      # later rows read earlier ones
    return [Launch("depthwise_conv1d", *_ew(rows * cols), [x, w, dst, rows, cols, K])] + copies


def lower_conv2d_norm_relu(lw: "GraphLowering", op: ops.Conv2dNormRelu) -> list[Launch]:
    g = lw.graph
    ci, co = op.in_channels, op.out_channels
    x_rows, xc = lw.shape(op.x)
    rows_in = x_rows if op.x in g.buffers else lw.n      # an input: the call's rows (as the CPU)
    if rows_in > x_rows:
        raise G4rtError(f"input {op.x!r} has {x_rows} rows for {rows_in} frames")
    if ci <= 0 or co <= 0 or xc % ci:
        raise G4rtError(f"{op.x!r} has {xc} columns, not a multiple of {ci} channels")
    if ci > kernels.CV_MAX_CI or co > kernels.CV_MAX_CO:
        raise G4rtError(f"{ci} -> {co} channels: the CUDA conv2d takes at most {kernels.CV_MAX_CI} -> "
                        f"{kernels.CV_MAX_CO}")
    F = xc // ci
    Fo, To = (F + 1) // 2, (rows_in - 1) // 2 + 1
    if lw.shape(op.out) != (To, Fo * co):
        raise G4rtError(f"output is {lw.shape(op.out)}, a stride-2 conv of [{rows_in}, {F} x {ci}] makes "
                        f"({To}, {Fo * co})")
    if To > 65535:
        raise G4rtError(f"{To} output rows is too many for one launch")
    mask, mask_cols = NULL, 1
    if op.mask:
        m_rows, mask_cols = lw.shape(op.mask)
        if m_rows < rows_in:
            raise G4rtError(f"mask {op.mask!r} has {m_rows} rows, the input {rows_in}")
        mask = lw.ref(op.mask)
    x = lw.ref(op.x)
    w = lw.vector(op.weight, co * ci * 9)
    spec = lw.backend.specs[op.weight]
    if spec.rows * spec.cols != co * ci * 9:
        raise G4rtError(f"conv2d kernel {op.weight!r} has {spec.rows * spec.cols} values, not {co * ci * 9}")
    norm = _row_vector(lw, op.norm, co, "conv2d norm weight")
    dst, copies = _dst(lw, op, (To, Fo * co), (op.x,))
    block = max(32, min(256, -(-co // 32) * 32))
    return [Launch("conv2d_norm_relu", (Fo, To, 1), block,
                   [x, mask, w, norm, dst, rows_in, F, ci, co, mask_cols, float(op.eps)])] + copies


def lower_chunked_attention(lw: "GraphLowering", op: ops.ChunkedAttention) -> list[Launch]:
    H, D, W = op.n_head, op.head_dim, op.window
    HD = H * D
    if not 0 < D <= kernels.CA_DMAX or not 0 < W <= kernels.CA_MAXW:
        raise G4rtError(f"head dim {D} / window {W}: the CUDA chunked attention takes head dims up to "
                        f"{kernels.CA_DMAX} and windows up to {kernels.CA_MAXW}")
    rows, qc = lw.shape(op.q)
    if qc != HD:
        raise G4rtError(f"q has {qc} columns, expected {H} x {D}")
    for name in (op.k, op.v):
        if lw.shape(name) != (rows, HD):
            raise G4rtError(f"{name!r} is {lw.shape(name)}, expected ({rows}, {HD})")
    spec = lw.backend.specs.get(op.weight)
    if spec is None:
        raise G4rtError(f"weight {op.weight!r} is not loaded on the CUDA backend")
    width = spec.cols
    if spec.rows != HD or width < 2 or width % 2:
        raise G4rtError(f"relative-key projection {op.weight!r} is [{spec.rows}, {width}], expected "
                        f"[{HD}, an even width]")
    q, k, v = lw.ref(op.q), lw.ref(op.k), lw.ref(op.v)
    w = lw.vector(op.weight, HD * width)
    by = _row_vector(lw, op.by, D, "per-dim scale") if op.by else NULL
    rel = lw.scratch((W + 1) * HD * 4)
    half = width // 2
    c = float(np.float32(-np.log(10000.0) / max(half - 1, 1)))
    # a warp reads only its own q row before writing it; k and v rows are read by later rows
    dst, copies = _dst(lw, op, (rows, HD), (op.k, op.v))
    warps = 8
    return [Launch("chunked_rel", (-(-HD // warps), W + 1, 1), 32 * warps, [w, rel, HD, width, W, c]),
            Launch("chunked_attention", (max(1, -(-(rows * H) // kernels.CA_WARPS)), 1, 1), 32 * kernels.CA_WARPS,
                   [q, k, v, rel, by, dst, rows, H, D, float(op.q_scale), float(op.k_scale), float(op.cap), W,
                    int(op.valid)])] + copies

