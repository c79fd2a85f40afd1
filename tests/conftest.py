"""Shared test configuration: where the team's fixtures live (../shared/fixtures beside the repo)."""

from __future__ import annotations

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


@pytest.fixture
def fixtures() -> Path:
    if not HAVE_FIXTURES:
        pytest.skip(SKIP_NO_FIXTURES)
    return FIXTURES
