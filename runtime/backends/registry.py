"""What backends exist and what each offers, known before any of them is imported or opened.

Everything that used to interpret a backend's name on its own (the engine's cache precision, the
memory planner's CPU/GPU split, the CLI's options) asks here instead; `create_backend` is the one
place a name becomes a backend, a hybrid of two (--gpu-layers, --cpu-moe) included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import BackendUnavailableError, G4rtError
from .base import checked_precision


@dataclass(frozen=True)
class BackendInfo:
    name: str                      # "cpu" | "numpy" | "vulkan" | "cuda"
    summary: str                   # one line for --help
    kv_dtypes: tuple[str, ...]     # cache precisions it offers
    default_kv_dtype: str
    takes_threads: bool            # --threads applies
    has_device_memory: bool        # plans need a --budget; can be the front of a hybrid
    precisions: tuple[str, ...] = ("auto", "exact")   # --precision choices (activations)


_BACKENDS = (
    BackendInfo("cpu", "native C kernels on the CPU (AVX-512 / AVX2 / portable)", ("f16", "f32"), "f16",
                takes_threads=True, has_device_memory=False, precisions=("auto", "exact", "i16", "q8")),
    BackendInfo("numpy", "the numpy reference: every op defined in numpy (slow)", ("f16", "f32"), "f32",
                takes_threads=False, has_device_memory=False),
    BackendInfo("vulkan", "GLSL compute shaders through Kompute", ("f16", "f32"), "f16",
                takes_threads=False, has_device_memory=True),
    # cuda's q8: its int8 (dp4a) decode matvecs
    BackendInfo("cuda", "CUDA kernels compiled at run time with NVRTC", ("f16", "f32"), "f16",
                takes_threads=False, has_device_memory=True, precisions=("auto", "exact", "q8")),
)
_BY_NAME = {info.name: info for info in _BACKENDS}

#: Every --precision choice some backend offers, in the registry's order.
PRECISIONS = tuple(dict.fromkeys(p for info in _BACKENDS for p in info.precisions))

#: Layer count that puts every layer of any model on the front of a hybrid.
ALL_LAYERS = 1 << 30


def backend_names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def backend_info(name: str) -> BackendInfo:
    info = _BY_NAME.get(name)
    if info is None:
        raise BackendUnavailableError(f"unknown backend {name!r} (choose from {', '.join(backend_names())})")
    return info


def check_precision(name: str, precision: str) -> str:
    """`precision` when backend `name` offers it, else PrecisionUnavailableError naming its choices."""
    return checked_precision(name, precision, backend_info(name).precisions)


def hybrid_precision(name: str, precision: str) -> str:
    """What one half of a hybrid runs for a --precision request: the request where the half offers
    it, else "exact", the path every half has (a half's auto falls back to exact too, and the
    request still applies to the other half)."""
    checked_precision("hybrid", precision, PRECISIONS)    # an unknown word is an error, not a silent exact
    return precision if precision in backend_info(name).precisions else "exact"


# ---- construction (each backend module is imported only when asked for) -----------------------
def _create_cpu(**options):
    from .cpu import CpuBackend
    return CpuBackend(**options)


def _create_numpy(**options):
    from .numpy_ref import NumpyBackend
    return NumpyBackend(**options)


def _create_vulkan(**options):
    try:
        from .vulkan.backend import VulkanBackend
    except ImportError as e:
        raise BackendUnavailableError(f"the Vulkan backend is not available: {e}") from None
    return VulkanBackend(**options)


def _create_cuda(**options):
    try:
        from .cuda.backend import CudaBackend
    except ImportError as e:
        raise BackendUnavailableError(f"the CUDA backend is not available: {e}") from None
    from ..testing.cuda import driver_from_env
    driver = driver_from_env()          # G4RT_CUDA_EMULATE: a stand-in driver for machines without a GPU
    if driver is not None:
        options["driver"] = driver
    return CudaBackend(**options)


_FACTORIES = {"cpu": _create_cpu, "numpy": _create_numpy, "vulkan": _create_vulkan, "cuda": _create_cuda}


def create_backend(name: str, *, threads: Optional[int] = None, gpu_layers: Optional[int] = None,
                   cpu_moe_layers: int = 0, precision: str = "auto", **options):
    """Instantiate a backend by name; raises BackendUnavailableError with the reason if it cannot run.

    threads: CPU threads, for a backend that takes them (ignored by the others). precision: the
    activation precision (auto / exact / q8); one the backend does not offer is an error naming
    its choices. gpu_layers / cpu_moe_layers: a hybrid (backends/hybrid.py) with `name` in front
    and the native CPU behind: the first gpu_layers layers on `name` (None: every layer), the
    expert matmuls of layers below cpu_moe_layers on the CPU; `options` go to the front, `threads`
    to the CPU half, `precision` to both as hybrid_precision says (a front without q8 runs exact
    while the CPU half takes the request; HybridBackend.precision_summary says so)."""
    info = backend_info(name)
    if gpu_layers is not None or cpu_moe_layers:
        return _create_hybrid(info, gpu_layers, cpu_moe_layers, threads, precision, options)
    if info.takes_threads:
        options["threads"] = threads
    return _FACTORIES[name](precision=check_precision(name, precision), **options)


def _create_hybrid(front: BackendInfo, gpu_layers: Optional[int], cpu_moe_layers: int,
                   threads: Optional[int], precision: str, options: dict):
    if not front.has_device_memory:
        raise G4rtError(f"--gpu-layers needs a GPU backend (--backend cuda or vulkan); on {front.name} "
                        "everything already runs on the CPU")
    if gpu_layers is not None and gpu_layers < 0:
        raise G4rtError(f"--gpu-layers must be >= 0, got {gpu_layers}")
    if cpu_moe_layers < 0:
        raise G4rtError(f"--n-cpu-moe must be >= 0, got {cpu_moe_layers}")
    from .graph_split import layers_split
    from .hybrid import HybridBackend
    front_precision, cpu_precision = hybrid_precision(front.name, precision), hybrid_precision("cpu", precision)
    gpu = create_backend(front.name, precision=front_precision, **options)
    try:
        cpu = create_backend("cpu", threads=threads or None, precision=cpu_precision)
    except BaseException:
        gpu.close()
        raise
    split = layers_split(ALL_LAYERS if gpu_layers is None else gpu_layers)
    return HybridBackend(gpu, cpu, split, back_expert_layers=cpu_moe_layers, precision=precision)
