"""Backends execute op lists (ops.py). They never know which model produced them."""

from __future__ import annotations

from ..errors import BackendUnavailableError
from .base import Backend, CompiledGraph

BACKEND_NAMES = ("cpu", "vulkan", "cuda")


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


__all__ = ["Backend", "CompiledGraph", "create_backend", "BACKEND_NAMES"]
