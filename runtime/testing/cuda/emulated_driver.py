"""A CPU stand-in for the slice of the CUDA driver API that the CUDA backend uses. For tests
and the conformance tool: `CudaBackend(driver=EmulatedDriver())` runs the backend's whole host
side (op lowering, kernel argument packing through cuLaunchKernel's kernelParams, the activation
arena, the parameters buffer, pinned host buffers, stream capture and graph replay, hybrid
inputs) on machines without a GPU.

Two kinds of kernels:
- kernels="numpy" (default): numpy versions of every kernel, written from each kernel's contract
  (the .cu comments); fast, checks the host code.
- kernels="sim": the real CUDA sources of shaders/cuda, compiled for the CPU simulator
  (simulator.py, shaders/cuda/sim/cuda_sim.h: fibers for threads, real barriers and warp
  shuffles); slow, checks the kernels themselves against the numpy reference.

The numpy kernels whose arithmetic is the reference's (RMSNorm, RoPE, GeLU, MoE routing and
sum) call backends/numpy_ref's functions; the rest follow their kernel's own split (attention's
per-chunk partials and combine, the int8 quantizer, ring-buffer KV stores).

Device memory is numpy byte arrays at their real host addresses (256-byte aligned, filled with
garbage like fresh device memory); every access of a numpy kernel and every pointer argument of
a simulated launch is checked against the allocations.
"""

from __future__ import annotations

import bisect
import ctypes
from types import SimpleNamespace

import numpy as np

from ...backends.cuda.kernels import MV_MAXN, kernel_file, signature, typed_family
from ...backends.numpy_ref.backend import gelu_tanh, moe_route, moe_sum, rms_norm, rope
from ...gguf.quant_types import dequantize_rows
from .simulator import shared_kernels
from .emulated_media import MediaKernels

OK = 0


class _Err(int):
    @property
    def name(self):
        return {0: "CUDA_SUCCESS", 2: "CUDA_ERROR_OUT_OF_MEMORY", 1: "CUDA_ERROR_INVALID_VALUE",
                700: "CUDA_ERROR_ILLEGAL_ADDRESS"}.get(int(self), f"CUresult {int(self)}")


class EmulatedFault(AssertionError):
    """A kernel touched memory outside an allocation (a host-side bug the emulator caught)."""


class _Fn:
    def __init__(self, name):
        self.name = name


