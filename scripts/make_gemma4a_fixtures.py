#!/usr/bin/env python3
"""A tiny random-weight Gemma 4 E2B-style model with the conformer audio encoder (`gemma4a`),
and transformers references for it (issue 24).

One interpreter with torch (g4rt never imports torch):
  /work/torchenv/bin/python scripts/make_gemma4a_fixtures.py
builds a `Gemma4ForConditionalGeneration` (E2B-style text: per-layer inputs, a shared-KV tail,
layer types ending [sliding, full], the fixtures' 2048-token vocabulary; a tiny ViT because the
converter requires a vision part; a tiny conformer audio encoder with the numbers llama.cpp
hard-codes: chunk 12, context left 13 / right 0, softcap 50, conv kernel 5, eps 1e-6), with
every norm, scale, bias and clip bound re-randomized (transformers' init makes norms 1 and clip
bounds infinite, which would hide bugs), saves it HF-style, converts it with llama.cpp's
`convert_hf_to_gguf.py` (text and `--mmproj`, both `--outtype f32`; the vocabulary is copied
from `shared/fixtures-mm/models/g4u-mm-F32.gguf`, the converter's own set_vocab replaced), and
writes the references computed by transformers in float64 (eager attention):

  tests/data/gemma4a/g4a-F32.gguf, mmproj-g4a-F32.gguf, g4a-F32.exact.npz

npz keys per prompt i (k = audio clip of prompt i) as shared/fixtures-mm/README.md: ids_i,
mm_token_type_ids_i (3 on audio soft tokens), greedy_i (32), topk_ids_i / topk_val_i (16 per
position of ids_i + greedy_i, teacher-forced), last_i, audio_i_k (float32 16 kHz), the feature
extractor's input_features_i_k [frames, 128] and input_features_mask_i_k, and the soft tokens
embd_i_k [N, 64] (the rows placed into the input embeddings).

The subsampling channels are [128, 4], not the notes' [8, 4]: transformers sizes the input
projection as (channels[0] // 4) * channels[1], which equals the flattened conv output
(n_mel / 4) * channels[1] only when channels[0] = n_mel (128, the feature extractor's and
llama.cpp's default).

The script also checks g4rt's numpy log-mel (runtime/media/mel.py, loaded by path: numpy only)
against the feature extractor on every clip.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_convert  # noqa: E402  (scripts/llama_convert.py)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "gemma4a"
WORK = ROOT / ".cache" / "gemma4a-fixtures"
VOCAB_GGUF = ROOT.parent / "shared" / "fixtures-mm" / "models" / "g4u-mm-F32.gguf"
LLAMA = llama_convert.LLAMA
SEED = 24
VOCAB = 2048
PAD, EOS, BOS, BOI, BOA, IMAGE, AUDIO, EOI, EOA, VIDEO = 0, 1, 2, 17, 18, 19, 20, 21, 22, 23
N_GREEDY = 32
TOPK = 16

#: (name, text ids before, clip lengths in samples, text ids after); every clip's placeholder
#: run sits between <|audio> and <audio|>. Lengths are not multiples of 128 or 640, so the last
#: mel frames are invalid (masked); 5900 and 3340 samples leave the last soft-token frame invalid
#: too (a masked attention key, a row dropped), and the chunk boundary (12 soft tokens) is crossed.
PROMPTS = [
    ("audio", [300, 301, 302], [16000 - 37], [400, 401]),
    ("audio-short-text", [310], [5900], [410, 411, 412, 413]),
    ("two-clips", [320, 321], [9137, 3340], [420]),
]


def waveform(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / 16000.0
    f = rng.uniform(120, 3000, size=4)
    x = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * fi * t + rng.uniform(0, 6)) for fi in f)
    x = x + 0.02 * rng.standard_normal(n)
    return (np.round(np.clip(x, -1, 1) * 32767) / 32768).astype(np.float32)   # int16-exact


def load_mel():
    spec = importlib.util.spec_from_file_location("g4rt_mel", ROOT / "runtime" / "media" / "mel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_model():
    import torch
    from transformers import (Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig,
                              Gemma4VisionConfig)
    torch.manual_seed(SEED)
    text = Gemma4TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        sliding_window=16, rms_norm_eps=1e-6, hidden_size_per_layer_input=16, vocab_size_per_layer_input=VOCAB,
        num_kv_shared_layers=2, tie_word_embeddings=True, max_position_embeddings=4096,
        final_logit_softcapping=30.0, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=16, patch_size=4, pooling_kernel_size=3,
                                position_embedding_size=32, use_clipped_linears=True, standardize=True)
    audio = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              subsampling_conv_channels=[128, 4], conv_kernel_size=5, attention_chunk_size=12,
                              attention_context_left=13, attention_context_right=0, attention_logit_cap=50.0,
                              use_clipped_linears=True, rms_norm_eps=1e-6, output_proj_dims=32)
    cfg = Gemma4Config(text_config=text, vision_config=vision, audio_config=audio, boi_token_id=BOI,
                       eoi_token_id=EOI, image_token_id=IMAGE, video_token_id=VIDEO, boa_token_id=BOA,
                       eoa_token_index=EOA, audio_token_id=AUDIO, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    model = Gemma4ForConditionalGeneration(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scalar"):
                p.copy_(0.5 + torch.rand_like(p))
            elif name.endswith("per_dim_scale"):
                p.copy_(0.5 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif p.ndim == 1:                      # norm weights: Gemma 4 multiplies by w itself
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "embed_tokens" in name and "per_layer" not in name:
                p.copy_(torch.randn_like(p) * 0.6)
            elif "position_embedding_table" in name:
                p.copy_(torch.randn_like(p) * 0.5)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand_like(b))
            elif name.endswith(("input_min", "output_min")):
                b.fill_(-float(1.5 + torch.rand(()).item()))      # clips the tails of ~unit activations
            elif name.endswith(("input_max", "output_max")):
                b.fill_(float(1.5 + torch.rand(()).item()))
            elif name.endswith("std_bias"):
                b.copy_(0.3 * torch.randn_like(b))
            elif name.endswith("std_scale"):
                b.copy_(1.0 + 0.3 * torch.randn_like(b))
    return model


def token_list() -> list[str]:
    import gguf
    r = gguf.GGUFReader(str(VOCAB_GGUF))
    field = r.fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]


def convert(hf: Path, out: Path, mmproj: bool) -> None:
    llama_convert.convert(hf, out, VOCAB_GGUF, mmproj=mmproj)


def patch_float64_attention() -> None:
    """transformers' audio attention keeps q/k/v in float32 (`.float()`) but multiplies q by the
    float64 softplus(per_dim_scale) in a float64 model, which makes q float64 and the q @ k
    product fail (Float vs Double). The patch casts that factor to q's dtype: the float32
    island of the attention stays as transformers means it (as in a float32 model)."""
    import inspect
    import textwrap
    from transformers.models.gemma4 import modeling_gemma4 as mg
    src = textwrap.dedent(inspect.getsource(mg.Gemma4AudioAttention.forward))
    old = "F.softplus(self.per_dim_scale)"
    assert src.count(old) == 1, "transformers' audio attention changed: revisit the float64 patch"
    ns: dict = {}
    exec(src.replace(old, old + ".to(query_states.dtype)"), mg.__dict__, ns)
    mg.Gemma4AudioAttention.forward = ns["forward"]


def main() -> None:
    import torch
    patch_float64_attention()
    from transformers import Gemma4AudioFeatureExtractor
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    model = build_model()
    hf = WORK / "g4a-hf"
    model.save_pretrained(hf)
    tokens = token_list()
    (hf / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}},
                                                   "added_tokens": []}))
    (hf / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}))
    convert(hf, OUT / "g4a-F32.gguf", mmproj=False)
    convert(hf, OUT / "mmproj-g4a-F32.gguf", mmproj=True)

    fe = Gemma4AudioFeatureExtractor()
    mel = load_mel()
    rng = np.random.default_rng(SEED)
    m64 = model.double().eval()
    ref: dict[str, np.ndarray] = {}
    mel_err = 0.0
    for i, (name, before, clips, after) in enumerate(PROMPTS):
        ids, types = [BOS] + before, [0] * (1 + len(before))
        feats, masks = [], []
        for k, n in enumerate(clips):
            wav = waveform(n, rng)
            f = fe([wav], sampling_rate=16000, return_tensors="np")
            x, m = f["input_features"][0].astype(np.float32), f["input_features_mask"][0].astype(bool)
            ours = mel.log_mel(wav)
            assert ours.features.shape == x.shape and (ours.mask == m).all(), (ours.features.shape, x.shape)
            mel_err = max(mel_err, float(np.abs(ours.features - x).max()))
            with torch.no_grad():
                out = m64.model.get_audio_features(torch.from_numpy(x[None]).double(), torch.from_numpy(m[None]),
                                                   return_dict=True)
            valid = out.attention_mask[0].numpy().astype(bool)
            embd = out.pooler_output[0][torch.from_numpy(valid)].numpy().astype(np.float32)
            ref[f"audio_{i}_{k}"], ref[f"embd_{i}_{k}"] = wav, embd
            ref[f"input_features_{i}_{k}"], ref[f"input_features_mask_{i}_{k}"] = x, m.astype(np.int32)
            feats.append(x)
            masks.append(m)
            ids += [BOA] + [AUDIO] * len(embd) + [EOA]
            types += [0] + [3] * len(embd) + [0]
            print(f"prompt {i} clip {k}: {n} samples -> {x.shape[0]} mel frames -> {len(embd)} soft tokens")
        ids += after
        types += [0] * len(after)
        T = max(a.shape[0] for a in feats)
        feat = np.zeros((len(feats), T, 128), np.float64)
        fmask = np.zeros((len(feats), T), bool)
        for k, (a, m) in enumerate(zip(feats, masks)):
            feat[k, :len(a)], fmask[k, :len(m)] = a, m

        def logits_of(seq):
            with torch.no_grad():
                o = m64(input_ids=torch.tensor([seq]), input_features=torch.from_numpy(feat),
                        input_features_mask=torch.from_numpy(fmask), use_cache=False)
            return o.logits[0].numpy()
        assert T == max(f.shape[0] for f in feats)
        # greedy (placeholder ids excluded from the argmax), then teacher-forced over everything
        seq = list(ids)
        for _ in range(N_GREEDY):
            last = logits_of(seq)[-1].copy()
            last[[IMAGE, AUDIO, VIDEO]] = -np.inf
            seq.append(int(np.argmax(last)))
        full = logits_of(seq)
        order = np.argsort(-full, axis=1, kind="stable")[:, :TOPK]
        ref[f"ids_{i}"] = np.array(ids, np.int32)
        ref[f"mm_token_type_ids_{i}"] = np.array(types, np.int32)
        ref[f"greedy_{i}"] = np.array(seq[len(ids):], np.int32)
        ref[f"topk_ids_{i}"] = order.astype(np.int32)
        ref[f"topk_val_{i}"] = np.take_along_axis(full, order, axis=1).astype(np.float32)
        ref[f"last_{i}"] = full[len(ids) - 1].astype(np.float32)
    np.savez_compressed(OUT / "g4a-F32.exact.npz", **ref)
    print(f"mel.py vs the feature extractor: max |diff| {mel_err:.3g}")
    (OUT / "MANIFEST.json").write_text(json.dumps({
        "seed": SEED, "prompts": [p[0] for p in PROMPTS], "mel_max_abs_diff": mel_err,
        "token_ids": {"pad": PAD, "bos": BOS, "boa": BOA, "audio": AUDIO, "eoa": EOA},
        "soft_tokens": {k: int(v.shape[0]) for k, v in ref.items() if k.startswith("embd_")},
        "transformers": __import__("transformers").__version__, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
