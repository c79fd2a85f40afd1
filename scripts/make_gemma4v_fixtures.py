#!/usr/bin/env python3
"""A tiny random-weight Gemma 4 with the `gemma4v` ViT vision encoder (the projector of E2B / E4B /
26B-A4B / 31B), converted by llama.cpp's converter, and transformers references in float64 (issue 24).

Two phases, one interpreter with torch (g4rt never imports torch):
  build (torch + transformers + llama.cpp's converter): a `Gemma4ForConditionalGeneration` with a
        small dense non-PLE text model (26B/31B style: layer types [sliding x3, full], window 16,
        vocab 2048) and a small ViT (patch 4, pooling 3, standardize, clipped linears with finite
        random bounds), every norm / position table / clip bound / std buffer / layer scalar
        re-randomized (transformers' init makes norms 1 and bounds infinite, which hides bugs),
        saved HF-style, then converted by `convert_hf_to_gguf.py` (text `--outtype f32`; vision
        `--mmproj --outtype f32`). The text converter's set_vocab is replaced by a copy of the
        2048-token vocabulary of shared/fixtures-mm/models/g4u-mm-F32.gguf (CONTROL types for the
        media tokens); everything else is the converter's own code path.
  ref   (torch, float64, eager attention): the image prompts of shared/fixtures-mm (their ids and
        images: 12x12 px per soft token there too), pixel values and positions by transformers'
        own Gemma4ImageProcessorPil functions with the resize off (the images are pre-sized), the soft
        tokens from `get_image_features`, teacher-forced top-16 logits on ids + greedy with the
        mask generate() builds (create_masks_for_generate: sliding layers AND(window, OR(causal,
        same image)), full layers causal), and a table of the processor's resize sizes / token
        counts for g4rt's budget.py to be checked against.

  /work/torchenv/bin/python scripts/make_gemma4v_fixtures.py all       # build, ref, q4
  q4    g4v-Q4_0-pure.gguf (every text matrix Q4_0; see quantize) and its reference: the same
        model with each of those matrices replaced by its exact dequantization.
Outputs in tests/data/gemma4v/: g4v-F32.gguf, g4v-Q4_0-pure.gguf, mmproj-g4v-F32.gguf, *.exact.npz,
resize-table.json, recipe.json (the HF checkpoint stays in .cache/gemma4v-fixtures/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_convert  # noqa: E402  (scripts/llama_convert.py)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "gemma4v"
WORK = ROOT / ".cache" / "gemma4v-fixtures"
FIXTURES_MM = Path(os.environ.get("G4RT_FIXTURES_MM", ROOT.parent / "shared" / "fixtures-mm"))
VOCAB_GGUF = FIXTURES_MM / "models" / "g4u-mm-F32.gguf"
MM_REF = FIXTURES_MM / "ref" / "g4u-mm-F32.exact.npz"
LLAMA = llama_convert.LLAMA

#: fixtures-mm prompts with images only (0 image-question, 1 two-images, 4 chat-image)
PROMPTS = [0, 1, 4]
TOKENS = dict(pad=0, eos=1, bos=2, boi=17, boa=18, image=19, audio=20, eoi=21, eoa=22, video=23)
TEXT = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, global_head_dim=64, sliding_window=16,
            layer_types=["sliding_attention"] * 3 + ["full_attention"], final_logit_softcapping=30.0,
            rms_norm_eps=1e-6, hidden_size_per_layer_input=0, vocab_size_per_layer_input=0,
            tie_word_embeddings=True, use_bidirectional_attention="vision", max_position_embeddings=4096,
            pad_token_id=0, bos_token_id=2, eos_token_id=1)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=2, head_dim=16, patch_size=4, pooling_kernel_size=3,
              position_embedding_size=32, rms_norm_eps=1e-6, standardize=True, use_clipped_linears=True)
GREEDY = 32
#: token embedding std: small enough that the residual stream is not just the input token (with
#: tied embeddings a larger one makes every position predict its own token: greedy repeats one id)
EMBED_STD = 0.06
SEED = 24
#: (height, width, max_soft_tokens) for the resize table (patch 16 x pooling 3 = 48 px, the real models')
RESIZE_CASES = [(512, 512, 280), (480, 640, 280), (1080, 1920, 280), (100, 3000, 280), (3000, 100, 70),
                (224, 224, 70), (768, 1024, 1120), (333, 517, 560), (48, 48, 140), (10, 1000, 280)]


# ---- phase 1: build and convert ------------------------------------------------------------------
def build() -> None:
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig

    torch.manual_seed(SEED)
    cfg = Gemma4Config(text_config=Gemma4TextConfig(**TEXT), vision_config=Gemma4VisionConfig(**VISION),
                       audio_config=None, boi_token_id=TOKENS["boi"], eoi_token_id=TOKENS["eoi"],
                       image_token_id=TOKENS["image"], video_token_id=TOKENS["video"],
                       boa_token_id=TOKENS["boa"], eoa_token_index=TOKENS["eoa"], audio_token_id=TOKENS["audio"])
    model = Gemma4ForConditionalGeneration(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position_embedding_table" in name:
                p.copy_(torch.randn_like(p) * 0.5)
            elif p.ndim == 1:                          # norms: Gemma 4 multiplies by w as stored
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p) * EMBED_STD)
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand_like(b))
            elif name.endswith(("input_min", "output_min")):
                b.copy_(-(1.5 + 1.5 * torch.rand_like(b)))      # finite: some values are clipped
            elif name.endswith(("input_max", "output_max")):
                b.copy_(1.5 + 1.5 * torch.rand_like(b))
            elif name.endswith("std_bias"):
                b.copy_(torch.randn_like(b))
            elif name.endswith("std_scale"):
                b.copy_(0.5 + torch.rand_like(b))
    hf = WORK / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf)
    (hf / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.0, 0.0, 0.0],
                                                             "image_std": [1.0, 1.0, 1.0]}))
    write_token_count(hf)
    convert(hf, OUT / "g4v-F32.gguf", mmproj=False)
    convert(hf, OUT / "mmproj-g4v-F32.gguf", mmproj=True)


def write_token_count(hf: Path) -> None:
    """The converter trims token_embd to the tokenizer's size: write the vocabulary's token list
    (the vocabulary itself is copied by llama_convert.convert)."""
    import gguf
    r = gguf.GGUFReader(str(VOCAB_GGUF))
    field = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == TEXT["vocab_size"], len(vocab)
    (hf / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": []}))


def convert(hf: Path, out: Path, mmproj: bool) -> None:
    llama_convert.convert(hf, out, VOCAB_GGUF, mmproj=mmproj)


# ---- phase 2: the transformers reference (float64) -----------------------------------------------
def _processor_functions() -> dict:
    """The module-level functions of transformers' image_processing_pil_gemma4.py, executed from
    its source (ast): importing the module needs Pillow in the torch env, which it lacks."""
    import ast
    import math
    import transformers.models.gemma4 as pkg
    src = (Path(pkg.__file__).parent / "image_processing_pil_gemma4.py").read_text()
    tree = ast.parse(src)
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)
             and n.name in ("get_aspect_ratio_preserving_size", "convert_image_to_patches")]
    ns = {"math": math, "np": np}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), "image_processing_pil_gemma4.py", "exec"), ns)
    return ns


def processor_patches(rgb: np.ndarray):
    """pixel_values [N, 48] and positions [N, 2] as Gemma4ImageProcessorPil's _preprocess makes them
    with the resize off (the image is pre-sized to a multiple of 12 px): rescale by 1/255 (float32),
    its convert_image_to_patches on the CHW image, its meshgrid positions; no padding."""
    fn = _processor_functions()
    p = VISION["patch_size"]
    chw = (rgb.astype(np.float32) * np.float32(1 / 255)).transpose(2, 0, 1)
    pv = fn["convert_image_to_patches"](chw, p).astype(np.float32)
    grid_x, grid_y = np.meshgrid(np.arange(chw.shape[2] // p), np.arange(chw.shape[1] // p), indexing="xy")
    pos = np.stack([grid_x, grid_y], axis=-1).reshape(pv.shape[0], 2).astype(np.int32)
    # = the plain layout: row-major patches, each (row, col, channel); positions (x = col, y = row)
    h, w, _ = rgb.shape
    plain = (rgb.astype(np.float32) * np.float32(1 / 255)).reshape(h // p, p, w // p, p, 3) \
        .transpose(0, 2, 1, 3, 4).reshape(-1, p * p * 3)
    assert np.array_equal(pv, plain), "processor patches differ from the plain layout"
    n = np.arange(pv.shape[0])
    assert np.array_equal(pos, np.stack([n % (w // p), n // (w // p)], 1)), "positions differ"
    return pv, pos


def resize_table() -> list[dict]:
    size = _processor_functions()["get_aspect_ratio_preserving_size"]
    rows = []
    for h, w, t in RESIZE_CASES:
        th, tw = size(h, w, patch_size=16, max_patches=t * 9, pooling_kernel_size=3)
        rows.append(dict(height=h, width=w, max_soft_tokens=t, target_height=th, target_width=tw,
                         soft_tokens=(th // 48) * (tw // 48)))
    return rows


def quantize() -> None:
    """g4v-Q4_0-pure.gguf: every matrix of the text model (token_embd included) Q4_0, norms and
    1-D tensors F32, as `llama-quantize --pure Q4_0` makes it; quantized here by gguf-py's Q4_0
    (llama.cpp's reference rounding), the llama-quantize binary not being built in this tree."""
    sys.path.insert(0, str(LLAMA / "gguf-py"))
    import gguf
    from gguf import quants
    r = gguf.GGUFReader(str(OUT / "g4v-F32.gguf"))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(str(OUT / "g4v-Q4_0-pure.gguf"), arch)
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k in ("general.architecture", "general.file_type"):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, f.contents(), f.types[0], sub_type=f.types[1])
        else:
            w.add_key_value(k, f.contents(), f.types[0])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    for t in r.tensors:
        data = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.F32 and data.ndim == 2 and data.shape[1] % 32 == 0:
            w.add_tensor(t.name, quants.quantize(data, gguf.GGMLQuantizationType.Q4_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dequantized_text_weights(model, stem: str) -> int:
    """Replace every text-model matrix of `model` by its exact dequantization from OUT/stem.gguf
    (found by value in the F32 file, which holds the HF values as they are); the count."""
    import torch
    sys.path.insert(0, str(LLAMA / "gguf-py"))
    import gguf
    from gguf import quants
    f32 = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(OUT / "g4v-F32.gguf")).tensors}
    q = {t.name: t for t in gguf.GGUFReader(str(OUT / f"{stem}.gguf")).tensors}
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim != 2 or "language_model" not in name:
                continue
            v = p.detach().float().numpy()
            hit = [k for k, a in f32.items() if a.shape == v.shape and np.array_equal(a, v)]
            assert len(hit) == 1, (name, hit)
            t = q[hit[0]]
            if t.tensor_type != gguf.GGMLQuantizationType.F32:
                p.copy_(torch.from_numpy(quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)))
                n += 1
    return n


