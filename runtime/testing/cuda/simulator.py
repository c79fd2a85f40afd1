"""Runs the CUDA kernel sources of shaders/cuda on the CPU, without a GPU.

Each .cu file is compiled by the system C++ compiler (g++) with `shaders/cuda/sim/cuda_sim.h`
force-included: that header supplies the CUDA builtins (every CUDA thread a fiber, barriers,
warp shuffles, `__shared__` memory per block) and a table of the file's kernels, so the same
source NVRTC compiles for a GPU runs here. The emulated driver (`emulated_driver.EmulatedDriver(
kernels="sim")`) launches them, which lets CI run CudaBackend's host code *and* its kernels
against the numpy reference. It is a correctness tool (slow: a context switch per barrier and
shuffle), not an inference backend; it models no timing, and differs from a GPU in the last
bits where nvcc fuses multiply-adds.

Compiled libraries are cached like NVRTC output (`$G4RT_CUDA_CACHE/sim`, default
~/.cache/g4rt/cuda/sim), keyed by the sources, the compiler's version and the flags.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from ...backends.cuda import kernels
from ...backends.cuda.driver import cache_dir, shader_dir
from ...errors import BackendUnavailableError, G4rtError

FLAGS = ["-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread",
         "-ffp-contract=off", "-DG4RT_CPU_SIM=1"]


def flags() -> list[str]:
    """FLAGS plus $G4RT_SIM_CXXFLAGS (e.g. -DG4SIM_UCONTEXT: the portable fiber switch)."""
    return FLAGS + os.environ.get("G4RT_SIM_CXXFLAGS", "").split()


class SimFault(G4rtError):
    """A simulated kernel misused a CUDA collective (deadlock, divergent or partial warp op)."""


class SimCompileError(G4rtError):
    """A kernel file did not compile as C++ for the simulator (carries the compiler's output)."""


def compiler() -> Optional[str]:
    return shutil.which(os.environ.get("G4RT_SIM_CXX") or os.environ.get("CXX") or "g++")


def sim_available() -> tuple[bool, str]:
    """(True, '') when the simulator can run here, else (False, the reason)."""
    if platform.system() != "Linux":
        return False, f"the CUDA simulator needs Linux (this is {platform.system()})"
    if compiler() is None:
        return False, "the CUDA simulator needs a C++ compiler (g++; set G4RT_SIM_CXX)"
    return True, ""


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendUnavailableError(f"the C++ compiler {cxx} does not run: {e}") from None


def kernels_of_file(fname: str) -> list[str]:
    return sorted(k for k in kernels.all_kernels() if kernels.kernel_file(k)[0] == fname)


def _translation_unit(fname: str) -> str:
    lines = [f'#include "{fname}"', "G4SIM_KERNELS_BEGIN"]
    lines += [f"G4SIM_KERNEL({k})" for k in kernels_of_file(fname)]
    lines += ["G4SIM_KERNELS_END", ""]
    return "\n".join(lines)


class _Module:
    """One compiled .cu file: kernel name -> (index, signature) and the launch entry."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.g4sim_count.restype = ctypes.c_int
        self.lib.g4sim_name.restype = ctypes.c_char_p
        self.lib.g4sim_name.argtypes = [ctypes.c_int]
        self.lib.g4sim_signature.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.g4sim_launch.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint64),
                                          ctypes.POINTER(ctypes.c_uint), ctypes.c_int,
                                          ctypes.c_char_p, ctypes.c_int]
        self.kernels: dict[str, tuple[int, str]] = {}
        buf = ctypes.create_string_buffer(64)
        for i in range(self.lib.g4sim_count()):
            self.lib.g4sim_signature(i, buf, 64)
            self.kernels[self.lib.g4sim_name(i).decode()] = (i, buf.value.decode())


class SimKernels:
    """The kernels of shaders/cuda compiled for the CPU simulator, launched by name."""

    def __init__(self, src_dir: Optional[Path] = None, workers: Optional[int] = None):
        ok, why = sim_available()
        if not ok:
            raise BackendUnavailableError(why)
        self.cxx = compiler()
        self.src_dir = Path(src_dir) if src_dir else shader_dir()
        self.header = self.src_dir / "sim" / "cuda_sim.h"
        if not self.header.is_file():
            raise G4rtError(f"the CUDA simulator header {self.header} is missing")
        env = os.environ.get("G4RT_SIM_WORKERS")
        self.workers = int(env) if env else (workers or os.cpu_count() or 1)
        self._version = _compiler_version(self.cxx)
        self._modules: dict[str, _Module] = {}
        self._lock = threading.Lock()
        self.launches = 0

    # ---- compiling ------------------------------------------------------------------------
    def _key(self, fname: str) -> str:
        h = hashlib.sha256()
        for p in sorted(self.src_dir.glob("*.cu*")) + [self.header]:
            h.update(p.name.encode() + b"\0" + p.read_bytes())
        h.update(fname.encode() + self._version.encode() + " ".join(flags()).encode())
        h.update(_translation_unit(fname).encode())
        return h.hexdigest()[:24]

    def _build(self, fname: str) -> Path:
        key = self._key(fname)
        cdir = cache_dir()
        out_dir = (cdir / "sim") if cdir else Path(tempfile.gettempdir()) / f"g4rt-sim-{os.getuid()}"
        out_dir.mkdir(parents=True, exist_ok=True)
        lib = out_dir / f"{Path(fname).stem}-{key}.so"
        if lib.is_file():
            return lib
        with tempfile.TemporaryDirectory(prefix="g4rt-sim-") as td:
            tu = Path(td) / f"{Path(fname).stem}_sim.cpp"
            tu.write_text(_translation_unit(fname))
            tmp = Path(td) / lib.name
            cmd = [self.cxx, *flags(), "-include", str(self.header), f"-I{self.src_dir}",
                   str(tu), "-o", str(tmp)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise SimCompileError(f"{fname} does not compile for the CUDA simulator:\n"
                                      f"$ {' '.join(cmd)}\n{r.stderr[-6000:]}")
            os.replace(tmp, lib)          # atomic: a parallel test run never loads half a file
        return lib

    def prepare(self, files: Optional[list[str]] = None) -> None:
        """Compile (or load from the cache) every kernel file, in parallel."""
        files = [f for f in (files or sorted({kernels.kernel_file(k)[0] for k in kernels.all_kernels()}))
                 if f not in self._modules]
        if not files:
            return
        with ThreadPoolExecutor(max(1, min(len(files), os.cpu_count() or 1))) as ex:
            paths = dict(zip(files, ex.map(self._build, files)))
        for f, p in paths.items():
            self._load(f, p)

    def _load(self, fname: str, path: Path) -> None:
        mod = _Module(path)
        for name, (_, sig) in mod.kernels.items():
            want = kernels.signature(name)
            if sig != want:
                raise G4rtError(f"kernel {name}: the simulator reads parameters {sig!r} from the "
                                f"source, the host passes {want!r} (runtime/backends/cuda/kernels.py)")
        self._modules[fname] = mod

    def module(self, kernel: str) -> _Module:
        fname = kernels.kernel_file(kernel)[0]
        with self._lock:
            if fname not in self._modules:
                self._load(fname, self._build(fname))
        return self._modules[fname]

    # ---- launching ------------------------------------------------------------------------
    def launch(self, kernel: str, grid: tuple[int, int, int], block: tuple[int, int, int],
               args: list) -> None:
        """Run `kernel` over `grid` blocks of `block` threads with `args` (Python values in
        the order and types of its signature: ints for pointers and int32, floats)."""
        mod = self.module(kernel)
        if kernel not in mod.kernels:
            raise G4rtError(f"kernel {kernel} is not in {kernels.kernel_file(kernel)[0]}")
        idx, sig = mod.kernels[kernel]
        slots = (ctypes.c_uint64 * max(1, len(sig)))()
        for i, (code, v) in enumerate(zip(sig, args)):
            if code == "P":
                slots[i] = int(v) & 0xFFFFFFFFFFFFFFFF
            elif code == "i":
                slots[i] = int(v) & 0xFFFFFFFF
            elif code == "f":
                slots[i] = struct.unpack("<I", struct.pack("<f", float(v)))[0]
            else:
                slots[i] = struct.unpack("<Q", struct.pack("<d", float(v)))[0]
        dims = (ctypes.c_uint * 6)(*grid, *block)
        err = ctypes.create_string_buffer(512)
        self.launches += 1
        if mod.lib.g4sim_launch(idx, slots, dims, self.workers, err, 512):
            raise SimFault(f"{kernel} grid {tuple(grid)} block {tuple(block)}: "
                           f"{err.value.decode(errors='replace')}")


_SHARED: dict[str, SimKernels] = {}


def shared_kernels() -> SimKernels:
    """One compiled-and-loaded SimKernels per process (per shader folder)."""
    src = str(shader_dir())
    if src not in _SHARED:
        k = SimKernels(Path(src))
        k.prepare()
        _SHARED[src] = k
    return _SHARED[src]
