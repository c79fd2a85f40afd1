"""What the native-CPU kernel tests share: the ISA flag sets (the backend's own, from
g4rt.backends.cpu.compiler), which of them this CPU runs, where each ISA's arch kernels are, and
the ctypes mirrors of g4cpu.h."""

from __future__ import annotations

from pathlib import Path

from g4rt.backends.cpu.compiler import ARCH_DIRS, X86_FLAGS, X86_NEEDS, cpu_flags
from g4rt.backends.cpu.native import G4Cmd, G4Exec

__all__ = ["G4Cmd", "G4Exec", "ISA_FLAGS", "ISA_CPU_FLAGS", "SRC", "arch_file", "host_flags"]

#: the kernel sources (shaders/cpu)
SRC = Path(__file__).resolve().parents[1] / "shaders" / "cpu"
#: compiler flags of each code path ("scalar": portable C, no -m flags)
ISA_FLAGS = {"scalar": [], **X86_FLAGS}
#: /proc/cpuinfo flags each path needs
ISA_CPU_FLAGS = {"scalar": set(), **{k: set(v) for k, v in X86_NEEDS.items()}}


def arch_file(isa: str, name: str) -> Path:
    """One of `isa`'s kernel files, e.g. arch_file("scalar", "matvec.c") -> arch/portable/matvec.c."""
    return SRC / "arch" / ARCH_DIRS[isa] / name


def host_flags() -> set[str]:
    """This CPU's feature flags (empty where unknown)."""
    return set(cpu_flags())
