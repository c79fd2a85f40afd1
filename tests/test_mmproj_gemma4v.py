"""gemma4v: the Gemma 4 ViT vision encoder (E2B / E4B / 26B-A4B / 31B) end to end, against
transformers' float64 references (tests/data/gemma4v, made by scripts/make_gemma4v_fixtures.py:
a tiny random Gemma4ForConditionalGeneration, 26B/31B-style dense text model, converted by
llama.cpp's converter). The loader, `info`, the soft tokens, parity on numpy and the native CPU,
the image mask, the resize table, and refusals of broken files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

from g4rt.engine import Engine
from g4rt.errors import G4rtError, MissingTensorError
from g4rt.tools.parity import compare, worst
from gguf_edit import rewrite_gguf

DATA = Path(__file__).resolve().parent / "data" / "gemma4v"
MODEL = DATA / "g4v-F32.gguf"
MMPROJ = DATA / "mmproj-g4v-F32.gguf"
N_EMBD = 64
#: F32, and every text matrix Q4_0 (its reference: the same model on the exact dequantization)
MODELS = ["g4v-F32", "g4v-Q4_0-pure"]


def ref(stem: str = "g4v-F32"):
    return np.load(DATA / f"{stem}.exact.npz")


def backend_opts(spec: str):
    """"numpy", "cpu" (exact, 2 threads), "cpu-auto" (the default precision), "cpu-<precision>-<threads>"."""
    name, _, rest = spec.partition("-")
    if name == "numpy":
        return "numpy", {}
    precision, _, threads = rest.partition("-")
    return "cpu", {"precision": precision or "exact", "threads": int(threads or 2)}


def make_prompter(eng: Engine, spec: str, bidirectional=None):
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.mmproj.prompter import MediaPrompter
    from g4rt.mmproj.reader import load_projector
    from g4rt.text.tokenizer import load_tokenizer
    proj = load_projector(MMPROJ, eng.config.n_embd)
    name, opts = backend_opts(spec)
    tok = load_tokenizer(eng.file)
    p = MediaPrompter(proj, MediaEncoder(proj, name, **opts), tok.token_to_id, eng.config.n_embd, tok.bos_id)
    if bidirectional is not None:
        p.bidirectional = bidirectional
    return p


def replay(spec: str, bidirectional=None, stem: str = "g4v-F32"):
    from g4rt.tools.parity_media import run_media_reference
    name, opts = backend_opts(spec)
    eng = Engine(DATA / f"{stem}.gguf", backend=name, ctx=256, **opts)
    p = make_prompter(eng, spec, bidirectional)
    try:
        out, embd = run_media_reference(eng, ref(stem), p)
    finally:
        p.close()
        eng.close()
    return compare(ref(stem), out), embd


# ---- the file -----------------------------------------------------------------------------------
def test_the_vit_config_from_the_file():
    from g4rt.mmproj.reader import load_projector
    p = load_projector(MMPROJ, N_EMBD)
    v, t = p.vision, p.vision.vit
    assert p.audio is None
    # clip.vision.patch_size 4, pooled 3 x 3 (llama.cpp's default n_merge): 12 px per soft token
    assert (v.projector, v.patch, v.width, v.pos_size, v.n_out) == ("gemma4v", 12, 32, 32, 64)
    assert (t.hf_patch, t.merge, t.n_layer, t.n_head, t.head_dim, t.ffn) == (4, 3, 2, 2, 16, 64)
    assert t.rope_base == 100.0 and t.standardize and round(v.rms_eps, 12) == 1e-6
    # every clipped linear of both blocks, with the fixture's finite random bounds
    assert len(t.clamps) == 14
    lo, hi, olo, ohi = t.bounds("v.blk.1.ffn_down")
    assert -3.0 <= lo <= -1.5 and 1.5 <= hi <= 3.0 and -3.0 <= olo <= -1.5 and 1.5 <= ohi <= 3.0


def test_info_describes_a_gemma4v_projector():
    from g4rt.tools.info import describe
    text = describe(MMPROJ)
    assert "gemma4v" in text and "ViT: 4x4 px patches, 2 blocks of width 32" in text, text
    assert "12x12 px" in text and "not runnable" not in text
    assert "| `v.patch_embd.weight` | F32 | [4, 4, 3, 32] |" in text


def test_the_memory_plan_counts_the_vit():
    from g4rt.mmproj.plan import projector_markdown
    from g4rt.mmproj.reader import load_projector
    text = projector_markdown(load_projector(MMPROJ, N_EMBD), ctx=256, image_tokens=36)
    assert "an image at 36 soft tokens: 38 context tokens" in text and "encoder buffers" in text, text


def test_images_are_bidirectional_by_the_text_width():
    from g4rt.mmproj.reader import images_bidirectional
    assert images_bidirectional("gemma4v", N_EMBD)               # the fixture, like 26B-A4B / 31B
    assert images_bidirectional("gemma4v", 5376) and images_bidirectional("gemma4v", 2816)
    assert not images_bidirectional("gemma4v", 1536) and not images_bidirectional("gemma4v", 2560)   # E2B, E4B
    eng = Engine(MODEL, backend="numpy", ctx=64)
    try:
        p = make_prompter(eng, "numpy")
        assert p.bidirectional
        p.close()
    finally:
        eng.close()


def _variant(tmp_path, name="v.gguf", **kw) -> Path:
    return rewrite_gguf(MMPROJ, tmp_path / name, **kw)


def test_a_projector_for_another_width_is_refused_with_both_numbers():
    from g4rt.mmproj.errors import ProjectorMismatchError
    from g4rt.mmproj.reader import load_projector
    with pytest.raises(ProjectorMismatchError, match=r"gemma4v projector gives 64-wide soft tokens.*128-wide"):
        load_projector(MMPROJ, 128)


@pytest.mark.parametrize("edit,error,message", [
    (dict(set_keys={"clip.vision.feed_forward_length": (48, GGUFValueType.UINT32)}), G4rtError,
     r"v.blk.0.ffn_gate.weight has shape \[32, 64\]; .*feed_forward_length 48.* make it \[32, 48\]"),
    (dict(set_keys={"clip.vision.embedding_length": (64, GGUFValueType.UINT32)}), G4rtError,
     r"v.patch_embd.weight has shape \[4, 4, 3, 32\]"),
    (dict(set_keys={"clip.vision.attention.head_count": (3, GGUFValueType.UINT32)}), G4rtError,
     "head size divisible by 4"),
    (dict(set_keys={"clip.vision.block_count": (1, GGUFValueType.UINT32)}), G4rtError, "more ViT blocks"),
    (dict(set_keys={"clip.vision.block_count": (3, GGUFValueType.UINT32)}), MissingTensorError, "v.blk.2"),
    (dict(drop_tensors=("v.blk.1.attn_k_norm.weight",)), MissingTensorError, "v.blk.1.attn_k_norm.weight"),
    (dict(drop_tensors=("v.std_scale",)), G4rtError, "come together"),
    (dict(set_keys={"clip.vision.projection_dim": (128, GGUFValueType.UINT32)}), G4rtError,
     r"mm.input_projection.weight has shape \[32, 64\]"),
])
def test_a_broken_gemma4v_file_is_refused(tmp_path, edit, error, message):
    from g4rt.mmproj.reader import load_projector
    with pytest.raises(error, match=message):
        load_projector(_variant(tmp_path, **edit))


def test_optional_clamps_and_standardization_may_be_absent(tmp_path):
    """No clamp scalars (use_clipped_linears false: the 26B / 31B) and no std buffers (E2B / E4B)."""
    from g4rt.gguf.reader import GGUFFile
    from g4rt.mmproj.reader import load_projector
    names = [n for n in GGUFFile(MMPROJ).tensors if n.endswith(("_min", "_max")) or n.startswith("v.std_")]
    p = load_projector(_variant(tmp_path, drop_tensors=tuple(names)), N_EMBD)
    assert p.vision.vit.clamps == () and not p.vision.vit.standardize


def test_a_truncated_file_is_refused(tmp_path):
    from g4rt.mmproj.reader import load_projector
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(MMPROJ.read_bytes()[: MMPROJ.stat().st_size // 2])
    with pytest.raises(G4rtError):
        load_projector(cut)


def test_an_image_larger_than_the_position_table_is_refused():
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.mmproj.errors import MediaInputError
    from g4rt.mmproj.reader import load_projector
    proj = load_projector(MMPROJ, N_EMBD)
    enc = MediaEncoder(proj, "numpy")
    # 32 table entries = 32 patches of 4 px: 10 soft tokens (30 patches) fit, 11 do not
    pos = np.array([[10, 0]], np.int32)
    with pytest.raises(MediaInputError, match="position table"):
        enc.encode_image(np.zeros((1, 432), np.float32), pos)
    assert enc.encode_image(np.zeros((1, 432), np.float32), np.array([[9, 9]], np.int32)).shape == (1, 64)


# ---- soft tokens ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["numpy", "cpu-exact-1", "cpu-exact-3"])
def test_soft_tokens_match_transformers(spec):
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.mmproj.reader import load_projector
    from g4rt.media.image import prepare_image
    r = ref()
    proj = load_projector(MMPROJ, N_EMBD)
    name, opts = backend_opts(spec)
    enc = MediaEncoder(proj, name, **opts)
    n_items = 0
    for key in [k for k in r.files if re.fullmatch(r"image_\d+_\d+", k)]:
        im = prepare_image(r[key], patch=proj.vision.patch, resize=False)
        got = enc.encode_image(im.pixel_values, im.positions)
        want = r["embd_" + key[len("image_"):]]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2e-5 * max(1.0, np.abs(want).max()), key
        n_items += 1
    enc.close()
    assert n_items == 4


def test_patches_as_the_processor_made_them():
    """g4rt's patches of each soft token are the processor's pixel_values (stored in the reference)."""
    from g4rt.mmproj.reader import load_projector
    from g4rt.mmproj.vision_vit import input_names, patch_inputs
    from g4rt.media.image import prepare_image
    r = ref()
    cfg = load_projector(MMPROJ).vision
    im = prepare_image(r["image_0_0"], patch=cfg.patch, resize=False)
    ins = patch_inputs(cfg, im.pixel_values, im.positions)
    names = input_names(im.n_tokens * 9)
    pos = ins[names["pos"]].astype(np.int64)
    pv, hpos = r["pixel_values_0_0"], r["image_position_ids_0_0"]
    # the processor's row of each g4rt row, by position; then HWC -> CHW and 2x-1
    cols = hpos[:, 0].max() + 1
    hf_rows = pv[pos[:, 1] * cols + pos[:, 0]].reshape(-1, 4, 4, 3).transpose(0, 3, 1, 2).reshape(-1, 48)
    assert np.array_equal(ins[names["pixels"]], np.float32(2) * (hf_rows - np.float32(0.5)))
    assert np.array_equal(ins[names["table"]][:, 1] - cfg.pos_size, pos[:, 1])


# ---- the text model with images -------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["numpy", "cpu"])
@pytest.mark.parametrize("stem", MODELS)
def test_image_prompts_at_float_accuracy(spec, stem):
    rows, embd = replay(spec, stem=stem)
    w = worst(rows)
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05, w
    assert w["greedy"] == 32, rows
    assert max(max(d) for d in embd) <= 1e-4


@pytest.mark.parametrize("stem", MODELS)
def test_image_prompts_at_the_default_precision(stem):
    # auto keeps this narrow model's matmuls exact (backends/cpu: AUTO_WIDE)
    w = worst(replay("cpu-auto", stem=stem)[0])
    assert w["top1"] >= 0.85 and w["max_dlogit"] <= 1.0, w


def test_integer_activations_with_images():
    # i16 is near-exact; q8 (llama.cpp's int8 rounding of activations) moves logits by ~0.4, which
    # on this fixture's close logits (median top-1/top-2 gap 0.1) flips 18 % of top-1 (0.815)
    # q8 is never what auto picks, so the 0.85 bar (for the default path, asserted above) is not
    # its gate: 0.75 is a regression floor under the measured 0.815, the Δ bar is the issue's
    w = worst(replay("cpu-i16", stem="g4v-Q4_0-pure")[0])
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05, w
    w = worst(replay("cpu-q8", stem="g4v-Q4_0-pure")[0])
    assert w["top1"] >= 0.75 and w["max_dlogit"] <= 1.0, w


def test_a_causal_mask_over_the_images_misses_the_bar():
    rows, _ = replay("numpy", bidirectional=False)
    assert all(r["top1"] < 0.99 or r["max_dlogit"] > 0.05 for r in rows), rows
    w = worst(rows)         # far off: most top-1 change, and greedy leaves the reference's path
    assert w["top1"] < 0.9 and w["max_dlogit"] > 0.25 and w["greedy"] < 32, rows


# ---- preprocessing --------------------------------------------------------------------------------
def test_resize_matches_the_gemma4_processor_table():
    """transformers' Gemma4ImageProcessor sizes (patch 16 x pooling 3 = 48 px; resize-table.json,
    computed by its own get_aspect_ratio_preserving_size) against g4rt.media.budget."""
    from g4rt.media.budget import target_size
    table = json.loads((DATA / "resize-table.json").read_text())
    assert len(table) >= 8
    for row in table:
        got = target_size(row["height"], row["width"], 48, max_tokens=row["max_soft_tokens"])
        assert got == (row["target_height"], row["target_width"]), row
        assert (got[0] // 48) * (got[1] // 48) == row["soft_tokens"] <= row["max_soft_tokens"]


# ---- through the API and on a GPU backend's path --------------------------------------------------
def test_the_api_gives_the_reference_ids_and_greedy():
    """g4rt.load(..., mmproj=) with the reference's images as arrays (image_min_tokens=1: kept as
    they are) and its prompt text: the same ids, and the reference's greedy tokens."""
    import g4rt
    r = ref()
    m = g4rt.load(MODEL, backend="cpu", ctx=256, mmproj=MMPROJ, image_min_tokens=1, precision="exact")
    try:
        ids = m.encode_prompt("First: <|image|> second: <|image|> Which one is brighter?")
        ids, rows, summary = m.media_prompt(ids, [r["image_1_0"], r["image_1_1"]], [])
        np.testing.assert_array_equal(ids, r["ids_1"])
        assert "2 images (51 tokens)" in summary
        toks = list(m.generate_ids(ids, 8, media=rows))
        assert toks == list(r["greedy_1"][:8])
    finally:
        m.close()


def test_image_prompts_on_the_cuda_emulated_driver(monkeypatch):
    """A GPU text model takes its soft tokens from the native CPU encoder, as for gemma4uv (the
    CUDA backend's host code on the emulated driver; no GPU here)."""
    from g4rt.tools.parity_media import run_media_reference
    monkeypatch.setenv("G4RT_CUDA_EMULATE", "numpy")
    eng = Engine(MODEL, backend="cuda", ctx=256)
    p = make_prompter(eng, "cpu")
    try:
        out, embd = run_media_reference(eng, ref(), p, n_greedy=8)
    finally:
        p.close()
        eng.close()
    w = worst(compare(ref(), out))
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05 and w["greedy"] == 8, w
