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
    from g4rt.shader_build import ShaderCompilerMissingError, compiler_path
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
