"""The CUDA backend (`--backend cuda`): kernels compiled at run time by NVRTC, one CUDA graph per
op-list graph.

backend.py: weights, caches, lowering and graph capture; driver.py: cuda-python driver + NVRTC;
kernels.py: launch geometry; plan.py: the device memory plan; emulator.py: a numpy stand-in for
the driver (tests without a GPU); simulator.py: the real .cu sources run on the CPU."""

from .backend import CudaBackend, CudaGraph
from .driver import cuda_available

__all__ = ["CudaBackend", "CudaGraph", "cuda_available"]
