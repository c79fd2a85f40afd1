"""Backends execute op lists (ops.py). They never know which model produced them."""

from __future__ import annotations

from ..errors import BackendUnavailableError
from .base import Backend, CompiledGraph

BACKEND_NAMES = ("cpu", "vulkan", "cuda")


def pick_backend() -> tuple[str, str]:
    """(name, why) for `--backend auto`: CUDA when a driver and device exist, else Vulkan on a real
    GPU, else the CPU reference (Vulkan on a CPU driver such as lavapipe is no faster than numpy)."""
    reasons = []
    try:
        from .cuda import cuda_available
        ok, why = cuda_available()
        if ok:
            return "cuda", why
        reasons.append(f"no CUDA ({why})")
    except ImportError as e:
        reasons.append(f"no CUDA ({e})")
    try:
        from .vk_device import probe_devices
        gpus = [(i, n) for i, (n, t) in enumerate(probe_devices()) if t != "CPU"]
        if gpus:
            return "vulkan", f"Vulkan GPU {gpus[0][1]!r}"
        reasons.append("no Vulkan GPU (only CPU drivers)")
    except (ImportError, BackendUnavailableError) as e:
        reasons.append(f"no Vulkan ({e})")
    return "cpu", "; ".join(reasons)


def create_backend(name: str, **options) -> Backend:
    """Instantiate a backend by name; raises BackendUnavailableError with the reason if it cannot run."""
    if name == "cpu":
        from .cpu import CpuBackend
        return CpuBackend(**options)
    if name == "vulkan":
        try:
            from .vulkan import VulkanBackend
        except ImportError as e:
            raise BackendUnavailableError(f"the Vulkan backend is not available: {e}") from None
        return VulkanBackend(**options)
    if name == "cuda":
        try:
            from .cuda import CudaBackend
        except ImportError as e:
            raise BackendUnavailableError(f"the CUDA backend is not available: {e}") from None
        return CudaBackend(**options)
    raise BackendUnavailableError(f"unknown backend {name!r} (choose from {', '.join(BACKEND_NAMES)})")


__all__ = ["Backend", "CompiledGraph", "create_backend", "pick_backend", "BACKEND_NAMES"]
