"""The CUDA backend: NVRTC-compiled kernels (shaders/cuda) over GGUF-layout weights, replayed as
CUDA graphs. Library: NVIDIA's cuda-python (driver API + NVRTC bindings); see docs/cuda.md.

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
"""

from __future__ import annotations

import ctypes
import os
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ... import ops as O
from ...errors import BackendUnavailableError, G4rtError, UnsupportedModelError
from ...gguf.quant_types import dequantize_rows
from ...gguf.quant_types import row_bytes as q_row_bytes
from . import kernels as K
from ..base import Backend, CompiledGraph, OpObserver, WeightSource
from .driver import CudaError, check, compile_many, cuda_available, open_driver
from .plan import (ALIGN, DEFAULT_RESERVE, cache_bytes, gib, ops_bytes, plan_memory, plan_weights, reserve_for,
                   weight_bytes)

__all__ = ["CudaBackend", "CudaGraph", "cuda_available"]

P_TOKENS = 2          # common.cuh: params = [pos0, n_tokens, token ids...]
_PRIMARY_KEEPALIVE: dict = {}
_NULL = ("NULL",)


def _align(n: int, a: int = ALIGN) -> int:
    return (int(n) + a - 1) // a * a


def _env_flag(name: str) -> Optional[bool]:
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    return v.strip().lower() not in ("0", "false", "no", "off")


@dataclass
class _DevWeight:
    spec: O.WeightSpec
    ptr: int
    nbytes: int
    row_bytes: int


@dataclass
class _DevArray:
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


@dataclass
class _Launch:
    kernel: str
    grid: tuple[int, int, int]
    block: int
    args: list                      # [(code, value)]; value: number or a symbolic reference
    smem: int = 0


@dataclass
class _Ready:
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


