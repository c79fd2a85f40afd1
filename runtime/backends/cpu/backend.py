"""The native CPU backend (`--backend cpu`): the op list run by C kernels on the GGUF blocks.

Weights stay in the memory map in their block layout; each graph is lowered once into a command
array (lowering.py) and a token is one call into the library, which a persistent thread pool
walks. f16 KV caches by default (as the GPU backends), f32 on request.

Activation precision (docs/design.md, "Precision modes"): `exact` multiplies float32 activations
with the exactly decoded weights; `q8` quantizes each activation row once per matmul to int8 as
llama.cpp does (Q8_0 / Q8_1 / Q8_K, shaders/cpu/q8.h) and takes integer dot products with the
weight codes; `i16` quantizes to int16 precision (per 32 values, as two int8 planes) on the same
integer kernels - near-exact; `auto` picks i16 for a wide model's quantized weights where this
build has integer dot products (activation_path). The integer paths read Q4_0 / Q4_K / Q6_K
weights repacked 8 rows at a time (repack.c), made when a graph first uses them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ... import ops
from ...errors import G4rtError
from ...gguf.quant_types import QT, dequantize_rows
from ..base import Backend, CompiledGraph, OpObserver, WeightSource
from . import native as N
from .lowering import lower

PAGE = 4096


def physical_cores() -> int:
    """Cores this process may use, counting SMT siblings once (Linux), else os.cpu_count()."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    try:
        for cpu in allowed:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
    except OSError:
        return max(1, len(allowed))
    return max(1, min(len(cores), len(allowed)))


