"""Model configuration, built from GGUF metadata alone (nothing is hard-coded per model size)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

from ..errors import MetadataError, MetadataTypeError, MissingKeyError, UnsupportedModelError
from ..gguf.reader import ARCH_ALIASES, GGUFFile


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
    n_expert: int = 0            # routed experts beside the dense MLP (0: a dense layer)
    n_expert_used: int = 0       # experts each token goes through (top-k)
    expert_ffn: int = 0          # one expert's hidden width
    fused_gate_up: bool = True   # experts in one ffn_gate_up_exps tensor, else ffn_gate_exps + ffn_up_exps

    @property
    def moe(self) -> bool:
        return self.n_expert > 0

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
    rope_linear_factor: float = 1.0   # rope.scaling linear factor on global layers (Gemma 3 4B+)

    @property
    def rope_freqs_name(self) -> str:
        """The frequency-factor weight global layers use: the file's rope_freqs, or one derived
        from it (or from ones) times the linear scaling factor (see graph.derived_weights)."""
        return "rope_freqs.weight" if self.rope_linear_factor == 1.0 else "rope_freqs.linear_scaled"

    @property
    def sliding_window(self) -> int:
        return max((l.window for l in self.layers if l.sliding), default=0)


# Value type checks: a hostile or broken file can put any type under any key, so every value is
# checked before use (a string where a float is due must be a MetadataError, not a ValueError).
_MAX_LAYERS = 4096   # bounds the per-layer loops below whatever block_count a file declares


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _per_layer(value, n: int, key: str) -> list:
    if isinstance(value, list):
        if len(value) != n:
            raise MetadataError(f"{key} has {len(value)} entries for {n} layers")
        return value
    return [value] * n


def _positive(value, key: str) -> int:
    if not _is_int(value):
        raise MetadataTypeError(f"{key} must be an integer scalar, got {_type_name(value)} {_short(value)}")
    if value <= 0:
        raise MetadataError(f"{key} must be a positive integer, got {value!r}")
    return value


def _non_negative(value, key: str) -> int:
    if not _is_int(value):
        raise MetadataTypeError(f"{key} must be an integer scalar, got {_type_name(value)} {_short(value)}")
    if value < 0:
        raise MetadataError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def _positives(value, n: int, key: str) -> list[int]:
    """An integer, or an integer array with one entry per layer (both are legal in Gemma files)."""
    if not (_is_int(value) or isinstance(value, list)):
        raise MetadataTypeError(f"{key} must be an integer or an integer array, got {_type_name(value)} {_short(value)}")
    return [_positive(v, key) for v in _per_layer(value, n, key)]


def _float(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetadataTypeError(f"{key} must be a number, got {_type_name(value)} {_short(value)}")
    return float(value)


def _type_name(v) -> str:
    return "array" if isinstance(v, list) else {str: "string", bool: "bool", float: "float"}.get(type(v), type(v).__name__)


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def load_config(f: GGUFFile) -> ModelConfig:
    arch = f.architecture
    family = ARCH_ALIASES.get(arch)
    # Projectors first: their architecture is "clip", and "not supported" alone would mislead.
    if arch == "clip" or f.has_tensor("v.patch_embd.weight") or f.get("general.type", "model") == "mmproj":
        raise UnsupportedModelError("this is a vision/audio projector (mmproj) file, not a text model; g4rt "
                                    f"runs the text model GGUF ({', '.join(sorted(ARCH_ALIASES))})")
    if family is None:
        raise UnsupportedModelError(
            f"architecture {arch!r} is not supported (g4rt runs: {', '.join(sorted(ARCH_ALIASES))})")

    def key(name: str, default=MetadataError):
        # Resolve under the prefix the file uses (gemma4_unified files may use either).
        for prefix in dict.fromkeys((arch, family)):
            k = f"{prefix}.{name}"
            if f.has(k):
                return f.get(k)
        if default is MetadataError:
            raise MissingKeyError(f"metadata key {arch}.{name} is missing")
        return default

    n_expert = _non_negative(key("expert_count", 0), "expert_count")
    n_expert_used = _non_negative(key("expert_used_count", 0), "expert_used_count")
    expert_ffn = _non_negative(key("expert_feed_forward_length", 0), "expert_feed_forward_length")
    if n_expert:
        if family != "gemma4":
            raise UnsupportedModelError(f"{arch} with experts is not a model g4rt knows")
        if n_expert > _MAX_EXPERTS:
            raise MetadataError(f"expert_count {n_expert} is over the {_MAX_EXPERTS} g4rt supports")
        if not 1 <= n_expert_used <= n_expert:
            raise MetadataError(f"expert_used_count is {n_expert_used}; it must be between 1 and "
                                f"expert_count ({n_expert})")
        if expert_ffn <= 0:
            raise MetadataError("expert_count is set but expert_feed_forward_length is missing or 0")
    n_layer = _positive(key("block_count"), "block_count")
    if n_layer > min(_MAX_LAYERS, len(f.tensors)):
        raise MetadataError(f"block_count {n_layer} is impossible for a file with {len(f.tensors)} tensors")
    n_embd = _positive(key("embedding_length"), "embedding_length")
    ffn = _positives(key("feed_forward_length"), n_layer, "feed_forward_length")
    n_head = _positives(key("attention.head_count"), n_layer, "attention.head_count")
    n_kv = _positives(key("attention.head_count_kv", None) or n_head, n_layer, "attention.head_count_kv")
    head_dim = _positive(key("attention.key_length", n_embd // n_head[0]), "attention.key_length")
    head_dim_swa = _positive(key("attention.key_length_swa", head_dim), "attention.key_length_swa")
    v_dim = _positive(key("attention.value_length", head_dim), "attention.value_length")
    v_dim_swa = _positive(key("attention.value_length_swa", head_dim_swa), "attention.value_length_swa")
    if v_dim != head_dim or v_dim_swa != head_dim_swa:
        raise UnsupportedModelError("key_length != value_length is not supported")
    eps = _float(key("attention.layer_norm_rms_epsilon", 1e-6), "attention.layer_norm_rms_epsilon")
    ctx_len = _positive(key("context_length", 8192), "context_length")
    window = _non_negative(key("attention.sliding_window", 0), "attention.sliding_window")

    pattern = key("attention.sliding_window_pattern", None)
    if isinstance(pattern, list):
        if not all(isinstance(p, int) for p in pattern):
            raise MetadataTypeError("attention.sliding_window_pattern must be a bool array or an integer")
        sliding = [bool(p) for p in _per_layer(pattern, n_layer, "attention.sliding_window_pattern")]
    else:
        # An integer n (or none: Gemma 3's fixed 6) means every n-th layer is global.
        if pattern is not None and not _is_int(pattern):
            raise MetadataTypeError(f"attention.sliding_window_pattern must be a bool array or an integer, "
                                    f"got {_type_name(pattern)} {_short(pattern)}")
        period = pattern if isinstance(pattern, int) and pattern > 0 else 6
        sliding = [(i + 1) % period != 0 for i in range(n_layer)]
    if window == 0:
        sliding = [False] * n_layer

    base = _float(key("rope.freq_base", 10000.0), "rope.freq_base")
    base_swa = _float(key("rope.freq_base_swa", 10000.0), "rope.freq_base_swa")
    rope_dims = _positive(key("rope.dimension_count", head_dim), "rope.dimension_count")
    rope_dims_swa = _positive(key("rope.dimension_count_swa", head_dim_swa), "rope.dimension_count_swa")
    for rd, hd, k in ((rope_dims, head_dim, "rope.dimension_count"), (rope_dims_swa, head_dim_swa, "rope.dimension_count_swa")):
        if rd % 2 or rd > hd:   # RoPE turns pairs within one head
            raise MetadataError(f"{k} is {rd}; it must be even and at most the head dimension {hd}")
    has_freqs = f.has_tensor("rope_freqs.weight")
    # Linear RoPE scaling (positions divided by the factor) applies to global layers only, as in
    # llama.cpp; it is expressed as frequency factors so backends need nothing new.
    scaling = key("rope.scaling.type", "none")
    linear = 1.0
    if scaling == "linear":
        linear = _float(key("rope.scaling.factor", 1.0), "rope.scaling.factor")
        if not linear > 0:
            raise MetadataError(f"rope.scaling.factor must be positive, got {linear}")
    elif scaling not in ("none", None):
        raise UnsupportedModelError(f"RoPE scaling {scaling!r} is not supported (none, linear)")
    if has_freqs:
        n_ff = f.tensor("rope_freqs.weight").n_cols
        if n_ff * 2 != rope_dims:
            raise MetadataError(f"rope_freqs.weight has {n_ff} entries; expected rope.dimension_count/2 = {rope_dims // 2}")

    shared = _non_negative(key("attention.shared_kv_layers", 0), "attention.shared_kv_layers")
    if not 0 <= shared < n_layer:
        raise MetadataError(f"attention.shared_kv_layers must be in [0, {n_layer}), got {shared!r}")
    n_kv_from_start = n_layer - shared
    per_layer_dim = _non_negative(key("embedding_length_per_layer_input", 0), "embedding_length_per_layer_input")

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
        moe = _moe_layer(f, i, n_embd, n_expert, expert_ffn)
        layers.append(LayerConfig(
            index=i, sliding=sl, n_head=n_head[i], n_kv_head=n_kv[i],
            head_dim=head_dim_swa if sl else head_dim, ffn_dim=ffn[i],
            rope_base=base_swa if sl else base, rope_dims=rope_dims_swa if sl else rope_dims,
            rope_freq_factors=(not sl) and (has_freqs or linear != 1.0), window=window if sl else 0,
            kv_source=src, has_v_proj=has_v,
            n_expert=n_expert if moe else 0, n_expert_used=n_expert_used if moe else 0,
            expert_ffn=expert_ffn if moe else 0, fused_gate_up=moe != "split"))

    if n_expert and not any(L.moe for L in layers):
        raise MetadataError(f"expert_count is {n_expert} but no layer has expert tensors "
                            f"(blk.N.ffn_gate_inp.weight, ffn_gate_up_exps, ffn_down_exps)")
    emb = f.tensor("token_embd.weight")
    if emb.n_cols != n_embd:
        raise MetadataError(f"token_embd.weight has {emb.n_cols} columns, embedding_length is {n_embd}")
    softcap = _float(key("final_logit_softcapping", 0.0), "final_logit_softcapping")
    if family == "gemma4":
        attn_scale, v_norm = 1.0, True
    else:  # gemma3: query_pre_attn_scalar = head_dim, except the 62-layer 27B (hidden / heads)
        scalar = n_embd // n_head[0] if n_layer == 62 else head_dim
        attn_scale, v_norm = 1.0 / math.sqrt(scalar), False
    return ModelConfig(
        architecture=arch, family=family, n_layer=n_layer, n_embd=n_embd, n_vocab=emb.n_rows,
        context_length=ctx_len, rms_eps=eps, final_softcap=softcap, attn_scale=attn_scale,
        v_norm=v_norm, embed_scale=math.sqrt(n_embd), per_layer_dim=int(per_layer_dim),
        shared_kv_layers=shared, tied_output=not f.has_tensor("output.weight"), layers=tuple(layers),
        rope_linear_factor=linear)


_MAX_EXPERTS = 512


def _moe_layer(f: GGUFFile, i: int, n_embd: int, n_expert: int, expert_ffn: int) -> str:
    """"" for a dense layer, else "fused" or "split" (how the expert gate/up weights are stored),
    after checking every expert tensor's shape against the keys (a clear error naming the tensor)."""
    p = f"blk.{i}."
    if not f.has_tensor(p + "ffn_gate_inp.weight"):
        for name in ("ffn_gate_up_exps.weight", "ffn_gate_exps.weight", "ffn_down_exps.weight"):
            if f.has_tensor(p + name):
                raise MetadataError(f"{p}{name} is present but the router {p}ffn_gate_inp.weight is not")
        return ""
    if not n_expert:
        raise MetadataError(f"{p}ffn_gate_inp.weight (a router) is present but expert_count is missing or 0")

    def check(name: str, shape: tuple[int, ...]) -> None:
        t = f.tensor(p + name)
        got = tuple(int(d) for d in t.shape)
        if got != shape:
            raise MetadataError(f"{p}{name} has shape {list(got)}; expert_count {n_expert}, "
                                f"expert_feed_forward_length {expert_ffn} and embedding_length {n_embd} "
                                f"make it {list(shape)}")

    check("ffn_gate_inp.weight", (n_embd, n_expert))
    if f.has_tensor(p + "ffn_gate_up_exps.weight"):
        check("ffn_gate_up_exps.weight", (n_embd, 2 * expert_ffn, n_expert))
        layout = "fused"
    elif f.has_tensor(p + "ffn_gate_exps.weight") and f.has_tensor(p + "ffn_up_exps.weight"):
        check("ffn_gate_exps.weight", (n_embd, expert_ffn, n_expert))
        check("ffn_up_exps.weight", (n_embd, expert_ffn, n_expert))
        layout = "split"
    else:
        raise MetadataError(f"layer {i} has a router but neither {p}ffn_gate_up_exps.weight nor "
                            f"{p}ffn_gate_exps.weight + {p}ffn_up_exps.weight")
    check("ffn_down_exps.weight", (expert_ffn, n_embd, n_expert))
    for name, n in (("ffn_gate_inp.scale", n_embd), ("ffn_down_exps.scale", n_expert)):
        if f.has_tensor(p + name):
            check(name, (n,))
    for name in ("pre_ffw_norm_2.weight", "post_ffw_norm_1.weight", "post_ffw_norm_2.weight"):
        check(name, (n_embd,))
    return layout


def layer_index(name: str) -> Optional[int]:
    """The layer a tensor belongs to (`blk.N.…`), None for the others."""
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else None
