"""Gemma 3 / Gemma 4 forward pass as an op list (see ops.py). No backend knowledge here.

The graph follows llama.cpp's gemma4-iswa builder (and the transformers reference): scaled
embeddings, optional per-layer embeddings (PLE), per layer: RMSNorm -> Q/K/V with per-head
RMSNorm, V RMS-normalised without weight, RoPE (proportional on global layers via rope_freqs),
attention (scale 1.0 on Gemma 4) over a sliding-window or global KV cache (shared by the tail
layers on edge models), post-attention norm, GeLU-tanh gated FFN, post-FFN norm, PLE step, layer
output scale; final norm, tied or separate output projection, optional logit softcap.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import MissingTensorError, TensorShapeError
from ..gguf.reader import GGUFFile
from ..ops import (Add, Attention, Buffer, EmbedLookup, Gelu, GeluMul, Graph, KvCache, KvStore, MatMul, MoeMatMul,
                   MoeRoute, MoeSum, Mul, Op, RmsNorm, Rope, Scale, Slice, Softcap, TakeRows, WeightSpec, input_rows)
from ..gguf.quant_types import QT, check_supported, dequantize_rows
from .config import ModelConfig


def derived_weights(cfg: ModelConfig, f: GGUFFile) -> dict[str, np.ndarray]:
    """Small f32 weights the graph needs that the file does not hold (as [1, n] arrays)."""
    out = {}
    if cfg.rope_linear_factor != 1.0:
        glob = [L for L in cfg.layers if not L.sliding]
        if glob:
            n = glob[0].rope_dims // 2
            base = (dequantize_rows(f.tensor("rope_freqs.weight").raw, f.tensor("rope_freqs.weight").qtype, n)
                    if f.has_tensor("rope_freqs.weight") else np.ones((1, n), np.float32))
            out[cfg.rope_freqs_name] = (base * np.float32(cfg.rope_linear_factor)).astype(np.float32)
    for L in cfg.layers:
        if L.moe:   # the router's input norm weight: ffn_gate_inp.scale / sqrt(hidden)
            name = f"blk.{L.index}.ffn_gate_inp.scale"
            scale = (dequantize_rows(f.tensor(name).raw, f.tensor(name).qtype, cfg.n_embd) if f.has_tensor(name)
                     else np.ones((1, cfg.n_embd), np.float32))
            out[router_norm_name(L.index)] = (scale.astype(np.float64) / np.sqrt(cfg.n_embd)).astype(np.float32)
    return out


def router_norm_name(layer: int) -> str:
    return f"blk.{layer}.ffn_gate_inp.norm_weight"


def weight_specs(f: GGUFFile) -> dict[str, WeightSpec]:
    specs = {}
    for name, t in f.tensors.items():
        specs[name] = WeightSpec(name, t.qtype, t.n_rows, t.n_cols, int(t.shape[2]) if len(t.shape) == 3 else 0)
    return specs


def model_weight_specs(cfg: ModelConfig, f: GGUFFile) -> tuple[dict[str, WeightSpec], dict[str, np.ndarray]]:
    """Every weight a model's graph names: the file's tensors and the derived ones (F32 [1, n])."""
    specs = weight_specs(f)
    derived = derived_weights(cfg, f)
    for name, arr in derived.items():
        specs[name] = WeightSpec(name, QT.F32, arr.shape[0], arr.shape[1])
    return specs, derived


def cache_names(layer: int) -> tuple[str, str]:
    """The K and V cache names of a layer."""
    return f"cache_k.{layer}", f"cache_v.{layer}"


def kv_caches(cfg: ModelConfig, ctx: int, ring_slack: int = 0, slots: int = 1) -> dict[str, KvCache]:
    """The persistent caches: sliding layers keep min(ctx, window + ring_slack) positions, global
    ones ctx. The slack lets a sequence move back up to ring_slack positions exactly (a prompt
    cache that keeps a shared prefix): the rows the window then needs are not yet overwritten.
    Each cache holds `slots` sequences (the server's parallel slots; a call picks the slot per
    segment)."""
    caches = {}
    for L in cfg.layers:
        if L.owns_kv:
            rows = min(ctx, L.window + ring_slack) if L.window else ctx
            for name in cache_names(L.index):
                caches[name] = KvCache(name, rows, L.kv_width, slots)
    return caches


class _Builder:
    def __init__(self, cfg: ModelConfig, specs: dict[str, WeightSpec], n: int, ctx: int,
                 ring_slack: int = 0, slots: int = 1):
        self.cfg, self.specs, self.n = cfg, specs, n
        self.buffers: dict[str, Buffer] = {}
        self.weights: dict[str, WeightSpec] = {}
        self.ops: list[Op] = []
        self.labels: list[str] = []
        self.caches = kv_caches(cfg, ctx, ring_slack, slots)

    def buf(self, name: str, cols: int, rows: int | None = None) -> str:
        rows = self.n if rows is None else rows
        old = self.buffers.get(name)
        if old is not None and (old.rows, old.cols) != (rows, cols):
            name = f"{name}.{cols}"   # same role, other width (e.g. sliding vs global heads)
            old = self.buffers.get(name)
        if old is None:
            self.buffers[name] = Buffer(name, rows, cols)
        return name

    def weight(self, name: str, rows: int | None = None, cols: int | None = None) -> str:
        spec = self.specs.get(name)
        if spec is None:
            raise MissingTensorError(f"tensor {name!r} is missing")
        if (rows is not None and spec.rows != rows) or (cols is not None and spec.cols != cols):
            raise TensorShapeError(f"tensor {name!r} has shape [{spec.cols}, {spec.rows}] (GGUF order), "
                                   f"expected [{cols}, {rows}]")
        check_supported(spec.qtype, f"tensor {name!r}")
        self.weights[name] = spec
        return name

    def norm(self, name: str, width: int) -> str:
        """A norm weight: one row of `width` values."""
        return self.weight(name, rows=1, cols=width)

    def emit(self, label: str, op: Op) -> str:
        self.ops.append(op)
        self.labels.append(label)
        return op.out

    def matmul(self, label: str, out: str, x: str, wname: str, rows: int | None = None) -> str:
        cols = self.buffers[x].cols
        w = self.weight(wname, rows=rows, cols=cols)
        rows = self.specs[wname].rows
        return self.emit(label, MatMul(self.buf(out, rows), x, w))


def media_input_names(n_tokens: int) -> dict[str, str]:
    """The per-call inputs of a media graph of n_tokens rows (ops.input_rows of them, shared by
    the graphs of one size class): soft tokens [., n_embd], which rows take them [., 1], and how
    many later rows each row sees on sliding layers [., 1]."""
    cap = input_rows(n_tokens)
    return {"embd": f"media.embd.{cap}", "take": f"media.take.{cap}", "ahead": f"media.ahead.{cap}"}


def attention_output(b: "_Builder", p: str, a: str, x: str, width: int, eps: float) -> None:
    """A Gemma block's attention tail: the output projection, its post-norm, the residual into x."""
    o = b.matmul(p + "attn_output", "o", a, p + "attn_output.weight", width)
    b.emit(p + "post_attention_norm", RmsNorm(o, o, b.norm(p + "post_attention_norm.weight", width), eps, width))
    b.emit(p + "attn_residual", Add(x, x, o))


