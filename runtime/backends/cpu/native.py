"""ctypes view of the native CPU library (shaders/cpu/g4cpu.h): the command and exec structs,
the loaded library with its signatures, and the thread pool."""

from __future__ import annotations

import ctypes
import functools
from typing import Optional

import numpy as np

from ...errors import G4rtError
from . import compiler

# Op kinds and GGML type ids, as in g4cpu.h.
OP_EMBED, OP_MATMUL, OP_RMSNORM, OP_ROPE, OP_ATTENTION, OP_KV_STORE, OP_GELU_MUL, OP_GELU, \
    OP_ADD, OP_MUL, OP_SCALE, OP_SOFTCAP, OP_SLICE, OP_MOE_ROUTE, OP_MOE_MATMUL, OP_MOE_SUM, \
    OP_LAYERNORM, OP_ADD_VECTOR, OP_GATHER_ADD, OP_TAKE_ROWS = range(1, 21)
# The vision encoder's ops (g4cpu.h, vit_ops.c).
OP_CLAMP, OP_ROPE2D, OP_FULL_ATTENTION, OP_POOL_ROWS, OP_STANDARDIZE = range(40, 45)
# Activation paths of a matmul (g4_cmd.act).
ACT_EXACT, ACT_Q8, ACT_I16, ACT_REPACKED, ACT_ROW_EXACT = 0, 1, 2, 4, 8

_p = ctypes.c_void_p


class G4Cmd(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in (
        "op", "qtype", "rows", "cols", "in_cols", "row0", "col0", "group", "n_rot", "n_head",
        "n_kv_head", "window", "cache_rows", "cache_f16")] + [
        ("w_rows", ctypes.c_int64), ("w_row_bytes", ctypes.c_int64),
        ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("cap", ctypes.c_float),
        ("act", ctypes.c_int32),
        ("out", _p), ("a", _p), ("b", _p), ("c", _p), ("w", _p), ("freqs", _p),
        ("cache_k", _p), ("cache_v", _p), ("d", _p)]


class G4Exec(ctypes.Structure):
    _fields_ = [("pos0", ctypes.c_int32), ("n_tokens", ctypes.c_int32), ("tokens", _p),
                ("ws", _p), ("ws_bytes", ctypes.c_size_t), ("shared", _p),
                ("shared_bytes", ctypes.c_size_t), ("n_segs", ctypes.c_int32), ("segs", _p),
                ("in_segment", ctypes.c_int32), ("pool", _p), ("nth", ctypes.c_int),
                ("cmd_index", ctypes.c_int32), ("counters", _p)]


class NativeLib:
    """The compiled kernel library for one ISA."""

    def __init__(self, isa: Optional[str] = None):
        self.isa = compiler.resolve_isa(isa)
        self.path = compiler.build(self.isa)
        try:
            lib = ctypes.CDLL(str(self.path))
        except OSError as e:
            raise G4rtError(f"cannot load the CPU kernel library {self.path}: {e}") from None
        lib.g4_isa.restype = ctypes.c_char_p
        lib.g4_pool_create.argtypes = [ctypes.c_int]
        lib.g4_pool_create.restype = _p
        lib.g4_pool_free.argtypes = [_p]
        lib.g4_pool_threads.argtypes = [_p]
        lib.g4_run.argtypes = [_p, ctypes.POINTER(G4Cmd), ctypes.c_int32, ctypes.c_int32,
                               ctypes.POINTER(G4Exec)]
        lib.g4_run.restype = ctypes.c_int
        for fn in ("g4_scratch_bytes", "g4_shared_bytes"):
            getattr(lib, fn).argtypes = [ctypes.POINTER(G4Cmd), ctypes.c_int]
            getattr(lib, fn).restype = ctypes.c_size_t
        lib.g4_cmd_valid.argtypes = [ctypes.POINTER(G4Cmd)]
        lib.g4_q8_dot.restype = ctypes.c_char_p
        lib.g4_repack8_bytes.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        lib.g4_repack8_bytes.restype = ctypes.c_size_t
        lib.g4_repack8.argtypes = [ctypes.c_int, _p, ctypes.c_int64, ctypes.c_int64, _p]
        lib.g4_q8_repacked_kernel.argtypes = [ctypes.c_int]
        for fn in ("g4_sizeof_cmd", "g4_sizeof_exec"):
            getattr(lib, fn).restype = ctypes.c_size_t
        if (lib.g4_sizeof_cmd(), lib.g4_sizeof_exec()) != (ctypes.sizeof(G4Cmd), ctypes.sizeof(G4Exec)):
            raise G4rtError("the CPU kernel library's structs do not match native.py (g4cpu.h changed?)")
        self.lib = lib
        #: how the q8 kernels take integer dots: "vnni", "avxvnni", "maddubs" or "scalar"
        self.q8_dot = lib.g4_q8_dot().decode()
        if lib.g4_isa().decode() != self.isa:
            raise G4rtError(f"the CPU kernel library was built for {lib.g4_isa().decode()}, "
                            f"not {self.isa} (compiler flags not honoured?)")

    def repacks(self, qtype: int) -> bool:
        """Whether q8 matmuls on `qtype` run on 8-row repacked weights in this build."""
        return bool(self.lib.g4_q8_repacked_kernel(int(qtype)))

    def repack8(self, qtype: int, raw: np.ndarray) -> np.ndarray:
        """The 8-row repacked copy (repack.c) of GGUF rows raw (uint8 [rows, row_bytes])."""
        rows, rb = raw.shape
        n = int(self.lib.g4_repack8_bytes(int(qtype), rows, rb))
        out = np.empty(n + 64, np.uint8)
        out = out[(-out.ctypes.data) % 64:][:n]
        if self.lib.g4_repack8(int(qtype), raw.ctypes.data, rows, rb, out.ctypes.data) != 0:
            raise G4rtError(f"the CPU kernels cannot repack type {qtype}")
        return out

    def cmd_valid(self, cmd: G4Cmd) -> bool:
        return bool(self.lib.g4_cmd_valid(ctypes.byref(cmd)))

    def scratch_bytes(self, cmd: G4Cmd, nth: int) -> int:
        return int(self.lib.g4_scratch_bytes(ctypes.byref(cmd), nth))

    def shared_bytes(self, cmd: G4Cmd, nth: int) -> int:
        return int(self.lib.g4_shared_bytes(ctypes.byref(cmd), nth))


def load(isa: Optional[str] = None) -> NativeLib:
    """The library for `isa` (None: $G4RT_CPU_ISA or the best path), built and loaded once."""
    return _load(compiler.resolve_isa(isa))


@functools.lru_cache(maxsize=None)
def _load(isa: str) -> NativeLib:
    return NativeLib(isa)


class Pool:
    """A persistent pool of `threads` threads (the caller counts as one)."""

    def __init__(self, lib: NativeLib, threads: int):
        self.lib = lib
        self.handle = lib.lib.g4_pool_create(int(threads))
        if not self.handle:
            raise G4rtError("could not create the CPU thread pool")
        self.threads = int(lib.lib.g4_pool_threads(self.handle))

    def run(self, cmds, begin: int, end: int, ex: G4Exec) -> None:
        rc = self.lib.lib.g4_run(self.handle, cmds, begin, end, ctypes.byref(ex))
        if rc != 0:
            raise G4rtError(f"the CPU backend cannot run command {-2 - rc} (unknown op or weight "
                            f"type, or its kernel is missing from the build)" if rc <= -2
                            else "the CPU backend could not run the graph")

    def close(self) -> None:
        if self.handle:
            self.lib.lib.g4_pool_free(self.handle)
            self.handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
