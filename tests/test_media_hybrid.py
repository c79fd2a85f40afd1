"""Images and audio on hybrid placements: a layer split (`--gpu-layers N`: the first N layers on a
GPU backend, the rest on the native CPU) and the expert splits (`--cpu-moe`, `--n-cpu-moe`).

What the media path needs from the hybrid: the soft tokens (read by the TakeRows before the first
layer), the image-block mask (`Attention.ahead`, read by the sliding layers of either half) and, on
PLE models, the per-layer inputs built from the merged rows (handed over like any activation). Each
half's graph names the per-call inputs its ops read; HybridBackend declares them on both backends
and writes each to the halves that read it. The encoders run where generation.ENCODER_BACKENDS
says (the native CPU for a Vulkan / CUDA front).

GPU here: Vulkan on lavapipe and CUDA on its emulated driver (no GPU was lent). Bars: those of
tests/test_multimodal.py for the exact backends (top-1 >= 0.99, max |Δlogit| <= 0.05, greedy
32/32 against transformers' float64 references)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import vulkan_skip_reason
from test_multimodal import HAVE_MM, MM, MMPROJ, model_path, prompter, ref

pytestmark = pytest.mark.skipif(not HAVE_MM, reason="fixtures folder ../shared/fixtures-mm is absent "
                                                    "(set G4RT_FIXTURES_MM to point at it)")
NEED_VULKAN = pytest.mark.skipif(vulkan_skip_reason() is not None, reason=str(vulkan_skip_reason()))
REPO = Path(__file__).resolve().parents[1]
G4A = REPO / "tests" / "data" / "gemma4a"
MOE = MM.parent / "fixtures-moe" / "models" / "g4-moe-Q4_K_M.gguf"


def _hybrid(front_layers: int, front: str = "vulkan", moe_layers: int = 0, kv_dtype: str = "f16"):
    from g4rt.backends.cpu import CpuBackend
    from g4rt.backends.hybrid import HybridBackend, layers_split
    if front == "vulkan":
        from g4rt.backends.vulkan import VulkanBackend
        gpu = VulkanBackend(kv_dtype=kv_dtype)
    else:
        from test_cuda_compile import emulated
        gpu = emulated(kv_dtype)
    return HybridBackend(gpu, CpuBackend(kv_dtype=kv_dtype, precision="exact", threads=2),
                         layers_split(front_layers), back_expert_layers=moe_layers)


def _meets_the_bar(w: dict, greedy: int = 32) -> None:
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05 and w["greedy"] == greedy, w


def _halves_read(eng, n: int = 40) -> tuple[set, set]:
    """The per-call inputs the front and the back graph of an n-row media graph read."""
    g = eng.graph(n, all_logits=True, media=True)
    kinds = lambda cg: {name.split(".")[1] for name in cg.graph.inputs} if cg is not None else set()  # noqa: E731
    return kinds(g.front), kinds(g.back)


# ---- --gpu-layers against the references -------------------------------------------------------
@NEED_VULKAN
@pytest.mark.parametrize("model,layers", [("g4u-mm-F32", 1), ("g4u-mm-Q4_0-pure", 1), ("g4u-mm-F32", 4)])
def test_a_layer_split_meets_the_reference(model, layers):
    from g4rt.engine import Engine
    from g4rt.tools.parity import compare, worst
    from g4rt.tools.parity_media import run_media_reference
    hb = _hybrid(layers)
    eng = Engine(model_path(model), backend=hb, ctx=256)
    try:
        out, embd = run_media_reference(eng, ref(model), prompter(eng, "vulkan"))
        front, back = _halves_read(eng)
        part = hb.last_partition
        n_ops = len(eng.graph(40, all_logits=True, media=True).graph.ops)
    finally:
        eng.close()
    _meets_the_bar(worst(compare(ref(model), out)))
    assert max(d for ds in embd for d in ds) <= 1e-4
    # a real split: the soft tokens go in on the GPU half, both halves take the image mask
    assert 0 < part.split < n_ops and part.transfers
    assert front == {"embd", "take", "ahead"} and back == {"ahead"}, (front, back)


def test_a_layer_split_on_the_cuda_emulated_driver_meets_the_reference():
    from g4rt.engine import Engine
    from g4rt.tools.parity import compare, worst
    from g4rt.tools.parity_media import run_media_reference
    eng = Engine(model_path("g4u-mm-F32"), backend=_hybrid(2, "cuda-emulated", kv_dtype="f32"), ctx=256)
    try:
        # the split is under test, not the encoder: its soft tokens from the native CPU
        out, _ = run_media_reference(eng, ref("g4u-mm-F32"), prompter(eng, "cpu"), n_greedy=8)
    finally:
        eng.close()
    _meets_the_bar(worst(compare(ref("g4u-mm-F32"), out)), greedy=8)


@NEED_VULKAN
def test_the_per_layer_inputs_of_a_ple_model_cross_the_split():
    """gemma4a (E2B-style: per-layer inputs, shared KV): the PLE rows of soft tokens take the pad
    token's embedding on the GPU half and reach the CPU half's layers."""
    from g4rt.cli.checks import _parity_prompter
    from g4rt.engine import Engine
    from g4rt.tools.parity import compare, worst
    from g4rt.tools.parity_media import run_media_reference
    r = np.load(G4A / "g4a-F32.exact.npz")
    hb = _hybrid(1)
    eng = Engine(G4A / "g4a-F32.gguf", backend=hb, ctx=256)
    p = _parity_prompter(eng, G4A / "mmproj-g4a-F32.gguf", "cpu", 2, "exact")
    try:
        out, embd = run_media_reference(eng, r, p)
        graph = eng.graph(40, all_logits=True, media=True).graph
    finally:
        p.close()
        eng.close()
    _meets_the_bar(worst(compare(r, out)))
    ple_ops = {op.out for op, label in zip(graph.ops, graph.labels) if label == "per_layer_inputs"}
    assert ple_ops & set(hb.last_partition.transfers), hb.last_partition.transfers


# ---- the user's paths: greedy with an image = the unsplit run ------------------------------------
def _prompts():
    out = []
    for p in json.loads((MM / "prompts-mm.json").read_text()):
        out.append((p.get("text") or p["messages"], "messages" in p,
                    [MM / "media" / f for f in p["media"] if f.endswith(".png")],
                    [MM / "media" / f for f in p["media"] if f.endswith(".wav")]))
    return out


def _greedy(m, n: int = 24) -> list[list[int]]:
    outs = []
    for prompt, chat, images, audio in _prompts():
        ids, rows, _ = m.media_prompt(m.encode_prompt(prompt, chat=chat), images, audio)
        outs.append(list(m.generate_ids(ids, n, media=rows)))
    return outs


@NEED_VULKAN
def test_greedy_with_media_on_a_layer_split_is_the_unsplit_run():
    import g4rt
    opts = dict(backend="vulkan", ctx=256, mmproj=MMPROJ, image_min_tokens=1, precision="exact")
    m = g4rt.load(model_path("g4u-mm-F32"), **opts)
    try:
        want = _greedy(m)
    finally:
        m.close()
    assert all(len(t) == 24 for t in want)
    for layers in (0, 1, 3):           # 0: every layer on the CPU (the soft tokens go in there)
        m = g4rt.load(model_path("g4u-mm-F32"), gpu_layers=layers, threads=2, **opts)
        try:
            assert m.backend_name == "hybrid" and "media:" in m.backend_reason
            assert _greedy(m) == want, layers
        finally:
            m.close()


@NEED_VULKAN
def test_cli_run_with_an_image_and_gpu_layers_prints_the_unsplit_text():
    def g4rt_run(*extra):
        r = subprocess.run([sys.executable, "-m", "g4rt", "run", str(model_path("g4u-mm-F32")), "--backend", "vulkan",
                            "--mmproj", str(MMPROJ), "--image", str(MM / "media" / "img_a.png"), "--image-min-tokens",
                            "1", "-p", "<|image|>What is in this picture?", "-n", "12", "--ctx", "256",
                            "--precision", "exact", *extra], capture_output=True, text=True, timeout=300, cwd=REPO)
        assert r.returncode == 0, r.stderr
        return r
    split, alone = g4rt_run("--gpu-layers", "2", "-t", "2"), g4rt_run()
    assert split.stdout == alone.stdout and split.stdout.strip()
    assert "first 2 layers on vulkan, the rest on the CPU" in split.stderr
    assert "with 1 image (36 tokens)" in split.stderr


# ---- the expert splits --------------------------------------------------------------------------
@NEED_VULKAN
@pytest.mark.skipif(not MOE.is_file(), reason=f"{MOE} (the MoE fixtures) is absent")
@pytest.mark.parametrize("front_layers,moe_layers", [(1 << 30, 1 << 30), (3, 2)], ids=["cpu-moe", "gpu3-ncpumoe2"])
def test_an_expert_split_with_an_image_is_the_single_backend(front_layers, moe_layers):
    """fixtures-moe has no projector; the fixtures-mm one (soft tokens 256 wide, as the MoE model)
    feeds it. The expert products run on the CPU between GPU pieces, with the image's rows
    bidirectional in the pieces' sliding layers: logits as Vulkan alone gives them, the same greedy
    tokens, and far from what a causal mask gives (so the mask did reach every piece)."""
    from g4rt.engine import Engine
    from g4rt.text.tokenizer import load_tokenizer
    from g4rt.tools.parity_media import greedy_media
    hb = _hybrid(front_layers, moe_layers=moe_layers)
    eng = Engine(MOE, backend=hb, ctx=256)
    alone = Engine(MOE, backend="vulkan", ctx=256)
    try:
        p = prompter(alone, "vulkan")
        p.image_min_tokens = 1              # the image at its own size: 36 soft tokens
        tok = load_tokenizer(alone.file)
        plan = p.plan(tok.encode("<|image|>What is in this picture?", add_bos=True, parse_special=True),
                      [MM / "media" / "img_a.png"])
        rows = p.encode(plan)
        logits = [e.forward(plan.ids, all_logits=True, media=rows) for e in (eng, alone)]
        assert sum(piece.side == "back" for piece in hb.last_pieces) >= 2       # experts between GPU parts
        np.testing.assert_allclose(logits[0], logits[1], atol=2e-3, rtol=0)
        greedy = [list(greedy_media(e, plan.ids, rows, 16)) for e in (eng, alone)]
        assert greedy[0] == greedy[1], greedy
        p.bidirectional = False
        alone.reset()
        causal = alone.forward(plan.ids, all_logits=True, media=p.encode(plan))
        assert np.abs(causal - logits[1]).max() > 0.1
    finally:
        eng.close()
        alone.close()
