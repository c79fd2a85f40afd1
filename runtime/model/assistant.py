"""Gemma 4 MTP assistant drafters (`gemma4-assistant` GGUFs): their configuration, and the checks
that an assistant fits a target, made from metadata before anything loads.

An assistant is a few Q-only Gemma 4 layers that attend to the target's own KV cache: its
sliding layers to the target's last sliding layer's cache, its full layers to the last full
layer's (for an edge target whose tail reuses KV, the producer of that layer's cache). Like
llama.cpp (src/llama-model.cpp) the target must end in [sliding, full]; transformers reads "the
last layer of each type", the same layers then.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import G4rtError, MetadataError, MissingKeyError, UnsupportedModelError
from ..gguf.reader import GGUFFile
from .config import LayerConfig, ModelConfig, _float, _positive, _positives

ARCH = "gemma4-assistant"
#: Tensors of the E2B/E4B "ordered embeddings" head. llama.cpp's converter drops them and its
#: graph never uses them; g4rt likewise computes the logits with the full tied head.
CENTROID_TENSORS = ("masked_embd_centroids.weight", "masked_embd_ordering")


class AssistantMismatchError(G4rtError):
    """An assistant drafter that does not fit the target model."""


@dataclass(frozen=True)
class AssistantConfig:
    n_layer: int                  # the drafting layers (nextn_predict_layers)
    n_embd: int                   # the assistant's own width
    backbone: int                 # the target's hidden size it reads and writes (embedding_length_out)
    n_vocab: int
    rms_eps: float
    layers: tuple[LayerConfig, ...]   # kv_source: the target layer whose cache the layer reads
    has_centroids: bool           # the file carries an ordered-embedding head (not used)

    @property
    def head_note(self) -> str:
        return ("the file's ordered-embedding (centroid) head is ignored: logits come from the full tied head, "
                "as in llama.cpp" if self.has_centroids else "")


def is_assistant(f: GGUFFile) -> bool:
    return f.architecture == ARCH


def reads_layers(target: ModelConfig) -> tuple[int, int]:
    """(full, sliding): the target layers whose caches an assistant reads. The target must end in
    [sliding, full]; shared-KV layers resolve to the layer that owns the cache."""
    if target.family != "gemma4":
        raise AssistantMismatchError(f"an MTP assistant drafts for Gemma 4 targets; this target is {target.architecture}")
    if target.n_layer < 2 or not target.layers[-2].sliding or target.layers[-1].sliding:
        kinds = ", ".join("sliding" if L.sliding else "full" for L in target.layers[-2:])
        raise AssistantMismatchError(f"the target's last two layers are [{kinds}]; an assistant reads the caches of a "
                                     "target ending in [sliding, full] (as llama.cpp)")
    return target.layers[-1].kv_source, target.layers[-2].kv_source


def load_assistant_config(f: GGUFFile, target: ModelConfig) -> AssistantConfig:
    """The assistant's configuration from its metadata, refused (AssistantMismatchError, both
    numbers named) when it does not fit `target`."""
    if not is_assistant(f):
        raise UnsupportedModelError(f"{f.path.name} is a {f.architecture!r} model, not a {ARCH!r} drafter")

    def key(name: str, default=MissingKeyError):
        k = f"{ARCH}.{name}"
        if f.has(k):
            return f.get(k)
        if default is MissingKeyError:
            raise MissingKeyError(f"metadata key {k} is missing")
        return default

    blocks = _positive(key("block_count"), "block_count")
    n = _positive(key("nextn_predict_layers", blocks), "nextn_predict_layers")
    if n > blocks:
        raise MetadataError(f"nextn_predict_layers is {n}, more than block_count {blocks}")
    n_embd = _positive(key("embedding_length"), "embedding_length")
    backbone = _positive(key("embedding_length_out"), "embedding_length_out")
    ffn = _positives(key("feed_forward_length"), blocks, "feed_forward_length")
    n_head = _positives(key("attention.head_count"), blocks, "attention.head_count")
    n_kv = _positives(key("attention.head_count_kv", None) or n_head, blocks, "attention.head_count_kv")
    head_full = _positive(key("attention.key_length"), "attention.key_length")
    head_swa = _positive(key("attention.key_length_swa", head_full), "attention.key_length_swa")
    for name, d in (("value_length", head_full), ("value_length_swa", head_swa)):
        if key(f"attention.{name}", d) != d:
            raise UnsupportedModelError("an assistant with key_length != value_length is not supported")
    pattern = key("attention.sliding_window_pattern")
    if not isinstance(pattern, list) or len(pattern) != blocks:
        raise MetadataError(f"attention.sliding_window_pattern must be a bool array of {blocks} entries")
    window = _positive(key("attention.sliding_window"), "attention.sliding_window")
    eps = _float(key("attention.layer_norm_rms_epsilon", 1e-6), "attention.layer_norm_rms_epsilon")
    base = _float(key("rope.freq_base", 1e6), "rope.freq_base")
    base_swa = _float(key("rope.freq_base_swa", 1e4), "rope.freq_base_swa")
    rope_full = _positive(key("rope.dimension_count", head_full), "rope.dimension_count")
    rope_swa = _positive(key("rope.dimension_count_swa", head_swa), "rope.dimension_count_swa")
    emb = f.tensor("token_embd.weight")
    if emb.n_cols != n_embd:
        raise MetadataError(f"token_embd.weight has {emb.n_cols} columns, embedding_length is {n_embd}")

    # ---- against the target
    if backbone != target.n_embd:
        raise AssistantMismatchError(f"the assistant reads a target of hidden size {backbone} (embedding_length_out); "
                                     f"this target's is {target.n_embd}")
    if emb.n_rows != target.n_vocab:
        raise AssistantMismatchError(f"the assistant's vocabulary has {emb.n_rows} tokens, the target's {target.n_vocab}")
    full_src, swa_src = reads_layers(target)
    layers = []
    for i in range(n):
        sl = bool(pattern[i])
        src = target.layers[swa_src if sl else full_src]
        kind = "sliding" if sl else "full"
        D = head_swa if sl else head_full
        if D != src.head_dim:
            raise AssistantMismatchError(f"assistant layer {i} ({kind}) has head dim {D}; the target's {kind} layer "
                                         f"{src.index} whose cache it reads has {src.head_dim}")
        if n_kv[i] != src.n_kv_head:
            raise AssistantMismatchError(f"assistant layer {i} ({kind}) expects {n_kv[i]} KV heads; the target's "
                                         f"{kind} layer {src.index} has {src.n_kv_head}")
        if n_head[i] % src.n_kv_head:
            raise AssistantMismatchError(f"assistant layer {i}: {n_head[i]} query heads are not a multiple of the "
                                         f"target's {src.n_kv_head} KV heads")
        if sl and window > src.window:
            raise AssistantMismatchError(f"assistant layer {i} attends a window of {window}; the target's sliding "
                                         f"cache keeps a window of {src.window}")
        if not f.has_tensor(f"blk.{i}.layer_output_scale.weight"):
            raise MetadataError(f"blk.{i}.layer_output_scale.weight is missing (required in {ARCH} files)")
        layers.append(LayerConfig(
            index=i, sliding=sl, n_head=n_head[i], n_kv_head=n_kv[i], head_dim=D, ffn_dim=ffn[i],
            rope_base=base_swa if sl else base, rope_dims=rope_swa if sl else rope_full,
            rope_freq_factors=(not sl) and f.has_tensor("rope_freqs.weight"), window=window if sl else 0,
            kv_source=src.index, has_v_proj=False))
    return AssistantConfig(n_layer=n, n_embd=n_embd, backbone=backbone, n_vocab=emb.n_rows, rms_eps=eps,
                           layers=tuple(layers), has_centroids=any(f.has_tensor(t) for t in CENTROID_TENSORS))
