"""Backends execute op lists (ops.py). They never know which model produced them.

One package per backend: numpy_ref/ (the reference that defines every op), cpu/ (native C
kernels), vulkan/, cuda/. What spans backends lives here: graph_split.py (where a graph can be
cut), hybrid.py (running the two parts on two backends) and registry.py (the names, what each
backend offers, and `create_backend`)."""

from __future__ import annotations

import sys

from ..errors import BackendUnavailableError, G4rtError
from .base import Backend, CompiledGraph
from .registry import BackendInfo, backend_info, backend_names, create_backend


def native_cpu_available() -> tuple[bool, str]:
    """(ok, why not): whether the native CPU kernels can be built and loaded here."""
    try:
        from .cpu.native import load
        load()
        return True, ""
    except G4rtError as e:
        return False, str(e)


def pick_backend() -> tuple[str, str]:
    """(name, why) for `--backend auto`: CUDA when a driver and device exist, else Vulkan on a real
    GPU, else the native CPU backend (Vulkan on a CPU driver such as lavapipe is slower), else the
    numpy reference when no C compiler is at hand (with a one-line warning)."""
    reasons = []
    try:
        from .cuda.driver import cuda_available
        ok, why = cuda_available()
        if ok:
            return "cuda", why
        reasons.append(f"no CUDA ({why})")
    except ImportError as e:
        reasons.append(f"no CUDA ({e})")
    try:
        from .vulkan.device import probe_devices
        gpus = [(i, n) for i, (n, t) in enumerate(probe_devices()) if t != "CPU"]
        if gpus:
            return "vulkan", f"Vulkan GPU {gpus[0][1]!r}"
        reasons.append("no Vulkan GPU (only CPU drivers)")
    except (ImportError, BackendUnavailableError) as e:
        reasons.append(f"no Vulkan ({e})")
    ok, why = native_cpu_available()
    if ok:
        return "cpu", "; ".join(reasons)
    first = why.splitlines()[0] if why else "unknown reason"
    print(f"g4rt: warning: native CPU backend unavailable ({first}); using the slow numpy reference",
          file=sys.stderr)
    return "numpy", "; ".join(reasons + [f"no native CPU backend ({first})"])


__all__ = ["Backend", "BackendInfo", "CompiledGraph", "backend_info", "backend_names", "create_backend",
           "pick_backend", "native_cpu_available"]
