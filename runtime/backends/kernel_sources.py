"""Where a backend's kernel sources are: the one lookup the CPU, Vulkan and CUDA builds share."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import G4rtError


def kernel_folder(kind: str, marker: str, env_var: str) -> Path:
    """The `shaders/<kind>` folder holding `marker`: $env_var when set, else the package data
    `g4rt.shaders` wherever the install put it, else beside the package in a checkout."""
    env = os.environ.get(env_var)
    if env:
        path = Path(env)
        if not path.is_dir():
            raise G4rtError(f"{env_var}={env} is not a folder")
        return path
    package = Path(__file__).resolve().parents[1]          # the g4rt package folder (runtime/)
    candidates = [package / "shaders" / kind, package.parent / "shaders" / kind]
    try:
        spec = importlib.util.find_spec("g4rt.shaders")
        if spec is not None and spec.submodule_search_locations:
            candidates = [Path(p) / kind for p in spec.submodule_search_locations] + candidates
    except (ImportError, ValueError):
        pass
    for folder in candidates:
        if (folder / marker).is_file():
            return folder
    raise G4rtError(f"cannot find the shaders/{kind} folder (set {env_var} to point at it)")