def gelu_ffn(b: "_Builder", p: str, h: str, x: str, width: int, ffn_dim: int, eps: float) -> str:
    """A Gemma block's dense MLP up to its down projection (the caller norms and adds it):
    norm x into h, gate and up, GELU(gate) * up, down; returns the down projection's buffer."""
    h = b.emit(p + "ffn_norm", RmsNorm(h, x, b.norm(p + "ffn_norm.weight", width), eps, width))
    g = b.matmul(p + "ffn_gate", "gate", h, p + "ffn_gate.weight", ffn_dim)
    u = b.matmul(p + "ffn_up", "up", h, p + "ffn_up.weight", ffn_dim)
    b.emit(p + "ffn_act", GeluMul(g, g, u))
    return b.matmul(p + "ffn_down", "o", g, p + "ffn_down.weight", width)


def build_graph(cfg: ModelConfig, specs: dict[str, WeightSpec], n_tokens: int, ctx: int,
                all_logits: bool = False, ring_slack: int = 0, slots: int = 1, media: bool = False) -> Graph:
    """The forward pass for a batch of n_tokens rows (one sequence's consecutive positions, or
    segments of several: see ops.Segment).

    all_logits: output logits for every row (teacher forcing, several sequences); else only for
    the last row. slots: caches of that many sequence slots each, chosen per segment at run
    time; ring_slack: see kv_caches. media: the rows of a prompt with images / audio: soft tokens
    replace the (scaled) embeddings of the rows the call marks, unscaled, and on sliding layers
    a row of an image sees the later rows of its image (media_input_names; the window still
    applies, global layers stay causal: transformers' generate() mask and llama.cpp's)."""
    b = _Builder(cfg, specs, n_tokens, ctx, ring_slack, slots)
    E, eps = cfg.n_embd, cfg.rms_eps
    b.buffers["tokens"] = Buffer("tokens", n_tokens, 1, "i32")

    x = b.emit("token_embd", EmbedLookup(b.buf("x", E), b.weight("token_embd.weight", cols=E), cfg.embed_scale))
    inputs, ahead = {}, None
    if media:
        # PLE models: the media rows' ids are the pad token's (Engine.forward), so their per-layer
        # token embedding is the pad row; the per-layer projection reads the soft tokens below
        names, cap = media_input_names(n_tokens), input_rows(n_tokens)
        inputs = {names["embd"]: Buffer(names["embd"], cap, E), names["take"]: Buffer(names["take"], cap, 1),
                  names["ahead"]: Buffer(names["ahead"], cap, 1)}
        x = b.emit("media_embd", TakeRows(x, x, names["embd"], names["take"]))
        ahead = names["ahead"]

    ple = None
    if cfg.per_layer_dim:
        P, NL = cfg.per_layer_dim, cfg.n_layer
        tok = b.emit("per_layer_token_embd", EmbedLookup(
            b.buf("ple_tok", P * NL), b.weight("per_layer_token_embd.weight", cfg.n_vocab, P * NL), math.sqrt(P)))
        proj = b.matmul("per_layer_model_proj", "ple", x, "per_layer_model_proj.weight", P * NL)
        b.emit("per_layer_model_proj", Scale(proj, proj, 1.0 / math.sqrt(E)))
        b.emit("per_layer_proj_norm", RmsNorm(proj, proj, b.norm("per_layer_proj_norm.weight", P), eps, P))
        b.emit("per_layer_inputs", Add(proj, proj, tok))
        ple = b.emit("per_layer_inputs", Scale(proj, proj, 1.0 / math.sqrt(2.0)))

    # Caches read by later (shared-KV) layers: their batch K/V must stay alive, and their store
    # waits until the last reader has attended.
    last_reader = {}
    for L in cfg.layers:
        last_reader[L.kv_source] = L.index
    rope_freqs = cfg.rope_freqs_name if any(L.rope_freq_factors for L in cfg.layers) else None
    if rope_freqs:
        b.weight(rope_freqs, rows=1)

    for L in cfg.layers:
        i, D = L.index, L.head_dim
        p = f"blk.{i}."
        if L.n_head % L.n_kv_head:   # GQA maps each query head to one KV head
            raise TensorShapeError(f"layer {i}: {L.n_head} heads are not a multiple of {L.n_kv_head} KV heads")
        h = b.emit(p + "attn_norm", RmsNorm(b.buf("h", E), x, b.norm(p + "attn_norm.weight", E), eps, E))
        q = b.matmul(p + "attn_q", "q", h, p + "attn_q.weight", L.q_width)
        b.emit(p + "attn_q_norm", RmsNorm(q, q, b.norm(p + "attn_q_norm.weight", D), eps, D))
        ff = rope_freqs if L.rope_freq_factors else None
        b.emit(p + "rope_q", Rope(q, q, D, L.rope_dims, L.rope_base, ff))

        src = L.kv_source
        shared_later = last_reader[src] != src
        kname, vname = (f"k.{src}", f"v.{src}") if shared_later else ("k", "v")
        if L.owns_kv:
            k = b.matmul(p + "attn_k", kname, h, p + "attn_k.weight", L.kv_width)
            if L.has_v_proj:
                v = b.matmul(p + "attn_v", vname, h, p + "attn_v.weight", L.kv_width)
            else:   # K = V models: V is the K projection before the norms
                v = b.emit(p + "attn_v=k", Slice(b.buf(vname, L.kv_width), k, 0, 0))
            b.emit(p + "attn_k_norm", RmsNorm(k, k, b.norm(p + "attn_k_norm.weight", D), eps, D))
            if cfg.v_norm:
                b.emit(p + "attn_v_norm", RmsNorm(v, v, None, eps, D))
            b.emit(p + "rope_k", Rope(k, k, D, L.rope_dims, L.rope_base, ff))
        else:
            k, v = b.buffers[kname].name, b.buffers[vname].name
            if b.buffers[k].cols != L.kv_width:
                raise TensorShapeError(f"layer {i} shares the KV of layer {src}, whose width differs")
        ck, cv = cache_names(src)
        a = b.emit(p + "attention", Attention(b.buf("attn", L.q_width), q, k, v, ck, cv, L.n_head,
                                               L.n_kv_head, D, L.window, cfg.attn_scale,
                                               ahead if L.window else None))
        if last_reader[src] == i:
            b.emit(f"blk.{src}.kv_store", KvStore(ck, cv, k, v))
        attention_output(b, p, a, x, E, eps)
        d = gelu_ffn(b, p, h, x, E, L.ffn_dim, eps)
        if L.moe:
            # the dense MLP acts as a shared expert beside the routed ones
            b.emit(p + "post_ffw_norm_1", RmsNorm(d, d, b.norm(p + "post_ffw_norm_1.weight", E), eps, E))
            m = _moe_block(b, L, x, eps)
            b.emit(p + "moe_add", Add(d, d, m))
        if b.specs.get(p + "post_ffw_norm.weight"):
            b.emit(p + "post_ffw_norm", RmsNorm(d, d, b.norm(p + "post_ffw_norm.weight", E), eps, E))
        b.emit(p + "ffn_residual", Add(x, x, d))

        if ple is not None:
            P = cfg.per_layer_dim
            pe = b.matmul(p + "inp_gate", "pe", x, p + "inp_gate.weight", P)
            b.emit(p + "inp_gate_act", Gelu(pe, pe))
            sl = b.emit(p + "per_layer_input", Slice(b.buf("pe_in", P), ple, 0, i * P))
            b.emit(p + "per_layer_mul", Mul(pe, pe, sl))
            pr = b.matmul(p + "proj", "o", pe, p + "proj.weight", E)
            b.emit(p + "post_norm", RmsNorm(pr, pr, b.norm(p + "post_norm.weight", E), eps, E))
            b.emit(p + "per_layer_residual", Add(x, x, pr))
        if (p + "layer_output_scale.weight") in b.specs:
            b.emit(p + "layer_output_scale", Scale(x, x, 1.0, b.norm(p + "layer_output_scale.weight", 1)))

    rows = n_tokens if all_logits else 1
    if rows != n_tokens:
        x = b.emit("last_row", Slice(b.buf("x_last", E, rows=1), x, n_tokens - 1, 0))
    hn = b.emit("output_norm", RmsNorm(b.buf("h_out", E, rows=rows), x, b.norm("output_norm.weight", E), eps, E))
    out_w = "token_embd.weight" if cfg.tied_output else "output.weight"
    logits = b.emit("output", MatMul(b.buf("logits", cfg.n_vocab, rows=rows), hn, b.weight(out_w, cfg.n_vocab, E)))
    if cfg.final_softcap:
        b.emit("final_softcap", Softcap(logits, logits, cfg.final_softcap))
    return Graph(n_tokens=n_tokens, buffers=b.buffers, caches=b.caches, weights=b.weights, ops=b.ops,
                 output=logits, labels=b.labels, inputs=inputs)


