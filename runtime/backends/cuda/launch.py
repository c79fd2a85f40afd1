"""A kernel launch as the CUDA lowerings describe it (pure data), shared by lowering.py and the
encoders' media_lowering.py (which lowering.py imports: so neither imports the other's module
for these)."""

from __future__ import annotations

from dataclasses import dataclass

from . import kernels

NULL = ("NULL",)
PARAMS = ("PARAMS",)


@dataclass
class Launch:
    kernel: str
    grid: tuple[int, int, int]
    block: int
    args: list                      # [(code, value)]; value: number or a symbolic reference
    smem: int = 0


def copy_launch(src: tuple, dst: tuple, rows: int, cols: int) -> Launch:
    """rows x cols floats from src to dst (the slice kernel)."""
    n = rows * cols
    return Launch("slice", (kernels.ew_grid(n), 1, 1), kernels.EW_THREADS, [src, dst, rows, cols, cols, 0, 0])
