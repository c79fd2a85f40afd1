"""gemma4v: the Gemma 4 ViT vision encoder (E2B / E4B / 26B-A4B / 31B) - its GGUF config and its
op list, one graph per number of soft tokens.

The graph follows transformers' Gemma4VisionModel + Gemma4MultimodalEmbedder (llama.cpp's
tools/mtmd/models/gemma4v.cpp is the same graph except its FFN activation, GELU_QUICK by default;
g4rt follows HF's gelu_pytorch_tanh):

  patches (p x p px, CHW, 2x-1 on the host) -> MatMul(v.patch_embd) -> + pos_x[x] + pos_y[y]
  -> per block: h = RMS(x)*ln1; q, k, v = clamp(linear(clamp(h))); q, k: per-head RMS * norm
     weight, 2-D RoPE (first half of a head by x, second by y); v: per-head RMS without weight;
     full attention among the image's patches, scale 1.0; o = clamp(linear(clamp(.)));
     x += RMS(o)*attn_post_norm; h = RMS(x)*ln2; x += RMS(down(gelu_tanh(gate(h)) * up(h)))*ffn_post_norm
  -> 3x3 average pool (row-major over the soft-token grid) x sqrt(D) -> (x - std_bias) * std_scale
  -> RMS without weight -> mm.input_projection.

Row order: the encoder (MediaEncoder) feeds the 9 patches of each soft token as consecutive rows
(soft token-major), so the pooler is a mean of 9 consecutive rows; every other op is row-wise or
sees all rows, and the positions (table rows, RoPE) travel with each patch, so the order changes
nothing but the attention's summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np

from ..errors import MetadataError
from ..gguf.quant_types import QT, check_supported, dequantize_rows
from ..gguf.reader import GGUFFile
from ..ops import (Add, Buffer, FullAttention, GatherAdd, GeluMul, Graph, MatMul, PoolRows, RmsNorm,
                   Rope2D, Standardize, WeightSpec, input_rows)
from .builder import GraphBuilder
from .errors import MmprojError

#: llama.cpp's defaults for gemma4v where the GGUF says nothing (clip.cpp): pooling 3 x 3 (unless
#: clip.vision.projector.scale_factor), RoPE theta 100 (HF Gemma4VisionConfig's default_theta).
GEMMA4V_MERGE = 3
GEMMA4V_ROPE_THETA = 100.0
#: the clamp scalars of a clipped linear (Gemma4ClippableLinear), absent = unbounded
CLAMP_KEYS = ("input_min", "input_max", "output_min", "output_max")
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate", "ffn_up", "ffn_down")
#: weight types the patch embedding may have: its 4-D [p, p, 3, D] tensor is read as [D, 3p^2] rows
PATCH_TYPES = (QT.F32, QT.F16, QT.BF16)


@dataclass(frozen=True)
class ViTConfig:
    hf_patch: int           # pixels per side of one ViT patch (clip.vision.patch_size)
    merge: int              # patches per side pooled into one soft token (3)
    width: int              # D
    ffn: int
    n_layer: int
    n_head: int
    head_dim: int
    rope_base: float
    #: per linear (e.g. "v.blk.0.attn_q"): (input_min, input_max, output_min, output_max), +-inf if absent
    clamps: tuple[tuple[str, tuple[float, float, float, float]], ...]
    standardize: bool

    def bounds(self, linear: str) -> tuple[float, float, float, float]:
        return dict(self.clamps).get(linear, (-math.inf, math.inf, -math.inf, math.inf))


def _scalar(f: GGUFFile, name: str) -> float:
    t = f.tensor(name)
    if tuple(int(d) for d in t.shape) != (1,) or t.qtype not in (QT.F32, QT.F16):
        raise MmprojError(f"{f.path.name}: clamp scalar {name} has shape {list(t.shape)} and type {t.qtype.name}; "
                          f"a clipped linear's bound is one F32 value")
    v = float(dequantize_rows(t.raw, t.qtype, 1).reshape(-1)[0])
    if math.isnan(v):
        raise MmprojError(f"{f.path.name}: clamp scalar {name} is NaN")
    return v


def read_gemma4v(f: GGUFFile, _int, _eps, _shape) -> tuple[ViTConfig, dict]:
    """A gemma4v projector's ViTConfig and its VisionConfig fields, every tensor's shape checked
    against the metadata; reader.py passes its metadata readers (_int, _eps, _shape) in, so this
    module never imports it."""
    p = _int(f, "clip.vision.patch_size")
    if p > 64:
        raise MetadataError(f"{f.path.name}: clip.vision.patch_size {p} is implausible for gemma4v")
    merge = f.get("clip.vision.projector.scale_factor", GEMMA4V_MERGE)
    if isinstance(merge, bool) or not isinstance(merge, int) or not 1 <= merge <= 8:
        raise MetadataError(f"{f.path.name}: clip.vision.projector.scale_factor {merge!r} is not a pooling size")
    D = _int(f, "clip.vision.embedding_length")
    ffn = _int(f, "clip.vision.feed_forward_length")
    n_layer = _int(f, "clip.vision.block_count")
    n_head = _int(f, "clip.vision.attention.head_count")
    n_out = _int(f, "clip.vision.projection_dim")
    if n_layer > 256 or n_head > 1024 or D > 65536 or ffn > 1 << 20:
        raise MetadataError(f"{f.path.name}: gemma4v sizes (block_count {n_layer}, head_count {n_head}, "
                            f"embedding_length {D}, feed_forward_length {ffn}) are implausible")
    if D % n_head or (D // n_head) % 4:
        raise MmprojError(f"{f.path.name}: embedding_length {D} / head_count {n_head} must give a head size "
                          f"divisible by 4 (2-D RoPE turns two halves of pairs)")
    hd = D // n_head
    kv_heads = f.get("clip.vision.attention.head_count_kv", n_head)
    if kv_heads != n_head:
        raise MmprojError(f"{f.path.name}: clip.vision.attention.head_count_kv {kv_heads} != head_count {n_head}; "
                          f"gemma4v has as many K/V heads as query heads")
    base = f.get("clip.vision.rope.freq_base", GEMMA4V_ROPE_THETA)
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not 1.0 < float(base) < 1e9:
        raise MetadataError(f"{f.path.name}: clip.vision.rope.freq_base {base!r} is not a RoPE base")
    why = (f"clip.vision.patch_size {p}, embedding_length {D}, feed_forward_length {ffn}, head_count {n_head} "
           f"and projection_dim {n_out}")
    pe = f.tensor("v.patch_embd.weight")
    if tuple(int(d) for d in pe.shape) != (p, p, 3, D):
        raise MmprojError(f"{f.path.name}: tensor v.patch_embd.weight has shape {list(pe.shape)}; {why} make it "
                          f"{[p, p, 3, D]}")
    if pe.qtype not in PATCH_TYPES:
        raise MmprojError(f"{f.path.name}: tensor v.patch_embd.weight is {pe.qtype.name}; g4rt reads the patch "
                          f"embedding as F32, F16 or BF16 (the converter never quantizes it)")
    pos = f.tensor("v.position_embd.weight")
    if len(pos.shape) != 3 or pos.shape[0] != D or pos.shape[2] != 2 or pos.shape[1] < 1:
        raise MmprojError(f"{f.path.name}: tensor v.position_embd.weight has shape {list(pos.shape)}; "
                          f"embedding_length {D} makes it [{D}, P, 2] (x and y tables)")
    check_supported(pos.qtype, f"{f.path.name}: tensor 'v.position_embd.weight'")
    clamps = []
    for i in range(n_layer):
        b = f"v.blk.{i}"
        for norm in ("ln1", "ln2", "attn_post_norm", "ffn_post_norm"):
            _shape(f, f"{b}.{norm}.weight", (D,), why)
        for norm in ("attn_q_norm", "attn_k_norm"):
            _shape(f, f"{b}.{norm}.weight", (hd,), why + f" (head size {hd})")
        for lin in ("attn_q", "attn_k", "attn_v"):
            _shape(f, f"{b}.{lin}.weight", (D, D), why)
        _shape(f, f"{b}.attn_out.weight", (D, D), why)
        _shape(f, f"{b}.ffn_gate.weight", (D, ffn), why)
        _shape(f, f"{b}.ffn_up.weight", (D, ffn), why)
        _shape(f, f"{b}.ffn_down.weight", (ffn, D), why)
        for lin in LINEARS:
            vals = [(_scalar(f, f"{b}.{lin}.{k}") if f.has_tensor(f"{b}.{lin}.{k}") else
                     (-math.inf if k.endswith("min") else math.inf)) for k in CLAMP_KEYS]
            if vals[0] > vals[1] or vals[2] > vals[3]:
                raise MmprojError(f"{f.path.name}: {b}.{lin} clamp bounds {vals} have a minimum above the maximum")
            if any(math.isfinite(v) for v in vals):
                clamps.append((f"{b}.{lin}", tuple(vals)))
    if f.has_tensor(f"v.blk.{n_layer}.ln1.weight"):
        raise MmprojError(f"{f.path.name}: the file holds more ViT blocks than clip.vision.block_count {n_layer}")
    std = [f.has_tensor("v.std_bias"), f.has_tensor("v.std_scale")]
    if std[0] != std[1]:
        raise MmprojError(f"{f.path.name}: v.std_bias and v.std_scale come together (standardization); "
                          f"this file has only {'v.std_bias' if std[0] else 'v.std_scale'}")
    if std[0]:
        _shape(f, "v.std_bias", (D,), why)
        _shape(f, "v.std_scale", (D,), why)
    _shape(f, "mm.input_projection.weight", (D, n_out), why)
    vit = ViTConfig(p, int(merge), D, ffn, n_layer, n_head, hd, float(base), tuple(clamps), std[0])
    return vit, dict(patch=p * int(merge), width=D, pos_size=int(pos.shape[1]), n_out=n_out,
                     rms_eps=_eps(f, "clip.vision.attention.layer_norm_epsilon"))


# ---- the graph -------------------------------------------------------------------------------
def vit_weight_specs(f: GGUFFile, cfg) -> dict[str, WeightSpec]:
    """Every tensor as a weight, the 4-D patch embedding as its [D, 3 p^2] rows (CHW columns)."""
    specs = {n: WeightSpec(n, t.qtype, t.n_rows, t.n_cols) for n, t in f.tensors.items()}
    v = cfg.vit
    pe = specs["v.patch_embd.weight"]
    specs[pe.name] = WeightSpec(pe.name, pe.qtype, v.width, 3 * v.hf_patch * v.hf_patch)
    return specs


def input_names(n_patches: int) -> dict[str, str]:
    cap = input_rows(n_patches)
    return {"pixels": f"mm.vit.pixels.{cap}", "table": f"mm.vit.table.{cap}", "pos": f"mm.vit.pos.{cap}"}


def image_graph(cfg, specs: dict[str, WeightSpec], n: int) -> Graph:
    """The gemma4v encoder for n soft tokens (n * merge^2 patch rows). Inputs: pixels [rows, 3p^2]
    (2x-1, CHW per patch, 9 patches per soft token in a row), table [rows, 2] (x, P + y: rows of
    v.position_embd.weight) and pos [rows, 2] (x, y: the RoPE positions)."""
    v = cfg.vit
    k2 = v.merge * v.merge
    rows = n * k2
    D, H, hd, eps = v.width, v.n_head, v.head_dim, cfg.rms_eps
    b, names = GraphBuilder(specs, rows), input_names(rows)

    def linear(name: str, out: str, x: str, cols: int) -> str:      # the GGUF tensor `name`, its bounds
        return b.clipped_linear(name, b.buf(out, cols), x, f"{name}.weight", v.bounds(name))

    x = b.emit("patch_embd", MatMul(b.buf("x", D), names["pixels"], b.w("v.patch_embd.weight")))
    b.emit("position_embd", GatherAdd(x, x, b.w("v.position_embd.weight"), names["table"]))
    h = b.buf("h", D)
    for i in range(v.n_layer):
        L = f"v.blk.{i}"
        b.emit(f"{L}.ln1", RmsNorm(h, x, b.w(f"{L}.ln1.weight"), eps, D))
        q = linear(f"{L}.attn_q", "q", h, D)
        b.emit(f"{L}.attn_q_norm", RmsNorm(q, q, b.w(f"{L}.attn_q_norm.weight"), eps, hd))
        b.emit(f"{L}.rope_q", Rope2D(q, q, names["pos"], hd, v.rope_base))
        k = linear(f"{L}.attn_k", "k", h, D)
        b.emit(f"{L}.attn_k_norm", RmsNorm(k, k, b.w(f"{L}.attn_k_norm.weight"), eps, hd))
        b.emit(f"{L}.rope_k", Rope2D(k, k, names["pos"], hd, v.rope_base))
        vv = linear(f"{L}.attn_v", "v", h, D)
        b.emit(f"{L}.attn_v_norm", RmsNorm(vv, vv, None, eps, hd))
        a = b.emit(f"{L}.attention", FullAttention(b.buf("attn", D), q, k, vv, H, H, hd, 1.0))
        o = linear(f"{L}.attn_out", "o", a, D)
        b.emit(f"{L}.attn_post_norm", RmsNorm(o, o, b.w(f"{L}.attn_post_norm.weight"), eps, D))
        b.emit(f"{L}.attn_residual", Add(x, x, o))
        b.emit(f"{L}.ln2", RmsNorm(h, x, b.w(f"{L}.ln2.weight"), eps, D))
        g = linear(f"{L}.ffn_gate", "gate", h, v.ffn)
        u = linear(f"{L}.ffn_up", "up", h, v.ffn)
        b.emit(f"{L}.ffn_act", GeluMul(g, g, u))             # HF: gelu_pytorch_tanh(gate) * up
        d = linear(f"{L}.ffn_down", "down", g, D)
        b.emit(f"{L}.ffn_post_norm", RmsNorm(d, d, b.w(f"{L}.ffn_post_norm.weight"), eps, D))
        b.emit(f"{L}.ffn_residual", Add(x, x, d))
    pooled = b.emit("pooler", PoolRows(b.buf("pooled", D, n), x, k2, math.sqrt(D)))
    if v.standardize:
        b.emit("standardize", Standardize(pooled, pooled, b.w("v.std_bias"), b.w("v.std_scale")))
    b.emit("pre_projection_norm", RmsNorm(pooled, pooled, None, eps, D))
    out = b.emit("input_projection", MatMul(b.buf("soft", cfg.n_out, n), pooled, b.w("mm.input_projection.weight")))
    cap = input_rows(rows)
    K = 3 * v.hf_patch * v.hf_patch
    return b.graph(out, {names["pixels"]: Buffer(names["pixels"], cap, K),
                                          names["table"]: Buffer(names["table"], cap, 2),
                                          names["pos"]: Buffer(names["pos"], cap, 2)})


def patch_inputs(cfg, pixel_values: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs from an image as g4rt.media prepares it: pixel_values [n, (p*merge)^2 * 3]
    (one soft token's merge x merge patches, HWC) and its soft-token positions [n, 2] (x, y) ->
    the patch rows, soft token-major (patch (dy, dx) of token t at row t*merge^2 + dy*merge + dx),
    each patch's values CHW and 2x-1 (in float32, as transformers' patch embedder), its
    position-table rows and its RoPE positions (x = merge*X + dx, y = merge*Y + dy)."""
    v = cfg.vit
    p, m = v.hf_patch, v.merge
    n = pixel_values.shape[0]
    big = np.asarray(pixel_values, np.float32).reshape(n, m, p, m, p, 3)        # (t, dy, py, dx, px, c)
    patches = big.transpose(0, 1, 3, 5, 2, 4).reshape(n * m * m, 3 * p * p)     # (t, dy, dx) x (c, py, px)
    patches = np.float32(2) * (patches - np.float32(0.5))
    pos = np.asarray(positions, np.int64)
    dy, dx = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    px = (pos[:, 0, None] * m + dx.reshape(1, -1)).reshape(-1)
    py = (pos[:, 1, None] * m + dy.reshape(1, -1)).reshape(-1)
    names = input_names(n * m * m)
    return {names["pixels"]: np.ascontiguousarray(patches),
            names["table"]: np.stack([px, cfg.pos_size + py], axis=1).astype(np.float32),
            names["pos"]: np.stack([px, py], axis=1).astype(np.float32)}


def max_patch_position(cfg, positions: np.ndarray) -> int:
    """The largest patch coordinate an image of these soft-token positions uses."""
    return int(np.asarray(positions).max()) * cfg.vit.merge + cfg.vit.merge - 1


__all__ = ["GEMMA4V_MERGE", "ViTConfig", "image_graph", "patch_inputs", "read_gemma4v", "vit_weight_specs"]