def reference(stem: str = "g4v-F32") -> None:
    import torch
    from transformers import Gemma4ForConditionalGeneration

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = Gemma4ForConditionalGeneration.from_pretrained(WORK / "hf", attn_implementation="eager")
    model = model.double().eval()
    if stem != "g4v-F32":
        print(f"{stem}: {dequantized_text_weights(model, stem)} matrices dequantized")
    mm = np.load(MM_REF)
    out = {}
    never = [TOKENS["image"], TOKENS["audio"], TOKENS["video"]]    # placeholders never predicted

    def forward(ids, types, feats):
        t_ids = torch.tensor(ids[None].astype(np.int64))
        t_types = torch.tensor(types[None].astype(np.int64))
        with torch.no_grad():
            emb = model.model.get_input_embeddings()(torch.where(t_ids == TOKENS["image"], 0, t_ids))
            if feats is not None:
                mask = (t_ids == TOKENS["image"])[..., None].expand_as(emb)
                emb = emb.masked_scatter(mask, feats)
            masks = model.create_masks_for_generate(model.config, emb, None, None,
                                                    torch.arange(len(ids))[None], mm_token_type_ids=t_types)
            o = model(inputs_embeds=emb, attention_mask=masks, position_ids=torch.arange(len(ids))[None])
        return o.logits[0].numpy()

    for j, i in enumerate(PROMPTS):
        ids = mm[f"ids_{i}"].astype(np.int32)
        types = mm[f"mm_token_type_ids_{i}"].astype(np.int32)
        feats, k = [], 0
        while f"image_{i}_{k}" in mm:
            rgb = np.asarray(mm[f"image_{i}_{k}"], np.uint8)
            pv, pos = processor_patches(rgb)
            with torch.no_grad():
                f = model.model.get_image_features(torch.from_numpy(pv.astype(np.float64))[None],
                                                   torch.from_numpy(pos.astype(np.int64))[None],
                                                   return_dict=True).pooler_output[0]
            out[f"image_{j}_{k}"] = rgb
            out[f"pixel_values_{j}_{k}"] = pv
            out[f"image_position_ids_{j}_{k}"] = pos
            out[f"embd_{j}_{k}"] = f.numpy().astype(np.float32)
            feats.append(f)
            k += 1
        feat = torch.cat(feats)
        assert int((ids == TOKENS["image"]).sum()) == feat.shape[0]
        seq, greedy = ids.copy(), []
        types_g = types.copy()
        for _ in range(GREEDY):             # greedy, full recompute each step (no cache subtleties)
            lg = forward(seq, types_g, feat)[-1]
            lg[never] = -np.inf
            greedy.append(int(lg.argmax()))
            seq = np.append(seq, greedy[-1]).astype(np.int32)
            types_g = np.append(types_g, 0).astype(np.int32)
        logits = forward(seq, types_g, feat)
        causal = None
        if j == 0:                          # the same prompt with images causal (the mask matters)
            causal = forward_causal(model, seq, feat)
        order = np.argsort(-logits, axis=1, kind="stable")[:, :16]
        out[f"ids_{j}"] = ids
        out[f"mm_token_type_ids_{j}"] = types
        out[f"greedy_{j}"] = np.array(greedy, np.int32)
        out[f"topk_ids_{j}"] = order.astype(np.int32)
        out[f"topk_val_{j}"] = np.take_along_axis(logits, order, 1).astype(np.float32)
        out[f"last_{j}"] = logits[len(ids) - 1].astype(np.float32)
        if causal is not None:
            top1 = float(np.mean(causal.argmax(1) == logits.argmax(1)))
            print(f"prompt {j}: images causal vs the reference: top-1 {top1:.3f}, "
                  f"max |dlogit| {np.abs(causal - logits).max():.3f}")
        print(f"prompt {j} ({i} of fixtures-mm): {len(ids)} ids, images {[f.shape[0] for f in feats]}, "
              f"greedy {greedy[:8]}...")
    np.savez_compressed(OUT / f"{stem}.exact.npz", **out)
    (OUT / "resize-table.json").write_text(json.dumps(resize_table(), indent=1) + "\n")


def forward_causal(model, seq, feat):
    import torch
    t_ids = torch.tensor(seq[None].astype(np.int64))
    with torch.no_grad():
        emb = model.model.get_input_embeddings()(torch.where(t_ids == TOKENS["image"], 0, t_ids))
        emb = emb.masked_scatter((t_ids == TOKENS["image"])[..., None].expand_as(emb), feat)
        o = model(inputs_embeds=emb, position_ids=torch.arange(len(seq))[None])
    return o.logits[0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["build", "ref", "q4", "all"])
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    if a.phase in ("build", "all"):
        build()
    if a.phase in ("ref", "all"):
        reference()
    if a.phase in ("q4", "all"):
        quantize()
        reference("g4v-Q4_0-pure")
    (OUT / "recipe.json").write_text(json.dumps(dict(text=TEXT, vision=VISION, tokens=TOKENS, prompts=PROMPTS,
                                                     source_prompts="shared/fixtures-mm ref g4u-mm-F32.exact.npz",
                                                     greedy=GREEDY, seed=SEED, embed_std=EMBED_STD), indent=1) + "\n")


if __name__ == "__main__":
    main()
