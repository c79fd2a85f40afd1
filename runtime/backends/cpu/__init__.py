"""The native CPU backend (`--backend cpu`): C kernels on the GGUF blocks, one call per token.

compiler.py builds shaders/cpu/*.c + arch/<isa>/*.c for this CPU (cached); native.py is the ctypes view of the
library and its thread pool; lowering.py turns an op list into the command array; backend.py is
the Backend (weights in the memory map, KV caches, graphs)."""

from .backend import CpuBackend, CpuGraph, default_threads, physical_cores

__all__ = ["CpuBackend", "CpuGraph", "default_threads", "physical_cores"]
