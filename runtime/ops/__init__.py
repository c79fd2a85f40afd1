"""The op list: the contract between a model's graph builder and the backends.

A `Graph` is a flat list of ops over named 2-D buffers ([rows, cols], row-major, float32 unless
stated) and named weights (GGUF tensors, kept in their block layout). It is built once per model,
context and batch size, then replayed: the only per-call inputs are the token ids and where the
rows sit: a list of `Segment`s, each a run of consecutive rows that continue one sequence (its KV
cache slot and the position of its first row). One sequence is the common case (`one_sequence`:
one segment of every row); several let one pass decode many sequences (the server's parallel
slots). Row-wise ops ignore segments; Rope, KvStore and Attention work per segment.

Backends execute these ops and know nothing about any model; the model knows nothing about
backends. Every op's semantics are defined by the numpy reference (backends/numpy_ref/).

The package: contract.py (Buffer, KvCache, Segment, WeightSpec, Op, Graph and their helpers) and
the ops by concern: text.py, vision.py, audio.py. Everything is importable from here.
"""

from __future__ import annotations

from .contract import *  # noqa: F401,F403
from .contract import Op
from .text import *  # noqa: F401,F403
from .vision import *  # noqa: F401,F403
from .audio import *  # noqa: F401,F403


def op_classes() -> tuple[type, ...]:
    """Every op of the contract (the dataclasses below Op), in definition order."""
    found, todo = [], list(Op.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return tuple(found)


def table_by_kind(namespace: dict, prefix: str) -> dict[type, object]:
    """A backend's dispatch table {op class: namespace[prefix + op.kind]}: a backend names its
    per-op functions after the op kinds (lower_matmul, lower_kv_store, ...), so the table is never
    written out by hand (an op without such a function is simply absent: unsupported)."""
    return {cls: namespace[prefix + cls.kind] for cls in op_classes() if prefix + cls.kind in namespace}
