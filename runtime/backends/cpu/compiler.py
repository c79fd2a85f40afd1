"""Build the native CPU kernels with the system C compiler, once per machine: shaders/cpu/*.c plus
the one ISA's folder shaders/cpu/arch/<avx512|avx2|portable>/*.c, into one library.

The library is compiled at first use with flags for the host CPU and cached under
$G4RT_CPU_CACHE (default ~/.cache/g4rt/cpu, beside the compiled shaders), keyed by a hash of the
sources (every .c and .h under shaders/cpu, the arch folders included), the compiler's version,
the flags and the CPU's features: a machine whose CPU changed
(sessions move between AMD and Intel hosts) gets a new build instead of an illegal instruction.

$G4RT_CPU_ISA picks the code path: `native` (default: the best this CPU runs), `avx512`, `avx2`,
or `scalar` (portable C, the path every other CPU architecture takes). $G4RT_CC names the
compiler (default: cc, then gcc, then clang). $G4RT_CPU_CFLAGS adds flags (e.g. sanitizers).
$G4RT_CPU_VNNI=0 builds without the VNNI integer dots even where the CPU has them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

from ...errors import BackendUnavailableError, G4rtError
from ..kernel_sources import kernel_folder

ISAS = ("native", "avx512", "avx2", "scalar")
#: the folder under shaders/cpu/arch with each code path's matvec and gemm kernels
ARCH_DIRS = {"avx512": "avx512", "avx2": "avx2", "scalar": "portable"}
BASE_FLAGS = ["-std=c11", "-O3", "-fPIC", "-shared", "-pthread", "-fno-math-errno",
              "-Wall", "-Wno-unused-function"]
X86_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-mbmi2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
               "-mbmi2", "-mprefer-vector-width=512"],
}
#: Integer-dot extensions a path uses when this CPU has them (/proc/cpuinfo flag, compiler flag):
#: the q8 kernels then take vpdpbusd instead of vpmaddubsw + vpmaddwd (shaders/cpu/q8.h).
X86_OPTIONAL = {
    "avx512": [("avx512_vnni", "-mavx512vnni")],
    "avx2": [("avx_vnni", "-mavxvnni")],
}
#: CPU flags (/proc/cpuinfo) each x86 path needs.
X86_NEEDS = {
    "avx2": {"avx2", "fma", "f16c"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"},
}


class CCompilerMissingError(BackendUnavailableError):
    """No C compiler: the native CPU backend cannot be built."""


class CpuBuildError(G4rtError):
    """The C compiler failed on the kernel sources."""


def source_dir() -> Path:
    """$G4RT_CPU_SHADER_DIR, else shaders/cpu of the package data, else the repo's."""
    return kernel_folder("cpu", "g4cpu.h", "G4RT_CPU_SHADER_DIR")


def sources(isa: str, src_dir: Optional[Path] = None) -> list[Path]:
    """The C files of one build: the shared ones, then the concrete `isa`'s arch folder."""
    d = src_dir or source_dir()
    return sorted(d.glob("*.c")) + sorted((d / "arch" / ARCH_DIRS[isa]).glob("*.c"))


def _source_tree(src_dir: Path) -> list[Path]:
    """Every source and header under src_dir (all arch folders): what the cache key covers."""
    return sorted(p for p in src_dir.rglob("*") if p.suffix in (".c", ".h") and p.is_file())


def cache_dir() -> Path:
    env = os.environ.get("G4RT_CPU_CACHE")
    p = Path(env) if env else Path.home() / ".cache" / "g4rt" / "cpu"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError:
        p = Path(tempfile.gettempdir()) / "g4rt-cpu-cache"
        p.mkdir(parents=True, exist_ok=True)
    return p


def compiler() -> str:
    """Path of the C compiler, or CCompilerMissingError saying what to install."""
    for name in (os.environ.get("G4RT_CC"), os.environ.get("CC"), "cc", "gcc", "clang"):
        if name:
            path = shutil.which(name)
            if path:
                return path
    raise CCompilerMissingError(
        "the native CPU backend needs a C compiler and none was found (cc, gcc or clang); "
        "install one (Debian/Ubuntu: apt-get install gcc) or set G4RT_CC, "
        "or use --backend numpy")


@functools.lru_cache(maxsize=None)
def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def supported_isas() -> list[str]:
    """The explicit code paths this CPU can run, best first (always ends with "scalar")."""
    out = []
    if is_x86():
        flags = cpu_flags()
        for isa in ("avx512", "avx2"):
            if X86_NEEDS[isa] <= flags:
                out.append(isa)
    return out + ["scalar"]


def resolve_isa(isa: Optional[str] = None) -> str:
    """The concrete code path for a request (argument, else $G4RT_CPU_ISA, else native)."""
    isa = (isa or os.environ.get("G4RT_CPU_ISA") or "native").strip().lower()
    if isa not in ISAS:
        raise G4rtError(f"G4RT_CPU_ISA={isa!r} is not one of {', '.join(ISAS)}")
    have = supported_isas()
    if isa == "native":
        return have[0]
    if isa not in have:
        raise BackendUnavailableError(f"this CPU cannot run the {isa} kernels (it supports "
                                      f"{', '.join(have)})")
    return isa


def optional_flags(isa: str) -> list[str]:
    """The X86_OPTIONAL compiler flags of `isa` this CPU has ($G4RT_CPU_VNNI=0: none)."""
    if os.environ.get("G4RT_CPU_VNNI", "1") == "0":
        return []
    have = cpu_flags()
    return [flag for cpu_flag, flag in X86_OPTIONAL.get(isa, []) if cpu_flag in have]


def flags_for(isa: str) -> list[str]:
    extra = os.environ.get("G4RT_CPU_CFLAGS", "").split()
    if isa in X86_FLAGS:
        return BASE_FLAGS + X86_FLAGS[isa] + optional_flags(isa) + extra
    if isa == "scalar" and not is_x86():
        # Other architectures: let the compiler use what this CPU has (NEON on aarch64).
        return BASE_FLAGS + ["-mcpu=native" if platform.machine().startswith(("aarch64", "arm"))
                             else "-march=native"] + extra
    return BASE_FLAGS + extra


_lock = threading.Lock()


def build(isa: Optional[str] = None, src_dir: Optional[Path] = None) -> Path:
    """Compile (or find in the cache) the kernel library for `isa`; return the .so path."""
    isa = resolve_isa(isa)
    cc = compiler()
    d = src_dir or source_dir()
    srcs = sources(isa, d)
    if not srcs:
        raise CpuBuildError(f"no C sources in {d}")
    flags = flags_for(isa)
    h = hashlib.sha256()
    for p in _source_tree(d):
        h.update(p.relative_to(d).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    h.update("\0".join([_compiler_version(cc), *flags, isa, platform.machine(),
                        " ".join(sorted(cpu_flags()))]).encode())
    out = cache_dir() / f"g4cpu-{isa}-{h.hexdigest()[:20]}.so"
    with _lock:
        if out.is_file():
            return out
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        # -I: the arch files include the shared headers by their names in shaders/cpu
        cmd = [cc, *flags, f"-I{d}", "-o", str(tmp), *map(str, srcs), "-lm"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            raise CpuBuildError(f"running the C compiler failed: {e}") from None
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise CpuBuildError(f"compiling the CPU kernels failed ({' '.join(cmd[:3])} ...):\n"
                                f"{(r.stderr or r.stdout).strip()[-4000:]}")
        os.replace(tmp, out)
    return out