class CudaBackend(Backend):
    name = "cuda"
    supports_segments = True

    def __init__(self, device: int = 0, kv_dtype: str = "f16", use_graphs: Optional[bool] = None,
                 debug: Optional[bool] = None, arch: Optional[str] = None, driver=None,
                 int8_matvec: Optional[bool] = None):
        """device: CUDA device index. kv_dtype: "f16" (default) or "f32".
        use_graphs: record CUDA graphs (default on; env G4RT_CUDA_GRAPHS=0 turns it off).
        debug: synchronise after every op and name the op on a fault (env G4RT_CUDA_DEBUG=1).
        arch: NVRTC target ("sm_90", "compute_90"; env G4RT_CUDA_ARCH), default the device's.
        driver: a stand-in for cuda-python's driver module (tests: emulator.EmulatedDriver).
        int8_matvec: decode matvecs of Q4_0/Q4_K/Q6_K/Q8_0 weights with 8-bit activations and
        dp4a (matvec8.cu; fewer instructions per byte, activations rounded to 8 bits as llama.cpp
        does). Default off (env G4RT_CUDA_INT8=1): the fp32 matvec is exact to fp32 sums."""
        if kv_dtype not in ("f16", "f32"):
            raise G4rtError(f"kv_dtype must be 'f16' or 'f32', got {kv_dtype!r}")
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
        self.weights: dict[str, _DevWeight] = {}
        self.vectors: dict[str, int] = {}
        self.caches: dict[str, _DevArray] = {}
        self.inputs: dict[str, _DevArray] = {}
        self.specs: dict[str, O.WeightSpec] = {}
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
        env_int8 = _env_flag("G4RT_CUDA_INT8")
        self.int8_matvec = bool(int8_matvec if int8_matvec is not None else env_int8)
        env_graphs, env_debug = _env_flag("G4RT_CUDA_GRAPHS"), _env_flag("G4RT_CUDA_DEBUG")
        self.debug = bool(debug if debug is not None else env_debug)
        self.use_graphs = (use_graphs if use_graphs is not None
                           else (env_graphs if env_graphs is not None else True)) and not self.debug

    # ---- device helpers ---------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        return (f"{self.gpu_name} (CUDA sm_{self.cc[0]}{self.cc[1]}, "
                f"{self.total_memory / (1 << 30):.0f} GiB)")

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

    def check_split_fits(self, graph: O.Graph, caches: dict, split: int, batch: int) -> None:
        """Raise a G4rtError naming what fits when ops [0, split) of `graph` do not fit this GPU."""
        plan = plan_memory(graph, caches, kv_dtype=self.kv_dtype, free_bytes=self.free_bytes(), batch=batch)
        plan.check_split(split, what=self.device_name)

    def check_ops_fit(self, graph: O.Graph, caches: dict, ops: list[int], batch: int) -> None:
        """Raise a G4rtError when the ops at these indices (a hybrid's GPU share) do not fit."""
        need = ops_bytes(graph, [graph.ops[i] for i in ops], caches, self.kv_dtype, batch, self.sm_count)
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
            need.setdefault(K.kernel_file(n), []).append(n)
        missing = [key for key in need if key not in self._modules]
        if self.emulated:
            images = [b"\0"] * len(missing)     # the emulator runs numpy kernels by name
        else:
            images = compile_many([(f, self.arch, K.module_defines(qt)) for f, qt in missing])
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
        sig = K.signature(name)
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

    def _launch(self, r: _Ready) -> None:
        check(self.drv.cuLaunchKernel(r.fn, r.grid[0], r.grid[1], r.grid[2], r.block, 1, 1, r.smem,
                                      self.stream, int(r.ptrs.ctypes.data), 0),
              f"cuLaunchKernel({r.kernel}{', ' + r.label if r.label else ''})")

    # ---- Backend API ------------------------------------------------------------------------
    def load_weights(self, specs, source, progress: Optional[Callable[[int], None]] = None) -> None:
        self._activate()
        self.source = source
        new = {n: s for n, s in specs.items() if n not in self.weights}
        for name, spec in new.items():
            if spec.qtype not in K.QTYPE_SUFFIX:
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
            self.weights[name] = _DevWeight(spec, ptr, nbytes, rb)
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
            arr = _DevArray(c.name, c.slots * c.rows, c.cols, 0, self.kv_f16, c.rows)
            arr.ptr = self._alloc(arr.nbytes, f"KV cache {c.name}")
            self._memset0(arr.ptr, arr.nbytes, f"cache {c.name}")
            self.caches[c.name] = arr
        self._sync("cache allocation")

    def compile(self, graph: O.Graph) -> "CudaGraph":
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
            arr = _DevArray(name, int(rows), int(cols), 0, False)
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
        size = _align(max(nbytes, 1), 1 << 20)
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

    def memory_plan(self, graph: O.Graph, batch: Optional[int] = None):
        """plan.plan_memory for this device's free memory and KV dtype."""
        return plan_memory(graph, graph.caches, self.kv_dtype, self.free_bytes(), batch, sm_count=self.sm_count)


def _rows(ref: tuple, row0: int, cols: int) -> tuple:
    """An arena reference moved down `row0` rows of `cols` floats."""
    if ref[0] != "A":
        raise G4rtError("a row offset needs an activation buffer")
    return ("A", ref[1] + row0 * cols * 4)


