"""The real Gemma 4 models' configurations and weight specs built in memory, without a file:
for the memory tables (scripts/memory_table.py), `g4rt synth`-free planning and the tests.
The shapes come from model/shapes.py; the quant mixes follow llama-quantize."""

from __future__ import annotations

import math
from typing import Callable, Union

from gguf import GGMLQuantizationType as QT

from ..errors import G4rtError
from ..ops import WeightSpec
from .config import LayerConfig, ModelConfig, layer_index
from .graph import build_graph, router_norm_name
from .shapes import DENSE_12B, MOE_26B

QuantMix = Callable[[str, int], QT]      # (tensor name, row width) -> the type of a matrix

# llama-quantize's fallback for rows that are no multiple of a K-quant's 256-value super-block
_K_FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}


def _fallback(qt: QT, cols: int) -> QT:
    return _K_FALLBACK.get(qt, qt) if cols % 256 else qt


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def llama_q4_k_m(cfg: ModelConfig) -> QuantMix:
    """llama-quantize's Q4_K_M (llama_tensor_get_type) for a Gemma 4 file with more than 8 experts:
    Q4_K, except Q6_K for the tied token embedding (it is the output head), for the attn_v tensors
    use_more_bits picks (counted over the layers that have one; K = V global layers have none, and
    their attn_k stays Q4_K) and for ffn_down and ffn_down_exps of the layers it picks. Rows whose
    width is no multiple of 256 fall back (Q4_K -> Q5_0, Q6_K -> Q8_0): on the 26B-A4B the 2112-wide
    dense and 704-wide expert down projections. Routers and norms stay F32 (not matrices here)."""
    v_layers = [L.index for L in cfg.layers if L.has_v_proj]

    def mix(name: str, cols: int) -> QT:
        i = layer_index(name)
        if name == "token_embd.weight":
            qt = QT.Q6_K
        elif name.endswith(".attn_v.weight"):
            qt = QT.Q6_K if _more_bits(v_layers.index(i), len(v_layers)) else QT.Q4_K
        elif ".ffn_down" in name:
            qt = QT.Q6_K if _more_bits(i, cfg.n_layer) else QT.Q4_K
        else:
            qt = QT.Q4_K
        return _fallback(qt, cols)
    return mix


def quant_mix(cfg: ModelConfig, quant: Union[QT, str]) -> QuantMix:
    """"Q4_K_M" (llama_q4_k_m), or one type for every matrix (a GGMLQuantizationType or its name)."""
    if quant == "Q4_K_M":
        return llama_q4_k_m(cfg)
    try:
        qt = QT[quant] if isinstance(quant, str) else QT(quant)
    except (KeyError, ValueError):
        raise G4rtError(f"unknown quantization {quant!r} (a GGML type such as Q4_0 or Q8_0, or Q4_K_M)") from None
    return lambda name, cols: _fallback(qt, cols)


def _gemma4_config(*, n_layer: int, n_embd: int, n_head: int, ffn: int, head_dim_swa: int, n_kv_swa: int,
                   head_dim: int, n_kv: int, window: int, period: int, n_vocab: int, context_length: int,
                   k_eq_v: bool = False, n_expert: int = 0, n_expert_used: int = 0,
                   expert_ffn: int = 0) -> ModelConfig:
    """Every `period`-th layer global (K = V there when k_eq_v), tied embeddings, every layer MoE
    when n_expert is set."""
    layers = []
    for i in range(n_layer):
        sl = (i + 1) % period != 0
        D = head_dim_swa if sl else head_dim
        layers.append(LayerConfig(
            index=i, sliding=sl, n_head=n_head, n_kv_head=n_kv_swa if sl else n_kv, head_dim=D, ffn_dim=ffn,
            rope_base=1e4 if sl else 1e6, rope_dims=D, rope_freq_factors=not sl, window=window if sl else 0,
            kv_source=i, has_v_proj=sl or not k_eq_v, n_expert=n_expert, n_expert_used=n_expert_used,
            expert_ffn=expert_ffn))
    return ModelConfig(architecture="gemma4", family="gemma4", n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab,
                       context_length=context_length, rms_eps=1e-6, final_softcap=30.0, attn_scale=1.0,
                       v_norm=True, embed_scale=math.sqrt(n_embd), per_layer_dim=0, shared_kv_layers=0,
                       tied_output=True, layers=tuple(layers))


