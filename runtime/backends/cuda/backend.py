"""The CUDA backend: NVRTC-compiled kernels (shaders/cuda) over GGUF-layout weights, replayed as
CUDA graphs. Library: NVIDIA's cuda-python (driver API + NVRTC bindings); see docs/cuda.md.

This file owns the device: the driver, memory, kernel modules, weights, caches, hybrid inputs
and the activation arena. lowering.py turns a graph's ops into kernel launches; graph.py records
those launches as a CUDA graph and replays it.

Memory
- Weights: every tensor is uploaded once, byte for byte in its GGUF block layout (cuMemAlloc +
  cuMemcpyHtoD, 256 bytes of zero padding after each: the matvec kernel reads whole 16-byte
  chunks). Small vector weights (norm weights, RoPE factors, scale factors) additionally get an
  f32 copy. No dequantized matrices.
- KV caches: one allocation per cache, f16 (default) or f32, zeroed.
- Activations: one arena shared by all compiled graphs (only one graph runs at a time and no
  activation outlives a run); each graph lays its buffers, attention partials and temps out in
  it. The arena grows when a larger graph is compiled; graphs recorded against the old arena
  are re-recorded before their next run.

Execution
- `compile(graph)` lowers every op to kernel launches (kernels chosen by weight type and batch:
  matvec for <= 4 rows, tiled matmul above), compiles the needed kernel modules (NVRTC, once per
  process and cached on disk), and on the first run captures the launches into a CUDA graph
  (stream capture) that later runs replay with one cuGraphLaunch.
- Per-call values (pos0, token ids) live in a small device parameters buffer written
  (cuMemcpyHtoDAsync from pinned memory) before each launch; kernels read pos0 and the token
  ids from it, so nothing is recorded again for a new position.
- `run(observer=...)` (the conformance tool's probe) launches op by op, synchronising after each
  to hand the op's output to the observer. G4RT_CUDA_DEBUG=1 does the same without an observer
  and names the op whose kernel faulted; G4RT_CUDA_GRAPHS=0 launches without graph capture.
- Without a GPU, tests pass a stand-in for cuda-python's driver module (`driver=`; see
  g4rt.testing.cuda): this package never chooses one itself.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ... import ops
from ...errors import G4rtError, UnsupportedModelError
from ...gguf.quant_types import QT, dequantize_rows
from ...gguf.quant_types import row_bytes as q_row_bytes
from ..base import Backend, WeightSource, checked_precision
from . import kernels
from .driver import CudaError, check, compile_many, cuda_available, open_driver
from .graph import CudaGraph, ReadyLaunch
from .plan import (DEFAULT_RESERVE, align, cache_bytes, gib, ops_bytes, plan_memory, plan_weights, reserve_for,
                   weight_bytes)

__all__ = ["CudaBackend", "CudaGraph", "cuda_available"]

_PRIMARY_KEEPALIVE: dict = {}


def _env_flag(name: str) -> Optional[bool]:
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    return v.strip().lower() not in ("0", "false", "no", "off")


#: --precision choices of the CUDA backend (q8: the int8 decode matvecs)
PRECISIONS = ("auto", "exact", "q8")


def int8_matvec_for(precision: str, int8_matvec: Optional[bool] = None) -> bool:
    """Whether the int8 (dp4a) decode matvecs run for a --precision: q8 on, exact off, auto as
    int8_matvec says, else $G4RT_CUDA_INT8, else off. A contradiction is an error."""
    if precision == "auto":
        return bool(int8_matvec if int8_matvec is not None else _env_flag("G4RT_CUDA_INT8"))
    want = precision == "q8"
    if int8_matvec is not None and bool(int8_matvec) != want:
        raise G4rtError(f"--precision {precision} contradicts int8_matvec={int8_matvec} "
                        "(q8 is the int8 path: give one of the two)")
    return want


@dataclass
class DeviceWeight:
    spec: ops.WeightSpec
    ptr: int
    nbytes: int
    row_bytes: int


@dataclass
class DeviceArray:
    """A KV cache (f16 or f32) or a hybrid input buffer (f32)."""
    name: str
    rows: int                       # all rows (a cache: slots x ring)
    cols: int
    ptr: int
    f16: bool
    ring: int = 0                   # a cache: rows per sequence slot

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * (2 if self.f16 else 4)


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, device: int = 0, kv_dtype: str = "f16", use_graphs: Optional[bool] = None,
                 debug: Optional[bool] = None, arch: Optional[str] = None, driver=None,
                 int8_matvec: Optional[bool] = None, precision: str = "auto"):
        """device: CUDA device index. kv_dtype: "f16" (default) or "f32".
        use_graphs: record CUDA graphs (default on; env G4RT_CUDA_GRAPHS=0 turns it off).
        debug: synchronise after every op and name the op on a fault (env G4RT_CUDA_DEBUG=1).
        arch: NVRTC target ("sm_90", "compute_90"; env G4RT_CUDA_ARCH), default the device's.
        driver: a stand-in for cuda-python's driver module (tests: g4rt.testing.cuda's
        EmulatedDriver); None: cuda-python's own.
        int8_matvec: decode matvecs of Q4_0/Q4_K/Q6_K/Q8_0 weights with 8-bit activations and
        dp4a (matvec8.cu; fewer instructions per byte, activations rounded to 8 bits as llama.cpp
        does). Default off (env G4RT_CUDA_INT8=1): the fp32 matvec is exact to fp32 sums.
        precision: --precision; "q8" is int8_matvec on, "exact" off, "auto" today's default
        (int8_matvec, else the env var; off)."""
        if kv_dtype not in ("f16", "f32"):
            raise G4rtError(f"kv_dtype must be 'f16' or 'f32', got {kv_dtype!r}")
        self.int8_matvec = int8_matvec_for(checked_precision(self.name, precision, PRECISIONS), int8_matvec)
        self.precision = precision
        self._closed = True
        self.kv_dtype = kv_dtype
        self.kv_f16 = kv_dtype == "f16"
        self.drv, self.dev, _ = open_driver(device, driver)   # BackendUnavailableError + reason
        self.emulated = bool(getattr(self.drv, "EMULATED", False))
        d = self.drv
        self.device_index = int(device)
        key = (id(d), self.device_index)
        if key not in _PRIMARY_KEEPALIVE:
            # one extra reference per process: closing a backend then never destroys the primary
            # context (re-creating it costs ~0.1-0.3 s per backend, e.g. in the op tests)
            _PRIMARY_KEEPALIVE[key] = check(d.cuDevicePrimaryCtxRetain(self.dev), "cuDevicePrimaryCtxRetain")
        self.ctx = check(d.cuDevicePrimaryCtxRetain(self.dev), "cuDevicePrimaryCtxRetain")
        self._closed = False
        self.weights: dict[str, DeviceWeight] = {}
        self.vectors: dict[str, int] = {}
        self.caches: dict[str, DeviceArray] = {}
        self.inputs: dict[str, DeviceArray] = {}
        self.specs: dict[str, ops.WeightSpec] = {}
        self.source: Optional[WeightSource] = None
        self._modules: dict[tuple, object] = {}
        self._functions: dict[str, object] = {}
        self._graphs = weakref.WeakSet()
        self._arena_ptr = 0
        self._arena_size = 0
        self._gen = 0
        self.stream = None
        try:
            self._activate()
            A = d.CUdevice_attribute
            self.cc = (self._attr(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                       self._attr(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))
            self.sm_count = self._attr(A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            raw = check(d.cuDeviceGetName(256, self.dev), "cuDeviceGetName")
            self.gpu_name = (raw.split(b"\0", 1)[0].decode(errors="replace")
                             if isinstance(raw, (bytes, bytearray)) else str(raw))
            self.total_memory = int(check(d.cuDeviceTotalMem(self.dev), "cuDeviceTotalMem"))
            self.stream = check(d.cuStreamCreate(1), "cuStreamCreate")   # CU_STREAM_NON_BLOCKING
            self.arch = arch or os.environ.get("G4RT_CUDA_ARCH") or (
                "emulated" if self.emulated else self._pick_arch())
        except BaseException:
            self.close()
            raise
        env_graphs, env_debug = _env_flag("G4RT_CUDA_GRAPHS"), _env_flag("G4RT_CUDA_DEBUG")
        self.debug = bool(debug if debug is not None else env_debug)
        self.use_graphs = (use_graphs if use_graphs is not None
                           else (env_graphs if env_graphs is not None else True)) and not self.debug

    # ---- device helpers ---------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        return (f"{self.gpu_name} (CUDA sm_{self.cc[0]}{self.cc[1]}, "
                f"{self.total_memory / (1 << 30):.0f} GiB)")

    def precision_summary(self) -> str:
        """q8 when the int8 decode path is on (the weight types it takes, of those loaded), else exact."""
        if not self.int8_matvec:
            return "exact"
        types = [t.name for t in kernels.family_types("matvec8")]
        if self.specs:
            loaded = {QT(s.qtype).name for s in self.specs.values() if s.rows > 1 and s.cols > 1}
            types = [t for t in types if t in loaded]
            if not types:
                return "exact (no Q4_0/Q4_K/Q6_K/Q8_0 weights for the int8 path)"
        return f"q8 (dp4a decode matvecs of {'/'.join(sorted(types))})"

    def _attr(self, a) -> int:
        return int(check(self.drv.cuDeviceGetAttribute(a, self.dev), f"cuDeviceGetAttribute({a})"))

    def _pick_arch(self) -> str:
        """The device's own SASS target when NVRTC knows it (a CUBIN needs no PTX JIT, so an
        NVRTC newer than the driver still works), else PTX for the newest arch NVRTC knows."""
        from .driver import _nvrtc_check, bindings
        _, nvrtc = bindings()
        cc = self.cc[0] * 10 + self.cc[1]
        try:
            archs = [int(a) for a in _nvrtc_check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")]
        except Exception:            # noqa: BLE001 - older NVRTC without the query
            return f"sm_{cc}"
        if cc in archs:
            return f"sm_{cc}"
        lower = [a for a in archs if a <= cc]
        return f"compute_{max(lower) if lower else min(archs)}"

    def _activate(self) -> None:
        if self._closed:
            raise G4rtError("the CUDA backend is closed")
        check(self.drv.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def mem_info(self) -> tuple[int, int]:
        self._activate()
        free, total = check(self.drv.cuMemGetInfo(), "cuMemGetInfo")
        return int(free), int(total)

    def free_bytes(self) -> int:
        return self.mem_info()[0]

    def check_split_fits(self, graph: ops.Graph, caches: dict, split: int, batch: int) -> None:
        """Raise a G4rtError naming what fits when ops [0, split) of `graph` do not fit this GPU."""
        plan = plan_memory(graph, caches, kv_dtype=self.kv_dtype, free_bytes=self.free_bytes(), batch=batch)
        plan.check_split(split, what=self.device_name)

    def check_ops_fit(self, graph: ops.Graph, caches: dict, op_indices: list[int], batch: int) -> None:
        """Raise a G4rtError when the ops at these indices (a hybrid's GPU share) do not fit."""
        need = ops_bytes(graph, [graph.ops[i] for i in op_indices], caches, self.kv_dtype, batch, self.sm_count)
        free = self.free_bytes()
        avail = max(0, free - reserve_for(free))
        if need > avail:
            raise G4rtError(f"the part placed on {self.device_name} needs {need / 2**30:.2f} GiB but "
                            f"{avail / 2**30:.2f} GiB is available: keep more experts on the CPU "
                            f"(--cpu-moe, a larger --n-cpu-moe), fewer --gpu-layers or a smaller --ctx")

    def _alloc(self, nbytes: int, what: str) -> int:
        nbytes = max(int(nbytes), 1)
        try:
            return int(check(self.drv.cuMemAlloc(nbytes), f"cuMemAlloc({nbytes}) for {what}"))
        except CudaError as e:
            if "OUT_OF_MEMORY" in str(e):
                free = None
                try:
                    free = self.mem_info()[0]
                except G4rtError:
                    pass
                raise G4rtError(f"out of GPU memory allocating {what} ({gib(nbytes)}"
                                + (f"; {gib(free)} free" if free is not None else "") +
                                "): use --gpu-layers to keep some layers on the CPU, or a smaller "
                                "--ctx") from None
            raise

    def _free(self, ptr: int) -> None:
        if ptr:
            try:
                self.drv.cuMemFree(ptr)
            except Exception:        # noqa: BLE001 - best effort at teardown
                pass

    def _htod(self, ptr: int, arr: np.ndarray, what: str) -> None:
        arr = np.ascontiguousarray(arr)
        if arr.nbytes:
            check(self.drv.cuMemcpyHtoDAsync(ptr, arr.ctypes.data, arr.nbytes, self.stream),
                  f"cuMemcpyHtoDAsync ({what})")
            self._sync(what)

    def _dtoh(self, ptr: int, nbytes: int, what: str) -> np.ndarray:
        out = np.empty(int(nbytes), np.uint8)
        if nbytes:
            check(self.drv.cuMemcpyDtoHAsync(out.ctypes.data, ptr, int(nbytes), self.stream),
                  f"cuMemcpyDtoHAsync ({what})")
            self._sync(what)
        return out

    def _sync(self, what: str = "") -> None:
        check(self.drv.cuStreamSynchronize(self.stream),
              "cuStreamSynchronize" + (f" (after {what})" if what else ""))

    def _memset0(self, ptr: int, nbytes: int, what: str) -> None:
        if nbytes > 0:
            check(self.drv.cuMemsetD8Async(ptr, 0, int(nbytes), self.stream), f"cuMemsetD8Async ({what})")

    # ---- kernels ----------------------------------------------------------------------------
    def ensure_kernels(self, names) -> None:
        """Compile (in parallel) and load the modules defining `names`."""
        names = [n for n in names if n not in self._functions]
        if not names:
            return
        need: dict[tuple, list[str]] = {}
        for n in names:
            need.setdefault(kernels.kernel_file(n), []).append(n)
        missing = [key for key in need if key not in self._modules]
        if self.emulated:
            images = [b"\0"] * len(missing)     # the emulated driver runs its kernels by name
        else:
            images = compile_many([(f, self.arch, kernels.module_defines(qt)) for f, qt in missing])
        for (f, qt), image in zip(missing, images):
            buf = np.frombuffer(image, dtype=np.uint8).copy()
            what = f"cuModuleLoadData({f}{'/' + qt.name if qt is not None else ''}, {self.arch})"
            try:
                mod = check(self.drv.cuModuleLoadData(buf.ctypes.data), what)
            except CudaError as e:
                hint = ""
                if "UNSUPPORTED_PTX_VERSION" in str(e) or "INVALID_PTX" in str(e) or "NO_BINARY" in str(e):
                    hint = (" — the NVRTC library is newer than the NVIDIA driver; use an NVRTC "
                            "(nvidia-cuda-nvrtc wheel) matching the driver's CUDA version, or set "
                            "G4RT_CUDA_ARCH=sm_XY to compile SASS for the device")
                raise G4rtError(f"{e}{hint}") from None
            self._modules[(f, qt)] = mod
        for key, ns in need.items():
            mod = self._modules[key]
            for n in ns:
                fn = check(self.drv.cuModuleGetFunction(mod, n.encode()), f"cuModuleGetFunction({n})")
                self._check_params(n, fn)
                self._functions[n] = fn

    def _check_params(self, name: str, fn) -> None:
        """Compare the kernel's parameter sizes with the registry (CUDA >= 12.4 drivers)."""
        get = getattr(self.drv, "cuFuncGetParamInfo", None)
        if get is None:
            return
        sig = kernels.signature(name)
        try:
            for i, code in enumerate(sig):
                res = get(fn, i)
                if int(res[0]) != 0:
                    return               # not supported by this driver: skip the check
                size = int(res[2])
                want = 8 if code in "Pd" else 4
                if size != want:
                    raise G4rtError(f"kernel {name}: parameter {i} has {size} bytes, the host "
                                    f"passes {want} (signature {sig!r})")
            res = get(fn, len(sig))
            if int(res[0]) == 0:
                raise G4rtError(f"kernel {name} has more parameters than its signature {sig!r}")
        except G4rtError:
            raise
        except Exception:                # noqa: BLE001 - binding differences: skip the check
            return

    def _launch(self, r: ReadyLaunch) -> None:
        check(self.drv.cuLaunchKernel(r.fn, r.grid[0], r.grid[1], r.grid[2], r.block, 1, 1, r.smem,
                                      self.stream, int(r.ptrs.ctypes.data), 0),
              f"cuLaunchKernel({r.kernel}{', ' + r.label if r.label else ''})")

    # ---- Backend API ------------------------------------------------------------------------
    def load_weights(self, specs, source, progress: Optional[Callable[[int], None]] = None) -> None:
        self._activate()
        self.source = source
        new = {n: s for n, s in specs.items() if n not in self.weights}
        for name, spec in new.items():
            if spec.qtype not in kernels.QTYPE_SUFFIX:
                raise UnsupportedModelError(f"tensor {name!r} has type {spec.qtype.name}, which the "
                                            f"CUDA backend has no kernel for")
        free, _ = self.mem_info()
        total, avail, fit, n_layers = plan_weights(new, free)
        if total > avail:
            raise G4rtError(
                f"the weights need {gib(total)} on {self.gpu_name} but {gib(avail)} is available "
                f"({gib(free)} free): the weights of {fit} of {n_layers} layers would fit — run "
                f"with --gpu-layers {fit} to keep the rest on the CPU")
        self.specs.update(specs)
        for name, spec in new.items():
            raw = np.ascontiguousarray(source.weight_bytes(name))
            rb = q_row_bytes(spec.qtype, spec.cols)
            if raw.nbytes != rb * spec.rows:
                raise G4rtError(f"tensor {name!r}: {raw.nbytes} bytes, expected {spec.rows} rows of "
                                f"{rb} bytes ({spec.qtype.name})")
            nbytes = weight_bytes(spec)
            ptr = self._alloc(nbytes, f"weight {name}")
            self.weights[name] = DeviceWeight(spec, ptr, nbytes, rb)
            self._memset0(ptr + raw.nbytes, nbytes - raw.nbytes, f"padding of {name}")
            self._htod(ptr, raw.reshape(-1).view(np.uint8), f"upload of {name}")
            if progress:
                progress(int(raw.nbytes))

    def vector(self, name: str) -> int:
        """Device pointer of an f32 copy of a small weight (norm weight, RoPE factors, ...)."""
        p = self.vectors.get(name)
        if p:
            return p
        spec = self.specs.get(name)
        if spec is None or self.source is None:
            raise G4rtError(f"weight {name!r} is not loaded on the CUDA backend")
        vals = dequantize_rows(self.source.weight_bytes(name), spec.qtype, spec.cols).reshape(-1)
        vals = np.ascontiguousarray(vals, dtype=np.float32)
        p = self._alloc(vals.nbytes, f"vector weight {name}")
        self._htod(p, vals, f"upload of {name}")
        self.vectors[name] = p
        return p

    def allocate_caches(self, caches) -> None:
        self._activate()
        def shape(c):
            return c.slots * c.rows, c.cols, c.rows
        need = sum(cache_bytes(c, self.kv_dtype) for c in caches.values()
                   if c.name not in self.caches or
                   (self.caches[c.name].rows, self.caches[c.name].cols, self.caches[c.name].ring) != shape(c))
        free, _ = self.mem_info()
        reserve = min(DEFAULT_RESERVE, int(0.05 * free) + (128 << 20))
        if need > free - reserve:
            raise G4rtError(
                f"the KV caches need {gib(need)} ({self.kv_dtype}) but {gib(max(0, free - reserve))} of "
                f"{self.gpu_name}'s memory is available: lower --ctx, or keep layers on the CPU "
                f"with --gpu-layers")
        for c in caches.values():
            old = self.caches.get(c.name)
            if old is not None and (old.rows, old.cols, old.ring) == shape(c):
                self._memset0(old.ptr, old.nbytes, f"cache {c.name}")
                continue
            if old is not None:
                self._sync()
                self._free(old.ptr)
                self._gen += 1
            arr = DeviceArray(c.name, c.slots * c.rows, c.cols, 0, self.kv_f16, c.rows)
            arr.ptr = self._alloc(arr.nbytes, f"KV cache {c.name}")
            self._memset0(arr.ptr, arr.nbytes, f"cache {c.name}")
            self.caches[c.name] = arr
        self._sync("cache allocation")

    def compile(self, graph: ops.Graph) -> CudaGraph:
        self._activate()
        return CudaGraph(self, graph)

    # ---- hybrid inputs and test helpers -------------------------------------------------------
    def declare_inputs(self, shapes: dict[str, tuple[int, int]]) -> None:
        """f32 buffers that graphs read like caches (by name) and that the host fills before a run
        (write_inputs): how a hybrid back graph receives the front's activations."""
        self._activate()
        for name, (rows, cols) in shapes.items():
            old = self.inputs.get(name)
            if old is not None and (old.rows, old.cols) == (rows, cols):
                continue
            if old is not None:
                self._sync()
                self._free(old.ptr)
                self._gen += 1
            arr = DeviceArray(name, int(rows), int(cols), 0, False)
            arr.ptr = self._alloc(arr.nbytes, f"input {name}")
            self._memset0(arr.ptr, arr.nbytes, f"input {name}")
            self.inputs[name] = arr

    def declare_kept(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Persistent f32 copies a hybrid segment leaves for a later one on this GPU (written by
        Slice), so that the residual stream never leaves the device between segments."""
        self.declare_inputs(shapes)

    def write_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        self._activate()
        for name, a in arrays.items():
            dst = self.inputs.get(name)
            if dst is None:
                raise G4rtError(f"input {name!r} was not declared")
            a = np.ascontiguousarray(a, dtype=np.float32)
            if a.size != dst.rows * dst.cols:
                raise G4rtError(f"input {name!r}: {a.shape} for a [{dst.rows}, {dst.cols}] buffer")
            self._htod(dst.ptr, a, f"input {name}")

    def write_cache(self, name: str, values: np.ndarray) -> None:
        """Overwrite a KV cache (converted to its dtype): for tests."""
        self._activate()
        c = self.caches[name]
        a = np.asarray(values, dtype=np.float16 if c.f16 else np.float32).reshape(c.rows, c.cols)
        self._htod(c.ptr, np.ascontiguousarray(a), f"cache {name}")

    def read_cache(self, name: str) -> np.ndarray:
        self._activate()
        c = self.caches.get(name) or self.inputs[name]
        raw = self._dtoh(c.ptr, c.nbytes, f"read of {name}")
        return raw.view(np.float16 if c.f16 else np.float32).astype(np.float32).reshape(c.rows, c.cols)

    # ---- arena ------------------------------------------------------------------------------
    def _ensure_arena(self, nbytes: int) -> None:
        if nbytes <= self._arena_size:
            return
        self._sync()
        if self._arena_ptr:
            self._free(self._arena_ptr)
            self._arena_ptr, self._arena_size = 0, 0
        size = align(max(nbytes, 1), 1 << 20)
        self._arena_ptr = self._alloc(size, "the activation arena")
        self._arena_size = size
        self._gen += 1

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        d = self.drv
        try:
            d.cuCtxSetCurrent(self.ctx)
            if self.stream is not None:
                d.cuStreamSynchronize(self.stream)
        except Exception:            # noqa: BLE001
            pass
        for g in list(self._graphs):
            g._release()
        for w in self.weights.values():
            self._free(w.ptr)
        for p in self.vectors.values():
            self._free(p)
        for c in list(self.caches.values()) + list(self.inputs.values()):
            self._free(c.ptr)
        self._free(self._arena_ptr)
        self.weights, self.vectors, self.caches, self.inputs = {}, {}, {}, {}
        self._arena_ptr, self._arena_size = 0, 0
        for mod in self._modules.values():
            try:
                d.cuModuleUnload(mod)
            except Exception:        # noqa: BLE001
                pass
        self._modules, self._functions = {}, {}
        if self.stream is not None:
            try:
                d.cuStreamDestroy(self.stream)
            except Exception:        # noqa: BLE001
                pass
            self.stream = None
        try:
            d.cuDevicePrimaryCtxRelease(self.dev)
        except Exception:            # noqa: BLE001
            pass
        self._closed = True

    def memory_plan(self, graph: ops.Graph, batch: Optional[int] = None):
        """plan.plan_memory for this device's free memory and KV dtype."""
        return plan_memory(graph, graph.caches, self.kv_dtype, self.free_bytes(), batch, sm_count=self.sm_count)
