"""gemma4a: the Gemma 4 E2B/E4B conformer audio encoder as an op list (ops.py).

As transformers' Gemma4AudioModel + Gemma4MultimodalEmbedder (and llama.cpp's gemma4a.cpp):
log-mel features [T0, n_mel] (media/mel.py) -> 2 x (Conv2d 3x3 stride 2 pad 1 -> LayerNorm over
channels -> ReLU), padded frames zeroed before each conv -> flatten (frequency, channel) ->
a.input_projection -> conformer blocks -> a.pre_encode.out (+ bias) -> RMSNorm without weight ->
mm.a.input_projection. One conformer block:
  FFN (half step): x += 0.5 * RMS(ffn_post_norm)(down(silu(up(RMS(ffn_norm)(x)))))
  attention:       x += RMS(attn_post_norm)(out(chunked_attention(q, k, v)))  (q/k/v of RMS(attn_pre_norm)(x))
  light conv:      x += pw2(silu(RMS(norm_conv)(dwconv5(glu(pw1(RMS(conv_norm)(x)))))))
                   (GGUF conv_norm = HF lconv1d.pre_layer_norm, norm_conv = HF lconv1d.conv_norm)
  FFN (half step) with the *_1 tensors, then x = RMS(ln2)(x).
Every linear of the blocks is a clipped linear (Clamp -> MatMul -> Clamp, bounds from the
GGUF's input/output_min/max scalars); transformers' gradient clipping (+-1e10) is kept as Clamp.
Attention keys of padded frames are masked; their own rows are dropped at the end (only the
first `valid` soft tokens are the clip's; the padded frames all lie at its end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..media.mel import log_mel
from ..ops import (Add, AddVector, Buffer, ChunkedAttention, Clamp, Conv2dNormRelu, DepthwiseConv1d, Glu, Graph,
                   MatMul, RmsNorm, Scale, Silu, WeightSpec, input_rows)
from .builder import GraphBuilder
from .errors import MediaInputError
from .reader import ConformerConfig

#: transformers' Gemma4AudioConfig.gradient_clipping (a Clamp around the norms)
GRADIENT_CLIP = 1e10
#: 1/sqrt(head_dim)/ln 2 times the per-dim scale for q, ln(1 + e)/ln 2 for k (Gemma4AudioAttention)
K_SCALE = math.log(1 + math.e) / math.log(2)
RESIDUAL = 0.5


@dataclass(frozen=True)
class AudioFeatures:
    """A clip prepared for gemma4a: log-mel features [T0, n_mel] (padded frames 0), the frames'
    validity, and the clip's soft-token count (valid frames after the two stride-2 convs)."""
    features: np.ndarray
    mask: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(subsampled_mask(self.mask).sum())


def subsampled_mask(mask: np.ndarray) -> np.ndarray:
    """The frames' validity after the two stride-2 convolutions (transformers: mask[::2] twice)."""
    return np.asarray(mask, bool)[::2][::2]


def frames_after(t: int) -> int:
    """Rows after one 3x3 stride-2 pad-1 convolution."""
    return (t - 1) // 2 + 1


def prepare_audio(cfg: ConformerConfig, samples: np.ndarray, label: str = "audio") -> AudioFeatures:
    x = np.asarray(samples, np.float32).reshape(-1)
    if x.size == 0:
        raise MediaInputError(f"{label}: the audio has 0 samples")
    mel = log_mel(x, cfg.n_mel)
    feats = AudioFeatures(mel.features, mel.mask)
    if feats.n_tokens < 1:
        raise MediaInputError(f"{label}: {x.size} samples ({1000 * x.size / cfg.sample_rate:.1f} ms) are too short "
                              f"for the {cfg.projector} audio encoder (one soft token is {cfg.frame} samples)")
    return feats


def input_names(t0: int, t1: int) -> dict[str, str]:
    return {"mel": f"mm.mel.{input_rows(t0)}", "mask0": f"mm.mel_mask.{input_rows(t0)}",
            "mask1": f"mm.sub_mask.{input_rows(t1)}"}


