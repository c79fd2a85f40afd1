"""Fixture models on the Vulkan backend: every file meets its `bar_vs_exact` against the float64
reference (MANIFEST.json), and decoding through the KV cache gives what a prefill gives.

Budget (lavapipe on 2 cores): one representative file runs all 6 prompts with a full 32-token
greedy continuation, one more 3 prompts with a short one; every other file runs its first
prompt (the bar is measured on the teacher-forced positions, which cover the reference's whole
continuation either way). The 1024-window long prompt (2,341 tokens + 32) runs teacher-forced only,
and only in scripts/full_tests.sh (it is a `slow` test: three minutes).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES, check_fixture_bar, model_names, vulkan_skip_reason

_SKIP = vulkan_skip_reason()

pytestmark = [pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
              pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)]

#: all prompts: name -> greedy tokens. The 12B's layout with K-quants and a separate output, and
#: the edge model (per-layer embeddings, shared KV layers)
FULL = {"g4-dense-untied-Q4_K_M": 32, "g4-edge-Q4_K_M": 4}
PROMPTS = {"g4-dense-untied-Q4_K_M": 6, "g4-edge-Q4_K_M": 3}
FEW_PROMPTS = 1


def _check(name: str, ref_file: str, n_prompts: int, n_greedy: int, engine_cache: dict):
    from g4rt.engine import Engine
    eng = engine_cache.get(name)
    if eng is None:
        eng = engine_cache[name] = Engine(FIXTURES / "models" / f"{name}.gguf", backend="vulkan")
    w = check_fixture_bar(eng, name, ref_file, n_prompts, n_greedy)
    print(f"{name} [{ref_file}] vulkan: top1 {w['top1']:.4f} max|dlogit| {w['max_dlogit']:.2e} "
          f"greedy {w['greedy']}/{n_greedy}")


@pytest.fixture(scope="module")
def engines():
    cache: dict = {}
    yield cache
    for e in cache.values():
        e.close()


@pytest.mark.parametrize("name", model_names())
def test_fixture_meets_bar_vs_exact(name, engines):
    try:
        _check(name, f"{name}.exact.npz", PROMPTS.get(name, FEW_PROMPTS), FULL.get(name, 1), engines)
    finally:
        if not name.startswith("g4-dense-w1024"):
            engines.pop(name).close() if name in engines else None


@pytest.mark.slow     # ~3 min on lavapipe; the ring is covered by test_row_exact and test_multi_sequence
@pytest.mark.skipif(not (FIXTURES / "ref" / "g4-dense-w1024-Q4_0-pure.long.exact.npz").is_file(),
                    reason="long-prompt reference absent")
def test_long_prompt_past_the_1024_window(engines):
    """2,373 positions through a 1024-token sliding window: five 512-token prefill chunks, the later
    ones reading the ring cache (f16) for the window's earlier positions."""
    from g4rt.engine import Engine
    name = "g4-dense-w1024-Q4_0-pure"
    eng = engines.get(name) or Engine(FIXTURES / "models" / f"{name}.gguf", backend="vulkan")
    engines[name] = eng
    # every one of the 2,373 positions is compared; greedy: the first continuation token
    w = check_fixture_bar(eng, name, f"{name}.long.exact.npz", n_greedy=1)
    print(f"{name} [long] vulkan: top1 {w['top1']:.4f} max|dlogit| {w['max_dlogit']:.2e}")


@pytest.mark.parametrize("name,kv_dtype,tol", [("g4-dense-Q4_K_M", "f32", 2e-4),
                                               ("g4-edge-Q4_0-pure", "f32", 2e-4),
                                               ("g4-dense-Q4_K_M", "f16", 2e-2)])
def test_decode_through_cache_equals_prefill(name, kv_dtype, tol):
    """Logits of token t fed one by one (reading earlier K/V from the cache) equal row t of one
    prefill over the whole sequence (reading them from the batch), past the sliding window."""
    from g4rt.engine import Engine
    eng = Engine(FIXTURES / "models" / f"{name}.gguf", backend="vulkan", kv_dtype=kv_dtype)
    try:
        rng = np.random.default_rng(7)
        ids = rng.integers(3, eng.config.n_vocab, 24).astype(np.int32)
        assert len(ids) > eng.config.sliding_window
        eng.reset()
        full = eng.forward(ids, all_logits=True)
        eng.reset()
        steps = np.concatenate([eng.forward(ids[:5], all_logits=True)] +
                               [eng.forward([t]) for t in ids[5:]])
        err = np.abs(steps - full).max() / np.abs(full).max()
        assert err < tol, err
        assert (steps.argmax(-1) == full.argmax(-1)).mean() > 0.9
    finally:
        eng.close()


def test_conformance_tool_passes_and_names_a_broken_kernel():
    """`g4rt conformance` passes Vulkan against the numpy reference, and names the first op of a
    deliberately broken kernel (RoPE told to rotate half of its dimensions)."""
    from click.testing import CliRunner

    from g4rt.cli.checks import conformance as conformance_command
    from g4rt.tools.conformance import compare_step
    from g4rt.engine import Engine
    model = FIXTURES / "models" / "g4-dense-Q4_K_M.gguf"
    r = CliRunner().invoke(conformance_command, [str(model), "--backend", "vulkan", "--tokens", "5"])
    assert r.exit_code == 0, r.output
    assert "all ops within tolerance" in r.output and "blk.5.attention" in r.output

    ev = Engine(model, backend="vulkan", ctx=8)
    ec = Engine(model, backend="numpy", ctx=8)
    try:
        gv = ev.graph(4)
        i = gv.graph.labels.index("blk.0.rope_q")
        for d in gv.op_dispatches[i]:
            d.pc[7] //= 2        # n_rot (push-constant word 7 of rope.comp)
        gv.seq = gv.record()
        lines = []
        fail, _ = compare_step("prefill", gv, ec.graph(4), np.arange(3, 7, dtype=np.int32), 0, lines.append)
        assert fail is not None and fail[1] == "blk.0.rope_q", "\n".join(lines)
    finally:
        ev.close()
        ec.close()