class EmulatedDriver(MediaKernels):      # the media encoders' numpy kernels: emulated_media.py
    """Drop-in for `cuda.bindings.driver` in CudaBackend(driver=...)."""

    EMULATED = True

    def __init__(self, total_memory: int = 80 << 30, sm_count: int = 132, cc=(9, 0),
                 kernels: str = "numpy"):
        if kernels not in ("numpy", "sim"):
            raise ValueError(f"kernels must be 'numpy' or 'sim', got {kernels!r}")
        self.sim = None
        if kernels == "sim":
            self.sim = shared_kernels()
        self.total = int(total_memory)
        self.sm_count, self.cc = sm_count, cc
        self._bases: list[int] = []
        self._arrays: dict[int, np.ndarray] = {}
        self._host: dict[int, ctypes.Array] = {}
        self._capture = None
        self.launches = 0
        self.graph_launches = 0
        self.CUdevice_attribute = SimpleNamespace(
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR="ccmajor",
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR="ccminor",
            CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT="sms")
        self.CUstreamCaptureMode = SimpleNamespace(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL="thread_local")

    # ---- memory -------------------------------------------------------------------------------
    @property
    def used(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def _find(self, ptr: int, nbytes: int) -> np.ndarray:
        ptr = int(ptr)
        i = bisect.bisect_right(self._bases, ptr) - 1
        if i < 0:
            raise EmulatedFault(f"address {ptr:#x} is not in any allocation")
        base = self._bases[i]
        arr = self._arrays[base]
        off = ptr - base
        if off + nbytes > arr.nbytes or nbytes < 0:
            raise EmulatedFault(f"access [{ptr:#x}, +{nbytes}) overruns the allocation at {base:#x} "
                                f"of {arr.nbytes} bytes (offset {off})")
        return arr[off:off + nbytes]

    def view(self, ptr: int, count: int, dtype=np.float32) -> np.ndarray:
        dt = np.dtype(dtype)
        return self._find(ptr, count * dt.itemsize).view(dt)

    def cuMemAlloc(self, n):
        n = int(n)
        if self.used + n > self.total:
            return (_Err(2), None)
        raw = np.full(n + 256, 0xCD, np.uint8)    # garbage, like real device memory
        off = -raw.ctypes.data % 256              # cuMemAlloc's alignment
        arr = raw[off:off + n]                    # (keeps `raw` alive)
        base = arr.ctypes.data
        self._arrays[base] = arr
        bisect.insort(self._bases, base)
        return (_Err(OK), base)

    def cuMemFree(self, ptr):
        ptr = int(ptr)
        if ptr in self._arrays:
            del self._arrays[ptr]
            self._bases.remove(ptr)
        return (_Err(OK),)

    def cuMemGetInfo(self):
        return (_Err(OK), self.total - self.used, self.total)

    def cuMemHostAlloc(self, n, flags):
        buf = ctypes.create_string_buffer(max(1, int(n)))
        addr = ctypes.addressof(buf)
        self._host[addr] = buf
        return (_Err(OK), addr)

    def cuMemFreeHost(self, addr):
        self._host.pop(int(addr), None)
        return (_Err(OK),)

    def cuMemcpyHtoDAsync(self, dst, src, n, stream):
        self._no_capture("cuMemcpyHtoDAsync")
        d = self._find(dst, int(n))
        ctypes.memmove(d.ctypes.data, int(src), int(n))
        return (_Err(OK),)

    def cuMemcpyDtoHAsync(self, dst, src, n, stream):
        self._no_capture("cuMemcpyDtoHAsync")
        s = self._find(src, int(n))
        ctypes.memmove(int(dst), s.ctypes.data, int(n))
        return (_Err(OK),)

    def cuMemsetD8Async(self, dst, value, n, stream):
        self._no_capture("cuMemsetD8Async")
        self._find(dst, int(n))[:] = int(value)
        return (_Err(OK),)

    def _no_capture(self, what):
        if self._capture is not None:
            raise EmulatedFault(f"{what} during stream capture (it would be recorded, not run)")

    # ---- device, context, stream --------------------------------------------------------------
    def cuInit(self, flags):
        return (_Err(OK),)

    def cuDeviceGetCount(self):
        return (_Err(OK), 1)

    def cuDeviceGet(self, i):
        return (_Err(OK), int(i))

    def cuDeviceGetName(self, n, dev):
        return (_Err(OK), b"Simulated CUDA device (CPU)\0" if self.sim else b"Emulated CUDA device\0")

    def cuDeviceTotalMem(self, dev):
        return (_Err(OK), self.total)

    def cuDeviceGetAttribute(self, attr, dev):
        return (_Err(OK), {"ccmajor": self.cc[0], "ccminor": self.cc[1], "sms": self.sm_count}[attr])

    def cuDevicePrimaryCtxRetain(self, dev):
        return (_Err(OK), "ctx")

    def cuDevicePrimaryCtxRelease(self, dev):
        return (_Err(OK),)

    def cuCtxSetCurrent(self, ctx):
        return (_Err(OK),)

    def cuStreamCreate(self, flags):
        return (_Err(OK), "stream")

    def cuStreamDestroy(self, s):
        return (_Err(OK),)

    def cuStreamSynchronize(self, s):
        self._no_capture("cuStreamSynchronize")
        return (_Err(OK),)

    def cuGetErrorString(self, err):
        return (_Err(OK), _Err(err).name.encode())

    # ---- modules and launches -----------------------------------------------------------------
    def cuModuleLoadData(self, image):
        return (_Err(OK), "module")

    def cuModuleUnload(self, m):
        return (_Err(OK),)

    def cuModuleGetFunction(self, mod, name):
        name = name.decode() if isinstance(name, bytes) else str(name)
        signature(name)                                  # KeyError for an unknown kernel
        return (_Err(OK), _Fn(name))

    def cuLaunchKernel(self, fn, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        sig = signature(fn.name)
        args = []
        for i, code in enumerate(sig):
            slot = ctypes.c_uint64.from_address(int(params) + 8 * i).value
            if code == "P":
                args.append(ctypes.c_uint64.from_address(slot).value)
            elif code == "i":
                args.append(ctypes.c_int32.from_address(slot).value)
            elif code == "f":
                args.append(ctypes.c_float.from_address(slot).value)
            elif code == "d":
                args.append(ctypes.c_double.from_address(slot).value)
        if min(gx, gy, gz, bx, by, bz) < 1 or bx * by * bz > 1024 or gy > 65535 or gz > 65535:
            return (_Err(1),)
        rec = (fn.name, (int(gx), int(gy), int(gz)), (int(bx), int(by), int(bz)), args)
        if self._capture is not None:
            self._capture.append(rec)       # parameters are copied at capture, as CUDA does
        else:
            self._run(rec)
        return (_Err(OK),)

    def cuStreamBeginCapture(self, stream, mode):
        if self._capture is not None:
            return (_Err(1),)
        self._capture = []
        return (_Err(OK),)

    def cuStreamEndCapture(self, stream):
        g, self._capture = self._capture, None
        return (_Err(OK), list(g or []))

    def cuGraphInstantiate(self, graph, flags):
        return (_Err(OK), list(graph))

    def cuGraphDestroy(self, g):
        return (_Err(OK),)

    def cuGraphExecDestroy(self, g):
        return (_Err(OK),)

    def cuGraphLaunch(self, exe, stream):
        self.graph_launches += 1
        for rec in exe:
            self._run(rec)
        return (_Err(OK),)

    # ---- the kernels, in numpy ----------------------------------------------------------------
    def _run(self, rec):
        name, grid, block, args = rec
        self.launches += 1
        if self.sim is not None:
            for code, a in zip(signature(name), args):
                if code == "P" and a:
                    self._find(a, 1)              # a pointer argument outside every allocation
            return self.sim.launch(name, grid, block, args)
        fam = typed_family(name) or name
        if fam == "moe_matvec":
            return self._moe_matvec(name, grid, args)
        if fam in ("matvec", "matmul"):
            return self._matmul(name, grid, args)
        if fam == "matvec8":
            return self._matvec8(name, grid, args)
        if fam == "embed":
            return self._embed(name, grid, args)
        if name.startswith("attn_partial_"):
            return self._attn_partial(name, grid, args)
        getattr(self, "_k_" + name)(grid, *args)

    def _qtype(self, name):
        return kernel_file(name)[1]

    def _weight_rows(self, name, W, row_bytes, rows, Kc) -> np.ndarray:
        """The dequantized [rows, Kc] weight a matvec/matmul launch reads (f32)."""
        # the matvecs read whole aligned 16-byte chunks: the weight needs >= 16 bytes of padding
        raw = self._find(W, rows * row_bytes + (16 if name.startswith("matvec") else 0))
        return dequantize_rows(raw[:rows * row_bytes].reshape(rows, row_bytes), self._qtype(name), Kc)

    def _matmul(self, name, grid, args):
        W, row_bytes, x, y, rows, Kc, n = args
        if name.startswith("matvec") and n > MV_MAXN:
            raise EmulatedFault(f"{name} launched for {n} rows (max {MV_MAXN})")
        X = self.view(x, n * Kc).reshape(n, Kc)
        self.view(y, n * rows).reshape(n, rows)[...] = X @ self._weight_rows(name, W, row_bytes, rows, Kc).T

    def _moe_matvec(self, name, grid, args):
        W, row_bytes, x, route, y, N, Kc, k, per_sel = args
        n_sel = grid[1]
        rows = n_sel // k
        R = self.view(route, rows * 2 * k).reshape(rows, 2 * k)
        n_exp = int(R[:, k:].max()) + 1
        Wall = self._weight_rows(name, W, row_bytes, n_exp * N, Kc)
        X = self.view(x, (n_sel if per_sel else rows) * Kc).reshape(-1, Kc)
        Y = self.view(y, n_sel * N).reshape(n_sel, N)
        for s in range(n_sel):
            e = int(R[s // k, k + s % k])
            Y[s] = Wall[e * N:(e + 1) * N] @ X[s if per_sel else s // k]

    def _k_moe_route(self, grid, logits, out, scale, rows, n_exp, k):
        S = self.view(scale, n_exp) if scale else None
        self.view(out, rows * 2 * k).reshape(rows, 2 * k)[...] = moe_route(
            self.view(logits, rows * n_exp).reshape(rows, n_exp), k, S)

    def _k_moe_sum(self, grid, y, route, out, rows, cols, k):
        self.view(out, rows * cols).reshape(rows, cols)[...] = moe_sum(
            self.view(y, rows * k * cols).reshape(rows * k, cols), self.view(route, rows * 2 * k).reshape(rows, 2 * k))

    def _matvec8(self, name, grid, args):
        W, row_bytes, q, ds, y, rows, Kc, n = args
        if n > MV_MAXN or Kc % 32:
            raise EmulatedFault(f"{name} launched for {n} rows of {Kc} values")
        G = Kc // 32
        Q = self.view(q, n * Kc, np.int8).reshape(n, G, 32).astype(np.float32)
        D = self.view(ds, n * G * 2).reshape(n, G, 2)[..., :1]
        X = (Q * D).reshape(n, Kc)
        self.view(y, n * rows).reshape(n, rows)[...] = X @ self._weight_rows(name, W, row_bytes, rows, Kc).T

    def _k_quantize_q8(self, grid, x, q, ds, Kc, n):
        G = Kc // 32
        X = self.view(x, n * Kc).reshape(n, G, 32)
        d = np.abs(X).max(-1, keepdims=True) / np.float32(127)
        Q = np.where(d > 0, np.rint(X / np.where(d > 0, d, 1)), 0).astype(np.int8)
        self.view(q, n * Kc, np.int8).reshape(n, G, 32)[...] = Q
        out = self.view(ds, n * G * 2).reshape(n, G, 2)
        out[..., 0] = d[..., 0]
        out[..., 1] = d[..., 0] * Q.astype(np.float32).sum(-1)

    def _embed(self, name, grid, args):
        table, row_bytes, n_table, params, out, Kc, scale = args
        rows = grid[1]
        toks = self.view(params + 4 * 2, rows, np.int32).astype(np.int64)
        toks = np.clip(toks, 0, n_table - 1)
        raw = self._find(table, n_table * row_bytes).reshape(n_table, row_bytes)
        vals = dequantize_rows(raw[toks], self._qtype(name), Kc) * np.float32(scale)
        self.view(out, rows * Kc).reshape(rows, Kc)[...] = vals

    def _kv(self, name):
        return np.float16 if "_f16" in name else np.float32

    def _rows(self, params, n):
        """The row words of the parameters buffer (common.cuh): [n, 4] = position, cache slot,
        first row of the segment, rows of the segment."""
        head = self.view(params, 2, np.int32)
        if int(head[1]) < n:
            raise EmulatedFault(f"parameters for {int(head[1])} rows, launch for {n}")
        words = self.view(params, 2 + 5 * int(head[1]), np.int32)
        return words[2 + int(head[1]):].reshape(-1, 4)[:n].astype(np.int64)

    def _attn_partial(self, name, grid, args):
        q, k, v, ck, cv, part, params, H, Hkv, D, window, ring, scale, ns, round_batch, ahead = args
        dmax = int(name.rsplit("_d", 1)[1])
        if D > dmax:
            raise EmulatedFault(f"{name} launched for head dim {D}")
        if grid != (ns, H, grid[2]):
            raise EmulatedFault(f"{name}: grid {grid} does not match n_split {ns} / heads {H}")
        R = grid[2]
        kvt = self._kv(name)
        rows = self._rows(params, R)
        slots = int(rows[:, 1].max()) + 1
        Q = self.view(q, R * H * D).reshape(R, H, D)
        Kb = self.view(k, R * Hkv * D).reshape(R, Hkv, D)
        Vb = self.view(v, R * Hkv * D).reshape(R, Hkv, D)
        CKa = self.view(ck, slots * ring * Hkv * D, kvt).reshape(slots, ring, Hkv, D)
        CVa = self.view(cv, slots * ring * Hkv * D, kvt).reshape(slots, ring, Hkv, D)
        P = self.view(part, R * H * ns * (D + 2)).reshape(R, H, ns, D + 2)
        rep = H // Hkv
        A = self.view(ahead, R) if ahead else None
        for r in range(R):
            p, b0 = int(rows[r, 0]), int(rows[r, 2])
            past = bool(round_batch & 2)          # PastAttention: keys before p, all cached
            pos0 = p + 1 if past else p - (r - b0)   # the row's segment: rows b0 .., positions pos0 ..
            CK, CV = CKa[rows[r, 1]], CVa[rows[r, 1]]
            lo = max(0, p - window + 1) if window > 0 else 0
            hi = p if A is None else p + min(max(int(A[r]), 0), b0 + int(rows[r, 3]) - 1 - r)
            hi = p - 1 if past else hi
            L = hi - lo + 1
            chunk = (L + ns - 1) // ns
            for h in range(H):
                kvh = h // rep
                for s in range(ns):
                    c0 = lo + s * chunk
                    c1 = min(hi + 1, c0 + chunk)
                    if c1 <= c0:
                        P[r, h, s, 0], P[r, h, s, 1], P[r, h, s, 2:] = -np.inf, 0.0, 0.0
                        continue
                    kp = np.arange(c0, c1)
                    fresh = kp >= pos0
                    kb, vb = Kb[np.clip(b0 + kp - pos0, 0, R - 1), kvh], Vb[np.clip(b0 + kp - pos0, 0, R - 1), kvh]
                    if round_batch & 1:      # earlier batch rows as the f16 cache holds them
                        early = (kp < p)[:, None]
                        kb = np.where(early, kb.astype(np.float16).astype(np.float32), kb)
                        vb = np.where(early, vb.astype(np.float16).astype(np.float32), vb)
                    keys = np.where(fresh[:, None], kb, CK[kp % ring, kvh].astype(np.float32))
                    vals = np.where(fresh[:, None], vb, CV[kp % ring, kvh].astype(np.float32))
                    sc = (keys @ Q[r, h]) * np.float32(scale)
                    m = sc.max()
                    e = np.exp(sc - m)
                    P[r, h, s, 0], P[r, h, s, 1], P[r, h, s, 2:] = m, e.sum(), e @ vals

    def _k_attn_combine(self, grid, part, out, H, D, ns):
        R = grid[1]
        P = self.view(part, R * H * ns * (D + 2)).reshape(R, H, ns, D + 2)
        O = self.view(out, R * H * D).reshape(R, H, D)
        m = P[..., 0]
        M = m.max(axis=-1, keepdims=True)
        f = np.where(np.isneginf(m), 0.0, np.exp(m - M)).astype(np.float32)
        S = (P[..., 1] * f).sum(-1)
        O[...] = (P[..., 2:] * f[..., None]).sum(-2) / S[..., None]

    def _k_kv_store(self, grid, k, v, ck, cv, params, n, cols, ring, dtype):
        rows = self._rows(params, n)
        slots = int(rows[:, 1].max()) + 1
        Kb = self.view(k, n * cols).reshape(n, cols)
        Vb = self.view(v, n * cols).reshape(n, cols)
        CK = self.view(ck, slots * ring * cols, dtype).reshape(slots * ring, cols)
        CV = self.view(cv, slots * ring * cols, dtype).reshape(slots * ring, cols)
        for r in range(n):
            p, slot, b0, nseg = (int(x) for x in rows[r])
            if r - b0 + ring < nseg:
                continue          # a later row of the sequence takes this cache row
            CK[slot * ring + p % ring] = Kb[r]
            CV[slot * ring + p % ring] = Vb[r]

    def _k_kv_store_f16(self, grid, *a):
        self._k_kv_store(grid, *a, np.float16)

    def _k_kv_store_f32(self, grid, *a):
        self._k_kv_store(grid, *a, np.float32)

    def _k_rmsnorm(self, grid, x, out, w, cols, group, eps):
        rows = grid[1]
        if grid[0] != cols // group:
            raise EmulatedFault(f"rmsnorm grid {grid} for {cols} columns in groups of {group}")
        weight = self.view(w, group) if w else None
        self.view(out, rows * cols).reshape(rows, cols)[...] = rms_norm(
            self.view(x, rows * cols).reshape(rows, cols), weight, eps, group)

    def _k_rope(self, grid, x, ff, params, rows, cols, head_dim, n_rot, base):
        positions = self._rows(params, rows)[:, 0]
        factors = self.view(ff, n_rot // 2) if ff else None
        X = self.view(x, rows * cols).reshape(rows, cols)        # in place, as the kernel
        X[...] = rope(X, positions, head_dim, n_rot, base, factors)

    def _ew2(self, a, b, out, n, f):
        res = f(self.view(a, n), self.view(b, n))
        self.view(out, n)[...] = res

    def _k_add(self, grid, a, b, out, n):
        self._ew2(a, b, out, n, lambda p, q: p + q)

    def _k_take_rows(self, grid, x, src, take, out, rows, cols):
        X, S = self.view(x, rows * cols).reshape(rows, cols), self.view(src, rows * cols).reshape(rows, cols)
        T = self.view(take, rows).reshape(rows, 1)
        self.view(out, rows * cols).reshape(rows, cols)[...] = np.where(T != 0, S, X)

    def _k_mul(self, grid, a, b, out, n):
        self._ew2(a, b, out, n, lambda p, q: p * q)

    def _k_gelu_mul(self, grid, a, b, out, n):
        self._ew2(a, b, out, n, lambda p, q: gelu_tanh(p) * q)

    def _k_gelu(self, grid, x, out, n):
        self.view(out, n)[...] = gelu_tanh(self.view(x, n))

    def _k_scale(self, grid, x, out, n, s, by):
        y = self.view(x, n) * np.float32(s)
        if by:
            y = y * self.view(by, 1)[0]
        self.view(out, n)[...] = y

    def _k_softcap(self, grid, x, out, n, cap):
        cap = np.float32(cap)
        self.view(out, n)[...] = cap * np.tanh(self.view(x, n) / cap)

    def _k_slice(self, grid, x, out, rows, cols, xcols, row0, col0):
        X = self.view(x, (row0 + rows) * xcols)
        X = X.reshape(row0 + rows, xcols)
        self.view(out, rows * cols).reshape(rows, cols)[...] = X[row0:row0 + rows, col0:col0 + cols]