class _Builder(GraphBuilder):
    """GraphBuilder with the conformer's norms, gradient clips and its GGUF's clipped linears."""

    def __init__(self, cfg: ConformerConfig, specs: dict[str, WeightSpec], t0: int):
        super().__init__(specs, t0)
        self.cfg = cfg

    def rms(self, label: str, x: str, weight: str, cols: int) -> str:
        return self.emit(label, RmsNorm(x, x, self.w(weight) if weight else None, self.cfg.eps, cols))

    def clip(self, label: str, x: str) -> str:
        return self.emit(label, Clamp(x, x, -GRADIENT_CLIP, GRADIENT_CLIP))

    def linear(self, name: str, out: str, x: str) -> str:
        """A clipped linear with the GGUF's bounds (+-inf where absent)."""
        return self.clipped_linear(name, out, x, name + ".weight", self.cfg.clamps[name])


def conformer_graph(cfg: ConformerConfig, specs: dict[str, WeightSpec], t0: int, valid: int) -> Graph:
    """The encoder for a clip of t0 log-mel frames whose first `valid` soft tokens are real:
    inputs mel [t0, n_mel], mask0 [t0, 1] (frame validity), mask1 [t1, 1] (after the first conv);
    output [t2, n_out] (t2 = frames after both convs; the caller keeps the first `valid`)."""
    t1 = frames_after(t0)
    t2 = frames_after(t1)
    if not 1 <= valid <= t2:
        raise MediaInputError(f"a clip of {t0} mel frames has {t2} soft-token frames, not {valid} valid ones")
    b = _Builder(cfg, specs, t0)
    names = input_names(t0, t1)
    D, F, (c0, c1) = cfg.width, cfg.n_mel, cfg.channels
    f1 = frames_after(F)
    f2 = frames_after(f1)
    h1 = b.emit("conv1d.0", Conv2dNormRelu(b.buf("sub0", rows=t1, cols=f1 * c0), names["mel"], names["mask0"],
                                           b.w("a.conv1d.0.weight"), b.w("a.conv1d.0.norm.weight"), 1, c0, cfg.eps))
    h2 = b.emit("conv1d.1", Conv2dNormRelu(b.buf("sub1", rows=t2, cols=f2 * c1), h1, names["mask1"],
                                           b.w("a.conv1d.1.weight"), b.w("a.conv1d.1.norm.weight"), c0, c1, cfg.eps))
    x = b.emit("a.input_projection", MatMul(b.buf("x", rows=t2, cols=D), h2, b.w("a.input_projection.weight")))
    h = b.buf("h", rows=t2, cols=D)
    up = b.buf("up", rows=t2, cols=cfg.ffn)
    q, k, v, a = (b.buf(n, rows=t2, cols=D) for n in ("q", "k", "v", "attn"))
    wide = b.buf("pw1", rows=t2, cols=2 * D)
    g = b.buf("glu", rows=t2, cols=D)
    g2 = b.buf("dw", rows=t2, cols=D)
    hd = cfg.head_dim

    def ffn(p: str, sfx: str) -> None:
        b.clip(p + "ffn_clip" + sfx, b.emit(p + "ffn_in" + sfx, Scale(h, x, 1.0)))
        b.rms(p + "ffn_norm" + sfx, h, p + "ffn_norm" + sfx + ".weight", D)
        b.linear(p + "ffn_up" + sfx, up, h)
        b.emit(p + "ffn_silu" + sfx, Silu(up, up))
        b.linear(p + "ffn_down" + sfx, h, up)
        b.clip(p + "ffn_clip_out" + sfx, h)
        b.rms(p + "ffn_post_norm" + sfx, h, p + "ffn_post_norm" + sfx + ".weight", D)
        b.emit(p + "ffn_scale" + sfx, Scale(h, h, RESIDUAL))
        b.emit(p + "ffn_residual" + sfx, Add(x, x, h))

    for i in range(cfg.n_layer):
        p = f"a.blk.{i}."
        ffn(p, "")
        b.clip(p + "attn_clip", b.emit(p + "attn_in", Scale(h, x, 1.0)))
        b.rms(p + "attn_pre_norm", h, p + "attn_pre_norm.weight", D)
        for name, buf in (("attn_q", q), ("attn_k", k), ("attn_v", v)):
            b.linear(p + name, buf, h)
        b.emit(p + "attention", ChunkedAttention(a, q, k, v, b.w(p + "attn_k_rel.weight"), b.w(p + "per_dim_scale.weight"),
                                                 cfg.n_head, hd, 1.0 / math.sqrt(hd) / math.log(2), K_SCALE,
                                                 cfg.softcap, cfg.chunk, valid))
        b.linear(p + "attn_out", h, a)
        b.clip(p + "attn_clip_out", h)
        b.rms(p + "attn_post_norm", h, p + "attn_post_norm.weight", D)
        b.emit(p + "attn_residual", Add(x, x, h))
        b.emit(p + "conv_in", Scale(h, x, 1.0))
        # the converter maps HF lconv1d.pre_layer_norm to conv_norm and lconv1d.conv_norm to norm_conv
        b.rms(p + "conv_pre_norm", h, p + "conv_norm.weight", D)
        b.linear(p + "conv_pw1", wide, h)
        b.emit(p + "conv_glu", Glu(g, wide))
        b.emit(p + "conv_dw", DepthwiseConv1d(g2, g, b.w(p + "conv_dw.weight")))
        b.clip(p + "conv_clip", g2)
        b.rms(p + "conv_post_norm", g2, p + "norm_conv.weight", D)
        b.emit(p + "conv_silu", Silu(g2, g2))
        b.linear(p + "conv_pw2", h, g2)
        b.emit(p + "conv_residual", Add(x, x, h))
        ffn(p, "_1")
        b.clip(p + "out_clip", x)
        b.rms(p + "ln2", x, p + "ln2.weight", D)
    o = b.emit("pre_encode.out", MatMul(b.buf("enc", rows=t2, cols=cfg.out_dims), x, b.w("a.pre_encode.out.weight")))
    b.emit("pre_encode.out.bias", AddVector(o, o, b.w("a.pre_encode.out.bias")))
    b.emit("pre_projection_norm", RmsNorm(o, o, None, cfg.rms_eps, cfg.out_dims))
    out = b.emit("input_projection", MatMul(b.buf("soft", rows=t2, cols=cfg.n_out), o, b.w("mm.a.input_projection.weight")))
    inputs = {names["mel"]: Buffer(names["mel"], input_rows(t0), F),
              names["mask0"]: Buffer(names["mask0"], input_rows(t0), 1),
              names["mask1"]: Buffer(names["mask1"], input_rows(t1), 1)}
    return b.graph(out, inputs)


def graph_inputs(feats: AudioFeatures) -> dict[str, np.ndarray]:
    """The conformer graph's per-call inputs for a clip (padded to their buffers' rows)."""
    t0 = feats.features.shape[0]
    t1 = frames_after(t0)
    names = input_names(t0, t1)

    def pad(a: np.ndarray, rows: int) -> np.ndarray:
        out = np.zeros((rows, a.shape[1]), np.float32)
        out[:a.shape[0]] = a
        return out
    m0 = np.asarray(feats.mask, np.float32).reshape(-1, 1)
    m1 = np.asarray(feats.mask, bool)[::2].astype(np.float32).reshape(-1, 1)
    return {names["mel"]: pad(np.asarray(feats.features, np.float32), input_rows(t0)),
            names["mask0"]: pad(m0, input_rows(t0)), names["mask1"]: pad(m1, input_rows(t1))}


__all__ = ["AudioFeatures", "conformer_graph", "frames_after", "graph_inputs", "prepare_audio", "subsampled_mask"]
