"""The CUDA backends the media-op tests run on (as test_backend_ops.py's cuda targets): "cuda" a
device (or the stand-in G4RT_CUDA_EMULATE names), "cuda-emulated" the host code on the emulated
driver with numpy kernels, "cuda-sim" the kernel sources on the CPU simulator. CUDA_PARAMS are
pytest params, each skipped with the reason where it cannot run; cuda_maker(name) gives the
make_backend(kv_dtype) the op_cases checks take."""

from __future__ import annotations

import functools

import pytest

CUDA_NAMES = ("cuda", "cuda-emulated", "cuda-sim")


@functools.lru_cache(maxsize=None)
def cuda_skip(name: str):
    """Why target `name` cannot run here (None: it can)."""
    if name == "cuda":
        from g4rt.backends.cuda.driver import cuda_available
        from g4rt.testing.cuda import driver_from_env
        ok, reason = cuda_available(driver=driver_from_env())
        return None if ok else f"no CUDA device: {reason}"
    if name == "cuda-sim":
        from g4rt.testing.cuda.simulator import sim_available
        ok, reason = sim_available()
        return None if ok else (reason or "CUDA simulator unavailable")
    return None


def _driver(name: str):
    if name == "cuda":
        from g4rt.testing.cuda import driver_from_env
        return driver_from_env()
    from g4rt.testing.cuda.emulated_driver import EmulatedDriver
    kernels = {"cuda-sim": "sim", "cuda-emulated": "numpy"}.get(name)
    if kernels is None:
        raise ValueError(f"unknown CUDA target {name!r} (one of {CUDA_NAMES})")
    return EmulatedDriver(kernels=kernels)


def cuda_backend(name: str, kv_dtype: str = "f32"):
    from g4rt.backends.cuda.backend import CudaBackend
    return CudaBackend(driver=_driver(name), kv_dtype=kv_dtype)


def cuda_maker(name: str):
    return lambda kv_dtype: cuda_backend(name, kv_dtype)


def cuda_param(name: str):
    reason = cuda_skip(name)
    return pytest.param(name, id=name, marks=pytest.mark.skipif(reason is not None, reason=reason or ""))


CUDA_PARAMS = [cuda_param(n) for n in CUDA_NAMES]
