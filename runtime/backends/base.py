"""The interface every backend implements: the Backend (weights, caches, compiling graphs, and
what a hybrid of two backends needs from each half) and the CompiledGraph it records."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from ..errors import G4rtError, PrecisionUnavailableError
from ..ops import Graph, KvCache, Segment, WeightSpec

#: Called after each op with (op index, op, output array copy) — the conformance tool's probe.
OpObserver = Callable[[int, object, np.ndarray], None]


class WeightSource(Protocol):
    """Where weights come from: raw GGUF bytes, uint8 [rows, row_bytes], memory-mapped."""

    def weight_bytes(self, name: str) -> np.ndarray: ...


def checked_precision(backend: str, precision: str, choices: tuple[str, ...]) -> str:
    """`precision` when it is one of the backend's `choices`, else an error naming them (each
    backend checks its own, so that one made directly, not through the registry, refuses too)."""
    if precision not in choices:
        raise PrecisionUnavailableError(f"--precision {precision} is not available on the {backend} backend "
                                        f"(choices: {', '.join(choices)})")
    return precision


class CompiledGraph(ABC):
    """A graph recorded on a backend, replayed with new token ids and a new placement of its rows."""

    graph: Graph

    @abstractmethod
    def run(self, tokens: np.ndarray, segments: Sequence[Segment],
            observer: Optional[OpObserver] = None) -> np.ndarray:
        """Execute the graph; return the output buffer ([rows, n_vocab] float32) as a numpy array.

        segments: where the rows sit (ops.Segment: first row, rows, first position, cache slot),
        covering every row in order; ops.one_sequence(n, pos0) for the common case."""

    def read_buffers(self, names) -> dict[str, np.ndarray]:
        """Float32 copies of buffers as the last run left them (a hybrid's hand-over; call it
        before another graph of the backend runs)."""
        raise G4rtError(f"{type(self).__name__} keeps no buffers to read after a run")


class Backend(ABC):
    name: str = "?"
    #: The KV cache precision ("f16" or "f32"; backends/registry.py lists each backend's choices).
    kv_dtype: str = "f32"
    #: The activation precision asked for ("auto", "exact", "q8"; the registry lists each
    #: backend's choices); precision_summary() says what the loaded weights actually run with.
    precision: str = "exact"

    @property
    def device_name(self) -> str:
        return self.name

    def precision_summary(self) -> str:
        """What the matmuls of the loaded weights run with, e.g. "q8 (Q4_0, Q6_K), exact (F32)"."""
        return "exact"

    @abstractmethod
    def load_weights(self, specs: dict[str, WeightSpec], source: WeightSource,
                     progress: Optional[Callable[[int], None]] = None) -> None:
        """Make the weights available to the device (upload once, in GGUF block layout)."""

    @abstractmethod
    def allocate_caches(self, caches: dict[str, KvCache]) -> None:
        """Allocate the persistent KV caches (zeroed)."""

    @abstractmethod
    def compile(self, graph: Graph) -> CompiledGraph:
        """Record a graph once; the result is replayed per call."""

    def close(self) -> None:
        """Release device resources."""

    # ---- what a hybrid (hybrid.py) needs from each half --------------------------------------
    def declare_inputs(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Persistent f32 buffers {name: (rows, cols)} that write_inputs fills and the graphs
        read like caches (a hybrid's hand-over from the other half)."""
        raise G4rtError(f"backend {self.name} cannot receive hybrid inputs")

    def write_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy host arrays into inputs made by declare_inputs."""
        raise G4rtError(f"backend {self.name} cannot receive hybrid inputs")

    def declare_kept(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Persistent f32 buffers a hybrid segment leaves for a later segment on this backend
        (written by a Slice), so that they need not go through the host."""
        raise G4rtError(f"backend {self.name} cannot keep hybrid buffers")

    @property
    def keeps_hand_overs(self) -> bool:
        """Whether this backend offers declare_kept (else what one of its segments leaves for a
        later one goes through the host)."""
        return type(self).declare_kept is not Backend.declare_kept

    def check_split_fits(self, graph: Graph, caches: dict[str, KvCache], split: int, batch: int) -> None:
        """Raise InsufficientMemoryError, before anything is uploaded, when the ops [0, split) of
        `graph` with these caches would not fit this device (a hybrid's front). A backend on
        host memory has nothing to check."""

    def check_ops_fit(self, graph: Graph, caches: dict[str, KvCache], op_indices: list[int], batch: int) -> None:
        """As check_split_fits, for the ops at `op_indices` (a hybrid's front segments)."""
