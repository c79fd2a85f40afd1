"""Model configuration, built from GGUF metadata alone (nothing is hard-coded per model size)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import MetadataError, UnsupportedModelError
from ..gguf_file import ARCH_ALIASES, GGUFFile


@dataclass(frozen=True)
class LayerConfig:
    index: int
    sliding: bool
    n_head: int
    n_kv_head: int
    head_dim: int
    ffn_dim: int
    rope_base: float
    rope_dims: int
    rope_freq_factors: bool      # proportional RoPE: divide angles by rope_freqs.weight
    window: int                  # attended positions (0 = unlimited)
    kv_source: int               # layer whose KV cache this layer reads (itself unless shared)
    has_v_proj: bool             # False: V is the K projection (before the norms)

    @property
    def owns_kv(self) -> bool:
        return self.kv_source == self.index

    @property
    def q_width(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.n_kv_head * self.head_dim


@dataclass(frozen=True)
class ModelConfig:
    architecture: str            # as written in the file
    family: str                  # graph family: "gemma4" or "gemma3"
    n_layer: int
    n_embd: int
    n_vocab: int
    context_length: int
    rms_eps: float
    final_softcap: float         # 0 = none
    attn_scale: float
    v_norm: bool                 # RMS-normalise V (no weight)
    embed_scale: float
    per_layer_dim: int           # PLE width per layer (0 = no per-layer embeddings)
    shared_kv_layers: int
    tied_output: bool
    layers: tuple[LayerConfig, ...] = field(repr=False)

    @property
    def sliding_window(self) -> int:
        return max((l.window for l in self.layers if l.sliding), default=0)


def _per_layer(value, n: int, key: str) -> list:
    if isinstance(value, list):
        if len(value) != n:
            raise MetadataError(f"{key} has {len(value)} entries for {n} layers")
        return value
    return [value] * n


def _positive(value, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise MetadataError(f"{key} must be a positive integer, got {value!r}")
    return value


def load_config(f: GGUFFile) -> ModelConfig:
    arch = f.architecture
    family = ARCH_ALIASES.get(arch)
    if family is None:
        raise UnsupportedModelError(
            f"architecture {arch!r} is not supported (g4rt runs: {', '.join(sorted(ARCH_ALIASES))})")
    if f.has_tensor("v.patch_embd.weight") or f.get("general.type", "model") == "mmproj":
        raise UnsupportedModelError("this is a vision/audio projector (mmproj) file, not a text model")

    def key(name: str, default=MetadataError):
        # Resolve under the prefix the file uses (gemma4_unified files may use either).
        for prefix in dict.fromkeys((arch, family)):
            k = f"{prefix}.{name}"
            if f.has(k):
                return f.get(k)
        if default is MetadataError:
            raise MetadataError(f"metadata key {arch}.{name} is missing")
        return default

    n_expert = key("expert_count", 0) or 0
    if n_expert:
        raise UnsupportedModelError(
            f"mixture-of-experts Gemma 4 ({n_expert} experts) is not supported yet; g4rt runs the dense "
            "and edge (PLE) Gemma 4 models and Gemma 3")
    n_layer = _positive(key("block_count"), "block_count")
    n_embd = _positive(key("embedding_length"), "embedding_length")
    ffn = [_positive(v, "feed_forward_length") for v in _per_layer(key("feed_forward_length"), n_layer, "feed_forward_length")]
    n_head = [_positive(v, "attention.head_count") for v in _per_layer(key("attention.head_count"), n_layer, "attention.head_count")]
    n_kv = [_positive(v, "attention.head_count_kv") for v in _per_layer(key("attention.head_count_kv", None) or n_head, n_layer, "attention.head_count_kv")]
    head_dim = _positive(key("attention.key_length", n_embd // n_head[0]), "attention.key_length")
    head_dim_swa = _positive(key("attention.key_length_swa", head_dim), "attention.key_length_swa")
    v_dim = key("attention.value_length", head_dim)
    v_dim_swa = key("attention.value_length_swa", head_dim_swa)
    if v_dim != head_dim or v_dim_swa != head_dim_swa:
        raise UnsupportedModelError("key_length != value_length is not supported")
    eps = float(key("attention.layer_norm_rms_epsilon", 1e-6))
    ctx_len = _positive(key("context_length", 8192), "context_length")
    window = key("attention.sliding_window", 0)
    if not isinstance(window, int) or window < 0:
        raise MetadataError(f"attention.sliding_window must be a non-negative integer, got {window!r}")

    pattern = key("attention.sliding_window_pattern", None)
    if isinstance(pattern, list):
        sliding = [bool(p) for p in _per_layer(pattern, n_layer, "attention.sliding_window_pattern")]
    else:
        # An integer n (or none: Gemma 3's fixed 6) means every n-th layer is global.
        period = pattern if isinstance(pattern, int) and pattern > 0 else 6
        sliding = [(i + 1) % period != 0 for i in range(n_layer)]
    if window == 0:
        sliding = [False] * n_layer

    base = float(key("rope.freq_base", 10000.0))
    base_swa = float(key("rope.freq_base_swa", 10000.0))
    rope_dims = key("rope.dimension_count", head_dim)
    rope_dims_swa = key("rope.dimension_count_swa", head_dim_swa)
    has_freqs = f.has_tensor("rope_freqs.weight")
    if has_freqs:
        n_ff = f.tensor("rope_freqs.weight").n_cols
        if n_ff * 2 != rope_dims:
            raise MetadataError(f"rope_freqs.weight has {n_ff} entries; expected rope.dimension_count/2 = {rope_dims // 2}")

    shared = key("attention.shared_kv_layers", 0)
    if not isinstance(shared, int) or not 0 <= shared < n_layer:
        raise MetadataError(f"attention.shared_kv_layers must be in [0, {n_layer}), got {shared!r}")
    n_kv_from_start = n_layer - shared
    per_layer_dim = key("embedding_length_per_layer_input", 0) or 0

    layers = []
    for i in range(n_layer):
        sl = sliding[i]
        if i < n_kv_from_start:
            src = i
        else:
            # As llama.cpp: shared sliding layers read the last sliding KV layer, global ones the last global.
            src = n_kv_from_start - 2 if sl else n_kv_from_start - 1
            if src < 0 or sliding[src] != sl:
                raise MetadataError(f"layer {i} shares KV with layer {src}, which is of the other attention type")
        has_v = f.has_tensor(f"blk.{i}.attn_v.weight") if src == i else True
        layers.append(LayerConfig(
            index=i, sliding=sl, n_head=n_head[i], n_kv_head=n_kv[i],
            head_dim=head_dim_swa if sl else head_dim, ffn_dim=ffn[i],
            rope_base=base_swa if sl else base, rope_dims=rope_dims_swa if sl else rope_dims,
            rope_freq_factors=(not sl) and has_freqs, window=window if sl else 0,
            kv_source=src, has_v_proj=has_v))

    emb = f.tensor("token_embd.weight")
    if emb.n_cols != n_embd:
        raise MetadataError(f"token_embd.weight has {emb.n_cols} columns, embedding_length is {n_embd}")
    softcap = float(key("final_logit_softcapping", 0.0) or 0.0)
    if family == "gemma4":
        attn_scale, v_norm = 1.0, True
    else:  # gemma3: query_pre_attn_scalar = head_dim
        attn_scale, v_norm = 1.0 / math.sqrt(head_dim), False
    return ModelConfig(
        architecture=arch, family=family, n_layer=n_layer, n_embd=n_embd, n_vocab=emb.n_rows,
        context_length=ctx_len, rms_eps=eps, final_softcap=softcap, attn_scale=attn_scale,
        v_norm=v_norm, embed_scale=math.sqrt(n_embd), per_layer_dim=int(per_layer_dim),
        shared_kv_layers=shared, tied_output=not f.has_tensor("output.weight"), layers=tuple(layers))
