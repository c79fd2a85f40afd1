"""pyproject.toml ships every package and kernel source of the tree: a folder of runtime/ or a
kernel file that the package list or package-data misses works in the editable checkout but is
absent from a wheel install."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_runtime_package_is_listed():
    found = {"g4rt" + "".join("." + part for part in p.parent.relative_to(ROOT / "runtime").parts)
             for p in (ROOT / "runtime").rglob("__init__.py")}
    listed = set(CONFIG["packages"]) - {"g4rt.shaders"}
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject.toml lists packages that do not exist: {sorted(listed - found)}"


def test_every_kernel_source_is_package_data():
    patterns = CONFIG["package-data"]["g4rt.shaders"]
    shaders = ROOT / "shaders"
    kernel_suffixes = {".c", ".h", ".comp", ".glsl", ".cu", ".cuh"}
    shipped = {p for pat in patterns for p in shaders.glob(pat)}     # setuptools' glob semantics
    missed = sorted(str(p.relative_to(shaders)) for p in shaders.rglob("*")
                    if p.suffix in kernel_suffixes and p not in shipped)
    assert not missed, f"kernel sources a wheel would not ship (pyproject package-data): {missed}"
