"""The published Gemma 4 models' dimensions, written once: `g4rt synth` writes files of these
shapes, the memory plan builds configs of them without a file, `g4rt bench --ops` times kernels
at the 12B's.

Both models alternate 5 sliding layers (window 1024) with 1 global layer, have a 262,144-token
vocabulary and tied embeddings. A global layer's heads are twice as wide as a sliding layer's
and it keeps fewer KV heads; on the 26B-A4B its K and V are one projection (no attn_v).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """A Gemma 4 model's dimensions, as its GGUF metadata would state them."""

    label: str
    hidden: int
    n_head: int
    ffn: int                       # the dense MLP's width (the shared expert's on a MoE model)
    d_swa: int                     # head dim of sliding layers
    kv_swa: int                    # KV heads of sliding layers
    d_global: int                  # head dim of global layers
    kv_global: int                 # KV heads of global layers
    k_eq_v_global: bool = False    # global layers use K as V (no attn_v)
    n_expert: int = 0              # routed experts per layer (0: a dense model)
    n_expert_used: int = 0
    expert_ffn: int = 0
    n_layer: int = 0               # the published model's depth (0: a made-up shape)
    context_length: int = 0        # the published model's trained context (0: a made-up shape)
    window: int = 1024             # sliding window
    period: int = 6                # every period-th layer is global
    n_vocab: int = 262144
    per_layer_dim: int = 0         # per-layer embedding (PLE) width per layer (0: none; edge models)
    shared_kv_layers: int = 0      # the last N layers reuse the KV of the last producer of their type
    double_wide_shared: bool = False   # the shared-KV layers' MLP is twice as wide (edge models)


DENSE_12B = Shape("12B", 3840, 16, 15360, 256, 8, 512, 4, n_layer=48, context_length=131072)
#: Gemma 4 E2B (google/gemma-4-e2b's text config): 35 layers, 4 sliding : 1 global, window 512,
#: 1 KV head, per-layer embeddings of 256, the last 20 layers reading the KV of layers 13 / 14,
#: their MLP 2 x 6144 wide
EDGE_E2B = Shape("E2B", 1536, 8, 6144, 256, 1, 512, 1, n_layer=35, context_length=131072, window=512, period=5,
                 per_layer_dim=256, shared_kv_layers=20, double_wide_shared=True)
MOE_26B = Shape("26B-A4B", 2816, 16, 2112, 256, 8, 512, 2, k_eq_v_global=True, n_expert=128, n_expert_used=8,
                expert_ffn=704, n_layer=30, context_length=262144)
