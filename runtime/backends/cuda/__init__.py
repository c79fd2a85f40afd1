"""The CUDA backend (`--backend cuda`): kernels compiled at run time by NVRTC, one CUDA graph per
op-list graph.

backend.py: the device (driver, memory, modules, weights, caches, arena); lowering.py: each op to
kernel launches (one function per op kind); graph.py: recording and replaying a graph's
launches; driver.py: cuda-python driver + NVRTC; kernels.py: the kernel table and launch
geometry; plan.py: the device memory plan. The stand-ins that run it without a GPU are test
code: g4rt.testing.cuda."""

from .backend import CudaBackend, CudaGraph
from .driver import cuda_available

__all__ = ["CudaBackend", "CudaGraph", "cuda_available"]
