"""The 12B's encoder-free embedders as op lists (ops.py), one graph per number of soft tokens.

gemma4uv (llama.cpp tools/mtmd/models/gemma4uv.cpp; HF Gemma4UnifiedVisionEmbedder): one raw
patch per soft token -> LayerNorm(patch_norm.1) -> patch_embd + bias -> LayerNorm(patch_norm.2)
-> + pos_x[x] + pos_y[y] -> LayerNorm(patch_norm.3) -> RMSNorm without weight -> input_projection.
gemma4ua (gemma4ua.cpp): one 640-sample frame per soft token -> RMSNorm without weight ->
mm.a.input_projection.

Inputs (Graph.inputs, written per call): the patches in the GGUF's column order (CHW within a
patch, see encoder.py) and the position table's row of each axis; the audio frames.
"""

from __future__ import annotations

from ..gguf.reader import GGUFFile
from ..ops import AddVector, Buffer, GatherAdd, Graph, LayerNorm, MatMul, RmsNorm, WeightSpec, input_rows
from .builder import GraphBuilder
from .reader import AudioConfig, VisionConfig


def projector_weight_specs(f: GGUFFile) -> dict[str, WeightSpec]:
    """Every tensor of the file as a weight ([rows, cols] = the GGUF's [prod(ne[1:]), ne[0]])."""
    return {n: WeightSpec(n, t.qtype, t.n_rows, t.n_cols) for n, t in f.tensors.items()}


def input_names(kind: str, n: int) -> dict[str, str]:
    """The per-call input names of a graph of n soft tokens: one buffer per size class
    (ops.input_rows rows; the graph reads the first n), so images of many sizes share a few."""
    cap = input_rows(n)
    if kind == "image":
        return {"pixels": f"mm.pixels.{cap}", "pos": f"mm.pos.{cap}"}
    return {"frames": f"mm.frames.{cap}"}


def image_graph(cfg: VisionConfig, specs: dict[str, WeightSpec], n: int) -> Graph:
    """gemma4uv for n soft tokens: inputs pixels [n, patch*patch*3] (CHW per patch) and pos
    [n, 2] (x, pos_size + y: rows of v.position_embd.weight, whose second table is y)."""
    b, names = GraphBuilder(specs, n), input_names("image", n)
    K, D, eps = cfg.patch_values, cfg.width, cfg.ln_eps
    h = b.emit("patch_norm.1", LayerNorm(b.buf("patch", K), names["pixels"], b.w("v.patch_norm.1.weight"),
                                         b.w("v.patch_norm.1.bias"), eps))
    e = b.emit("patch_embd", MatMul(b.buf("embd", D), h, b.w("v.patch_embd.weight")))
    b.emit("patch_embd.bias", AddVector(e, e, b.w("v.patch_embd.bias")))
    b.emit("patch_norm.2", LayerNorm(e, e, b.w("v.patch_norm.2.weight"), b.w("v.patch_norm.2.bias"), eps))
    b.emit("position_embd", GatherAdd(e, e, b.w("v.position_embd.weight"), names["pos"]))
    b.emit("patch_norm.3", LayerNorm(e, e, b.w("v.patch_norm.3.weight"), b.w("v.patch_norm.3.bias"), eps))
    b.emit("pre_projection_norm", RmsNorm(e, e, None, cfg.rms_eps, D))
    out = b.emit("input_projection", MatMul(b.buf("soft", cfg.n_out), e, b.w("mm.input_projection.weight")))
    cap = input_rows(n)
    return b.graph(out, {names["pixels"]: Buffer(names["pixels"], cap, K), names["pos"]: Buffer(names["pos"], cap, 2)})


def audio_graph(cfg: AudioConfig, specs: dict[str, WeightSpec], n: int) -> Graph:
    """gemma4ua for n soft tokens: input frames [n, frame]."""
    b, names = GraphBuilder(specs, n), input_names("audio", n)
    x = b.emit("pre_projection_norm", RmsNorm(b.buf("frame", cfg.frame), names["frames"], None, cfg.rms_eps,
                                              cfg.frame))
    out = b.emit("input_projection", MatMul(b.buf("soft", cfg.n_out), x, b.w("mm.a.input_projection.weight")))
    return b.graph(out, {names["frames"]: Buffer(names["frames"], input_rows(n), cfg.frame)})
