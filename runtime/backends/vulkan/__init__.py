"""The Vulkan backend (`--backend vulkan`): GLSL compute shaders run through Kompute (kp).

backend.py lowers the op list into one recorded kp Sequence per graph; device.py finds Vulkan
devices and their limits without creating a kp Manager."""

from .backend import VulkanBackend, VulkanGraph

__all__ = ["VulkanBackend", "VulkanGraph"]