def _gemma4_specs(cfg: ModelConfig, matrix: QuantMix, norm_type: QT) -> dict[str, WeightSpec]:
    """The tensors of a llama.cpp-converted file of this config, plus the router norm weights the
    loader derives (graph.derived_weights), which are held like weights; checked by build_graph."""
    E = cfg.n_embd
    specs: dict[str, WeightSpec] = {}

    def add(nm, rows, cols, qt=None, experts=0):
        specs[nm] = WeightSpec(nm, matrix(nm, cols) if qt is None else qt, rows, cols, experts)
    add("token_embd.weight", cfg.n_vocab, E)
    add("output_norm.weight", 1, E, norm_type)
    add("rope_freqs.weight", 1, max(L.head_dim for L in cfg.layers) // 2, QT.F32)
    for L in cfg.layers:
        p = f"blk.{L.index}."
        for nm, w in (("attn_norm", E), ("post_attention_norm", E), ("ffn_norm", E), ("post_ffw_norm", E),
                      ("attn_q_norm", L.head_dim), ("attn_k_norm", L.head_dim), ("layer_output_scale", 1)):
            add(p + nm + ".weight", 1, w, norm_type)
        add(p + "attn_q.weight", L.q_width, E)
        add(p + "attn_k.weight", L.kv_width, E)
        if L.has_v_proj:
            add(p + "attn_v.weight", L.kv_width, E)
        add(p + "attn_output.weight", E, L.q_width)
        add(p + "ffn_gate.weight", L.ffn_dim, E)
        add(p + "ffn_up.weight", L.ffn_dim, E)
        add(p + "ffn_down.weight", E, L.ffn_dim)
        if L.moe:
            X, F = L.n_expert, L.expert_ffn
            add(p + "ffn_gate_inp.weight", X, E, QT.F32)        # llama-quantize never quantizes the router
            add(router_norm_name(L.index), 1, E, QT.F32)
            add(p + "ffn_gate_up_exps.weight", X * 2 * F, E, experts=X)
            add(p + "ffn_down_exps.weight", X * E, F, experts=X)
            for nm, w in (("ffn_gate_inp.scale", E), ("ffn_down_exps.scale", X), ("pre_ffw_norm_2.weight", E),
                          ("post_ffw_norm_1.weight", E), ("post_ffw_norm_2.weight", E)):
                add(p + nm, 1, w, norm_type)
    build_graph(cfg, specs, 1, 16)    # the same shape checks a real file gets
    return specs


def dense_gemma4(*, n_layer: int, n_embd: int, n_head: int, ffn: int, head_dim_swa: int, n_kv_swa: int,
                 head_dim: int, n_kv: int, window: int, period: int, n_vocab: int, context_length: int,
                 matrix_type: QT = QT.Q4_0, norm_type: QT = QT.F32) -> tuple[ModelConfig, dict[str, WeightSpec]]:
    """A dense Gemma 4 config and weight specs shaped like a real file (every `period`-th layer
    global), tied embeddings, every matrix of `matrix_type` (Q4_0 as Google's QAT files)."""
    cfg = _gemma4_config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, ffn=ffn, head_dim_swa=head_dim_swa,
                         n_kv_swa=n_kv_swa, head_dim=head_dim, n_kv=n_kv, window=window, period=period,
                         n_vocab=n_vocab, context_length=context_length)
    return cfg, _gemma4_specs(cfg, lambda name, cols: matrix_type, norm_type)


def gemma4_12b_shape(context_length: int = DENSE_12B.context_length
                     ) -> tuple[ModelConfig, dict[str, WeightSpec]]:
    """The 12B's shape (shapes.DENSE_12B: hidden 3840, 48 layers, 5 sliding : 1 global, window 1024,
    16 heads, sliding head_dim 256 / 8 KV heads, global head_dim 512 / 4 KV heads, FFN 15360,
    vocabulary 262144), Q4_0 everywhere including the embeddings (the QAT q4_0 file)."""
    s = DENSE_12B
    return dense_gemma4(n_layer=s.n_layer, n_embd=s.hidden, n_head=s.n_head, ffn=s.ffn, head_dim_swa=s.d_swa,
                        n_kv_swa=s.kv_swa, head_dim=s.d_global, n_kv=s.kv_global, window=s.window,
                        period=s.period, n_vocab=s.n_vocab, context_length=context_length)


def gemma4_26b_a4b_shape(matrix_type: Union[QT, str] = QT.Q4_0,
                         context_length: int = MOE_26B.context_length) -> tuple[ModelConfig, dict[str, WeightSpec]]:
    """The 26B-A4B's shape (shapes.MOE_26B, its published configuration: hidden 2816, 30 layers,
    5 sliding : 1 global, window 1024, 16 query heads, sliding head_dim 256 / 8 KV heads, global
    head_dim 512 / 2 KV heads with K = V (no attn_v), in every layer a dense MLP of 2112 beside 128
    routed experts of width 704 (top 8, gate and up fused), vocabulary 262144, tied embeddings,
    trained context 262144). matrix_type: one type for every matrix (Q4_0 as Google's QAT file,
    Q8_0, ...) or "Q4_K_M" (llama_q4_k_m); routers and norms F32."""
    s = MOE_26B
    cfg = _gemma4_config(n_layer=s.n_layer, n_embd=s.hidden, n_head=s.n_head, ffn=s.ffn, head_dim_swa=s.d_swa,
                         n_kv_swa=s.kv_swa, head_dim=s.d_global, n_kv=s.kv_global, window=s.window,
                         period=s.period, n_vocab=s.n_vocab, context_length=context_length,
                         k_eq_v=s.k_eq_v_global, n_expert=s.n_expert, n_expert_used=s.n_expert_used,
                         expert_ffn=s.expert_ffn)
    return cfg, _gemma4_specs(cfg, quant_mix(cfg, matrix_type), QT.F32)
