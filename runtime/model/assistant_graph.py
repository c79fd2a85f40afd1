"""One draft step of a Gemma 4 MTP assistant as an op list (see ops.py), and the weights it names.

Per row (one sequence being drafted, at the position of its last token, which is not cached):
  x = target.token_embd[token] * sqrt(H_target)      (the target's own embedding table)
  x = pre_projection · [x ; h]                       (h: the target's post-norm hidden state, or the
                                                      previous step's projected state; the weight is
                                                      split into its two column halves, no concat op)
  Q-only Gemma 4 layers: attn_norm, Q, q_norm, RoPE at the row's position, PastAttention over the
  target's cache (last sliding / last full layer: assistant.reads_layers), output, post-attention
  norm, residual, GeLU-tanh FFN with its norms, residual, layer_output_scale
  hn = output_norm(x);  logits = token_embd · hn (tied, no softcap);  next_h = post_projection · hn
The graph's output is the logits; `NEXT_HIDDEN` holds next_h (CompiledGraph.read_buffers).
Follows llama.cpp's src/models/gemma4-assistant.cpp and transformers' Gemma4AssistantForCausalLM.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from gguf import GGML_QUANT_SIZES

from ..errors import MissingTensorError, TensorShapeError
from ..gguf.reader import GGUFFile
from ..ops import (Add, Buffer, EmbedLookup, Graph, MatMul, PastAttention, RmsNorm, Rope, Scale,
                   WeightSpec)
from .assistant import AssistantConfig
from .config import ModelConfig
from .graph import _Builder, attention_output, cache_names, gelu_ffn, weight_specs

TARGET_EMBD = "target.token_embd.weight"
PRE_EMBD, PRE_HIDDEN = "nextn.pre_projection.embd", "nextn.pre_projection.hidden"
NEXT_HIDDEN = "next_hidden"


def hidden_input_name(n_rows: int) -> str:
    """The per-call input [n_rows, H_target]: each row's hidden state."""
    return f"mtp.hidden.{n_rows}"


class AssistantWeights:
    """The drafter's WeightSource: the assistant file's tensors, the target's embedding table
    (read from the target, never copied) and the two column halves of pre_projection."""

    def __init__(self, f: GGUFFile, target_source, target_specs: dict[str, WeightSpec], cfg: AssistantConfig):
        self.file, self.target = f, target_source
        self.specs = weight_specs(f)
        self.specs[TARGET_EMBD] = replace(target_specs["token_embd.weight"], name=TARGET_EMBD)
        pre = self.specs.get("nextn.pre_projection.weight")
        if pre is None:
            raise MissingTensorError("tensor 'nextn.pre_projection.weight' is missing")
        if pre.cols != 2 * cfg.backbone or pre.rows != cfg.n_embd:
            raise TensorShapeError(f"nextn.pre_projection.weight has shape [{pre.cols}, {pre.rows}] (GGUF order), "
                                   f"expected [{2 * cfg.backbone}, {cfg.n_embd}]")
        block, size = GGML_QUANT_SIZES[pre.qtype]
        if cfg.backbone % block:
            raise TensorShapeError(f"nextn.pre_projection.weight's {pre.qtype.name} blocks of {block} do not split "
                                   f"at the target width {cfg.backbone}")
        self._half_bytes = cfg.backbone // block * size
        for name in (PRE_EMBD, PRE_HIDDEN):
            self.specs[name] = WeightSpec(name, pre.qtype, pre.rows, cfg.backbone)

    def weight_bytes(self, name: str) -> np.ndarray:
        if name == TARGET_EMBD:
            return self.target.weight_bytes("token_embd.weight")
        if name in (PRE_EMBD, PRE_HIDDEN):
            raw = self.file.tensor("nextn.pre_projection.weight").raw
            h = self._half_bytes
            return np.ascontiguousarray(raw[:, :h] if name == PRE_EMBD else raw[:, h:2 * h])
        return self.file.tensor(name).raw


def build_assistant_graph(cfg: AssistantConfig, target: ModelConfig, specs: dict[str, WeightSpec], n_rows: int,
                          ctx: int, ring_slack: int = 0, slots: int = 1) -> Graph:
    """One draft step for n_rows sequences (a segment of one row each). The caches it names are
    the target's (same names, rows and slots as graph.kv_caches makes them): the backend running
    it must hold the target's cache arrays under those names."""
    b = _Builder(target, specs, n_rows, ctx, ring_slack, slots)
    H, Hb, eps = cfg.n_embd, cfg.backbone, cfg.rms_eps
    b.buffers["tokens"] = Buffer("tokens", n_rows, 1, "i32")
    hid = hidden_input_name(n_rows)
    inputs = {hid: Buffer(hid, n_rows, Hb)}

    xe = b.emit("target_embd", EmbedLookup(b.buf("x_embd", Hb), b.weight(TARGET_EMBD, cols=Hb), target.embed_scale))
    x = b.matmul("pre_projection.embd", "x", xe, PRE_EMBD, H)
    xh = b.emit("pre_projection.hidden", MatMul(b.buf("x2", H), hid, b.weight(PRE_HIDDEN, rows=H, cols=Hb)))
    b.emit("pre_projection", Add(x, x, xh))

    freqs = "rope_freqs.weight"
    read = set()
    for L in cfg.layers:
        i, D = L.index, L.head_dim
        p = f"blk.{i}."
        h = b.emit(p + "attn_norm", RmsNorm(b.buf("h", H), x, b.norm(p + "attn_norm.weight", H), eps, H))
        q = b.matmul(p + "attn_q", "q", h, p + "attn_q.weight", L.q_width)
        b.emit(p + "attn_q_norm", RmsNorm(q, q, b.norm(p + "attn_q_norm.weight", D), eps, D))
        ff = b.weight(freqs, rows=1, cols=L.rope_dims // 2) if L.rope_freq_factors else None
        b.emit(p + "rope_q", Rope(q, q, D, L.rope_dims, L.rope_base, ff))
        ck, cv = cache_names(L.kv_source)
        read.update((ck, cv))
        a = b.emit(p + "attention", PastAttention(b.buf("attn", L.q_width), q, ck, cv, L.n_head, L.n_kv_head, D,
                                                   L.window, 1.0))
        attention_output(b, p, a, x, H, eps)
        d = gelu_ffn(b, p, h, x, H, L.ffn_dim, eps)
        b.emit(p + "post_ffw_norm", RmsNorm(d, d, b.norm(p + "post_ffw_norm.weight", H), eps, H))
        b.emit(p + "ffn_residual", Add(x, x, d))
        b.emit(p + "layer_output_scale", Scale(x, x, 1.0, b.norm(p + "layer_output_scale.weight", 1)))

    hn = b.emit("output_norm", RmsNorm(b.buf("h_out", H), x, b.norm("output_norm.weight", H), eps, H))
    logits = b.emit("output", MatMul(b.buf("logits", cfg.n_vocab), hn, b.weight("token_embd.weight", cfg.n_vocab, H)))
    b.emit("post_projection", MatMul(b.buf(NEXT_HIDDEN, Hb), hn, b.weight("nextn.post_projection.weight", Hb, H)))
    caches = {name: c for name, c in b.caches.items() if name in read}
    return Graph(n_tokens=n_rows, buffers=b.buffers, caches=caches, weights=b.weights, ops=b.ops, output=logits,
                 labels=b.labels, inputs=inputs)
