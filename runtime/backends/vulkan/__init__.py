"""The Vulkan backend (`--backend vulkan`): GLSL compute shaders run through Kompute (kp).

backend.py: the Backend (allocation, compile = record one kp Sequence per graph, replay per
token); arena.py: where weights, caches and activations live; upload.py: filling weight memory;
derived.py: f32 vectors and RoPE tables made from weights; lowering.py: op -> dispatches;
dispatch.py: a dispatch and the pipeline cache; shader_build.py: GLSL -> SPIR-V; device.py:
Vulkan devices and their limits without creating a kp Manager."""

from .backend import VulkanBackend, VulkanGraph

__all__ = ["VulkanBackend", "VulkanGraph"]
