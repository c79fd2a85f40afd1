"""Where things live in Vulkan memory: weights, KV caches and activations packed into a few large
"arenas" of at most one storage-buffer descriptor range each, and split by rows where one does
not fit (docs/vulkan.md).

Packing into shared buffers rather than one buffer per tensor matters because kp fixes an
Algorithm's buffers when its pipeline is created (see dispatch.py): a few shared buffers keep a
model's pipelines to a handful per kernel variant. This module only decides offsets; creating
and filling the tensors is the backend's (and upload.py's) job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ... import ops
from ...errors import G4rtError
from .shader_build import QTYPE_IDS

ALIGN_WORDS = 64             # 256-byte alignment of buffers inside an arena


def aligned_words(words: int) -> int:
    return -(-words // ALIGN_WORDS) * ALIGN_WORDS


# ---- weights ------------------------------------------------------------------------------------
@dataclass
class WeightChunk:
    row0: int
    row1: int
    tensor: object
    byte_off: int       # where row0 starts inside the tensor


@dataclass
class PlacedWeight:
    spec: ops.WeightSpec
    row_bytes: int
    chunks: list[WeightChunk]
    nbytes: int


def pack_weights(specs: dict[str, ops.WeightSpec], source, cap: int):
    """Row chunks of every weight at 256-byte aligned offsets in arenas of at most `cap` bytes.
    Returns ({name: [(row0, row1, arena index, byte offset)]}, bytes used per arena)."""
    plan = {}
    arenas = [0]
    for name, spec in specs.items():
        if spec.qtype.name not in QTYPE_IDS:
            raise G4rtError(f"the Vulkan backend has no kernel for {name!r} of type {spec.qtype.name}")
        rows, rb = source.weight_bytes(name).shape
        if rb > cap:
            raise G4rtError(f"one row of {name!r} ({rb} bytes) exceeds a Vulkan storage buffer ({cap} bytes)")
        per = cap // rb
        unit = spec.rows // spec.experts if spec.experts else 0
        if unit and unit <= per:    # whole experts per chunk where they fit: fewer split items
            per = per // unit * unit
        chunks = []
        for r0 in range(0, rows, per):
            r1 = min(rows, r0 + per)
            nb = (r1 - r0) * rb
            if arenas[-1] + nb > cap:
                arenas.append(0)
            chunks.append((r0, r1, len(arenas) - 1, arenas[-1]))
            arenas[-1] += -(-nb // 256) * 256
        plan[name] = chunks
    return plan, arenas


# ---- KV caches ----------------------------------------------------------------------------------
@dataclass
class CacheLocation:
    cache: ops.KvCache
    tensor: object
    off: int            # word offset inside the tensor
    words: int


def pack_caches(caches: dict[str, ops.KvCache], max_bytes: int, kv_f16: bool):
    """Word offsets of every cache in arenas of at most max_bytes (f16: two values per word).
    Returns ([(cache, arena index, word offset, words)], words used per arena)."""
    cap_words = max_bytes // 4
    plan, arenas = [], [0]
    for c in caches.values():
        if kv_f16 and c.cols % 2:
            raise G4rtError(f"cache {c.name} has an odd width ({c.cols}); use kv_dtype='f32'")
        words = c.slots * c.rows * c.cols // (2 if kv_f16 else 1)
        if words > cap_words:
            raise G4rtError(f"KV cache {c.name} ({words * 4 >> 20} MiB) exceeds one Vulkan storage "
                            f"buffer ({max_bytes >> 20} MiB); use a smaller context")
        if arenas[-1] + words > cap_words:
            arenas.append(0)
        plan.append((c, len(arenas) - 1, arenas[-1], words))
        arenas[-1] += aligned_words(words)
    return plan, arenas


# ---- activations --------------------------------------------------------------------------------
@dataclass
class BufferPiece:
    row0: int
    row1: int
    tensor: object
    off: int            # word offset of row0 inside the tensor


@dataclass
class BufferLocation:
    """Where a graph buffer lives: one or more row bands, each contiguous in one tensor."""
    rows: int
    cols: int
    pieces: list[BufferPiece]

    def cuts(self) -> list[int]:
        return [p.row0 for p in self.pieces[1:]]

    def at(self, r0: int, r1: int) -> tuple[object, int]:
        for p in self.pieces:
            if p.row0 <= r0 and r1 <= p.row1:
                return p.tensor, p.off + (r0 - p.row0) * self.cols
        raise AssertionError(f"rows {r0}:{r1} straddle two bands")

    def whole(self, what: str) -> tuple[object, int]:
        if len(self.pieces) != 1:
            raise G4rtError(f"{what} ({self.rows} x {self.cols}) is larger than one Vulkan storage "
                            f"buffer; use a smaller batch (--prefill-chunk)")
        return self.pieces[0].tensor, self.pieces[0].off


def bands(rows: int, operands: list[tuple[BufferLocation, int]]) -> list[tuple[int, int]]:
    """Split output rows [0, rows) so that each operand's rows (row + shift) lie in one band."""
    cuts = {0, rows}
    for loc, shift in operands:
        for c in loc.cuts():
            if 0 < c - shift < rows:
                cuts.add(c - shift)
    s = sorted(cuts)
    return list(zip(s[:-1], s[1:]))


class ActivationPool:
    """Device-only arenas shared by all graphs of a backend: graphs never run at the same time
    and no activation outlives a run, so every graph lays its buffers out from arena 0."""

    def __init__(self, make_arena: Callable[[], object]):
        self._make_arena = make_arena
        self._arenas: list = []

    def arena(self, i: int):
        while len(self._arenas) <= i:
            self._arenas.append(self._make_arena())
        return self._arenas[i]

    def clear(self) -> None:
        self._arenas.clear()


def place_buffers(graph: ops.Graph, arena_words: int, pool: ActivationPool,
                  new_output: Callable[[int], object]) -> tuple[dict[str, BufferLocation], list]:
    """Locations of the graph's buffers (not the token ids, which live in the parameters buffer)
    in the pool's arenas, split into row bands where a buffer exceeds one arena. The output gets
    its own tensor per band (new_output(words)), read back by the host.
    Returns (locations by name, the output's tensors)."""
    ai, off = 0, 0
    locs: dict[str, BufferLocation] = {}
    out_tensors = []
    for buf in graph.buffers.values():
        if buf.name == graph.tokens:
            continue
        per = arena_words // buf.cols
        if per == 0:
            raise G4rtError(f"one row of buffer {buf.name} ({buf.cols} values) exceeds a Vulkan storage buffer")
        pieces = []
        for r0 in range(0, buf.rows, per):
            r1 = min(buf.rows, r0 + per)
            words = (r1 - r0) * buf.cols
            if buf.name == graph.output:
                t = new_output(words)
                out_tensors.append(t)
                pieces.append(BufferPiece(r0, r1, t, 0))
                continue
            if off + words > arena_words:
                ai, off = ai + 1, 0
            pieces.append(BufferPiece(r0, r1, pool.arena(ai), off))
            off += aligned_words(words)
        locs[buf.name] = BufferLocation(buf.rows, buf.cols, pieces)
    return locs, out_tensors
