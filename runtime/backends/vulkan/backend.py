"""The Vulkan backend (Kompute `kp` 0.9): GLSL compute kernels over GGUF-layout weights.

Memory (details in docs/vulkan.md)
- Weights: uploaded once, byte for byte in their GGUF block layout, packed into a few "weight
  arenas" of at most one storage-buffer descriptor range each (128 MiB on lavapipe); a tensor
  larger than that is split into row chunks, and a matmul or embedding lookup issues one dispatch
  per chunk. On CPU drivers (device memory is host memory) the arenas are `host` tensors filled in
  place from the memory-mapped file; elsewhere device-only `storage` tensors filled through one
  reused staging buffer and a copy kernel.
- Activations: one pool of device-only arenas shared by all graphs (graphs never run at the same
  time and no activation outlives a run); a buffer larger than an arena is split into row bands.
  The graph's output has its own device tensor(s) with a host-visible twin.
- KV caches: packed into cache arenas, f16 (two halfs per word) by default, or f32.

Execution
- `compile(graph)` turns the op list into dispatches (kernel variant, bound buffers, push
  constants) and records them into one kp Sequence, preceded by the sync of a small parameters
  buffer (pos0, n, token ids) and followed by the read-back of the output. `run()` writes the
  parameters and replays the sequence: nothing is recorded again.
- Two kernel sets: "gpu" (subgroup matrix-vector, tiled matrix-matrix, one workgroup per attention
  row) and "cpu" (barrier-free kernels where the 8 lanes of a SIMD register take 8 weight rows or
  8 query rows: what CPU drivers such as lavapipe run fast).
- kp 0.9's Python API records no compute->compute barrier between dispatches. On CPU drivers
  (lavapipe runs dispatches one after another) none is needed; on other devices a 1-word
  device->host sync is recorded between ops, whose barriers order all earlier compute work before
  the next dispatch (an execution dependency; see docs/vulkan.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from gguf import GGMLQuantizationType

from ... import ops as O
from ...errors import G4rtError
from ...gguf.quant_types import dequantize_rows
from .shader_build import QTYPE_IDS, Variant, spirv, variant
from ..base import Backend, CompiledGraph, OpObserver, WeightSource
from .device import DeviceInfo, import_kp, open_manager, select_device

QT = GGMLQuantizationType
_ARENA_CAP = 256 << 20        # never bind more than this in one descriptor (VRAM per arena)
_ALIGN_WORDS = 64             # 256-byte alignment of buffers inside an arena
_STAGING_WORDS = 8 << 20      # 32 MiB host staging for device-only uploads
_MAX_GROUPS = 32768          # per grid dimension (a power of two below the 65535 limit)
_MATVEC_MAX_TOKENS = 8        # tokens per matrix-vector dispatch (more: several dispatches)
_ATTN_MAX_HEAD_DIM = 512      # MAXD in attention.comp

#: push-constant words per kernel (must match the `PC` blocks of the shaders)
PUSH_WORDS = {"embed": 10, "matvec": 10, "matmul": 10, "matmul_rows": 10, "matmul_tokens": 10, "rmsnorm": 10, "rope": 9,
              "attention": 19, "attention_rows": 19, "kv_store": 11, "add": 8, "mul": 8, "gelu_mul": 8, "gelu": 9, "softcap": 9, "scale": 9,
              "slice": 9, "copy": 5, "moe_route": 9, "moe_sum": 9, "moe_matvec": 15}
_PARAMS_MIN_TOKENS = 512      # the parameters buffer is shared by every graph up to this batch


def _u32(*vals) -> np.ndarray:
    """Pack ints and floats into uint32 push-constant words (floats bit-cast)."""
    out = np.empty(len(vals), np.uint32)
    for i, v in enumerate(vals):
        out[i] = np.float32(v).view(np.uint32) if isinstance(v, float) else np.uint32(v)
    return out


def _groups(n_items: int) -> tuple[int, int]:
    """Dispatch size for n work items: the next power of two (so one pipeline serves similar
    sizes), never fewer workgroups than items (llvmpipe ends long loops: see common.glsl), as a
    2-D grid past the 65535 limit of one dimension."""
    n = max(1, int(n_items))
    g = 1 << (n - 1).bit_length()
    if g <= _MAX_GROUPS:
        return g, 1
    return _MAX_GROUPS, -(-g // _MAX_GROUPS)


@dataclass
class _Chunk:
    row0: int
    row1: int
    tensor: object
    byte_off: int       # where row0 starts inside the tensor


@dataclass
class _Weight:
    spec: O.WeightSpec
    row_bytes: int
    chunks: list[_Chunk]
    nbytes: int


@dataclass
class _Piece:
    row0: int
    row1: int
    tensor: object
    off: int            # word offset of row0 inside the tensor


@dataclass
class _Loc:
    """Where a graph buffer lives: one or more row bands, each contiguous in one tensor."""
    rows: int
    cols: int
    pieces: list[_Piece]

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


@dataclass
class _Cache:
    cache: O.KvCache
    tensor: object
    off: int            # word offset inside the tensor
    words: int


@dataclass
class _Dispatch:
    variant: Variant
    tensors: tuple
    groups: tuple[int, int]
    pc: np.ndarray


def _bands(rows: int, operands: list[tuple[_Loc, int]]) -> list[tuple[int, int]]:
    """Split output rows [0, rows) so that each operand's rows (row + shift) lie in one band."""
    cuts = {0, rows}
    for loc, shift in operands:
        for c in loc.cuts():
            if 0 < c - shift < rows:
                cuts.add(c - shift)
    s = sorted(cuts)
    return list(zip(s[:-1], s[1:]))


