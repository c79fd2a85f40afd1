"""One op-list graph on the CUDA backend: lowered to kernel launches once (lowering.py), the
launches' references resolved and their parameters packed when it is recorded, captured into a
CUDA graph on its first run and replayed with one cuGraphLaunch by later runs.

Per-call values live in a small device parameters buffer written before each launch
(common.cuh: [pos0, n_tokens, token ids..., then four row words per row: position, cache slot,
segment start, segment rows]), so a new position or a new mix of sequences records nothing.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ... import ops
from ...errors import G4rtError
from ..base import CompiledGraph, OpObserver
from . import kernels
from .driver import CudaError, check
from .lowering import GraphLowering
from .plan import align

if TYPE_CHECKING:
    from .backend import CudaBackend

P_TOKENS = 2          # common.cuh: params = [pos0, n_tokens, token ids...]


@dataclass
class ReadyLaunch:
    """A launch with its device pointers resolved and its kernel parameters packed."""
    kernel: str
    fn: object
    grid: tuple[int, int, int]
    block: int
    smem: int
    vals: np.ndarray
    ptrs: np.ndarray
    label: str = ""


def _pack(sig: str, values: list) -> tuple[np.ndarray, np.ndarray]:
    """Kernel parameters for cuLaunchKernel: one 8-byte slot per argument and an array of
    pointers to the slots (whose address is the `kernelParams` argument)."""
    if len(sig) != len(values):
        raise G4rtError(f"kernel argument count {len(values)} does not match signature {sig!r}")
    vals = np.zeros(max(1, len(values)), np.uint64)
    i32 = vals.view(np.int32)
    f32 = vals.view(np.float32)
    f64 = vals.view(np.float64)
    for i, (code, v) in enumerate(zip(sig, values)):
        if code == "P":
            vals[i] = np.uint64(int(v))
        elif code == "i":
            iv = int(v)
            if not -(1 << 31) <= iv < (1 << 31):
                raise G4rtError(f"kernel argument {i} = {iv} does not fit an int32")
            i32[2 * i] = iv
        elif code == "f":
            f32[2 * i] = np.float32(v)
        elif code == "d":
            f64[i] = float(v)
        else:
            raise G4rtError(f"bad signature code {code!r}")
    base = vals.ctypes.data
    ptrs = np.array([base + 8 * i for i in range(len(values))] or [0], dtype=np.uint64)
    return vals, ptrs


class CudaGraph(CompiledGraph):
    """One graph lowered to kernel launches; recorded as a CUDA graph on its first run."""

    def __init__(self, backend: "CudaBackend", graph: ops.Graph):
        self.backend, self.graph = backend, graph
        self.n = int(graph.n_tokens)
        if self.n < 1:
            raise G4rtError("a CUDA graph needs at least one token")
        self.labels = list(graph.labels) + [f"op {i}" for i in range(len(graph.labels), len(graph.ops))]
        self._exec = None
        self._ready: Optional[list[list[ReadyLaunch]]] = None
        self._gen = -1
        self._params_dev = 0
        self._params_host = 0
        self._out_host = 0
        self._released = False
        self._lowering = GraphLowering(backend, graph, self.labels)
        self.offsets = self._lowering.offsets
        self.op_launches = self._lowering.op_launches
        self.arena_bytes = self._lowering.arena_bytes
        # device/host resources
        be = backend
        self.params_words = P_TOKENS + 5 * self.n      # common.cuh: then 4 row words per row
        self.slots = ops.graph_slots(graph)
        self._params_dev = be._alloc(align(4 * self.params_words), "graph parameters")
        self._params_host = int(check(be.drv.cuMemHostAlloc(4 * self.params_words, 0), "cuMemHostAlloc"))
        self.params = np.ctypeslib.as_array((ctypes.c_int32 * self.params_words).from_address(self._params_host))
        rows, cols, f16 = self._shape_of_output()
        self.out_shape = (rows, cols)
        self._out_nbytes = rows * cols * (2 if f16 else 4)
        self._out_f16 = f16
        self._out_host = int(check(be.drv.cuMemHostAlloc(max(1, self._out_nbytes), 0), "cuMemHostAlloc"))
        be._graphs.add(self)
        be._ensure_arena(self.arena_bytes)
        be.ensure_kernels({launch.kernel for launches in self.op_launches for launch in launches})

    def _shape_of_output(self) -> tuple[int, int, bool]:
        g, be = self.graph, self.backend
        name = g.output
        if name in g.caches:
            c = be.caches.get(name) or be.inputs.get(name)
            if c is None:
                raise G4rtError(f"output {name!r} is not allocated")
            return c.rows, c.cols, c.f16
        if name not in self.offsets:
            raise G4rtError(f"output {name!r} is not a buffer of the graph")
        b = g.buffers[name]
        return b.rows, b.cols, False

    # ---- resolving and recording ------------------------------------------------------------
    def _resolve(self, a):
        be = self.backend
        if not isinstance(a, tuple):
            return a
        kind = a[0]
        if kind == "A":
            return be._arena_ptr + a[1]
        if kind == "C":
            c = be.caches.get(a[1]) or be.inputs.get(a[1])
            if c is None:
                raise G4rtError(f"{a[1]!r} is no longer allocated")
            return c.ptr
        if kind == "W":
            return be.weights[a[1]].ptr
        if kind == "V":
            return be.vector(a[1])
        if kind == "PARAMS":
            return self._params_dev
        if kind == "NULL":
            return 0
        raise AssertionError(a)

    def _build(self) -> None:
        be = self.backend
        if self.arena_bytes > be._arena_size:
            be._ensure_arena(self.arena_bytes)
        ready = []
        for label, launches in zip(self.labels, self.op_launches):
            rs = []
            for launch in launches:
                vals, ptrs = _pack(kernels.signature(launch.kernel), [self._resolve(a) for a in launch.args])
                rs.append(ReadyLaunch(launch.kernel, be._functions[launch.kernel], launch.grid, launch.block,
                                 launch.smem, vals, ptrs, label))
            ready.append(rs)
        self._ready = ready
        self._destroy_exec()
        self._gen = be._gen
        if be.use_graphs:
            self._capture()

    def _capture(self) -> None:
        be, d = self.backend, self.backend.drv
        mode = d.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        check(d.cuStreamBeginCapture(be.stream, mode), "cuStreamBeginCapture")
        try:
            for rs in self._ready:
                for r in rs:
                    be._launch(r)
        except BaseException:
            try:
                res = d.cuStreamEndCapture(be.stream)
                if int(res[0]) == 0 and res[1] is not None:
                    d.cuGraphDestroy(res[1])
            except Exception:        # noqa: BLE001
                pass
            raise
        graph = check(d.cuStreamEndCapture(be.stream), "cuStreamEndCapture")
        try:
            self._exec = check(d.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        finally:
            try:
                d.cuGraphDestroy(graph)
            except Exception:        # noqa: BLE001
                pass

    def _destroy_exec(self) -> None:
        if self._exec is not None:
            try:
                self.backend.drv.cuGraphExecDestroy(self._exec)
            except Exception:        # noqa: BLE001
                pass
            self._exec = None

    # ---- running ----------------------------------------------------------------------------
    def run(self, tokens, segments: Sequence[ops.Segment], observer: Optional[OpObserver] = None) -> np.ndarray:
        be = self.backend
        if self._released:
            raise G4rtError("this compiled graph was released (backend closed)")
        be._activate()
        tokens = np.asarray(tokens).reshape(-1)
        if len(tokens) != self.n:
            raise G4rtError(f"graph for {self.n} tokens run with {len(tokens)}")
        if self._ready is None or self._gen != be._gen or self.arena_bytes > be._arena_size:
            self._build()
        segs = ops.placement(segments, self.n, self.slots)
        n = self.n
        self.params[0] = segs[0].pos0
        self.params[1] = n
        self.params[P_TOKENS:P_TOKENS + n] = tokens.astype(np.int32)
        ops.write_row_words(segs, self.params[P_TOKENS + n:P_TOKENS + 5 * n].reshape(n, 4))
        check(be.drv.cuMemcpyHtoDAsync(self._params_dev, self._params_host, 4 * self.params_words,
                                       be.stream), "cuMemcpyHtoDAsync (graph parameters)")
        if observer is not None or be.debug:
            for idx, (op, rs) in enumerate(zip(self.graph.ops, self._ready)):
                for r in rs:
                    be._launch(r)
                try:
                    be._sync(self.labels[idx])
                except CudaError as e:
                    raise G4rtError(f"CUDA fault in {self.labels[idx]} ({op.kind}): {e}") from None
                if observer is not None:
                    observer(idx, op, self._read(op.out))
        elif self._exec is not None:
            check(be.drv.cuGraphLaunch(self._exec, be.stream), "cuGraphLaunch")
        else:
            for rs in self._ready:
                for r in rs:
                    be._launch(r)
        # the output, through pinned memory
        src = self._resolve(("A", self.offsets[self.graph.output])) if self.graph.output in self.offsets \
            else self._resolve(("C", self.graph.output))
        if self._out_nbytes:
            check(be.drv.cuMemcpyDtoHAsync(self._out_host, src, self._out_nbytes, be.stream),
                  "cuMemcpyDtoHAsync (output)")
        be._sync("graph run")
        ctype = ctypes.c_uint16 if self._out_f16 else ctypes.c_float
        rows, cols = self.out_shape
        view = np.ctypeslib.as_array((ctype * max(1, rows * cols)).from_address(self._out_host))[:rows * cols]
        if self._out_f16:
            return view.view(np.float16).astype(np.float32).reshape(rows, cols)
        return np.array(view, dtype=np.float32, copy=True).reshape(rows, cols)

    def _read(self, name: str) -> np.ndarray:
        """A buffer's (or cache's) current contents as float32 (after a run)."""
        be = self.backend
        if name in self.offsets:
            rows, cols = self._lowering.shape(name)
            raw = be._dtoh(be._arena_ptr + self.offsets[name], rows * cols * 4, f"read of {name}")
            return raw.view(np.float32).reshape(rows, cols)
        return be.read_cache(name)

    def read_buffers(self, names) -> dict[str, np.ndarray]:
        """Buffers of the last run (call before another graph runs: the arena is shared)."""
        self.backend._activate()
        return {nm: self._read(nm) for nm in names}

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        be = self.backend
        self._destroy_exec()
        be._free(self._params_dev)
        for p in (self._params_host, self._out_host):
            if p:
                try:
                    be.drv.cuMemFreeHost(p)
                except Exception:    # noqa: BLE001
                    pass
        self._params_dev = self._params_host = self._out_host = 0
        self._ready = None

    def close(self) -> None:
        self._release()
