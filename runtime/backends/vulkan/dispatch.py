"""One kernel dispatch (shader variant, bound tensors, grid, push constants) and the cache of the
kp pipelines ("algorithms") that run them.

kp fixes an Algorithm's buffers when its pipeline is created, and creating a pipeline costs tens
of milliseconds on some drivers (lavapipe), so a pipeline is made once per (variant, bound
tensors, grid) and reused by every dispatch that matches: the push constants vary per dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .shader_build import Variant, spirv, variant

MAX_GROUPS = 32768           # per grid dimension (a power of two below the 65535 limit)

#: push-constant words per kernel (must match the `PC` blocks of the shaders)
PUSH_WORDS = {"embed": 10, "matvec": 10, "matmul": 10, "matmul_rows": 10, "matmul_tokens": 10, "rmsnorm": 10,
              "rope": 9, "attention": 19, "attention_rows": 19, "kv_store": 11, "add": 8, "mul": 8, "gelu_mul": 8,
              "gelu": 9, "softcap": 9, "scale": 9, "slice": 9, "copy": 5, "moe_route": 9, "moe_sum": 9,
              "moe_matvec": 15, "take_rows": 10}
#: push-constant words a define adds to its shader's block (attention.comp's AHEAD: a_off)
PUSH_EXTRA = {"AHEAD": 1}


def push_words(*vals) -> np.ndarray:
    """Pack ints and floats into uint32 push-constant words (floats bit-cast)."""
    out = np.empty(len(vals), np.uint32)
    for i, v in enumerate(vals):
        out[i] = np.float32(v).view(np.uint32) if isinstance(v, float) else np.uint32(v)
    return out


def workgroups(n_items: int) -> tuple[int, int]:
    """Dispatch size for n work items: the next power of two (so one pipeline serves similar
    sizes), never fewer workgroups than items (llvmpipe ends long loops: see common.glsl), as a
    2-D grid past the 65535 limit of one dimension."""
    n = max(1, int(n_items))
    g = 1 << (n - 1).bit_length()
    if g <= MAX_GROUPS:
        return g, 1
    return MAX_GROUPS, -(-g // MAX_GROUPS)


@dataclass
class Dispatch:
    variant: Variant
    tensors: tuple
    groups: tuple[int, int]
    pc: np.ndarray      # push constants, one uint32 word each


def copy_dispatch(src, src_off: int, dst, dst_off: int, n: int, fill: Optional[int] = None) -> Dispatch:
    """copy.comp: n words from src[src_off:] to dst[dst_off:], or the value `fill` when given."""
    return Dispatch(variant("copy"), (src, dst), workgroups(-(-n // 256)),
                    push_words(src_off, dst_off, n, 1 if fill is not None else 0, fill or 0))


class PipelineCache:
    """kp Algorithms by (variant, bound tensors, grid); each keeps its tensors alive."""

    def __init__(self, kp, mgr, spec_consts: dict[str, list[int]]):
        self.kp, self.mgr = kp, mgr
        self.spec_consts = spec_consts      # specialization constants per shader
        self._algos: dict = {}

    def algorithm(self, var: Variant, tensors: tuple, groups: tuple[int, int]):
        key = (var, tuple(id(t) for t in tensors), groups)
        a = self._algos.get(key)
        if a is None:
            npush = PUSH_WORDS[var.shader] + sum(PUSH_EXTRA.get(name, 0) for name, _ in var.defines)
            spec = np.array(self.spec_consts.get(var.shader, []), np.uint32)
            a = self.mgr.algorithm(list(tensors), spirv(var), (groups[0], groups[1], 1), spec,
                                   np.zeros(npush, np.uint32))
            self._algos[key] = (a, tensors)   # keep the tensors alive with the pipeline
            return a
        return a[0]

    def op(self, d: Dispatch):
        """The kp operation that records dispatch d."""
        return self.kp.OpAlgoDispatch(self.algorithm(d.variant, d.tensors, d.groups), d.pc)

    def forget_tensor(self, tensor) -> None:
        """Drop the pipelines bound to tensor (so that it can be released)."""
        tid = id(tensor)
        for key in [k for k, (_, ts) in self._algos.items() if any(id(t) == tid for t in ts)]:
            del self._algos[key]

    def clear(self) -> None:
        self._algos.clear()