class VulkanBackend(Backend):
    name = "vulkan"
    supports_segments = True

    def __init__(self, device: int | str = 0, kv_dtype: str = "f16",
                 max_buffer_bytes: Optional[int] = None, weight_memory: str = "auto",
                 barriers: Optional[bool] = None, kernels: str = "auto"):
        """device: index or name substring. kv_dtype: "f16" or "f32".
        max_buffer_bytes: cap on one buffer (weight chunk, arena); tests lower it to exercise
        splitting. weight_memory: "auto", "host" (CPU drivers) or "device" (staged upload).
        barriers: force the inter-op sync on or off (default: off on CPU drivers only).
        kernels: "gpu" (subgroup matvec, tiled matmul, one workgroup per attention row), "cpu"
        (barrier-free kernels with eight rows per SIMD register: lavapipe) or "auto"."""
        if kv_dtype not in ("f16", "f32"):
            raise G4rtError(f"kv_dtype must be 'f16' or 'f32', got {kv_dtype!r}")
        self.kp = import_kp()
        self.info: DeviceInfo = select_device(device)
        self.mgr = open_manager(self.info)
        limit = min(self.info.max_storage_buffer_range, self.info.max_allocation, _ARENA_CAP)
        if max_buffer_bytes:
            limit = min(limit, int(max_buffer_bytes))
        self.max_bytes = limit - limit % 256
        self.kv_f16 = kv_dtype == "f16"
        self.kv_dtype = kv_dtype
        if weight_memory == "auto":
            weight_memory = "host" if self.info.is_cpu else "device"
        if weight_memory not in ("host", "device"):
            raise G4rtError(f"weight_memory must be 'auto', 'host' or 'device', got {weight_memory!r}")
        self.weight_memory = weight_memory
        env = os.environ.get("G4RT_VK_BARRIERS")
        if barriers is None:
            barriers = (env == "1") if env in ("0", "1") else not self.info.is_cpu
        self.barriers = barriers
        if kernels == "auto":
            kernels = "cpu" if self.info.is_cpu else "gpu"
        if kernels not in ("cpu", "gpu"):
            raise G4rtError(f"kernels must be 'auto', 'cpu' or 'gpu', got {kernels!r}")
        self.kernels = kernels
        # Workgroup size of the reduction kernels (specialization constant 0): one subgroup.
        sg = self.info.subgroup_size or 32
        self.subgroup = max(4, min(64, sg))
        self.spec_consts = {"matvec": [self.subgroup], "moe_matvec": [self.subgroup]}
        T = self.kp.TensorTypes
        self._T = T
        self.specs: dict[str, O.WeightSpec] = {}
        self.source: Optional[WeightSource] = None
        self.weights: dict[str, _Weight] = {}
        self.caches: dict[str, _Cache] = {}
        self._arenas: list = []
        self._algos: dict = {}
        self._vec_cache: dict[str, object] = {}
        self._rope_cache: dict = {}
        self._staging = None
        self._staging_hint = 0
        self._cache_arenas: list = []
        self._params = None
        self._params_cap = 0
        self.inputs: dict[str, tuple[object, int, int]] = {}     # name -> (tensor, rows, cols)
        self.kept: dict[str, tuple[object, int, int]] = {}       # device-only, same shape
        self._dummy = self._storage(64)
        self._fence = self.mgr.tensor_t(np.zeros(1, np.uint32), T.device)
        self.weight_bytes_total = 0

    # ---- info ---------------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        return f"{self.info.name} (Vulkan, {self.info.device_type})"

    # ---- tensors and kernels ------------------------------------------------------------
    def _storage(self, words: int, dtype=np.uint32):
        # The data of a storage tensor is never read by kp, and np.zeros pages are never touched.
        return self.mgr.tensor_t(np.zeros(max(1, words), dtype), self._T.storage)

    def _arena(self, i: int):
        while len(self._arenas) <= i:
            self._arenas.append(self._storage(self.max_bytes // 4, np.float32))
        return self._arenas[i]

    def algorithm(self, var: Variant, tensors: tuple, groups: tuple[int, int]):
        key = (var, tuple(id(t) for t in tensors), groups)
        a = self._algos.get(key)
        if a is None:
            npush = PUSH_WORDS[var.shader]
            spec = np.array(self.spec_consts.get(var.shader, []), np.uint32)
            a = self.mgr.algorithm(list(tensors), spirv(var), (groups[0], groups[1], 1), spec,
                                   np.zeros(npush, np.uint32))
            self._algos[key] = (a, tensors)   # keep the tensors alive with the pipeline
            return a
        return a[0]

    def op_dispatch(self, d: _Dispatch):
        return self.kp.OpAlgoDispatch(self.algorithm(d.variant, d.tensors, d.groups), d.pc)

    def _copy_dispatch(self, src, src_off: int, dst, dst_off: int, n: int, fill: Optional[int] = None):
        return _Dispatch(variant("copy"), (src, dst), _groups(-(-n // 256)),
                         _u32(src_off, dst_off, n, 1 if fill is not None else 0, fill or 0))

    # ---- weights ------------------------------------------------------------------------
    # Weights are packed into a few large buffers ("weight arenas", each at most one descriptor
    # range) at 256-byte aligned offsets; a tensor larger than one arena is split into row chunks.
    # kp fixes an Algorithm's buffers when its pipeline is created, and creating a pipeline costs
    # tens of milliseconds on some drivers (lavapipe), so binding a few shared buffers instead of
    # one per tensor keeps a model's pipelines to a handful per kernel variant.
    def _new_weight_arena(self, nbytes: int):
        words = -(-nbytes // 4)
        if self.weight_memory == "host":
            # filled in place through the mapped memory: the zero pages passed here are never
            # written, so no host copy of the arena exists besides the buffer itself
            return self.mgr.tensor_t(np.zeros(words, np.uint32), self._T.host)
        return self._storage(words)

    def _write_weight(self, tensor, byte_off: int, data: np.ndarray) -> None:
        src = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        nbytes = src.nbytes
        if self.weight_memory == "host":
            tensor.data().view(np.uint8)[byte_off:byte_off + nbytes] = src
            return
        # device-only memory: through a reused host staging buffer and the copy kernel; the buffer
        # is min(32 MiB, the largest tensor) so that uploading never holds more than one tensor
        want = min(_STAGING_WORDS, max(self._staging_hint, -(-nbytes // 4)))
        if self._staging is None or self._staging.size() < want:
            self._staging = None
            self._staging = self.mgr.tensor_t(np.zeros(want, np.uint32), self._T.host)
        step = self._staging.size() * 4
        seq = self.mgr.sequence()
        for a in range(0, nbytes, step):
            k = min(step, nbytes - a)
            view = self._staging.data().view(np.uint8)
            view[:k] = src[a:a + k]
            if k % 4:
                view[k:k + 4 - k % 4] = 0   # byte_off is word-aligned; the tail word is padding
            seq.eval(self.op_dispatch(self._copy_dispatch(self._staging, 0, tensor, (byte_off + a) // 4,
                                                          -(-k // 4))))

    def _drop_staging(self) -> None:
        """Release the upload staging buffer (and the copy pipelines bound to it)."""
        if self._staging is not None:
            sid = id(self._staging)
            for key in [k for k, (_, ts) in self._algos.items() if any(id(t) == sid for t in ts)]:
                del self._algos[key]
            self._staging = None

    def _upload_words(self, words: np.ndarray):
        """A small standalone tensor (tables, dequantized vectors)."""
        words = np.ascontiguousarray(words, np.uint32).reshape(-1)
        t = self._new_weight_arena(words.nbytes)
        self._write_weight(t, 0, words)
        self._drop_staging()
        return t

    def load_weights(self, specs, source, progress: Optional[Callable[[int], None]] = None) -> None:
        self.specs.update(specs)
        self.source = source
        cap = self.max_bytes
        plan = []              # (name, [(row0, row1, arena index, byte offset)])
        arenas = [0]           # bytes used per new arena
        for name, spec in specs.items():
            if spec.qtype.name not in QTYPE_IDS:
                raise G4rtError(f"the Vulkan backend has no kernel for {name!r} of type {spec.qtype.name}")
            raw = source.weight_bytes(name)
            rows, rb = raw.shape
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
            plan.append((name, chunks))
        tensors = [self._new_weight_arena(max(4, used)) for used in arenas]
        self._staging_hint = -(-max((source.weight_bytes(n).nbytes for n in specs), default=4) // 4)
        for name, chunks in plan:
            # (re)upload: a later call with the same name replaces the tensor and what derives from it
            self._vec_cache.pop(name, None)
            for key in [k for k in self._rope_cache if k[2] == name]:
                del self._rope_cache[key]
            old = self.weights.pop(name, None)
            if old is not None:
                self.weight_bytes_total -= old.nbytes
            raw = source.weight_bytes(name)
            placed = []
            for r0, r1, ai, off in chunks:
                self._write_weight(tensors[ai], off, raw[r0:r1])
                placed.append(_Chunk(r0, r1, tensors[ai], off))
            self.weights[name] = _Weight(specs[name], raw.shape[1], placed, raw.nbytes)
            self.weight_bytes_total += raw.nbytes
            if progress:
                progress(raw.nbytes)
        self._drop_staging()   # no host copy of anything stays behind

    def vector_f32(self, name: str) -> tuple[object, int]:
        """A small weight (norm scale, one-element scale) as f32 words: (tensor, word offset) of
        the uploaded tensor when it is F32, else of a dequantized copy (these are tiny)."""
        t = self._vec_cache.get(name)
        if t is None:
            w = self.weights[name]
            if w.spec.qtype == QT.F32 and len(w.chunks) == 1:
                t = (w.chunks[0].tensor, w.chunks[0].byte_off // 4)
            else:
                vals = dequantize_rows(self.source.weight_bytes(name), w.spec.qtype, w.spec.cols)
                t = (self._upload_words(np.ascontiguousarray(vals.reshape(-1), np.float32).view(np.uint32)), 0)
            self._vec_cache[name] = t
        return t

    def rope_table(self, n_rot: int, base: float, ff: Optional[str]):
        key = (n_rot, base, ff)
        t = self._rope_cache.get(key)
        if t is None:
            inv = base ** (-np.arange(0, n_rot // 2, dtype=np.float64) * 2.0 / n_rot)
            if ff is not None:
                spec = self.specs[ff]
                f = dequantize_rows(self.source.weight_bytes(ff), spec.qtype, spec.cols).reshape(-1)
                inv = inv / f[: n_rot // 2].astype(np.float64)
            # turns per position as 64-bit fixed point (see rope.comp)
            fx = [int(round(float(v) * 2.0 ** 64)) & ((1 << 64) - 1)
                  for v in np.mod(inv / (2 * np.pi), 1.0)]
            words = np.array([[(f >> 32) & 0xFFFFFFFF, f & 0xFFFFFFFF] for f in fx], np.uint32)
            t = self._upload_words(words.reshape(-1))
            self._rope_cache[key] = t
        return t

    # ---- caches -------------------------------------------------------------------------
    def allocate_caches(self, caches) -> None:
        # packed into a few cache arenas, like the weights (see load_weights)
        cap_words = self.max_bytes // 4
        plan, arenas = [], [0]
        for c in caches.values():
            if self.kv_f16 and c.cols % 2:
                raise G4rtError(f"cache {c.name} has an odd width ({c.cols}); use kv_dtype='f32'")
            words = c.slots * c.rows * c.cols // (2 if self.kv_f16 else 1)
            if words > cap_words:
                raise G4rtError(f"KV cache {c.name} ({words * 4 >> 20} MiB) exceeds one Vulkan storage "
                                f"buffer ({self.max_bytes >> 20} MiB); use a smaller context")
            if arenas[-1] + words > cap_words:
                arenas.append(0)
            plan.append((c, len(arenas) - 1, arenas[-1], words))
            arenas[-1] += -(-words // _ALIGN_WORDS) * _ALIGN_WORDS
        self.caches = {}
        self._cache_arenas = [self._storage(max(1, w)) for w in arenas]
        seq = self.mgr.sequence()
        for t, w in zip(self._cache_arenas, arenas):   # zeroed, as the interface promises
            seq.record(self.op_dispatch(self._copy_dispatch(self._dummy, 0, t, 0, max(1, w), fill=0)))
        seq.eval()
        for c, ai, off, words in plan:
            self.caches[c.name] = _Cache(c, self._cache_arenas[ai], off, words)

    def read_cache(self, name: str) -> np.ndarray:
        """A KV cache's contents as float32 [slots * rows, cols] (tests, debugging)."""
        c = self.caches.get(name)
        if c is None:
            raise G4rtError(f"KV cache {name!r} was not allocated")
        t = self.mgr.tensor_t(np.zeros(c.words, np.uint32), self._T.device)
        seq = self.mgr.sequence()
        seq.record(self.op_dispatch(self._copy_dispatch(c.tensor, c.off, t, 0, c.words)))
        seq.record(self.kp.OpTensorSyncLocal([t]))
        seq.eval()
        words = np.array(t.data(), np.uint32)
        vals = words.view(np.float16).astype(np.float32) if self.kv_f16 else words.view(np.float32)
        return vals.reshape(c.cache.slots * c.cache.rows, c.cache.cols)

    def declare_inputs(self, shapes: dict[str, tuple[int, int]]) -> None:
        """f32 buffers that graphs read like caches (by name) and that the host fills before a
        run (write_inputs): how a hybrid segment receives the other backend's activations."""
        self._declare(self.inputs, shapes, lambda words: self.mgr.tensor_t(np.zeros(words, np.float32),
                                                                           self._T.device))

    def declare_kept(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Persistent f32 copies a hybrid segment leaves for a later one on this device (written
        by Slice): device-only storage, they never go through the host."""
        self._declare(self.kept, shapes, lambda words: self._storage(words, np.float32))

    def _declare(self, table: dict, shapes: dict[str, tuple[int, int]], make) -> None:
        for name, (rows, cols) in shapes.items():
            old = table.get(name)
            if old is not None and old[1:] == (rows, cols):
                continue
            if rows * cols * 4 > self.max_bytes:
                raise G4rtError(f"hybrid buffer {name} ({rows}x{cols}) exceeds one Vulkan storage buffer")
            table[name] = (make(rows * cols), rows, cols)

    def write_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        """Staged on the host; each graph that reads an input uploads it as it starts."""
        for name, a in arrays.items():
            if name not in self.inputs:
                raise G4rtError(f"input {name!r} was not declared")
            t, rows, cols = self.inputs[name]
            a = np.asarray(a, np.float32)
            if a.size != rows * cols:
                raise G4rtError(f"input {name!r}: {a.shape} for a [{rows}, {cols}] buffer")
            t.data()[:] = a.reshape(-1)

    def params_for(self, n_tokens: int):
        """The parameters buffer (pos0, n, offset of the row words, -, token ids, then four words
        per row: position, cache slot, segment's first row, segment's rows; shaders/glsl/rows.glsl),
        shared by all graphs that fit it."""
        if self._params is None or self._params_cap < n_tokens:
            self._params_cap = max(n_tokens, _PARAMS_MIN_TOKENS)
            self._params = self.mgr.tensor_t(np.zeros(4 + 5 * self._params_cap, np.uint32), self._T.device)
        return self._params

    def compile(self, graph: O.Graph) -> "VulkanGraph":
        return VulkanGraph(self, graph)

    def close(self) -> None:
        if self.mgr is not None:
            self._algos.clear()
            self.weights.clear()
            self.caches.clear()
            self._arenas.clear()
            self._vec_cache.clear()
            self._rope_cache.clear()
            self._cache_arenas.clear()
            self.inputs.clear()
            self.kept.clear()
            self._staging = self._dummy = self._fence = self._params = None
            self.mgr.destroy()
            self.mgr = None


class VulkanGraph(CompiledGraph):
    def __init__(self, backend: VulkanBackend, graph: O.Graph):
        self.backend, self.graph = backend, graph
        self.kp = backend.kp
        self.n = graph.n_tokens
        be = backend
        self.params = be.params_for(self.n)
        self.slots = O.graph_slots(graph)
        self.locs: dict[str, _Loc] = {}
        self._layout()
        self.op_dispatches: list[list[_Dispatch]] = [self._plan(op) for op in graph.ops]
        self.seq = self._record()
        self._op_seqs: Optional[list] = None
        self._reads: dict = {}
        self.last_replay_s = 0.0

    # ---- layout -------------------------------------------------------------------------
    def _layout(self) -> None:
        be, g = self.backend, self.graph
        arena_words = be.max_bytes // 4
        ai, off = 0, 0
        self.out_tensors = []
        for buf in g.buffers.values():
            if buf.name == g.tokens:
                continue
            per = arena_words // buf.cols
            if per == 0:
                raise G4rtError(f"one row of buffer {buf.name} ({buf.cols} values) exceeds a Vulkan storage buffer")
            pieces = []
            for r0 in range(0, buf.rows, per):
                r1 = min(buf.rows, r0 + per)
                words = (r1 - r0) * buf.cols
                if buf.name == g.output:
                    t = be.mgr.tensor_t(np.zeros(words, np.float32), be._T.device)
                    self.out_tensors.append(t)
                    pieces.append(_Piece(r0, r1, t, 0))
                    continue
                if off + words > arena_words:
                    ai, off = ai + 1, 0
                pieces.append(_Piece(r0, r1, be._arena(ai), off))
                off += -(-words // _ALIGN_WORDS) * _ALIGN_WORDS
            self.locs[buf.name] = _Loc(buf.rows, buf.cols, pieces)
        self.input_tensors = []
        for name in g.caches:
            if name in be.inputs or name in be.kept:
                t, rows, cols = be.inputs.get(name) or be.kept[name]
                self.locs[name] = _Loc(rows, cols, [_Piece(0, rows, t, 0)])
                if name in be.inputs:
                    self.input_tensors.append(t)

    def loc(self, name: str) -> _Loc:
        return self.locs[name]

    # ---- planning: op -> dispatches -------------------------------------------------------
    def _plan(self, op: O.Op) -> list[_Dispatch]:
        fn = getattr(self, f"_plan_{op.kind}", None)
        if fn is None:
            raise G4rtError(f"the Vulkan backend has no kernel for op {op.kind!r}")
        return fn(op)

    def _elementwise(self, op, shader: str, ins: list[tuple[str, int, int]], flag=0, f=0.0,
                     by=None) -> list[_Dispatch]:
        """ins: (buffer, row shift, column offset) per input. Output has the out buffer's shape."""
        out = self.loc(op.out)
        srcs = [(self.loc(n), rs, co) for n, rs, co in ins]
        res = []
        for r0, r1 in _bands(out.rows, [(l, rs) for l, rs, _ in srcs] + [(out, 0)]):
            ot, oo = out.at(r0, r1)
            rows, cols = r1 - r0, out.cols
            bound, words = [], []
            for l, rs, co in srcs:
                t, o = l.at(r0 + rs, r1 + rs)
                bound.append(t)
                words += [o + co, l.cols]
            if len(srcs) == 1:
                bt, bo = by if by is not None else (self.backend._dummy, 0)
                bound.append(bt)
                pc = _u32(*words, oo, cols, rows, cols, flag, float(f), bo)
            else:
                pc = _u32(*words, oo, cols, rows, cols)
            res.append(_Dispatch(variant(shader), tuple(bound) + (ot,), _groups(-(-rows * cols // 256)), pc))
        return res

    def _plan_add(self, op):
        return self._elementwise(op, "add", [(op.a, 0, 0), (op.b, 0, 0)])

    def _plan_mul(self, op):
        return self._elementwise(op, "mul", [(op.a, 0, 0), (op.b, 0, 0)])

    def _plan_gelu_mul(self, op):
        return self._elementwise(op, "gelu_mul", [(op.gate, 0, 0), (op.up, 0, 0)])

    def _plan_gelu(self, op):
        return self._elementwise(op, "gelu", [(op.x, 0, 0)])

    def _plan_softcap(self, op):
        return self._elementwise(op, "softcap", [(op.x, 0, 0)], f=float(op.cap))

    def _plan_scale(self, op):
        by = self.backend.vector_f32(op.by) if op.by else None
        return self._elementwise(op, "scale", [(op.x, 0, 0)], flag=1 if op.by else 0,
                                 f=float(op.scale), by=by)

    def _plan_slice(self, op):
        x = self.loc(op.x)
        out = self.loc(op.out)
        if op.row0 + out.rows > x.rows or op.col0 + out.cols > x.cols:
            raise G4rtError(f"slice of {op.x} out of range")
        return self._elementwise(op, "slice", [(op.x, op.row0, op.col0)])

    def _plan_rmsnorm(self, op):
        be = self.backend
        x, out = self.loc(op.x), self.loc(op.out)
        if x.cols % op.group:
            raise G4rtError(f"rmsnorm group {op.group} does not divide {x.cols} columns")
        wt, wo = be.vector_f32(op.weight) if op.weight else (be._dummy, 0)
        res = []
        for r0, r1 in _bands(out.rows, [(x, 0), (out, 0)]):
            xt, xo = x.at(r0, r1)
            ot, oo = out.at(r0, r1)
            rows = r1 - r0
            pc = _u32(xo, x.cols, oo, out.cols, rows, x.cols, op.group, 1 if op.weight else 0, float(op.eps), wo)
            res.append(_Dispatch(variant("rmsnorm"), (xt, wt, ot), _groups(rows * (x.cols // op.group)), pc))
        return res

    def _plan_rope(self, op):
        be = self.backend
        x, out = self.loc(op.x), self.loc(op.out)
        if x.cols % op.head_dim or op.n_rot > op.head_dim or op.n_rot % 2:
            raise G4rtError(f"rope: bad head_dim {op.head_dim} / n_rot {op.n_rot} for {x.cols} columns")
        table = be.rope_table(op.n_rot, float(op.base), op.freq_factors)
        n_heads = x.cols // op.head_dim
        per_head = op.n_rot // 2 + (op.head_dim - op.n_rot)
        res = []
        for r0, r1 in _bands(out.rows, [(x, 0), (out, 0)]):
            xt, xo = x.at(r0, r1)
            ot, oo = out.at(r0, r1)
            rows = r1 - r0
            pc = _u32(xo, x.cols, oo, out.cols, rows, n_heads, op.head_dim, op.n_rot, r0)
            res.append(_Dispatch(variant("rope"), (self.params, xt, table, ot),
                                 _groups(-(-rows * n_heads * per_head // 64)), pc))
        return res

    def _cache(self, name: str) -> _Cache:
        c = self.backend.caches.get(name)
        if c is None:
            raise G4rtError(f"KV cache {name!r} was not allocated")
        return c

    def _plan_attention(self, op):
        be = self.backend
        q, k, v, out = self.loc(op.q), self.loc(op.k), self.loc(op.v), self.loc(op.out)
        if op.head_dim > _ATTN_MAX_HEAD_DIM:
            raise G4rtError(f"attention head_dim {op.head_dim} > {_ATTN_MAX_HEAD_DIM} is not supported")
        if op.n_head % op.n_kv_head:
            raise G4rtError(f"attention: {op.n_head} heads are not a multiple of {op.n_kv_head} KV heads")
        if op.head_dim % 8:
            raise G4rtError(f"attention head_dim {op.head_dim} is not a multiple of 8")
        ck, cv = self._cache(op.cache_k), self._cache(op.cache_v)
        if be.info.is_cpu:
            # llvmpipe ends a loop nest after 65535 iterations per invocation (common.glsl);
            # attention.comp runs about D/8 + 72 per block of 64 keys
            keys = min(op.window, ck.cache.rows + self.n) if op.window else ck.cache.rows + self.n
            if -(-keys // 64) * (op.head_dim // 8 + 72) > 60000:
                raise G4rtError(f"attention over {keys} keys (head_dim {op.head_dim}) is beyond what the "
                                f"CPU Vulkan driver can loop over; use a smaller context")
        kt, ko = k.whole(f"attention keys {op.k}")
        vt, vo = v.whole(f"attention values {op.v}")
        kv = dict(KV_F16=True) if be.kv_f16 else {}
        # the barrier-free kernel for batches on CPU drivers, where its loops stay short enough
        span = (op.window + 8) if op.window else ck.cache.rows + self.n
        # row-exact batches (ops.ROW_EXACT_MAX): attention.comp per row, earlier rows as cached
        exact = 1 < self.n <= O.ROW_EXACT_MAX
        # (attention_rows.comp reads one sequence per call: not for caches of several slots, whose
        # graphs may carry several sequences)
        use_rows = (be.kernels == "cpu" and self.n > 1 and not exact and op.head_dim % 32 == 0
                    and span * (2 * op.head_dim // 32 + 1) < 60000 and ck.cache.slots == 1)
        if exact and be.kv_f16:
            kv = dict(kv, ROUND_BATCH=True)     # earlier rows of the batch, as the f16 cache holds them
        res = []
        for r0, r1 in _bands(out.rows, [(q, 0), (out, 0)]):
            qt, qo = q.at(r0, r1)
            ot, oo = out.at(r0, r1)
            rows = r1 - r0
            pc = _u32(qo, q.cols, ko, k.cols, vo, v.cols, oo, out.cols, rows, r0, op.n_head, op.n_kv_head,
                      op.head_dim, op.window, ck.cache.rows, ck.cache.cols, float(op.scale), ck.off, cv.off)
            if use_rows:
                var, groups = variant("attention_rows", **kv), _groups(-(-rows // 8) * op.n_head)
            else:
                var, groups = variant("attention", **kv), _groups(rows * op.n_head)
            res.append(_Dispatch(var, (self.params, qt, kt, vt, ck.tensor, cv.tensor, ot), groups, pc))
        return res

    def _plan_kv_store(self, op):
        be = self.backend
        k, v = self.loc(op.k), self.loc(op.v)
        ck, cv = self._cache(op.out), self._cache(op.cache_v)
        if k.cols != ck.cache.cols or v.cols != cv.cache.cols:
            raise G4rtError(f"kv_store: k/v width {k.cols}/{v.cols} differs from the caches' {ck.cache.cols}")
        var = variant("kv_store", KV_F16=True) if be.kv_f16 else variant("kv_store")
        per_row = k.cols // 2 if be.kv_f16 else k.cols
        res = []
        one_sequence = ck.cache.slots == 1     # then every call is one segment of all rows
        for r0, r1 in _bands(k.rows, [(k, 0), (v, 0)]):
            if one_sequence and r1 + ck.cache.rows <= k.rows:
                continue   # rows that a later row of this batch overwrites
            kt, ko = k.at(r0, r1)
            vt, vo = v.at(r0, r1)
            rows = r1 - r0
            pc = _u32(ko, k.cols, vo, v.cols, rows, r0, k.rows, ck.cache.rows, k.cols, ck.off, cv.off)
            res.append(_Dispatch(var, (self.params, kt, vt, ck.tensor, cv.tensor),
                                 _groups(-(-rows * per_row // 64)), pc))
        return res

    def _plan_embed(self, op):
        be = self.backend
        out = self.loc(op.out)
        w = be.weights[op.table]
        if w.spec.cols != out.cols:
            raise G4rtError(f"embedding {op.table} has {w.spec.cols} columns, output {out.cols}")
        var = variant("embed", QTYPE=QTYPE_IDS[w.spec.qtype.name])
        res = []
        for r0, r1 in _bands(out.rows, [(out, 0)]):
            ot, oo = out.at(r0, r1)
            rows = r1 - r0
            n_items = rows * -(-out.cols // 32)
            for c in w.chunks:
                pc = _u32(oo, out.cols, rows, out.cols, w.row_bytes, c.row0, c.row1 - c.row0, r0, float(op.scale),
                          c.byte_off)
                res.append(_Dispatch(var, (self.params, c.tensor, ot), _groups(-(-n_items // 64)), pc))
        return res

    def _plan_matmul(self, op):
        be = self.backend
        x, out = self.loc(op.x), self.loc(op.out)
        w = be.weights[op.weight]
        if w.spec.cols != x.cols or w.spec.rows != out.cols:
            raise G4rtError(f"matmul {op.weight} [{w.spec.rows} x {w.spec.cols}] does not fit "
                            f"{op.x} ({x.cols} cols) -> {op.out} ({out.cols} cols)")
        qid = QTYPE_IDS[w.spec.qtype.name]
        res = []
        exact = out.rows <= O.ROW_EXACT_MAX     # row-exact: the decode kernels, per-token sums
        for r0, r1 in _bands(out.rows, [(x, 0), (out, 0)]):
            # row-exact batches on GPU kernels: the decode matvec, MATVEC_MAX_TOKENS rows a dispatch
            step = _MATVEC_MAX_TOKENS if exact and be.kernels != "cpu" else r1 - r0
            for t0 in range(r0, r1, step):
                t1 = min(r1, t0 + step)
                xt, xo = x.at(t0, t1)
                ot, oo = out.at(t0, t1)
                n = t1 - t0
                for c in w.chunks:
                    wr = c.row1 - c.row0
                    pc = _u32(xo, x.cols, oo, out.cols, n, x.cols, wr, w.row_bytes, c.row0, c.byte_off)
                    if be.kernels == "cpu" and (n == 1 or exact):
                        # per-token sums independent of NTOK: decode and small batches agree bit for bit
                        ntok = 1 if n == 1 else _MATVEC_MAX_TOKENS
                        var = variant("matmul_rows", QTYPE=qid, NTOK=ntok)
                        groups = _groups(-(-wr // 8) * -(-n // ntok))
                    elif be.kernels == "cpu":
                        var = variant("matmul_tokens", QTYPE=qid)
                        groups = _groups(-(-wr // 8) * -(-n // 8))
                    elif n <= _MATVEC_MAX_TOKENS:
                        var = variant("matvec", QTYPE=qid, NTOK=1 if n == 1 else _MATVEC_MAX_TOKENS)
                        groups = _groups(-(-wr // 4))
                    else:
                        var = variant("matmul", QTYPE=qid)
                        groups = _groups(-(-wr // 32) * -(-n // 32))
                    res.append(_Dispatch(var, (c.tensor, xt, ot), groups, pc))
        return res

    # ---- mixture of experts (whole buffers: the route is read by every dispatch) ----------------
    def _plan_moe_route(self, op):
        be = self.backend
        lg, out = self.loc(op.logits), self.loc(op.out)
        lt, lo = lg.whole(f"router logits {op.logits}")
        ot, oo = out.whole(f"route {op.out}")
        st, so = be.vector_f32(op.expert_scale) if op.expert_scale else (be._dummy, 0)
        pc = _u32(lo, lg.cols, oo, out.cols, out.rows, lg.cols, op.k, 1 if op.expert_scale else 0, so)
        return [_Dispatch(variant("moe_route"), (lt, st, ot), _groups(-(-out.rows // 64)), pc)]

    def _plan_moe_sum(self, op):
        y, route, out = self.loc(op.y), self.loc(op.route), self.loc(op.out)
        yt, yo = y.whole(f"expert outputs {op.y}")
        rt, ro = route.whole(f"route {op.route}")
        ot, oo = out.whole(f"expert sum {op.out}")
        pc = _u32(yo, y.cols, ro, route.cols, oo, out.cols, out.rows, out.cols, route.cols // 2)
        return [_Dispatch(variant("moe_sum"), (yt, rt, ot), _groups(-(-out.rows * out.cols // 256)), pc)]

    def _plan_moe_matmul(self, op):
        be = self.backend
        x, route, out = self.loc(op.x), self.loc(op.route), self.loc(op.out)
        w = be.weights[op.weight]
        k = route.cols // 2
        N = out.cols
        if w.spec.cols != x.cols or w.spec.rows != op.n_expert * N or x.rows not in (route.rows, route.rows * k):
            raise G4rtError(f"expert matmul {op.weight} [{w.spec.rows} x {w.spec.cols}] does not fit "
                            f"{op.x} ({x.rows} x {x.cols}) -> {op.out} ({out.rows} x {N})")
        xt, xo = x.whole(f"expert input {op.x}")
        rt, ro = route.whole(f"route {op.route}")
        ot, oo = out.whole(f"expert output {op.out}")
        n_sel = route.rows * k
        per_sel = int(x.rows == n_sel and k > 1)
        var = variant("moe_matvec", QTYPE=QTYPE_IDS[w.spec.qtype.name])
        res = []
        for c in w.chunks:      # each dispatch computes the selected rows that lie in its chunk
            pc = _u32(xo, x.cols, ro, route.cols, oo, N, n_sel, x.cols, N, w.row_bytes, c.byte_off, k, per_sel,
                      c.row0, c.row1)
            res.append(_Dispatch(var, (c.tensor, xt, rt, ot), _groups(n_sel * -(-N // 4)), pc))
        return res

    # ---- recording ----------------------------------------------------------------------
    def _record(self):
        be, kp = self.backend, self.kp
        seq = be.mgr.sequence()
        seq.record(kp.OpTensorSyncDevice([self.params] + self.input_tensors))
        for i, ds in enumerate(self.op_dispatches):
            if be.barriers and i:
                seq.record(kp.OpTensorSyncLocal([be._fence]))
            for d in ds:
                seq.record(be.op_dispatch(d))
        seq.record(kp.OpTensorSyncLocal(self.out_tensors))
        return seq

    def _set_params(self, tokens: np.ndarray, pos0) -> None:
        tokens = np.asarray(tokens).reshape(-1)
        if len(tokens) != self.n:
            raise G4rtError(f"graph expects {self.n} tokens, got {len(tokens)}")
        segs = O.placement(pos0, self.n, self.slots)
        p = self.params.data()
        n = self.n
        p[0], p[1], p[2] = segs[0].pos0, n, 4 + n
        p[4:4 + n] = tokens.astype(np.uint32)
        O.write_row_words(segs, p[4 + n:4 + 5 * n].reshape(n, 4))

    def _read_output(self) -> np.ndarray:
        loc = self.locs[self.graph.output]
        parts = [np.array(t.data(), dtype=np.float32, copy=True).reshape(p.row1 - p.row0, loc.cols)
                 for t, p in zip(self.out_tensors, loc.pieces)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def run(self, tokens: np.ndarray, pos0: int, observer: Optional[OpObserver] = None) -> np.ndarray:
        self._set_params(tokens, pos0)
        if observer is not None:
            return self._run_observed(observer)
        t0 = time.perf_counter()
        self.seq.eval()
        self.last_replay_s = time.perf_counter() - t0
        return self._read_output()

    def read_buffers(self, names) -> dict[str, np.ndarray]:
        """Buffers of the last run, as float32 copies (before another graph runs: the arenas
        are shared). The copy plan is recorded once per set of names."""
        names = tuple(names)
        plan = self._reads.get(names)
        if plan is None:
            be, offs, at = self.backend, {}, 0
            for nm in names:
                loc = self.loc(nm)
                offs[nm] = (at, loc.rows, loc.cols)
                at += loc.rows * loc.cols
            rb = be.mgr.tensor_t(np.zeros(max(1, at), np.float32), be._T.device)
            seq = be.mgr.sequence()
            for nm, (base, _, cols) in offs.items():
                for p in self.loc(nm).pieces:
                    seq.record(be.op_dispatch(be._copy_dispatch(p.tensor, p.off, rb, base + p.row0 * cols,
                                                                (p.row1 - p.row0) * cols)))
            seq.record(self.kp.OpTensorSyncLocal([rb]))
            plan = self._reads[names] = (seq, rb, offs)
        seq, rb, offs = plan
        seq.eval()
        data = rb.data()
        return {nm: np.array(data[a:a + r * c], np.float32).reshape(r, c) for nm, (a, r, c) in offs.items()}

    # ---- observer: op by op, reading each output back ------------------------------------
    def _readback_plan(self, op) -> tuple[list[_Dispatch], int]:
        be = self.backend
        if op.kind == "kv_store":
            c = self._cache(op.out)
            return [be._copy_dispatch(c.tensor, c.off, self._rb, 0, c.words)], c.words
        if op.out == self.graph.output:
            return [], 0
        loc = self.loc(op.out)
        return [be._copy_dispatch(p.tensor, p.off, self._rb, p.row0 * loc.cols, (p.row1 - p.row0) * loc.cols)
                for p in loc.pieces], loc.rows * loc.cols

    def _run_observed(self, observer: OpObserver) -> np.ndarray:
        be, kp = self.backend, self.kp
        if self._op_seqs is None:
            need = max([c.words for c in be.caches.values()] +
                       [l.rows * l.cols for n, l in self.locs.items() if n != self.graph.output] + [1])
            self._rb = be.mgr.tensor_t(np.zeros(need, np.uint32), be._T.device)
            self._params_seq = be.mgr.sequence().record(kp.OpTensorSyncDevice([self.params]))
            self._op_seqs = []
            for op, ds in zip(self.graph.ops, self.op_dispatches):
                seq = be.mgr.sequence()
                for d in ds:
                    seq.record(be.op_dispatch(d))
                rb, _ = self._readback_plan(op)
                if be.barriers and rb:
                    seq.record(kp.OpTensorSyncLocal([be._fence]))
                for d in rb:
                    seq.record(be.op_dispatch(d))
                seq.record(kp.OpTensorSyncLocal([self._rb] if op.out != self.graph.output or op.kind == "kv_store"
                                                else self.out_tensors))
                self._op_seqs.append(seq)
        self._params_seq.eval()
        for i, (op, seq) in enumerate(zip(self.graph.ops, self._op_seqs)):
            seq.eval()
            if op.kind == "kv_store":
                c = self._cache(op.out).cache
                words = self._rb.data()[: self._cache(op.out).words]
                arr = (words.view(np.float16).astype(np.float32) if be.kv_f16
                       else words.view(np.float32).copy()).reshape(c.slots * c.rows, c.cols)
            elif op.out == self.graph.output:
                arr = self._read_output()
            else:
                loc = self.loc(op.out)
                arr = self._rb.data()[: loc.rows * loc.cols].view(np.float32).reshape(loc.rows, loc.cols).copy()
            observer(i, op, arr)
        return self._read_output()
