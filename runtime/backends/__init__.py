"""Backends execute op lists (ops.py). They never know which model produced them.

One package per backend: numpy_ref/ (the reference that defines every op), cpu/ (native C
kernels), vulkan/, cuda/. What spans backends lives here: graph_split.py (where a graph can be
cut) and hybrid.py (running the two parts on two backends)."""

from __future__ import annotations

import sys

from ..errors import BackendUnavailableError, G4rtError
from .base import Backend, CompiledGraph

BACKEND_NAMES = ("cpu", "numpy", "vulkan", "cuda")


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


def create_backend(name: str, **options) -> Backend:
    """Instantiate a backend by name; raises BackendUnavailableError with the reason if it cannot run."""
    if name == "cpu":
        from .cpu import CpuBackend
        return CpuBackend(**options)
    if name == "numpy":
        from .numpy_ref import NumpyBackend
        options.pop("threads", None)         # the reference runs numpy's own threads
        return NumpyBackend(**options)
    if name == "vulkan":
        try:
            from .vulkan.backend import VulkanBackend
        except ImportError as e:
            raise BackendUnavailableError(f"the Vulkan backend is not available: {e}") from None
        options.pop("threads", None)
        return VulkanBackend(**options)
    if name == "cuda":
        try:
            from .cuda.backend import CudaBackend
        except ImportError as e:
            raise BackendUnavailableError(f"the CUDA backend is not available: {e}") from None
        options.pop("threads", None)
        return CudaBackend(**options)
    raise BackendUnavailableError(f"unknown backend {name!r} (choose from {', '.join(BACKEND_NAMES)})")


__all__ = ["Backend", "CompiledGraph", "create_backend", "pick_backend", "native_cpu_available",
           "BACKEND_NAMES"]
