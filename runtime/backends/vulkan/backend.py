"""The Vulkan backend (Kompute `kp` 0.9): GLSL compute kernels over GGUF-layout weights.

Memory (arena.py decides where things go; details in docs/vulkan.md)
- Weights: uploaded once, byte for byte in their GGUF block layout, packed into a few "weight
  arenas" of at most one storage-buffer descriptor range each (128 MiB on lavapipe); a tensor
  larger than that is split into row chunks, and a matmul or embedding lookup issues one dispatch
  per chunk. On CPU drivers (device memory is host memory) the arenas are `host` tensors filled in
  place from the memory-mapped file; elsewhere device-only `storage` tensors filled through one
  reused staging buffer and a copy kernel (upload.py).
- Activations: one pool of device-only arenas shared by all graphs (graphs never run at the same
  time and no activation outlives a run); a buffer larger than an arena is split into row bands.
  The graph's output has its own device tensor(s) with a host-visible twin.
- KV caches: packed into cache arenas, f16 (two halfs per word) by default, or f32.

Execution
- `compile(graph)` turns the op list into dispatches (lowering.py: kernel variant, bound buffers,
  push constants) and records them into one kp Sequence, preceded by the sync of a small
  parameters buffer (pos0, n, token ids) and followed by the read-back of the output. `run()`
  writes the parameters and replays the sequence: nothing is recorded again.
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
from typing import Callable, Optional, Sequence

import numpy as np

from ... import ops
from ...errors import G4rtError
from ..base import Backend, CompiledGraph, OpObserver, WeightSource, checked_precision
from .arena import (ActivationPool, BufferLocation, BufferPiece, CacheLocation, PlacedWeight, WeightChunk,
                    pack_caches, pack_weights, place_buffers)
from .derived import DerivedTensors
from .device import DeviceInfo, import_kp, open_manager, select_device
from .dispatch import Dispatch, PipelineCache, copy_dispatch
from .lowering import LoweringContext, lower
from .upload import WeightUploader

ARENA_CAP = 256 << 20         # never bind more than this in one descriptor (VRAM per arena)
PARAMS_MIN_TOKENS = 512       # the parameters buffer is shared by every graph up to this batch


class VulkanBackend(Backend):
    name = "vulkan"

    def __init__(self, device: int | str = 0, kv_dtype: str = "f16",
                 max_buffer_bytes: Optional[int] = None, weight_memory: str = "auto",
                 barriers: Optional[bool] = None, kernels: str = "auto", precision: str = "auto"):
        """device: index or name substring. kv_dtype: "f16" or "f32".
        max_buffer_bytes: cap on one buffer (weight chunk, arena); tests lower it to exercise
        splitting. weight_memory: "auto", "host" (CPU drivers) or "device" (staged upload).
        barriers: force the inter-op sync on or off (default: off on CPU drivers only).
        kernels: "gpu" (subgroup matvec, tiled matmul, one workgroup per attention row), "cpu"
        (barrier-free kernels with eight rows per SIMD register: lavapipe) or "auto"."""
        if kv_dtype not in ("f16", "f32"):
            raise G4rtError(f"kv_dtype must be 'f16' or 'f32', got {kv_dtype!r}")
        # the shaders take float32 activations only (no integer-activation path yet)
        self.precision = checked_precision(self.name, precision, ("auto", "exact"))
        self.kp = import_kp()
        self.info: DeviceInfo = select_device(device)
        self.mgr = open_manager(self.info)
        limit = min(self.info.max_storage_buffer_range, self.info.max_allocation, ARENA_CAP)
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
        self.subgroup = max(4, min(64, self.info.subgroup_size or 32))
        self.tensor_types = self.kp.TensorTypes
        self.pipelines = PipelineCache(self.kp, self.mgr, {"matvec": [self.subgroup], "moe_matvec": [self.subgroup]})
        self.uploader = WeightUploader(self.mgr, self.tensor_types, self.pipelines, weight_memory)
        self.specs: dict[str, ops.WeightSpec] = {}
        self.source: Optional[WeightSource] = None
        self.weights: dict[str, PlacedWeight] = {}
        self.derived = DerivedTensors(self.weights, self.uploader)
        self.caches: dict[str, CacheLocation] = {}
        self.activations = ActivationPool(lambda: self.storage(self.max_bytes // 4, np.float32))
        self._cache_arenas: list = []
        self._params = None
        self._params_cap = 0
        self.inputs: dict[str, tuple[object, int, int]] = {}     # name -> (tensor, rows, cols)
        self.kept: dict[str, tuple[object, int, int]] = {}       # device-only, same shape
        self.dummy = self.storage(64)          # bound where a kernel's optional input is absent
        self.fence = self.mgr.tensor_t(np.zeros(1, np.uint32), self.tensor_types.device)
        self.weight_bytes_total = 0

    @property
    def device_name(self) -> str:
        return f"{self.info.name} (Vulkan, {self.info.device_type})"

    def storage(self, words: int, dtype=np.uint32):
        """A device-only tensor. kp never reads its data, and np.zeros pages are never touched."""
        return self.mgr.tensor_t(np.zeros(max(1, words), dtype), self.tensor_types.storage)

    def device_tensor(self, words: int, dtype=np.float32):
        """A device tensor with a host-visible twin (read back or written by the host)."""
        return self.mgr.tensor_t(np.zeros(words, dtype), self.tensor_types.device)

    # ---- weights ------------------------------------------------------------------------
    def load_weights(self, specs, source, progress: Optional[Callable[[int], None]] = None) -> None:
        self.specs.update(specs)
        self.source = self.derived.source = source
        plan, arena_bytes = pack_weights(specs, source, self.max_bytes)
        tensors = [self.uploader.new_arena(max(4, used)) for used in arena_bytes]
        self.uploader.staging_hint = -(-max((source.weight_bytes(n).nbytes for n in specs), default=4) // 4)
        for name, chunks in plan.items():
            # (re)upload: a later call with the same name replaces the tensor and what derives from it
            self.derived.forget(name)
            old = self.weights.pop(name, None)
            if old is not None:
                self.weight_bytes_total -= old.nbytes
            raw = source.weight_bytes(name)
            placed = []
            for r0, r1, ai, off in chunks:
                self.uploader.write(tensors[ai], off, raw[r0:r1])
                placed.append(WeightChunk(r0, r1, tensors[ai], off))
            self.weights[name] = PlacedWeight(specs[name], raw.shape[1], placed, raw.nbytes)
            self.weight_bytes_total += raw.nbytes
            if progress:
                progress(raw.nbytes)
        self.uploader.drop_staging()   # no host copy of anything stays behind

    # ---- caches -------------------------------------------------------------------------
    def allocate_caches(self, caches) -> None:
        plan, arena_words = pack_caches(caches, self.max_bytes, self.kv_f16)
        self.caches = {}
        self._cache_arenas = [self.storage(max(1, w)) for w in arena_words]
        seq = self.mgr.sequence()
        for t, w in zip(self._cache_arenas, arena_words):   # zeroed, as the interface promises
            seq.record(self.pipelines.op(copy_dispatch(self.dummy, 0, t, 0, max(1, w), fill=0)))
        seq.eval()
        for c, ai, off, words in plan:
            self.caches[c.name] = CacheLocation(c, self._cache_arenas[ai], off, words)

    def read_cache(self, name: str) -> np.ndarray:
        """A KV cache's contents as float32 [slots * rows, cols] (tests, debugging)."""
        c = self.caches.get(name)
        if c is None:
            raise G4rtError(f"KV cache {name!r} was not allocated")
        t = self.device_tensor(c.words, np.uint32)
        seq = self.mgr.sequence()
        seq.record(self.pipelines.op(copy_dispatch(c.tensor, c.off, t, 0, c.words)))
        seq.record(self.kp.OpTensorSyncLocal([t]))
        seq.eval()
        return self.cache_values(np.array(t.data(), np.uint32), c.cache)

    def write_cache(self, name: str, values: np.ndarray) -> None:
        """Overwrite a KV cache with float32 [slots * rows, cols] values (converted to its dtype):
        tests, as CudaBackend.write_cache."""
        c = self.caches.get(name)
        if c is None:
            raise G4rtError(f"KV cache {name!r} was not allocated")
        a = np.asarray(values, np.float16 if self.kv_f16 else np.float32)
        words = np.ascontiguousarray(a.reshape(c.cache.slots * c.cache.rows, c.cache.cols)).reshape(-1).view(np.uint32)
        t = self.device_tensor(c.words, np.uint32)
        t.data()[:] = words
        seq = self.mgr.sequence()
        seq.record(self.kp.OpTensorSyncDevice([t]))
        seq.record(self.pipelines.op(copy_dispatch(t, 0, c.tensor, c.off, c.words)))
        seq.eval()

    def cache_values(self, words: np.ndarray, cache: ops.KvCache) -> np.ndarray:
        """A cache's words (f16 pairs or f32) as float32 [slots * rows, cols]."""
        vals = words.view(np.float16).astype(np.float32) if self.kv_f16 else words.view(np.float32).copy()
        return vals.reshape(cache.slots * cache.rows, cache.cols)

    # ---- buffers shared with another backend (hybrid) ------------------------------------
    def declare_inputs(self, shapes: dict[str, tuple[int, int]]) -> None:
        """f32 buffers that graphs read like caches (by name) and that the host fills before a
        run (write_inputs): how a hybrid segment receives the other backend's activations."""
        self._declare(self.inputs, shapes, self.device_tensor)

    def declare_kept(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Persistent f32 copies a hybrid segment leaves for a later one on this device (written
        by Slice): device-only storage, they never go through the host."""
        self._declare(self.kept, shapes, lambda words: self.storage(words, np.float32))

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
            self._params_cap = max(n_tokens, PARAMS_MIN_TOKENS)
            self._params = self.device_tensor(4 + 5 * self._params_cap, np.uint32)
        return self._params

    def compile(self, graph: ops.Graph) -> "VulkanGraph":
        return VulkanGraph(self, graph)

    def close(self) -> None:
        if self.mgr is not None:
            # every kp object goes before the manager that made it
            self.pipelines.clear()
            self.weights.clear()
            self.caches.clear()
            self.activations.clear()
            self.derived.clear()
            self._cache_arenas.clear()
            self.inputs.clear()
            self.kept.clear()
            self.uploader.drop_staging()
            self.dummy = self.fence = self._params = None
            self.mgr.destroy()
            self.mgr = None


class VulkanGraph(CompiledGraph):
    def __init__(self, backend: VulkanBackend, graph: ops.Graph):
        self.backend, self.graph = backend, graph
        self.kp = backend.kp
        self.n = graph.n_tokens
        self.params = backend.params_for(self.n)
        self.slots = ops.graph_slots(graph)
        self.locs, self.out_tensors = place_buffers(graph, backend.max_bytes // 4, backend.activations,
                                                    backend.device_tensor)
        self.input_tensors = []
        for name in [*graph.caches, *graph.inputs]:     # host-filled buffers, read like caches
            if name in backend.inputs or name in backend.kept:
                t, rows, cols = backend.inputs.get(name) or backend.kept[name]
                self.locs[name] = BufferLocation(rows, cols, [BufferPiece(0, rows, t, 0)])
                if name in backend.inputs:
                    self.input_tensors.append(t)
        self.lowering = LoweringContext(backend, self.locs, self.params, self.n)
        self.op_dispatches: list[list[Dispatch]] = [lower(self.lowering, op) for op in graph.ops]
        self.seq = self.record()
        self._op_seqs: Optional[list] = None
        self._reads: dict = {}
        self.last_replay_s = 0.0

    def loc(self, name: str) -> BufferLocation:
        return self.locs[name]

    def record(self):
        """One kp Sequence: parameters (and hybrid inputs) up, every op's dispatches, output down.
        Recorded again only when a test edits op_dispatches."""
        be, kp = self.backend, self.kp
        seq = be.mgr.sequence()
        seq.record(kp.OpTensorSyncDevice([self.params] + self.input_tensors))
        for i, ds in enumerate(self.op_dispatches):
            if be.barriers and i:
                seq.record(kp.OpTensorSyncLocal([be.fence]))
            for d in ds:
                seq.record(be.pipelines.op(d))
        seq.record(kp.OpTensorSyncLocal(self.out_tensors))
        return seq

    def _set_params(self, tokens: np.ndarray, segments: Sequence[ops.Segment]) -> None:
        tokens = np.asarray(tokens).reshape(-1)
        if len(tokens) != self.n:
            raise G4rtError(f"graph expects {self.n} tokens, got {len(tokens)}")
        segs = ops.placement(segments, self.n, self.slots)
        p = self.params.data()
        n = self.n
        p[0], p[1], p[2] = segs[0].pos0, n, 4 + n
        p[4:4 + n] = tokens.astype(np.uint32)
        ops.write_row_words(segs, p[4 + n:4 + 5 * n].reshape(n, 4))

    def _read_output(self) -> np.ndarray:
        loc = self.locs[self.graph.output]
        parts = [np.array(t.data(), dtype=np.float32, copy=True).reshape(p.row1 - p.row0, loc.cols)
                 for t, p in zip(self.out_tensors, loc.pieces)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def run(self, tokens: np.ndarray, segments: Sequence[ops.Segment],
            observer: Optional[OpObserver] = None) -> np.ndarray:
        self._set_params(tokens, segments)
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
            for name in names:
                loc = self.loc(name)
                offs[name] = (at, loc.rows, loc.cols)
                at += loc.rows * loc.cols
            readback = be.device_tensor(max(1, at))
            seq = be.mgr.sequence()
            for name, (base, _, cols) in offs.items():
                for p in self.loc(name).pieces:
                    seq.record(be.pipelines.op(copy_dispatch(p.tensor, p.off, readback, base + p.row0 * cols,
                                                             (p.row1 - p.row0) * cols)))
            seq.record(self.kp.OpTensorSyncLocal([readback]))
            plan = self._reads[names] = (seq, readback, offs)
        seq, readback, offs = plan
        seq.eval()
        data = readback.data()
        return {name: np.array(data[a:a + r * c], np.float32).reshape(r, c) for name, (a, r, c) in offs.items()}

    # ---- observer: op by op, reading each output back ------------------------------------
    def _readback_plan(self, op) -> tuple[list[Dispatch], int]:
        if op.kind == "kv_store":
            c = self.lowering.cache(op.out)
            return [copy_dispatch(c.tensor, c.off, self._rb, 0, c.words)], c.words
        if op.out == self.graph.output:
            return [], 0
        loc = self.loc(op.out)
        return [copy_dispatch(p.tensor, p.off, self._rb, p.row0 * loc.cols, (p.row1 - p.row0) * loc.cols)
                for p in loc.pieces], loc.rows * loc.cols

    def _run_observed(self, observer: OpObserver) -> np.ndarray:
        be, kp = self.backend, self.kp
        if self._op_seqs is None:
            need = max([c.words for c in be.caches.values()] +
                       [loc.rows * loc.cols for name, loc in self.locs.items() if name != self.graph.output] + [1])
            self._rb = be.device_tensor(need, np.uint32)
            self._params_seq = be.mgr.sequence().record(kp.OpTensorSyncDevice([self.params] + self.input_tensors))
            self._op_seqs = []
            for op, ds in zip(self.graph.ops, self.op_dispatches):
                seq = be.mgr.sequence()
                for d in ds:
                    seq.record(be.pipelines.op(d))
                readback, _ = self._readback_plan(op)
                if be.barriers and readback:
                    seq.record(kp.OpTensorSyncLocal([be.fence]))
                for d in readback:
                    seq.record(be.pipelines.op(d))
                seq.record(kp.OpTensorSyncLocal([self._rb] if op.out != self.graph.output or op.kind == "kv_store"
                                                else self.out_tensors))
                self._op_seqs.append(seq)
        self._params_seq.eval()
        for i, (op, seq) in enumerate(zip(self.graph.ops, self._op_seqs)):
            seq.eval()
            if op.kind == "kv_store":
                c = self.lowering.cache(op.out)
                arr = be.cache_values(self._rb.data()[: c.words], c.cache)
            elif op.out == self.graph.output:
                arr = self._read_output()
            else:
                loc = self.loc(op.out)
                arr = self._rb.data()[: loc.rows * loc.cols].view(np.float32).reshape(loc.rows, loc.cols).copy()
            observer(i, op, arr)
        return self._read_output()