def _moe_block(b: _Builder, L, x: str, eps: float) -> str:
    """The routed experts of a Gemma 4 MoE layer on the post-attention residual x; returns the
    buffer holding post_ffw_norm_2(sum of the weighted expert outputs)."""
    p, E, k, F = f"blk.{L.index}.", b.cfg.n_embd, L.n_expert_used, L.expert_ffn
    nk = b.n * k
    r = b.emit(p + "router_norm", RmsNorm(b.buf("router_in", E), x, b.norm(router_norm_name(L.index), E), eps, E))
    lg = b.matmul(p + "router", "router_logits", r, p + "ffn_gate_inp.weight", L.n_expert)
    scale = p + "ffn_down_exps.scale"
    route = b.emit(p + "moe_route", MoeRoute(b.buf("route", 2 * k), lg, k,
                                             b.norm(scale, L.n_expert) if scale in b.specs else None))
    x2 = b.emit(p + "pre_ffw_norm_2", RmsNorm(b.buf("moe_in", E), x, b.norm(p + "pre_ffw_norm_2.weight", E), eps, E))
    g, u = b.buf("moe_gate", F, rows=nk), b.buf("moe_up", F, rows=nk)
    if L.fused_gate_up:
        w = b.weight(p + "ffn_gate_up_exps.weight", rows=L.n_expert * 2 * F, cols=E)
        gu = b.emit(p + "moe_gate_up", MoeMatMul(b.buf("moe_gate_up", 2 * F, rows=nk), x2, route, w, L.n_expert))
        b.emit(p + "moe_gate_part", Slice(g, gu, 0, 0))       # each expert's rows: F gate, then F up
        b.emit(p + "moe_up_part", Slice(u, gu, 0, F))
    else:
        b.emit(p + "moe_gate", MoeMatMul(g, x2, route, b.weight(p + "ffn_gate_exps.weight", L.n_expert * F, E),
                                         L.n_expert))
        b.emit(p + "moe_up", MoeMatMul(u, x2, route, b.weight(p + "ffn_up_exps.weight", L.n_expert * F, E),
                                       L.n_expert))
    b.emit(p + "moe_act", GeluMul(g, g, u))
    y = b.emit(p + "moe_down", MoeMatMul(b.buf("moe_y", E, rows=nk), g, route,
                                         b.weight(p + "ffn_down_exps.weight", L.n_expert * E, F), L.n_expert))
    m = b.emit(p + "moe_sum", MoeSum(b.buf("moe", E), y, route))
    b.emit(p + "post_ffw_norm_2", RmsNorm(m, m, b.norm(p + "post_ffw_norm_2.weight", E), eps, E))
    return m
