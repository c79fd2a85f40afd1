"""The CUDA backend without a GPU: stand-ins for cuda-python's driver module, passed in as
`CudaBackend(driver=...)`.

emulated_driver.py: `EmulatedDriver`, the driver API on host memory, with numpy kernels
(kernels="numpy": checks the host code) or the real kernel sources on the simulator
(kernels="sim"); simulator.py: shaders/cuda compiled with g++ against shaders/cuda/sim/cuda_sim.h
(fibers for CUDA threads) and launched by name.

`driver_from_env()` is the G4RT_CUDA_EMULATE knob that lets `--backend cuda` (and the GPU test
files) run on a machine without a GPU.
"""

from __future__ import annotations

import os

ENV_KNOB = "G4RT_CUDA_EMULATE"


def driver_from_env():
    """The stand-in driver G4RT_CUDA_EMULATE asks for, else None (use cuda-python's):
    "1" or "numpy": EmulatedDriver with numpy kernels; "sim": EmulatedDriver running the
    kernel sources on the CPU simulator; unset or anything else: None."""
    mode = os.environ.get(ENV_KNOB, "").strip().lower()
    if mode not in ("1", "numpy", "sim"):
        return None
    from .emulated_driver import EmulatedDriver      # numpy_ref and the simulator: only when asked
    return EmulatedDriver(kernels="sim" if mode == "sim" else "numpy")


__all__ = ["ENV_KNOB", "driver_from_env"]
