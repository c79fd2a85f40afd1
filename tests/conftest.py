"""Shared test configuration: where the team's fixtures live (../shared/fixtures beside the repo)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("G4RT_FIXTURES", REPO.parent / "shared" / "fixtures"))
HAVE_FIXTURES = (FIXTURES / "MANIFEST.json").is_file()
SKIP_NO_FIXTURES = "fixtures folder ../shared/fixtures is absent (set G4RT_FIXTURES to point at it)"


def model_names() -> list[str]:
    if not HAVE_FIXTURES:
        return []
    return sorted(p.name.removesuffix(".gguf") for p in (FIXTURES / "models").glob("*.gguf"))


def exact_refs() -> list[tuple[str, str]]:
    """(model, exact reference file) for every fixture: its prompts.json reference and, where
    present, the long-prompt one."""
    out = []
    for m in model_names():
        for ref in sorted((FIXTURES / "ref").glob(f"{m}.*exact.npz")):
            if ref.name.removesuffix(".exact.npz").removeprefix(m) in ("", ".long"):
                out.append((m, ref.name))
    return out


def manifest() -> dict:
    return json.loads((FIXTURES / "MANIFEST.json").read_text())


@functools.lru_cache(maxsize=1)
def vulkan_skip_reason():
    """None when the Vulkan tests can run here, else why not (no kp, driver, device or compiler)."""
    from g4rt.errors import BackendUnavailableError
    try:
        from g4rt.backends.vulkan import VulkanBackend
        VulkanBackend().close()
    except (ImportError, BackendUnavailableError) as e:
        return f"Vulkan backend unavailable: {e}"
    from g4rt.backends.vulkan.shader_build import ShaderCompilerMissingError, compiler_path
    try:
        compiler_path()
    except ShaderCompilerMissingError as e:
        return str(e)
    return None


@pytest.fixture
def fixtures() -> Path:
    if not HAVE_FIXTURES:
        pytest.skip(SKIP_NO_FIXTURES)
    return FIXTURES


def ref_subset(ref, n_prompts: int) -> dict:
    """The first `n_prompts` sequences of a reference file (every `*_i` array, i < n_prompts)."""
    out, i = {}, 0
    while f"ids_{i}" in ref and i < n_prompts:
        for k in ref.files:
            if k.endswith(f"_{i}"):
                out[k] = ref[k]
        i += 1
    return out


def check_fixture_bar(engine, model: str, ref_file: str, n_prompts: int = 1 << 30,
                      n_greedy: int = 32) -> dict:
    """Replay an exact reference (its first `n_prompts` sequences) on `engine`, assert that the
    fixture's `bar_vs_exact` from MANIFEST.json is met, and return the worst row."""
    import numpy as np
    from g4rt.tools import parity
    ref_path = FIXTURES / "ref" / ref_file
    bar = parity.find_bar(FIXTURES / "models" / f"{model}.gguf", ref_path)
    assert bar is not None, f"no bar_vs_exact for {ref_file} in MANIFEST.json"
    ref = ref_subset(np.load(ref_path), n_prompts)
    rows = parity.compare(ref, parity.run_reference(engine, ref, n_greedy=n_greedy))
    w = parity.worst(rows)
    assert len(rows) == sum(1 for k in ref if k.startswith("ids_"))
    for r in rows:                               # every reference position was compared
        assert r["positions"] == len(ref[f"topk_ids_{r['prompt']}"]), (model, ref_file, r)
    assert parity.meets(rows, bar), (model, ref_file, w, bar)
    return w


def check_decode_equals_prefill(make_backend, path, ids, kv_dtype: str, chunk: int,
                                tol: float | None = None) -> None:
    """Token-by-token decode through the KV cache, and a chunked prefill, give the logits of one
    prefill. make_backend(kv_dtype) makes a fresh backend for each engine."""
    import numpy as np
    from g4rt.engine import Engine
    if tol is None:
        # f32 caches: the paths differ only in summation order; f16: decode reads rounded K/V
        tol = 2e-3 if kv_dtype == "f32" else 5e-2
    e = Engine(path, backend=make_backend(kv_dtype), ctx=128)
    try:
        full = e.forward(ids, all_logits=True)
        e.reset()
        steps = np.concatenate([e.forward([t]) for t in ids])
        np.testing.assert_allclose(steps, full, atol=tol, rtol=0)
    finally:
        e.close()
    chunked = Engine(path, backend=make_backend(kv_dtype), ctx=128, prefill_chunk=chunk)
    try:
        np.testing.assert_allclose(chunked.forward(ids, all_logits=True), full, atol=tol, rtol=0)
    finally:
        chunked.close()