class CudaGraph(CompiledGraph):
    """One graph lowered to kernel launches; recorded as a CUDA graph on its first run."""

    def __init__(self, backend: CudaBackend, graph: O.Graph):
        self.backend, self.graph = backend, graph
        self.n = int(graph.n_tokens)
        if self.n < 1:
            raise G4rtError("a CUDA graph needs at least one token")
        self.labels = list(graph.labels) + [f"op {i}" for i in range(len(graph.labels), len(graph.ops))]
        self._exec = None
        self._ready: Optional[list[list[_Ready]]] = None
        self._gen = -1
        self._params_dev = 0
        self._params_host = 0
        self._out_host = 0
        self._released = False
        # 1. arena layout: every f32 buffer the ops touch (and the output)
        self.offsets: dict[str, int] = {}
        off = 0
        names: list[str] = []
        for op in graph.ops:
            for nm in list(op.reads()) + [op.out]:
                if nm in graph.buffers and nm not in graph.caches and nm not in self.offsets:
                    buf = graph.buffers[nm]
                    if buf.dtype != "f32":
                        raise G4rtError(f"buffer {nm!r} has dtype {buf.dtype}; ops read f32 buffers only")
                    self.offsets[nm] = off
                    names.append(nm)
                    off = _align(off + buf.rows * buf.cols * 4)
        if graph.output in graph.buffers and graph.output not in self.offsets and graph.output not in graph.caches:
            b = graph.buffers[graph.output]
            self.offsets[graph.output] = off
            off = _align(off + b.rows * b.cols * 4)
        self._off = off
        # 2. lower the ops
        self._written: set[str] = set()
        self._q8: dict[str, tuple] = {}      # int8 copies of activation buffers, until rewritten
        self.op_launches: list[list[_Launch]] = []
        for i, op in enumerate(graph.ops):
            try:
                self.op_launches.append(self._lower(op))
            except G4rtError as e:
                raise G4rtError(f"CUDA backend, {self.labels[i]} ({op.kind}): {e}") from None
            self._q8.pop(op.out, None)
        self.arena_bytes = _align(self._off)
        # 3. device/host resources
        be = backend
        self.params_words = P_TOKENS + 5 * self.n      # common.cuh: then 4 row words per row
        self.slots = O.graph_slots(graph)
        self._params_dev = be._alloc(_align(4 * self.params_words), "graph parameters")
        self._params_host = int(check(be.drv.cuMemHostAlloc(4 * self.params_words, 0), "cuMemHostAlloc"))
        self.params = np.ctypeslib.as_array((ctypes.c_int32 * self.params_words).from_address(self._params_host))
        rows, cols, f16 = self._shape_of_output()
        self.out_shape = (rows, cols)
        self._out_nbytes = rows * cols * (2 if f16 else 4)
        self._out_f16 = f16
        self._out_host = int(check(be.drv.cuMemHostAlloc(max(1, self._out_nbytes), 0), "cuMemHostAlloc"))
        be._graphs.add(self)
        be._ensure_arena(self.arena_bytes)
        be.ensure_kernels({l.kernel for ls in self.op_launches for l in ls})

    # ---- lowering ---------------------------------------------------------------------------
    def _scratch(self, nbytes: int) -> tuple:
        off = self._off
        self._off = _align(off + max(int(nbytes), 4))
        return ("A", off)

    def _ref(self, name: str, write: bool = False) -> tuple:
        g = self.graph
        if name in g.caches:
            if write:
                raise G4rtError(f"{name!r} is a cache; only kv_store writes caches")
            be = self.backend
            if name not in be.caches and name not in be.inputs:
                raise G4rtError(f"cache {name!r} is not allocated on the CUDA backend")
            return ("C", name)
        if name in self.offsets:
            if not write and name not in self._written:
                raise G4rtError(f"reads buffer {name!r} before any op wrote it")
            return ("A", self.offsets[name])
        raise G4rtError(f"unknown buffer {name!r}")

    def _shape(self, name: str) -> tuple[int, int]:
        g = self.graph
        if name in g.caches:
            c = g.caches[name]
            return c.rows, c.cols
        b = g.buffers[name]
        return b.rows, b.cols

    def _weight(self, name: str) -> _DevWeight:
        w = self.backend.weights.get(name)
        if w is None:
            raise G4rtError(f"weight {name!r} is not loaded on the CUDA backend")
        return w

    def _vector(self, name: str, min_len: int) -> tuple:
        spec = self.backend.specs.get(name)
        if spec is None:
            raise G4rtError(f"weight {name!r} is not loaded on the CUDA backend")
        if spec.rows * spec.cols < min_len:
            raise G4rtError(f"weight {name!r} has {spec.rows * spec.cols} values, needs {min_len}")
        self.backend.vector(name)
        return ("V", name)

    def _out(self, op: O.Op, shape: tuple[int, int]) -> tuple:
        if op.out not in self.graph.buffers or op.out in self.graph.caches:
            raise G4rtError(f"output {op.out!r} must be an activation buffer")
        if self._shape(op.out) != tuple(shape):
            raise G4rtError(f"output {op.out!r} is {self._shape(op.out)}, expected {tuple(shape)}")
        return ("A", self.offsets[op.out])

    def _copy(self, src: tuple, dst: tuple, rows: int, cols: int) -> _Launch:
        n = rows * cols
        return _Launch("slice", (K.ew_grid(n), 1, 1), K.EW_THREADS,
                       [src, dst, rows, cols, cols, 0, 0])

    def _int8_ok(self, qtype, cols: int) -> bool:
        return self.backend.int8_matvec and cols % 32 == 0 and qtype in K.family_types("matvec8")

    def _quantized(self, name: str, x: tuple, rows: int, cols: int, L: list) -> tuple:
        """The int8 copy (values, scales) of activation buffer `name`, quantizing it first unless
        an earlier launch did and nothing has rewritten the buffer since (Q/K/V, gate/up)."""
        if name not in self._q8:               # a buffer's shape is fixed within a graph
            groups = cols // 32
            q, ds = self._scratch(rows * cols), self._scratch(rows * groups * 8)
            L.append(_Launch("quantize_q8", (-(-groups // K.Q8_GROUPS_PER_BLOCK), rows, 1),
                             32 * K.Q8_GROUPS_PER_BLOCK, [x, q, ds, cols, rows]))
            self._q8[name] = (q, ds)
        return self._q8[name]

    def _lower(self, op: O.Op) -> list[_Launch]:
        be = self.backend
        L: list[_Launch] = []
        n = self.n
        if isinstance(op, O.EmbedLookup):
            w = self._weight(op.table)
            Kc = w.spec.cols
            rows, cols = self._shape(op.out)
            if cols != Kc or rows > n:
                raise G4rtError(f"output is [{rows}, {cols}] for a table of {Kc} columns and {n} tokens")
            out = self._out(op, (rows, cols))
            groups = -(-Kc // 32)
            L.append(_Launch(K.typed_kernel("embed", w.spec.qtype),
                             (-(-groups // K.EMBED_THREADS), rows, 1), K.EMBED_THREADS,
                             [("W", op.table), w.row_bytes, w.spec.rows, ("PARAMS",), out, Kc, float(op.scale)]))
        elif isinstance(op, O.MatMul):
            w = self._weight(op.weight)
            Kc, Oc = w.spec.cols, w.spec.rows
            R, xc = self._shape(op.x)
            if xc != Kc:
                raise G4rtError(f"input {op.x!r} has {xc} columns, weight {op.weight!r} has {Kc}")
            x = self._ref(op.x)
            inplace = op.out == op.x
            dst = self._scratch(R * Oc * 4) if inplace else self._out(op, (R, Oc))
            if R > 65535 * K.MM_BT:
                raise G4rtError(f"batch of {R} rows is too large")
            if R <= K.MV_MAXN and self._int8_ok(w.spec.qtype, Kc):
                q, ds = self._quantized(op.x, x, R, Kc, L)
                L.append(_Launch(K.typed_kernel("matvec8", w.spec.qtype), (-(-Oc // K.MV_WARPS), 1, 1),
                                 K.MV_WARPS * 32, [("W", op.weight), w.row_bytes, q, ds, dst, Oc, Kc, R]))
            elif R <= O.ROW_EXACT_MAX:
                # decode's matvec, MV_MAXN rows a launch: a row's sums do not depend on the batch
                for r0 in range(0, R, K.MV_MAXN):
                    rn = min(K.MV_MAXN, R - r0)
                    L.append(_Launch(K.typed_kernel("matvec", w.spec.qtype), (-(-Oc // K.MV_WARPS), 1, 1),
                                     K.MV_WARPS * 32, [("W", op.weight), w.row_bytes, _rows(x, r0, Kc),
                                                       _rows(dst, r0, Oc), Oc, Kc, rn]))
            else:
                L.append(_Launch(K.typed_kernel("matmul", w.spec.qtype),
                                 (-(-Oc // K.MM_BO), -(-R // K.MM_BT), 1), K.MM_THREADS,
                                 [("W", op.weight), w.row_bytes, x, dst, Oc, Kc, R]))
            if inplace:
                L.append(self._copy(dst, self._out(op, (R, Oc)), R, Oc))
        elif isinstance(op, O.RmsNorm):
            R, C = self._shape(op.x)
            if op.group <= 0 or C % op.group:
                raise G4rtError(f"group {op.group} does not divide {C} columns")
            if R > 65535:
                raise G4rtError(f"{R} rows is too many for one launch")
            x = self._ref(op.x)
            out = self._out(op, (R, C))
            wref = self._vector(op.weight, op.group) if op.weight else _NULL
            L.append(_Launch("rmsnorm", (C // op.group, R, 1), K.rmsnorm_block(op.group),
                             [x, out, wref, C, op.group, float(op.eps)]))
        elif isinstance(op, O.Rope):
            R, C = self._shape(op.x)
            if op.head_dim <= 0 or C % op.head_dim:
                raise G4rtError(f"head_dim {op.head_dim} does not divide {C} columns")
            if op.n_rot % 2 or op.n_rot > op.head_dim or op.n_rot < 0:
                raise G4rtError(f"n_rot {op.n_rot} must be even and at most head_dim {op.head_dim}")
            if R > n:
                raise G4rtError(f"{R} rows but only {n} positions")
            x = self._ref(op.x)
            out = self._out(op, (R, C))
            if op.out != op.x:
                L.append(self._copy(x, out, R, C))
            ff = self._vector(op.freq_factors, op.n_rot // 2) if op.freq_factors else _NULL
            total = R * (C // op.head_dim) * (op.n_rot // 2)
            if total:
                L.append(_Launch("rope", (K.ew_grid(total), 1, 1), K.EW_THREADS,
                                 [out, ff, ("PARAMS",), R, C, op.head_dim, op.n_rot, float(op.base)]))
        elif isinstance(op, O.Attention):
            H, Hkv, D = op.n_head, op.n_kv_head, op.head_dim
            if Hkv <= 0 or H % Hkv:
                raise G4rtError(f"{H} heads are not a multiple of {Hkv} KV heads")
            R, qc = self._shape(op.q)
            if qc != H * D:
                raise G4rtError(f"q has {qc} columns, expected {H} x {D}")
            for nm in (op.k, op.v):
                if self._shape(nm) != (R, Hkv * D):
                    raise G4rtError(f"{nm!r} is {self._shape(nm)}, expected ({R}, {Hkv * D})")
            if R > n or R > 65535:
                raise G4rtError(f"{R} query rows for {n} positions")
            ck, cv = be.caches.get(op.cache_k), be.caches.get(op.cache_v)
            if ck is None or cv is None:
                raise G4rtError(f"KV caches {op.cache_k!r}/{op.cache_v!r} are not allocated")
            if ck.cols != Hkv * D or cv.cols != Hkv * D or (ck.rows, ck.ring) != (cv.rows, cv.ring):
                raise G4rtError(f"caches are [{ck.rows}, {ck.cols}] / [{cv.rows}, {cv.cols}], "
                                f"expected {Hkv * D} columns")
            try:
                kern = K.attn_variant(D, ck.f16)
            except ValueError as e:
                raise G4rtError(str(e)) from None
            ring = ck.ring
            exact = R <= O.ROW_EXACT_MAX        # each row split as a one-row decode step splits it
            rows_seen = 1 if exact else R
            max_keys = min(op.window, ring + rows_seen) if op.window > 0 else ring + rows_seen
            ns = K.attn_splits(max_keys, rows_seen, H, be.sm_count)
            part = self._scratch(R * H * ns * (D + 2) * 4)
            q, k, v = self._ref(op.q), self._ref(op.k), self._ref(op.v)
            inplace = op.out in (op.q, op.k, op.v)
            dst = self._scratch(R * H * D * 4) if inplace else self._out(op, (R, H * D))
            L.append(_Launch(kern, (ns, H, R), K.ATT_THREADS,
                             [q, k, v, ("C", op.cache_k), ("C", op.cache_v), part, ("PARAMS",),
                              H, Hkv, D, int(op.window), ring, float(op.scale), ns,
                              int(exact and R > 1 and ck.f16)]))
            L.append(_Launch("attn_combine", (H, R, 1), K.ATT_THREADS, [part, dst, H, D, ns]))
            if inplace:
                L.append(self._copy(dst, self._out(op, (R, H * D)), R, H * D))
        elif isinstance(op, O.KvStore):
            ck, cv = be.caches.get(op.out), be.caches.get(op.cache_v)
            if ck is None or cv is None:
                raise G4rtError(f"KV caches {op.out!r}/{op.cache_v!r} are not allocated")
            R, C = self._shape(op.k)
            if self._shape(op.v) != (R, C) or ck.cols != C or cv.cols != C or (ck.rows, ck.ring) != (cv.rows, cv.ring):
                raise G4rtError(f"k/v {self._shape(op.k)}/{self._shape(op.v)} do not match caches "
                                f"[{ck.rows}, {ck.cols}]")
            if R > n:
                raise G4rtError(f"{R} rows for {n} positions")
            ring = ck.ring
            total = R * C             # each row checks whether a later row of its sequence wins
            kern = "kv_store_f16" if ck.f16 else "kv_store_f32"
            L.append(_Launch(kern, (K.ew_grid(total), 1, 1), K.EW_THREADS,
                             [self._ref(op.k), self._ref(op.v), ("C", op.out), ("C", op.cache_v),
                              ("PARAMS",), R, C, ring]))
            return L                      # writes caches, not a buffer
        elif isinstance(op, (O.GeluMul, O.Add, O.Mul)):
            a_name, b_name = (op.gate, op.up) if isinstance(op, O.GeluMul) else (op.a, op.b)
            shp = self._shape(a_name)
            if self._shape(b_name) != shp:
                raise G4rtError(f"operands are {shp} and {self._shape(b_name)}")
            a, b = self._ref(a_name), self._ref(b_name)
            out = self._out(op, shp)
            nel = shp[0] * shp[1]
            kern = {O.GeluMul: "gelu_mul", O.Add: "add", O.Mul: "mul"}[type(op)]
            L.append(_Launch(kern, (K.ew_grid(nel), 1, 1), K.EW_THREADS, [a, b, out, nel]))
        elif isinstance(op, (O.Gelu, O.Scale, O.Softcap)):
            shp = self._shape(op.x)
            x = self._ref(op.x)
            out = self._out(op, shp)
            nel = shp[0] * shp[1]
            grid = (K.ew_grid(nel), 1, 1)
            if isinstance(op, O.Gelu):
                L.append(_Launch("gelu", grid, K.EW_THREADS, [x, out, nel]))
            elif isinstance(op, O.Scale):
                by = self._vector(op.by, 1) if op.by else _NULL
                L.append(_Launch("scale", grid, K.EW_THREADS, [x, out, nel, float(op.scale), by]))
            else:
                L.append(_Launch("softcap", grid, K.EW_THREADS, [x, out, nel, float(op.cap)]))
        elif isinstance(op, O.Slice):
            XR, XC = self._shape(op.x)
            kept = op.out in self.graph.caches and op.out in be.inputs
            if op.out not in self.graph.buffers and not kept:
                raise G4rtError(f"output {op.out!r} must be an activation buffer")
            R, C = self._shape(op.out)
            if op.row0 < 0 or op.col0 < 0 or op.row0 + R > XR or op.col0 + C > XC:
                raise G4rtError(f"slice [{op.row0}:{op.row0 + R}, {op.col0}:{op.col0 + C}] is outside "
                                f"{op.x!r} [{XR}, {XC}]")
            if op.x in self.graph.caches:
                src = be.caches.get(op.x) or be.inputs.get(op.x)
                if src is None:
                    raise G4rtError(f"{op.x!r} is not allocated on the CUDA backend")
                if src.f16:
                    raise G4rtError(f"slicing the f16 cache {op.x!r} is not supported")
            x = self._ref(op.x)
            out = ("C", op.out) if kept else self._out(op, (R, C))
            L.append(_Launch("slice", (K.ew_grid(R * C), 1, 1), K.EW_THREADS,
                             [x, out, R, C, XC, op.row0, op.col0]))
        elif isinstance(op, O.MoeRoute):
            R, n_exp = self._shape(op.logits)
            out = self._out(op, (R, 2 * op.k))
            scale = self._vector(op.expert_scale, n_exp) if op.expert_scale else _NULL
            L.append(_Launch("moe_route", (max(1, -(-R // 128)), 1, 1), 128,
                             [self._ref(op.logits), out, scale, R, n_exp, op.k]))
        elif isinstance(op, O.MoeMatMul):
            w = self._weight(op.weight)
            R, rc = self._shape(op.route)
            k = rc // 2
            XR, Kc = self._shape(op.x)
            N = w.spec.rows // op.n_expert
            if Kc != w.spec.cols or w.spec.rows != op.n_expert * N or XR not in (R, R * k):
                raise G4rtError(f"expert matmul {op.weight!r} [{w.spec.rows} x {w.spec.cols}] does not fit "
                                f"{op.x!r} [{XR}, {Kc}] with {R} x {k} selections")
            if R * k > 65535:
                raise G4rtError(f"{R * k} expert selections is too many for one launch")
            out = self._out(op, (R * k, N))
            L.append(_Launch(K.typed_kernel("moe_matvec", w.spec.qtype), (-(-N // K.MV_WARPS), R * k, 1),
                             K.MV_WARPS * 32, [("W", op.weight), w.row_bytes, self._ref(op.x), self._ref(op.route),
                                               out, N, Kc, k, int(XR == R * k and k > 1)]))
        elif isinstance(op, O.MoeSum):
            R, rc = self._shape(op.route)
            k = rc // 2
            _, C = self._shape(op.y)
            out = self._out(op, (R, C))
            L.append(_Launch("moe_sum", (K.ew_grid(R * C), 1, 1), K.EW_THREADS,
                             [self._ref(op.y), self._ref(op.route), out, R, C, k]))
        else:
            raise G4rtError(f"the CUDA backend has no kernel for op {op.kind!r}")
        self._written.add(op.out)
        return L

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
        for label, ls in zip(self.labels, self.op_launches):
            rs = []
            for l in ls:
                vals, ptrs = _pack(K.signature(l.kernel), [self._resolve(a) for a in l.args])
                rs.append(_Ready(l.kernel, be._functions[l.kernel], l.grid, l.block, l.smem, vals, ptrs, label))
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
    def run(self, tokens, pos0: int, observer: Optional[OpObserver] = None) -> np.ndarray:
        be = self.backend
        if self._released:
            raise G4rtError("this compiled graph was released (backend closed)")
        be._activate()
        tokens = np.asarray(tokens).reshape(-1)
        if len(tokens) != self.n:
            raise G4rtError(f"graph for {self.n} tokens run with {len(tokens)}")
        if self._ready is None or self._gen != be._gen or self.arena_bytes > be._arena_size:
            self._build()
        segs = O.placement(pos0, self.n, self.slots)
        n = self.n
        self.params[0] = segs[0].pos0
        self.params[1] = n
        self.params[P_TOKENS:P_TOKENS + n] = tokens.astype(np.int32)
        O.write_row_words(segs, self.params[P_TOKENS + n:P_TOKENS + 5 * n].reshape(n, 4))
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
            rows, cols = self._shape(name)
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
