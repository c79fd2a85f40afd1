"""The interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional, Protocol

import numpy as np

from ..ops import Graph, KvCache, WeightSpec

#: Called after each op with (op index, op, output array copy) — the conformance tool's probe.
OpObserver = Callable[[int, object, np.ndarray], None]


class WeightSource(Protocol):
    """Where weights come from: raw GGUF bytes, uint8 [rows, row_bytes], memory-mapped."""

    def weight_bytes(self, name: str) -> np.ndarray: ...


class CompiledGraph(ABC):
    """A graph recorded on a backend, replayed with new token ids and a new start position."""

    graph: Graph

    @abstractmethod
    def run(self, tokens: np.ndarray, pos0, observer: Optional[OpObserver] = None) -> np.ndarray:
        """Execute the graph; return the output buffer ([rows, n_vocab] float32) as a numpy array.

        pos0: the position of the first row (one sequence, slot 0), or on a backend with
        `supports_segments` a list of ops.Segment placing each sequence's rows."""


class Backend(ABC):
    name: str = "?"
    #: Runs a graph over several sequences at once (CompiledGraph.run given ops.Segment lists,
    #: caches of several slots). A backend without it runs one sequence per call, each slot with
    #: caches and graphs of its own (the engine arranges that).
    supports_segments: bool = False

    @property
    def device_name(self) -> str:
        return self.name

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
