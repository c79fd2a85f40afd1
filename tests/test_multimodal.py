"""Images and audio through a mmproj GGUF (issue 24): the projector reader, the gemma4uv / gemma4ua
embedders as op lists, soft tokens in the text model (unscaled rows, the bidirectional
sliding-window image mask), and the user paths, against shared/fixtures-mm (transformers float64)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from conftest import vulkan_skip_reason
from g4rt.engine import Engine
from g4rt.errors import ContextOverflowError, G4rtError, UnsupportedModelError
from g4rt.tools.parity import compare, worst
from gguf_edit import rewrite_gguf

REPO = Path(__file__).resolve().parents[1]
MM = Path(os.environ.get("G4RT_FIXTURES_MM", REPO.parent / "shared" / "fixtures-mm"))
HAVE_MM = (MM / "MANIFEST.json").is_file()
pytestmark = pytest.mark.skipif(not HAVE_MM, reason="fixtures folder ../shared/fixtures-mm is absent "
                                                    "(set G4RT_FIXTURES_MM to point at it)")
MODELS = ["g4u-mm-F32", "g4u-mm-Q4_0-pure"]
MMPROJ = MM / "models" / "mmproj-g4u-mm-F32.gguf"


def model_path(name: str) -> Path:
    return MM / "models" / f"{name}.gguf"


def ref(name: str):
    return np.load(MM / "ref" / f"{name}.exact.npz")


def bar(name: str) -> dict:
    return json.loads((MM / "MANIFEST.json").read_text())["bars"]["references"][f"{name}.exact.npz"]["bar_vs_exact"]


def make_backend(spec: str):
    """"numpy", "cpu" (exact), "cpu-auto" (the default precision), "cpu-<precision>"."""
    name, _, precision = spec.partition("-")
    if name in ("numpy", "vulkan", "cuda"):
        return name, {}
    return "cpu", {"precision": precision or "exact", "threads": 2}


_engines: dict = {}


def engine(model: str, spec: str, **kw) -> Engine:
    key = (model, spec, tuple(sorted(kw.items())))
    if key not in _engines:
        name, opts = make_backend(spec)
        _engines[key] = Engine(model_path(model), backend=name, ctx=256, **opts, **kw)
    return _engines[key]


def prompter(eng: Engine, spec: str, bidirectional: bool = True):
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.mmproj.prompter import MediaPrompter
    from g4rt.mmproj.reader import load_projector
    from g4rt.text.tokenizer import load_tokenizer
    proj = load_projector(MMPROJ, eng.config.n_embd)
    name, opts = make_backend(spec)          # the encoder on the model's own backend kind
    tok = load_tokenizer(eng.file)
    p = MediaPrompter(proj, MediaEncoder(proj, name, **opts), tok.token_to_id, eng.config.n_embd, tok.bos_id)
    p.bidirectional = bidirectional
    return p


def replay(model: str, spec: str, bidirectional: bool = True, **engine_kw):
    from g4rt.tools.parity_media import run_media_reference
    eng = engine(model, spec, **engine_kw)
    out, embd = run_media_reference(eng, ref(model), prompter(eng, spec, bidirectional))
    return compare(ref(model), out), embd


# ---- the projector file -------------------------------------------------------------------------
def test_projector_config_from_the_file():
    from g4rt.mmproj.reader import load_projector
    p = load_projector(MMPROJ, 256)
    v, a = p.vision, p.audio
    # clip.vision.patch_size is 4: llama.cpp's hard-coded x3 merge makes the 12-px soft token
    assert (v.projector, v.patch, v.patch_values, v.width, v.pos_size, v.n_out) == ("gemma4uv", 12, 432, 64, 16, 256)
    assert (v.ln_eps, round(v.rms_eps, 12)) == (1e-5, 1e-6)
    assert (a.projector, a.frame, a.n_out, round(a.rms_eps, 12)) == ("gemma4ua", 640, 256, 1e-6)


def test_the_text_loader_refuses_a_projector_and_the_reverse():
    from g4rt.mmproj.errors import MmprojError
    from g4rt.mmproj.reader import load_projector
    with pytest.raises(UnsupportedModelError, match="projector"):
        Engine(MMPROJ, backend="numpy", ctx=16)
    with pytest.raises(MmprojError, match="not a multimodal projector"):
        load_projector(model_path("g4u-mm-F32"))


def _projector_variant(tmp_path, **kw) -> Path:
    return rewrite_gguf(MMPROJ, tmp_path / "mmproj-variant.gguf", **kw)


@pytest.mark.parametrize("ptype,error,message", [
    # the 12B's file relabelled gemma4v is read as a ViT: its placeholder sizes (0) are refused
    ("gemma4v", G4rtError, "feed_forward_length must be positive"),
    ("gemma3", G4rtError, "belongs to another model"),
    ("qwen2vl", G4rtError, "belongs to another model"),
])
def test_projector_types_other_than_the_12b_are_refused(tmp_path, ptype, error, message):
    from g4rt.mmproj.reader import load_projector
    path = _projector_variant(tmp_path, set_keys={"clip.vision.projector_type": (ptype, GGUFValueType.STRING)})
    with pytest.raises(error, match=message):
        load_projector(path, 256)


def test_tensor_shapes_are_checked_against_the_metadata(tmp_path):
    from g4rt.errors import MissingTensorError
    from g4rt.mmproj.errors import MmprojError
    from g4rt.mmproj.reader import load_projector
    wide = _projector_variant(tmp_path, set_keys={"clip.vision.embedding_length": (96, GGUFValueType.UINT32)})
    with pytest.raises(MmprojError, match=r"v.patch_embd.weight has shape \[432, 64\].*\[432, 96\]"):
        load_projector(wide)
    patch = rewrite_gguf(MMPROJ, tmp_path / "p.gguf", set_keys={"clip.vision.patch_size": (16, GGUFValueType.UINT32)})
    with pytest.raises(MmprojError, match="48 px patches"):
        load_projector(patch)
    missing = rewrite_gguf(MMPROJ, tmp_path / "m.gguf", drop_tensors=("v.patch_norm.3.bias",))
    with pytest.raises(MissingTensorError, match="v.patch_norm.3.bias"):
        load_projector(missing)


def _narrow_audio_projector(path: Path, width: int) -> Path:
    """A self-consistent gemma4ua-only projector whose soft tokens are `width` wide."""
    w = GGUFWriter(str(path), "clip")
    w.add_string("general.type", "mmproj")
    w.add_bool("clip.has_vision_encoder", False)
    w.add_bool("clip.has_audio_encoder", True)
    w.add_string("clip.audio.projector_type", "gemma4ua")
    w.add_uint32("clip.audio.projection_dim", width)
    w.add_uint32("clip.audio.embedding_length", 640)
    w.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-6)
    w.add_tensor("mm.a.input_projection.weight", np.random.default_rng(0).standard_normal((width, 640)).astype(np.float32),
                 raw_dtype=GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_projector_for_another_width_is_refused_with_both_numbers(tmp_path):
    import g4rt
    path = _narrow_audio_projector(tmp_path / "mmproj-narrow.gguf", 128)
    with pytest.raises(G4rtError, match=r"128-wide soft tokens.*256-wide embeddings"):
        g4rt.load(model_path("g4u-mm-F32"), backend="numpy", ctx=64, mmproj=path)


def test_info_describes_a_projector():
    from g4rt.tools.info import describe
    text = describe(MMPROJ)
    assert "## Projector" in text and "gemma4uv" in text and "12x12 px" in text
    assert "| `v.position_embd.weight` | F32 | [64, 16, 2] |" in text


# ---- soft tokens --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["numpy", "cpu", "cpu-auto"])
@pytest.mark.parametrize("model", MODELS)
def test_soft_tokens_match_the_reference(model, spec):
    from g4rt.tools.parity_media import reference_items
    r = ref(model)
    p = prompter(engine(model, "numpy"), spec)
    worst_d, n = 0.0, 0
    for i in range(5):
        _, diffs = reference_items(r, i, p)
        worst_d, n = max([worst_d, *diffs]), n + len(diffs)
    assert n == 7 and worst_d <= 1e-5, worst_d        # bar 1e-4; float32 reaches ~2e-6


def test_patches_go_in_the_ggufs_chw_column_order():
    from g4rt.mmproj.encoder import hwc_to_chw
    perm = hwc_to_chw(12)
    # GGUF column i = channel i // 144, row (i % 144) // 12, column i % 12 of the patch (HWC: row*36 + col*3 + ch)
    for i in (0, 1, 11, 12, 143, 144, 300, 431):
        ch, row, col = i // 144, (i % 144) // 12, i % 12
        assert perm[i] == row * 36 + col * 3 + ch
    assert sorted(perm) == list(range(432))


def test_an_image_larger_than_the_position_table_is_refused():
    from g4rt.mmproj.errors import MediaInputError
    p = prompter(engine("g4u-mm-F32", "numpy"), "numpy")
    n = 17 * 2
    pos = np.stack([np.arange(n) % 17, np.arange(n) // 17], axis=1)
    with pytest.raises(MediaInputError, match="16-entry position table"):
        p.encoder.encode_image(np.zeros((n, 432), np.float32), pos)


# ---- the text model with media ------------------------------------------------------------------
VULKAN = pytest.param("vulkan", marks=pytest.mark.skipif(vulkan_skip_reason() is not None,
                                                         reason=str(vulkan_skip_reason())))
EXACT = ["numpy", "cpu", VULKAN]


@pytest.mark.parametrize("spec", EXACT)
@pytest.mark.parametrize("model", MODELS)
def test_media_prompts_at_float_accuracy(model, spec):
    rows, _ = replay(model, spec)
    w = worst(rows)
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05, w
    # decode through the cache after a media prefill = the reference's own greedy tokens
    assert w["greedy"] == 32, rows


@pytest.mark.parametrize("driver", ["numpy", "sim"])
def test_media_prompts_on_the_cuda_stand_ins(monkeypatch, driver):
    """The CUDA backend's host code on the emulated driver (numpy kernels), and its .cu kernels
    on the CPU simulator (no GPU has run them)."""
    from g4rt.testing.cuda.simulator import sim_available
    if driver == "sim" and not sim_available()[0]:
        pytest.skip(f"CUDA simulator unavailable: {sim_available()[1]}")
    monkeypatch.setenv("G4RT_CUDA_EMULATE", driver)
    eng = Engine(model_path("g4u-mm-F32"), backend="cuda", ctx=256)
    try:
        from g4rt.tools.parity_media import run_media_reference
        out, _ = run_media_reference(eng, ref("g4u-mm-F32"), prompter(eng, "cuda"), n_greedy=8)
    finally:
        eng.close()
    w = worst(compare(ref("g4u-mm-F32"), out))
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05 and w["greedy"] == 8, w


def test_the_encoder_runs_on_the_models_gpu_backend_unless_told_or_on_a_cpu_driver(monkeypatch):
    """load(): the projector's encoder on the text model's backend kind (CUDA here on the emulated
    driver), on the native CPU with mmproj_offload=False (--no-mmproj-offload) and for a Vulkan
    device that is a CPU (lavapipe); the soft tokens agree either way."""
    import g4rt
    monkeypatch.setenv("G4RT_CUDA_EMULATE", "numpy")
    img = MM / "media" / "img_a.png"
    soft = {}
    for backend, offload, want in (("cuda", True, "cuda"), ("cuda", False, "cpu")):
        m = g4rt.load(model_path("g4u-mm-F32"), backend=backend, ctx=256, mmproj=MMPROJ, mmproj_offload=offload)
        try:
            assert m.media.encoder.backend.name == want
            assert f"encoded on {want}" in m.backend_reason
            plan = m.media.plan(m.encode_prompt("<|image|>x"), images=[img])
            soft[want] = m.media.soft_tokens(plan.items[0]).embd
        finally:
            m.close()
    np.testing.assert_allclose(soft["cuda"], soft["cpu"], rtol=0, atol=1e-5 * max(1.0, np.abs(soft["cpu"]).max()))
    if vulkan_skip_reason() is None:
        m = g4rt.load(model_path("g4u-mm-F32"), backend="vulkan", ctx=256, mmproj=MMPROJ)
        try:
            gpu = m.engine.backend
            assert m.media.encoder.backend.name == ("cpu" if gpu.info.is_cpu else "vulkan")
        finally:
            m.close()


@pytest.mark.parametrize("model", MODELS)
def test_media_prompts_at_the_default_precision(model):
    rows, _ = replay(model, "cpu-auto")
    w = worst(rows)
    assert w["top1"] >= 0.85 and w["max_dlogit"] <= 1.0, w


def test_integer_activations_with_media():
    # i16 (near-exact) and q8 (llama.cpp's rounding: its own distance is top-1 0.946, 0.43)
    w = worst(replay("g4u-mm-Q4_0-pure", "cpu-i16")[0])
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05, w
    w = worst(replay("g4u-mm-Q4_0-pure", "cpu-q8")[0])
    b = bar("g4u-mm-Q4_0-pure")
    assert w["top1"] >= b["min_top1"] and w["max_dlogit"] <= b["max_dlogit"], w


def test_a_causal_mask_over_the_images_misses_the_bar():
    rows, _ = replay("g4u-mm-F32", "numpy", bidirectional=False)
    b = bar("g4u-mm-F32")
    image_prompts = [r for r in rows if r["prompt"] != 2]           # prompt 2 is audio only
    assert all(r["top1"] < b["min_top1"] or r["max_dlogit"] > b["max_dlogit"] for r in image_prompts), rows
    audio = rows[2]
    assert audio["top1"] == 1.0 and audio["max_dlogit"] < 1e-3      # audio is causal either way


@pytest.mark.parametrize("spec", EXACT)
def test_images_are_prefilled_whole_whatever_the_chunk(spec):
    """Prefill chunks of 5 rows: an image block is never cut (a 36- or 64-token image runs as one
    pass), so every bar still holds."""
    rows, _ = replay("g4u-mm-F32", spec, prefill_chunk=5)
    w = worst(rows)
    # float accuracy (a cut image would be off by whole logits, as the causal test shows); top-1
    # at the fixture's bar: the native CPU's f16 cache rounds the 5-row chunks' keys, which
    # flips a near-tie or two
    assert w["top1"] >= bar("g4u-mm-F32")["min_top1"] and w["max_dlogit"] <= 0.05 and w["greedy"] == 32, w


def test_chunks_never_cut_an_image_block():
    eng = engine("g4u-mm-F32", "numpy", prefill_chunk=8)
    from g4rt.engine import MediaRows
    m = MediaRows(np.zeros((40, 256), np.float32), np.zeros(40, bool), ((3, 20), (22, 25), (30, 40)))
    cuts = eng._chunks(40, m)
    assert cuts == [(0, 3), (3, 20), (20, 28), (28, 30), (30, 40)]    # a block longer than a chunk: one pass
    for b0, b1 in m.blocks:
        assert any(s <= b0 and b1 <= e for s, e in cuts)


# ---- the Python API -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mm_model():
    import g4rt
    m = g4rt.load(model_path("g4u-mm-F32"), backend="cpu", ctx=256, mmproj=MMPROJ, image_min_tokens=1,
                  precision="exact")
    yield m
    m.close()


def _prompt_media(i: int):
    p = json.loads((MM / "prompts-mm.json").read_text())[i]
    images = [MM / "media" / f for f in p["media"] if f.endswith(".png")]
    audio = [MM / "media" / f for f in p["media"] if f.endswith(".wav")]
    return p, images, audio


@pytest.mark.parametrize("i", range(5))
def test_files_through_the_api_give_the_reference_ids_and_greedy(mm_model, i):
    p, images, audio = _prompt_media(i)
    r = ref("g4u-mm-F32")
    ids = mm_model.encode_prompt(p.get("text") or p["messages"], chat="messages" in p)
    ids, rows, summary = mm_model.media_prompt(ids, images, audio)
    np.testing.assert_array_equal(ids, r[f"ids_{i}"])
    assert "image" in summary or "audio" in summary
    toks = list(mm_model.generate_ids(ids, 32, media=rows))
    assert toks == list(r[f"greedy_{i}"][:len(toks)]) and len(toks) > 0


def test_generate_with_images_bytes_and_arrays(mm_model):
    from g4rt.media.image import load_image
    png = (MM / "media" / "img_a.png").read_bytes()
    want = "".join(mm_model.generate("<|image|>What is in this picture?", 6, images=[MM / "media" / "img_a.png"]))
    assert mm_model.last_stats.media == "1 image (36 tokens)" and mm_model.last_stats.media_tokens == 36
    assert "".join(mm_model.generate("<|image|>What is in this picture?", 6, images=[png])) == want
    assert "".join(mm_model.generate("What is in this picture?", 6, images=[load_image(png)])) == want  # no marker


def test_a_text_prompt_after_a_media_prompt_reuses_nothing_it_should_not(mm_model):
    """The media rows hold soft tokens, not their placeholder ids: a later prompt with the same
    ids but another image must not keep them from the cache."""
    a = "".join(mm_model.generate("<|image|>Describe.", 6, images=[MM / "media" / "img_a.png"]))
    b = "".join(mm_model.generate("<|image|>Describe.", 6, images=[MM / "media" / "img_b.png"]))
    assert mm_model.last_stats.reused_tokens == 0
    again = "".join(mm_model.generate("<|image|>Describe.", 6, images=[MM / "media" / "img_a.png"]))
    assert again == a and a != b


@pytest.fixture(scope="module")
def chat_model():
    """As `g4rt chat` loads it: sliding rings a prefill chunk longer, so a turn can move back."""
    import g4rt
    from g4rt.engine import CHAT_RING_SLACK
    m = g4rt.load(model_path("g4u-mm-F32"), backend="cpu", ctx=256, mmproj=MMPROJ, image_min_tokens=1,
                  precision="exact", ring_slack=CHAT_RING_SLACK)
    yield m
    m.close()


def test_a_chat_turn_after_an_image_keeps_the_image_rows_and_answers_as_a_cold_start(chat_model):
    """`g4rt chat`'s session sends every earlier image with each turn: its soft tokens come from
    the prompter's cache (not encoded again) and the KV rows of the image and the earlier turns
    are kept (keyed by the soft tokens, as the server's slots); the answer is a cold start's."""
    from g4rt.generation import ChatSession
    mm_model = chat_model
    img = MM / "media" / "img_a.png"
    chat = ChatSession(mm_model)
    list(chat.send("What is it?", images=[img], max_tokens=6))
    first = mm_model.last_stats
    hits = mm_model.media.cache_hits
    second = "".join(chat.send("And the colour?", max_tokens=6))
    st = mm_model.last_stats
    assert mm_model.media.cache_hits == hits + 1            # the image was not encoded again
    assert st.reused_tokens > first.media_tokens, (st.reused_tokens, first.media_tokens)
    assert st.reused_tokens <= first.prompt_tokens + first.generated_tokens
    msgs = list(chat.messages[:-1])
    mm_model.engine.reset()
    mm_model._cached = []
    cold = "".join(mm_model.generate(msgs, 6, chat=True, images=[img]))
    assert mm_model.last_stats.reused_tokens == 0 and cold == second


def test_more_media_than_markers_and_the_reverse(mm_model):
    from g4rt.mmproj.errors import MediaInputError
    img = MM / "media" / "img_a.png"
    with pytest.raises(MediaInputError, match="1 <\\|image\\|> marker but 2 images"):
        list(mm_model.generate("<|image|> and", 2, images=[img, img]))
    with pytest.raises(MediaInputError, match="2 <\\|image\\|> markers but 1 image"):
        list(mm_model.generate("<|image|> and <|image|>", 2, images=[img]))
    with pytest.raises(MediaInputError, match="<\\|audio\\|> marker"):
        list(mm_model.generate("<|audio|> hm", 2, images=[img]))      # audio marker, no audio
    with pytest.raises(MediaInputError, match="1 <\\|image\\|> marker but 0 images"):
        list(mm_model.generate("<|image|> what?", 2))


def test_too_many_media_tokens_for_the_context_before_any_work(mm_model, monkeypatch):
    img = MM / "media" / "img_e.png"      # 64 tokens each
    calls = []
    monkeypatch.setattr(mm_model.media.encoder, "encode_image", lambda *a: calls.append(a))
    with pytest.raises(ContextOverflowError, match=r"with its media \(4 images \(256 tokens\)\)"):
        list(mm_model.generate("<|image|><|image|><|image|><|image|>", 2, images=[img] * 4))
    assert calls == []


def test_media_without_a_projector_is_an_error():
    import g4rt
    from g4rt.mmproj.errors import MediaInputError
    m = g4rt.load(model_path("g4u-mm-F32"), backend="numpy", ctx=64)
    try:
        with pytest.raises(MediaInputError, match="projector"):
            list(m.generate("hi", 2, images=[MM / "media" / "img_a.png"]))
    finally:
        m.close()


# ---- the CLI ------------------------------------------------------------------------------------
def _g4rt(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "g4rt", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_cli_run_with_an_image_prints_text_and_names_the_media_tokens():
    r = _g4rt("run", model_path("g4u-mm-F32"), "--mmproj", MMPROJ, "--image", MM / "media" / "img_a.png",
              "--image-min-tokens", "1", "-p", "What is in this picture?", "-n", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert "with 1 image (36 tokens)" in r.stderr.splitlines()[-1]


def test_cli_run_finds_the_projector_beside_the_model(tmp_path):
    (tmp_path / "model.gguf").symlink_to(model_path("g4u-mm-F32"))
    (tmp_path / "mmproj-x.gguf").symlink_to(MMPROJ)
    r = _g4rt("run", tmp_path / "model.gguf", "--audio", MM / "media" / "aud_a.wav", "-p", "<|audio|>Hi", "-n", "2")
    assert r.returncode == 0, r.stderr
    assert "using the projector mmproj-x.gguf found beside the model" in r.stderr
    assert "with 1 audio clip (25 tokens)" in r.stderr


def test_cli_media_errors_are_one_line(tmp_path):
    r = _g4rt("run", model_path("g4u-mm-F32"), "--mmproj", MMPROJ, "--image", MM / "media" / "img_a.png",
              "--image", MM / "media" / "img_b.png", "-p", "<|image|> What?", "-n", "2", "-q")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["g4rt: error: the prompt has 1 <|image|> marker but 2 images were given"]
    (tmp_path / "model.gguf").symlink_to(model_path("g4u-mm-F32"))      # no projector beside it
    r = _g4rt("run", tmp_path / "model.gguf", "--image", MM / "media" / "img_a.png", "-p", "x", "-q")
    assert r.returncode != 0 and "give --mmproj" in r.stderr and "Traceback" not in r.stderr


def test_cli_parity_with_media_meets_the_bar():
    r = _g4rt("parity", model_path("g4u-mm-Q4_0-pure"), "--mmproj", MMPROJ, "--ref",
              MM / "ref" / "g4u-mm-Q4_0-pure.exact.npz", "--precision", "exact")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bar: met" in r.stdout and "soft tokens: worst max|Δ|" in r.stdout
    r = _g4rt("parity", model_path("g4u-mm-F32"), "--ref", MM / "ref" / "g4u-mm-F32.exact.npz")
    assert r.returncode != 0 and "give --mmproj" in r.stderr


def test_cli_chat_takes_images_and_audio_for_the_next_message():
    stdin = f"/image {MM / 'media' / 'img_a.png'}\nWhat is it?\n/audio {MM / 'media' / 'aud_a.wav'}\nAnd this?\n/exit\n"
    r = subprocess.run([sys.executable, "-m", "g4rt", "chat", str(model_path("g4u-mm-F32")), "--mmproj", str(MMPROJ),
                        "-n", "3", "--image-min-tokens", "1"], input=stdin, capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    summaries = [ln for ln in r.stderr.splitlines() if ln.startswith("[prompt")]
    # the history keeps the first turn's image: the second prompt holds both
    assert "with 1 image (36 tokens) (" in summaries[0]
    assert "with 1 image (36 tokens), 1 audio clip (25 tokens)" in summaries[1]


def test_cli_bench_with_media():
    r = _g4rt("bench", model_path("g4u-mm-F32"), "--mmproj", MMPROJ, "--image", MM / "media" / "img_b.png",
              "--audio", MM / "media" / "aud_b.wav", "--json", "--reps", "1")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["images"][0]["tokens"] > 0 and res["audio"][0]["tokens"] == 12
    assert res["prefill"]["tokens"] == 1 + 2 + res["images"][0]["tokens"] + 2 + 12 and res["prefill"]["tokens_per_s"] > 0


def test_speculative_decoding_with_media_is_plain_decoding(mm_model):
    import g4rt
    from g4rt.generation import GenerationStats
    prompt, img = "<|image|>What is in this picture? Say it twice.", [MM / "media" / "img_a.png"]
    ids, rows, _ = mm_model.media_prompt(mm_model.encode_prompt(prompt), img)
    want = list(mm_model.generate_ids(ids, 24, media=rows))
    m = g4rt.load(model_path("g4u-mm-F32"), backend="cpu", ctx=256, mmproj=MMPROJ, image_min_tokens=1,
                  precision="exact", spec="ngram", draft_max=4)
    try:
        ids, rows, _ = m.media_prompt(m.encode_prompt(prompt), img)
        stats = GenerationStats()
        got = list(m.generate_ids(ids, 24, stats=stats, media=rows))
    finally:
        m.close()
    assert got == want and stats.speculative is not None and stats.speculative.drafted > 0


def test_media_inputs_are_shared_by_size_class():
    """Prompts of many lengths (a server's) declare one input buffer per power-of-two class, not
    one per length; each length still gets its own exact answer."""
    from g4rt.engine import MediaRows
    eng = Engine(model_path("g4u-mm-F32"), backend="cpu", ctx=64, precision="exact")
    rng = np.random.default_rng(0)
    try:
        for n in range(17, 33):
            take = np.zeros(n, bool)
            take[2:9] = True
            m = MediaRows(rng.standard_normal((n, 256)).astype(np.float32), take, ((2, 9),))
            eng.reset()
            eng.forward(np.full(n, 19, np.int32), media=m)
        assert sorted(k for k in eng.backend.inputs if k.startswith("media.")) == \
            ["media.ahead.32", "media.embd.32", "media.take.32"]
    finally:
        eng.close()


def test_info_plan_counts_the_projector():
    r = _g4rt("info", model_path("g4u-mm-F32"), "--plan", "--ctx", "1024", "--mmproj", MMPROJ)
    assert r.returncode == 0, r.stderr
    assert "## Projector mmproj-g4u-mm-F32.gguf" in r.stdout
    assert "an image at 280 soft tokens: 282 context tokens" in r.stdout
    assert "the context of 1024 tokens holds at most 3 such image(s)" in r.stdout


def test_a_media_prompt_batched_with_text_sequences_gets_what_it_gets_alone():
    """Engine.forward_batch takes (slot, ids, MediaRows): the media prompt runs alone in its
    slot, the others batch; every sequence's logits are those it gets alone, and decoding on."""
    p = prompter(engine("g4u-mm-F32", "cpu"), "cpu")
    r = ref("g4u-mm-F32")
    from g4rt.tools.parity_media import reference_items
    items, _ = reference_items(r, 0, p)
    ids = np.asarray(r["ids_0"], np.int32)
    rows = p.rows_for(ids, items)
    eng = Engine(model_path("g4u-mm-F32"), backend="cpu", ctx=128, precision="exact", slots=3)
    try:
        texts = [np.array([2, 100, 200, 300], np.int32), np.array([2, 7, 8], np.int32)]
        alone = []
        for slot, x in ((0, ids), (1, texts[0]), (2, texts[1])):
            eng.reset(slot)
            alone.append(eng.forward(x, slot=slot, media=rows if slot == 0 else None)[-1])
        for slot in range(3):
            eng.reset(slot)
        got = eng.forward_batch([(0, ids, rows), (1, texts[0]), (2, texts[1])])
        for a, b in zip(alone, got):
            np.testing.assert_array_equal(a, b)
        assert int(np.argmax(got[0])) == int(r["greedy_0"][0])
        nxt = eng.forward_batch([(s, [int(np.argmax(got[s]))]) for s in range(3)])
        assert int(np.argmax(nxt[0])) == int(r["greedy_0"][1])
    finally:
        eng.close()


def test_synth_mmproj_writes_a_projector_with_the_12b_shapes(tmp_path):
    """`g4rt synth OUT --mmproj` (the encoders' full-size benchmark file) is a projector the
    reader accepts for a 3840-wide text model and refuses for another width."""
    from g4rt.mmproj.reader import load_projector
    from g4rt.tools.synth_mmproj import write_synthetic_mmproj
    out = tmp_path / "mmproj-12b.gguf"
    write_synthetic_mmproj(out, 3840)
    proj = load_projector(out, n_embd=3840)
    assert proj.vision is not None and proj.audio is not None
    v = proj.vision
    assert (v.projector, v.patch, v.width, v.pos_size, v.n_out) == ("gemma4uv", 48, 3840, 1120, 3840)
    assert "640" in proj.describe(), proj.describe()
    with pytest.raises(G4rtError, match="3840"):
        load_projector(out, n_embd=2560)