def default_threads() -> int:
    env = os.environ.get("G4RT_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise G4rtError(f"G4RT_THREADS={env!r} is not a number") from None
    return physical_cores()


#: --precision choices of the native CPU backend
PRECISIONS = ("auto", "exact", "i16", "q8")
#: weight types with an integer-activation (q8) kernel; float weights always run exact
Q8_TYPES = frozenset({2, 3, 6, 7, 8, 12, 13, 14})   # Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K
#: builds whose integer kernels are faster than their exact ones (auto picks i16 there); the
#: portable build's scalar integer loops are not (docs/benchmarks/cpu-native.md)
AUTO_INT_ISAS = frozenset({"avx512", "avx2"})
#: what auto leaves exact, measured (Zen 4, docs/benchmarks/cpu-native.md): Q8_0, whose exact
#: kernel already streams at the memory's speed, and every matrix of a narrow model - one with no
#: quantized matrix of at least AUTO_WIDE rows and inputs (the Gemma 3 270M: 640 wide) - where the
#: per-row quantization costs more than the integer dots save and the exact tiled GEMM prefills
#: faster. The choice is per model, so a graph runs one kind of path throughout.
AUTO_EXACT_TYPES = frozenset({8})
AUTO_WIDE = 2048
_MODES = {"q8": N.ACT_Q8, "i16": N.ACT_I16}


def is_wide(specs) -> bool:
    """Whether a model's weights make auto take the integer path (see AUTO_WIDE)."""
    return any(int(s.qtype) in Q8_TYPES and s.rows >= AUTO_WIDE and s.cols >= AUTO_WIDE for s in specs)


def activation_path(precision: str, isa: str, qtype: int, wide: bool = True) -> int:
    """The g4_cmd.act mode of a matmul on `qtype` weights: N.ACT_EXACT, N.ACT_Q8 or N.ACT_I16.
    auto: i16 - it meets every fixture's bar as exact does (q8, llama.cpp's rounding, lands
    around the bars, docs/design.md) - where the build has integer dots and it measured faster
    (a wide model, is_wide), else exact."""
    if int(qtype) not in Q8_TYPES or precision == "exact":
        return N.ACT_EXACT
    if precision in _MODES:
        return _MODES[precision]
    if isa in AUTO_INT_ISAS and int(qtype) not in AUTO_EXACT_TYPES and wide:
        return N.ACT_I16
    return N.ACT_EXACT


#: bytes of one 8-row group per 256 inputs in repack.c's layouts (g4_repack8_group_bytes)
_REPACK_GROUP_PER_256 = {2: 8 * 144, 12: 1184, 14: 1680}      # Q4_0, Q4_K, Q6_K


def repacked_size(qtype: int, rows: int, cols: int) -> int:
    """Bytes of the 8-row repacked copy repack.c makes of a rows x cols matrix (0: not repacked;
    tests check it against the library's g4_repack8_bytes)."""
    per = _REPACK_GROUP_PER_256.get(int(qtype))
    if per is None or rows < 8:
        return 0
    return (rows + 7) // 8 * per * cols // 256


def repackable_experts(spec: ops.WeightSpec) -> bool:
    """A 3-D expert tensor repacks as one matrix when no 8-row group spans two experts."""
    return not spec.experts or (spec.rows // spec.experts) % 8 == 0


def repack_enabled() -> bool:
    """$G4RT_CPU_REPACK=0 keeps the integer paths on the GGUF rows (no copy, less RAM)."""
    return os.environ.get("G4RT_CPU_REPACK", "1") != "0"


def path_name(act: int) -> str:
    """"exact", "q8" or "i16" for a g4_cmd.act (the repacked flag aside)."""
    return {N.ACT_EXACT: "exact", N.ACT_Q8: "q8", N.ACT_I16: "i16"}[act & (N.ACT_Q8 | N.ACT_I16)]


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self, threads: Optional[int] = None, kv_dtype: str = "f16", isa: Optional[str] = None,
                 precision: str = "auto"):
        if kv_dtype not in ("f16", "f32"):
            raise G4rtError(f"kv_dtype must be 'f16' or 'f32', got {kv_dtype!r}")
        if threads is not None and int(threads) < 1:
            raise G4rtError(f"--threads must be at least 1, got {threads}")
        if precision not in PRECISIONS:
            raise G4rtError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.kv_dtype = kv_dtype
        self.precision = precision
        self.lib = N.load(isa)
        self.pool = N.Pool(self.lib, threads or default_threads())
        self.threads = self.pool.threads
        self.specs: dict[str, ops.WeightSpec] = {}
        self.source: Optional[WeightSource] = None
        self.caches: dict[str, np.ndarray] = {}
        self.inputs: dict[str, np.ndarray] = {}
        self._raw: dict[str, np.ndarray] = {}
        self._vectors: dict[str, np.ndarray] = {}
        self._repacked: dict[str, np.ndarray] = {}
        self.released_bytes = 0             # mapped weight pages dropped for their repacked copies
        self._wide = True                   # is_wide() of the loaded weights

    @property
    def device_name(self) -> str:
        return f"native CPU ({self.lib.isa}, {self.threads} thread{'s' if self.threads != 1 else ''})"

    def act_for(self, spec: ops.WeightSpec) -> int:
        """The activation path (N.ACT_*) a matmul on this weight takes on this backend."""
        return activation_path(self.precision, self.lib.isa, spec.qtype, self._wide)

    def repacked(self, name: str) -> Optional[np.ndarray]:
        """The 8-row repacked copy of an integer-path matmul's weight where this build has a
        kernel for it (made once, on first use; None otherwise). The GGUF rows stay mapped for
        the rest (embedding lookups, the exact path)."""
        spec = self.specs[name]
        if (self.act_for(spec) == N.ACT_EXACT or not self.lib.repacks(spec.qtype) or not repack_enabled()
                or repacked_size(spec.qtype, spec.rows, spec.cols) == 0 or not repackable_experts(spec)):
            return None
        w = self._repacked.get(name)
        if w is None:
            w = self._repacked[name] = self.lib.repack8(spec.qtype, self.weight_raw(name))
            # the copy takes the mapped rows' place in RAM (llama.cpp's repack buffer does the
            # same); a later reader of the rows (an embedding lookup of a tied head) faults
            # in only the pages it reads
            release = getattr(self.source, "release_weight", None)
            if release is not None:
                self.released_bytes += release(name)
        return w

    def precision_summary(self) -> str:
        """e.g. "q8 (Q4_0, Q6_K), exact (F32)" for the matrix weights loaded; the mode alone
        before any are."""
        paths: dict[str, list[str]] = {}
        for spec in self.specs.values():
            if spec.rows > 1 and spec.cols > 1:
                path = path_name(self.act_for(spec))
                names = paths.setdefault(path, [])
                if QT(spec.qtype).name not in names:
                    names.append(QT(spec.qtype).name)
        if not paths:
            return self.precision
        return ", ".join(f"{path} ({', '.join(sorted(names))})" for path, names in sorted(paths.items(), reverse=True))

    # ---- weights, caches, hybrid inputs ---------------------------------------------------------
    def load_weights(self, specs, source, progress: Optional[Callable[[int], None]] = None) -> None:
        """Weights stay in the memory map; touching one byte per page brings them in from disk
        now (with real progress) rather than during the first token."""
        self.specs = dict(specs)
        self.source = source
        self._wide = is_wide(self.specs.values())
        self._raw.clear()               # a new source: compiled graphs keep their own references
        self._vectors.clear()
        self._repacked.clear()
        self.released_bytes = 0
        for name in specs:
            raw = self.weight_raw(name)
            if raw.size:
                flat = raw.reshape(-1)
                int(flat[::PAGE].sum(dtype=np.uint64))
            if progress:
                progress(int(raw.nbytes))

    def weight_raw(self, name: str) -> np.ndarray:
        w = self._raw.get(name)
        if w is None:
            if self.source is None or name not in self.specs:
                raise G4rtError(f"weight {name!r} was not loaded on the CPU backend")
            w = np.asarray(self.source.weight_bytes(name))
            if w.dtype != np.uint8 or not w.flags.c_contiguous:
                w = np.ascontiguousarray(w).view(np.uint8)
            self._raw[name] = w
        return w

    def vector(self, name: str) -> np.ndarray:
        """A small weight (norm, RoPE factors, scale) as contiguous float32."""
        v = self._vectors.get(name)
        if v is None:
            spec = self.specs[name]
            v = np.ascontiguousarray(dequantize_rows(self.weight_raw(name), spec.qtype, spec.cols).reshape(-1))
            self._vectors[name] = v
        return v

    def allocate_caches(self, caches) -> None:
        dt = np.float16 if self.kv_dtype == "f16" else np.float32
        self.caches = {c.name: np.zeros((c.slots * c.rows, c.cols), dt) for c in caches.values()}

    def declare_inputs(self, shapes: dict[str, tuple[int, int]]) -> None:
        for name, (rows, cols) in shapes.items():
            if name not in self.inputs:
                self.inputs[name] = np.zeros((rows, cols), np.float32)

    def declare_kept(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Persistent f32 copies a hybrid piece leaves for a later one (written by Slice)."""
        self.declare_inputs(shapes)

    def write_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        for name, a in arrays.items():
            np.copyto(self.inputs[name], np.asarray(a, np.float32).reshape(self.inputs[name].shape))

    def compile(self, graph: ops.Graph) -> "CpuGraph":
        return CpuGraph(self, graph)

    def close(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.close()


def _aligned(nbytes: int) -> np.ndarray:
    raw = np.zeros(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + nbytes]


class CpuGraph(CompiledGraph):
    def __init__(self, backend: CpuBackend, graph: ops.Graph):
        self.backend, self.graph = backend, graph
        missing = set(graph.weights) - set(backend.specs)
        if missing:
            raise G4rtError(f"weights not loaded: {', '.join(sorted(missing))}")
        self.low = lower(graph, backend.weight_raw, backend.vector, backend.caches, backend.inputs,
                         cache_f16=backend.kv_dtype == "f16", act_for=backend.act_for,
                         repacked=backend.repacked)
        lib, nth = backend.lib, backend.threads
        for i, cmd in enumerate(self.low.cmds):
            if not lib.cmd_valid(cmd):
                raise G4rtError(f"CPU backend: op {i} ({graph.ops[i].kind}) cannot run on this build")
        ws = max([lib.scratch_bytes(c, nth) for c in self.low.cmds] + [64])
        ws = (ws + 63) // 64 * 64
        shared = max([lib.shared_bytes(c, nth) for c in self.low.cmds] + [64])
        self._ws, self._shared = _aligned(ws * nth), _aligned(shared)
        ex = N.G4Exec()
        ex.n_tokens = graph.n_tokens
        ex.tokens = self.low.tokens.ctypes.data
        ex.ws, ex.ws_bytes = self._ws.ctypes.data, ws
        ex.shared, ex.shared_bytes = self._shared.ctypes.data, shared
        self.ex = ex
        self.out = self.low.buffers[graph.output]
        self._slots = ops.graph_slots(graph)

    def run(self, tokens: np.ndarray, segments: Sequence[ops.Segment],
            observer: Optional[OpObserver] = None) -> np.ndarray:
        n = self.graph.n_tokens
        tokens = np.asarray(tokens).reshape(-1)
        if len(tokens) != n:
            raise G4rtError(f"graph for {n} tokens got {len(tokens)}")
        self.low.tokens[:] = tokens
        segs = ops.placement(segments, n, self._slots)
        if len(segs) == 1 and segs[0].slot == 0:
            self.ex.pos0, self.ex.n_segs = segs[0].pos0, 0     # one sequence: the plain path
        else:
            self._segs = np.array([(s.row0, s.rows, s.pos0, s.slot) for s in segs], np.int32)
            self.ex.pos0, self.ex.n_segs, self.ex.segs = segs[0].pos0, len(segs), self._segs.ctypes.data
        pool, cmds = self.backend.pool, self.low.cmds
        if observer is None:
            t0 = time.perf_counter()
            pool.run(cmds, 0, len(cmds), self.ex)
            self.last_replay_s = time.perf_counter() - t0      # native time (bench: Python overhead)
            return self.out
        be = self.backend
        for i, op in enumerate(self.graph.ops):
            pool.run(cmds, i, i + 1, self.ex)
            if isinstance(op, ops.KvStore):
                observer(i, op, be.caches[op.cache_k].astype(np.float32))
            else:
                observer(i, op, self.low.buffers[op.out].copy())
        return self.out

    def read_buffers(self, names) -> dict[str, np.ndarray]:
        """Copies of buffers after the last run (the hybrid's hand-over)."""
        return {nm: np.array(self.low.buffers[nm], np.float32) for nm in names}


__all__ = ["CpuBackend", "CpuGraph", "PRECISIONS", "activation_path", "default_threads", "is_wide", "path_name",
           "physical_cores", "repack_enabled", "repacked_size"]
