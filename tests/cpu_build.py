"""What the native-CPU kernel tests share: the ISA flag sets (the backend's own, from
g4rt.backends.cpu.compiler), which of them this CPU runs, and the ctypes mirrors of g4cpu.h."""

from __future__ import annotations

from g4rt.backends.cpu.compiler import X86_FLAGS, X86_NEEDS, cpu_flags
from g4rt.backends.cpu.native import G4Cmd, G4Exec

__all__ = ["G4Cmd", "G4Exec", "ISA_FLAGS", "ISA_CPU_FLAGS", "host_flags"]

#: compiler flags of each code path ("scalar": portable C, no -m flags)
ISA_FLAGS = {"scalar": [], **X86_FLAGS}
#: /proc/cpuinfo flags each path needs
ISA_CPU_FLAGS = {"scalar": set(), **{k: set(v) for k, v in X86_NEEDS.items()}}


def host_flags() -> set[str]:
    """This CPU's feature flags (empty where unknown)."""
    return set(cpu_flags())
