"""The op-conformance suite (as llama.cpp's test-backend-ops): every op of the op list on every
backend this machine has, against the numpy reference (the oracle), on fresh random inputs.

Backends under test (`TARGETS`; an absent one is skipped with the reason):
- cpu-avx512 / cpu-avx2 / cpu-scalar: the native C kernels, each code path the CPU runs, at
  several thread counts;
- vulkan: GLSL through Kompute (lavapipe on a machine without a GPU), the barrier-free "cpu"
  kernels and the subgroup / tiled "gpu" ones;
- cuda: a CUDA device, or the stand-in G4RT_CUDA_EMULATE names (`=sim`: the whole suite on the
  simulator); cuda-emulated: the host code on the emulated driver with numpy kernels (a subset);
  cuda-sim: the kernel sources on the CPU simulator.

The cases and their bounds live in op_cases.py: graphs with embedded inputs bounded by REL (CPU
and Vulkan), and single ops on seeded inputs bounded against the reference and the exact
product (CUDA). docs/ops-support.md (scripts/ops_support_table.py) lists the ops each backend
lowers; the last test keeps it current.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from conftest import vulkan_skip_reason
from g4rt import ops
from g4rt.backends.numpy_ref import NumpyBackend
from g4rt.gguf.quant_types import block_geometry
from op_cases import (ALL_TYPES, ATTN_AHEAD_CASES, ATTN_CASES, INT8_TYPES, KV_CASES, LAYERNORM_CASES,
                      LONG_ROW_TYPES, MATMUL_BATCHES, REL, RMSNORM_CASES, ROPE_CASES, Case, attention_case,
                      check_add_vector_gather_take, check_attention, check_attention_ahead, check_take_rows, check_elementwise,
                      check_embed, check_kv_store, check_layernorm, check_matmul, check_matvec8, check_replay,
                      check_rmsnorm, check_rope, elementwise_case, long_cache_decode, random_weight, rel_err, rng,
                      run_both, run_compiled)

REPO = Path(__file__).resolve().parents[1]
THREADS = [1, 2, 3]


# ---- the backends under test -------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    name: str                                  # the test id's first part
    family: str                                # "cpu" | "vulkan" | "cuda"
    skip: Optional[str]                        # why it cannot run here (None: it can)
    factory: Callable[..., object]             # factory(kv_dtype, **options) -> a Backend
    recording: Callable[[object], object] = lambda graph: None   # what replay must not rebuild

    def make(self, kv_dtype: str = "f16", **options):
        return self.factory(kv_dtype, **options)

    def maker(self, **options) -> Callable[[str], object]:
        """make_backend(kv_dtype), the factory the seeded checks take."""
        return lambda kv_dtype: self.factory(kv_dtype, **options)


def _cpu_targets() -> list[Target]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        skip, present = "no C compiler (cc/gcc/clang): the native CPU backend cannot be built", []
    else:
        from g4rt.backends.cpu.compiler import supported_isas
        skip, present = None, supported_isas()

    def factory(isa):
        def make(kv_dtype, threads=2):
            from g4rt.backends.cpu import CpuBackend
            return CpuBackend(threads=threads, kv_dtype=kv_dtype, isa=isa)
        return make
    return [Target(f"cpu-{isa}", "cpu", skip or (None if isa in present else f"this CPU does not run the {isa} code path"),
                   factory(isa), recording=lambda g: g.low.cmds)
            for isa in ("avx512", "avx2", "scalar")]


def _vulkan_target() -> Target:
    def make(kv_dtype, **options):
        from g4rt.backends.vulkan import VulkanBackend
        return VulkanBackend(kv_dtype=kv_dtype, **options)
    skip = "inside the sanitizer run" if _SANITIZE_RUN else vulkan_skip_reason()
    return Target("vulkan", "vulkan", skip, make, recording=lambda g: g.seq)


def _cuda_targets() -> list[Target]:
    from g4rt.backends.cuda.driver import cuda_available
    from g4rt.testing.cuda import driver_from_env

    def make(driver):
        def backend(kv_dtype, **options):
            from g4rt.backends.cuda.backend import CudaBackend
            return CudaBackend(driver=driver(), kv_dtype=kv_dtype, **options)
        return backend

    def emulated(kernels):
        def driver():
            from g4rt.testing.cuda.emulated_driver import EmulatedDriver
            return EmulatedDriver(kernels=kernels)
        return driver

    from g4rt.testing.cuda.simulator import sim_available
    if _SANITIZE_RUN:
        return [Target(name, "cuda", "inside the sanitizer run", make(driver_from_env))
                for name in ("cuda", "cuda-emulated", "cuda-sim")]
    ok, reason = cuda_available(driver=driver_from_env())
    sim_ok, sim_reason = sim_available()
    return [Target("cuda", "cuda", None if ok else f"no CUDA device: {reason}", make(driver_from_env)),
            Target("cuda-emulated", "cuda", None, make(emulated("numpy"))),
            Target("cuda-sim", "cuda", None if sim_ok else (sim_reason or "CUDA simulator unavailable"),
                   make(emulated("sim")))]


# inside the sanitizer run (the last tests) only the native CPU cases run: no device is opened
_SANITIZE_RUN = os.environ.get("G4RT_SANITIZE_RUN") == "1"
CPU = _cpu_targets()
VULKAN = _vulkan_target()
CUDA, CUDA_EMULATED, CUDA_SIM = _cuda_targets()
TARGETS = [*CPU, VULKAN, CUDA, CUDA_EMULATED, CUDA_SIM]


def _id(value) -> str:
    if isinstance(value, QT):
        return value.name
    if isinstance(value, dict):
        return "-".join(f"{k}{v}" for k, v in value.items()) or "default"
    return str(value)


def on(names: str, *groups):
    """Parametrize a test over (target, case) pairs: `names` the case's fields after `target`,
    each group a (targets, cases) pair. Each pair is named "target-case" and skipped with the
    reason where its target is absent."""
    n_fields = len(names.split(","))
    params = []
    for targets, cases in groups:
        for t in targets:
            for case in cases:
                case = case if isinstance(case, tuple) else (case,)
                assert len(case) == n_fields, (names, case)
                marks = [pytest.mark.skipif(t.skip is not None, reason=t.skip or "")]
                params.append(pytest.param(t, *case, marks=marks, id="-".join([t.name, *map(_id, case)])))
    return pytest.mark.parametrize("target," + names, params)


def chunk_cap(cap: int) -> int:
    """A Vulkan max_buffer_bytes: `cap` rounded up to the 256-byte storage alignment."""
    return -(-cap // 256) * 256


def threads(*counts):
    return [{"threads": t} for t in counts]


KERNELS = [{"kernels": "cpu"}, {"kernels": "gpu"}]


# ==== graphs with embedded inputs (native CPU, Vulkan) ===========================================
# ---- matmul: every type, decode (1 row), small batches and prefill tiles, odd rows -------------
def _every_type(variants):
    return [(q, n, v) for q in ALL_TYPES for n in (1, 3, 5, 37) for v in variants]


@on("qtype,n,options", (CPU, _every_type(threads(*THREADS))), ([VULKAN], _every_type(KERNELS)))
def test_matmul_every_type(target, qtype, n, options):
    block, size = block_geometry(qtype)
    cols = 512 if block == 256 else (96 if block == 32 else 72)     # 72: float rows with a tail
    rows = 77
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, cols)))
    c.src.add_raw("w", qtype, random_weight(qtype, rows, cols), cols)
    c.ops.append(ops.MatMul(c.buf("y", rows), x, "w"))
    if target.family == "vulkan":
        # ~9 weight rows per buffer: several chunks, one dispatch each, the last one partial (the
        # same cap splits the activations into row bands)
        options = dict(options, max_buffer_bytes=chunk_cap(max(32 * cols, 9 * (cols // block) * size)))
    a, b = run_both(c, "y", target.make(**options))
    assert rel_err(b, a) < REL["matmul"], (options, rel_err(b, a))


# K = 3840 (the 12B's width), 161 output rows: many K blocks, ragged row chunks; K = 15360 (the
# 12B's ffn_down): loops long enough that a truncating driver would show
LONG_ROWS = [(q, 3840, 161, n) for q in (QT.Q4_0, QT.Q4_K, QT.Q6_K, QT.F16) for n in (1, 70)] + \
    [(QT.Q4_0, 15360, 70, n) for n in (1, 40)]


@on("qtype,K,rows,n,options",
    (CPU, [(*case, {"threads": 2}) for case in LONG_ROWS]),
    ([VULKAN], [(*case, k) for case in LONG_ROWS for k in KERNELS]))
def test_matmul_long_rows(target, qtype, K, rows, n, options):
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, K)))
    c.src.add_raw("w", qtype, random_weight(qtype, rows, K), K)
    c.ops.append(ops.MatMul(c.buf("y", rows), x, "w"))
    a, b = run_both(c, "y", target.make(**options))
    assert rel_err(b, a) < REL["matmul"] * 2


@on("scale", ([*CPU, VULKAN], [0.0, 1e4, 1e15]))
def test_matmul_zero_and_huge_activations(target, scale):
    n, K, rows = 2, 512, 33
    for qtype in (QT.Q4_0, QT.Q4_K, QT.Q6_K, QT.Q8_0, QT.F32):
        c = Case(n)
        x = c.input("x", rng.standard_normal((n, K)) * scale)
        c.src.add_raw("w", qtype, random_weight(qtype, rows, K), K)
        c.ops.append(ops.MatMul(c.buf("y", rows), x, "w"))
        a, b = run_both(c, "y", target.make())
        assert np.all(np.isfinite(b))
        if scale == 0.0:
            assert np.all(b == 0)
        else:
            assert rel_err(b, a) < REL["matmul"], qtype


@on("qtype", ([*CPU, VULKAN], ALL_TYPES))
def test_embed_every_type(target, qtype):
    """Vulkan: the table split into more than three buffers (chunk edges among the tokens)."""
    block, size = block_geometry(qtype)
    cols = 512 if block == 256 else 96
    c = Case(7)
    table = c.src.add_raw("tab", qtype, random_weight(qtype, 50, cols), cols)
    c.ops.append(ops.EmbedLookup(c.buf("e", cols), table, 0.5))
    chunked = target.family == "vulkan"
    be = target.make(max_buffer_bytes=chunk_cap(max(4 * cols, 8 * (cols // block) * size))) if chunked \
        else target.make(threads=2)
    ref = NumpyBackend(kv_dtype=be.kv_dtype)
    try:
        for b in (ref, be):
            b.load_weights(c.src.specs, c.src)
            b.allocate_caches({})
        if chunked:
            assert len(be.weights[table].chunks) > 3
        toks = np.array([0, 49, 8, 9, 23, 24, 49], np.int32)
        a, got = run_compiled(c.graph("e"), ref, be, toks, 0)
        assert rel_err(got, a) < REL["embed"]
    finally:
        be.close()


@on("weight_memory", ([VULKAN], ["device"]))
def test_weights_through_device_staging_upload(target, weight_memory):
    """The device-only upload path (staging buffer + copy kernel) that discrete GPUs use."""
    c = Case(3)
    x = c.input("x", rng.standard_normal((3, 256)))
    x2 = c.input("x2", rng.standard_normal((3, 96)))
    c.src.add_raw("w", QT.Q4_K, random_weight(QT.Q4_K, 33, 256), 256)
    c.src.add_raw("w2", QT.Q4_0, random_weight(QT.Q4_0, 31, 96), 96)   # 31 * 54 B: not whole words
    c.ops.append(ops.MatMul(c.buf("y", 33), x, "w"))
    c.ops.append(ops.MatMul(c.buf("z", 31), x2, "w2"))
    c.ops.append(ops.Slice(c.buf("y2", 31), "y", 0, 0))
    c.ops.append(ops.Add("z", "z", "y2"))
    a, b = run_both(c, "z", target.make(weight_memory=weight_memory))
    assert rel_err(b, a) < REL["matmul"]


# ---- norms, rope, element-wise -------------------------------------------------------------------
RMSNORM = [(256, True), (64, True), (64, False)]


@on("group,with_weight,options",
    (CPU, [(g, w, v) for g, w in RMSNORM for v in threads(*THREADS)]),
    ([VULKAN], [(g, w, {}) for g, w in RMSNORM]))
def test_rmsnorm(target, group, with_weight, options):
    c = Case(5)
    x = c.input("x", rng.standard_normal((5, 256)) * 3)
    w = c.src.add("nw", rng.standard_normal((1, group))) if with_weight else None
    c.ops.append(ops.RmsNorm(c.buf("y", 256), x, w, 1e-6, group))
    c.ops.append(ops.RmsNorm("x", "x", w, 1e-6, group))                  # in place
    c.ops.append(ops.Add("y", "y", "x"))
    a, b = run_both(c, "y", target.make(**options))
    assert rel_err(b, a) < REL["rmsnorm"]


ROPE = [
    (64, 64, 10000.0, False, 0),
    (128, 128, 1e6, True, 2300),        # proportional RoPE: factors 1 then 1e30
    (64, 32, 10000.0, False, 9000),     # partial rotation: columns past n_rot are copied
    (512, 128, 1e6, True, 70000),
]


@on("head_dim,n_rot,base,ff,pos0", ([*CPU, VULKAN], ROPE))
def test_rope(target, head_dim, n_rot, base, ff, pos0):
    n = 6
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, 4 * head_dim)))
    ffn = None
    if ff:
        f = np.ones(n_rot // 2, np.float32)
        f[n_rot // 8:] = 1e30
        ffn = c.src.add("ff", f[None, :])
    c.ops.append(ops.Rope(c.buf("y", 4 * head_dim), x, head_dim, n_rot, base, ffn))
    c.ops.append(ops.Rope(x, x, head_dim, n_rot, base, ffn))                 # in place
    c.ops.append(ops.Add("y", "y", x))
    a, b = run_both(c, "y", target.make(), pos0=pos0)
    assert rel_err(b, a) < REL["rope"]


@on("options", (CPU, threads(*THREADS)), ([VULKAN], [{}]))
def test_elementwise_ops(target, options):
    """Every op's output, not only the last: GeLU·up, GeLU, add, mul, scale, softcap, slice."""
    c = elementwise_case()
    a, b, seen = run_both(c, "sl", target.make(**options), observe=True)
    assert rel_err(b, a) < REL["elementwise"]
    for i, (x, y) in enumerate(zip(seen["ref"], seen["got"])):
        assert rel_err(y, x) < REL["elementwise"], c.ops[i]


@on("extreme", ([*CPU, VULKAN], [1e30]))
def test_softcap_and_gelu_large_inputs_stay_finite(target, extreme):
    """Up to +-1e4 the results are finite and within the bound (at +-extreme they are unchecked)."""
    c = Case(2)
    x = c.input("x", np.array([[-extreme, -1e4, -80.0, -3.0, 0.0, 1e-3, 3.0, 80.0, 1e4, extreme]] * 2))
    c.ops += [ops.Softcap(c.buf("y", 10), x, 30.0), ops.Gelu(c.buf("z", 10), x), ops.Add("y", "y", "z")]
    a, b = run_both(c, "y", target.make())
    assert np.all(np.isfinite(b[:, 1:-1]))
    assert rel_err(b[:, 1:-1], a[:, 1:-1]) < REL["elementwise"]


# ---- attention + KV store: window, GQA, ring wrap-around, pos0 > 0, f16/f32 KV -------------------
ATTENTION = [                   # n_head, n_kv, D, window, ring, native CPU threads
    (4, 2, 64, 16, 16, 2),      # sliding window 16 in a 16-row ring: wraps around
    (4, 1, 128, 0, 64, 3),      # global, 1 KV head (GQA 4:1)
    (2, 2, 256, 5, 5, 1),       # window 5, head_dim 256 (n > ring in one batch)
    (4, 2, 96, 12, 12, 2),      # head_dim a multiple of 8 but not of 32
    (2, 1, 512, 0, 80, 4),      # the 12B's global head_dim
]


@on("kv_dtype,n_head,n_kv,D,window,ring,options",
    (CPU, [(kv, *a[:5], {"threads": a[5]}) for kv in ("f32", "f16") for a in ATTENTION]),
    ([VULKAN], [(kv, *a[:5], k) for k in KERNELS for kv in ("f32", "f16") for a in ATTENTION]))
def test_attention_through_the_cache(target, kv_dtype, n_head, n_kv, D, window, ring, options):
    ref, be = NumpyBackend(kv_dtype=kv_dtype), target.make(kv_dtype, **options)
    pos = 0
    steps = [7, 1, 1, 12, 1, 30 if ring >= 30 else ring + 3, 1, 9, 1]   # prefills, decodes, n > ring
    try:
        for i, n in enumerate(steps):
            if pos + n > (ring if window == 0 else 10 ** 6):
                break
            c = attention_case(n, n_head, n_kv, D, window, ring, seed=i)
            for b in (ref, be):
                b.load_weights(c.src.specs, c.src)
                if i == 0:
                    b.allocate_caches(c.caches)
            a, got, seen = run_compiled(c.graph("o"), ref, be, np.arange(n, dtype=np.int32), pos, observe=True)
            tol = REL["attention_f16" if kv_dtype == "f16" else "attention"]
            assert rel_err(got, a) < tol, (i, pos, n)
            # the cache after KvStore (rows never written are zero on both sides)
            tol_c = REL["kv_store_f16"] if kv_dtype == "f16" else 1e-7
            assert rel_err(seen["got"][-1], seen["ref"][-1].astype(np.float32)) < tol_c
            pos += n
    finally:
        be.close()
    assert pos > ring or window == 0


@on("options", (CPU, threads(1, 2, 4)), ([VULKAN], [{}]))
def test_decode_attention_over_a_long_cache(target, options):
    """One row at position 3000 over a 3072-row global f32 cache, head_dim 512, 2 heads (on the
    native CPU the position split, flash-decoding partials merged after a barrier, takes over)."""
    ref, be = NumpyBackend(kv_dtype="f32"), target.make("f32", **options)
    try:
        a, b = long_cache_decode([ref, be])
    finally:
        be.close()
    assert rel_err(b, a) < REL["attention"] * 10


# ---- buffers larger than one storage buffer: split into row bands ------------------------------
@on("max_buffer_bytes", ([VULKAN], [16 << 10]))
def test_row_bands_when_buffers_exceed_one_storage_buffer(target, max_buffer_bytes):
    n, E, F = 40, 256, 384
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, E)))
    c.src.add_raw("w1", QT.Q8_0, random_weight(QT.Q8_0, F, E), E)
    c.src.add_raw("w2", QT.Q4_0, random_weight(QT.Q4_0, E, F), F)
    nw = c.src.add("nw", rng.standard_normal((1, E)))
    c.ops += [
        ops.RmsNorm(c.buf("h", E), x, nw, 1e-6, E),
        ops.MatMul(c.buf("u", F), "h", "w1"),
        ops.GeluMul("u", "u", "u"),
        ops.MatMul(c.buf("d", E), "u", "w2"),
        ops.Add("x", "x", "d"),
        ops.Slice(c.buf("last", E, rows=1), "x", n - 1, 0),
        ops.Rope(c.buf("r", E), "x", 64, 64, 10000.0, None),
        ops.Add("r", "r", "x"),
    ]
    # 16 KiB arenas: a [40, 384] f32 buffer (60 KiB) spans 4 arenas
    ref, be = NumpyBackend(), target.make(max_buffer_bytes=max_buffer_bytes)
    try:
        for b in (ref, be):
            b.load_weights(c.src.specs, c.src)
            b.allocate_caches({})
        vg = be.compile(c.graph("r"))
        assert len(vg.locs["u"].pieces) >= 4
        segments = ops.one_sequence(n, 3)
        a = ref.compile(c.graph("r")).run(np.arange(n), segments)
        assert rel_err(vg.run(np.arange(n), segments), a) < REL["matmul"] * 5
    finally:
        be.close()


# ---- the recorded graph is replayed with new tokens and positions, not rebuilt -------------------
@on("n", ([*CPU, VULKAN], [(3,)]))
def test_replay_with_new_tokens_and_positions(target, n):
    c = Case(n)
    table = c.src.add_raw("tab", QT.Q4_0, random_weight(QT.Q4_0, 20, 64), 64)
    c.ops += [ops.EmbedLookup(c.buf("e", 64), table, 1.0), ops.Rope(c.buf("r", 64), "e", 64, 64, 1e4, None)]
    ref, be = NumpyBackend(), target.make()
    try:
        for b in (ref, be):
            b.load_weights(c.src.specs, c.src)
            b.allocate_caches({})
        gr, gb = ref.compile(c.graph("r")), be.compile(c.graph("r"))
        recorded = target.recording(gb)
        for toks, pos0 in [([1, 2, 3], 0), ([19, 0, 7], 100), ([5, 5, 5], 4000)]:
            segments = ops.one_sequence(n, pos0)
            assert rel_err(gb.run(np.array(toks), segments), gr.run(np.array(toks), segments)) < REL["rope"]
        assert target.recording(gb) is recorded
    finally:
        be.close()


# ==== one op on seeded inputs (CUDA: a device, the emulated driver, the simulator) ===============
CUDA_FULL = [CUDA, CUDA_SIM]


@on("qtype,n", (CUDA_FULL, [(q, n) for q in ALL_TYPES for n in MATMUL_BATCHES]))
def test_seeded_matmul_every_type(target, qtype, n):
    check_matmul(target.maker(), qtype, n, rows=37, cols=768)


@on("qtype,n", ([CUDA_EMULATED], [(q, n) for q in (QT.Q4_0, QT.Q4_K, QT.Q6_K, QT.F16) for n in (1, 6)]))
def test_seeded_matmul_host_code(target, qtype, n):
    check_matmul(target.maker(), qtype, n, rows=37, cols=512)


@on("qtype", (CUDA_FULL, LONG_ROW_TYPES))
def test_seeded_matvec_long_rows_many_tiles(target, qtype):
    # 4608 values = 2.25 tiles of 2048 (a partial last tile), 129 rows (a partial last block)
    check_matmul(target.maker(), qtype, 1, rows=129, cols=4608)


@on("qtype,cols,n",
    (CUDA_FULL,
     [(q, cols, n) for q in (QT.F32, QT.F16, QT.BF16) for cols in (100, 98, 33) for n in (1, 9, 20)]))
def test_seeded_matmul_float_types_odd_widths(target, qtype, cols, n):
    # widths that are not a multiple of 32 (partial groups) or of 4 (unaligned activation rows)
    check_matmul(target.maker(), qtype, n, rows=11, cols=cols)


@on("qtype,n,rows,cols",
    (CUDA_FULL, [(q, *s) for q in INT8_TYPES for s in [(1, 37, 768), (4, 129, 4608), (3, 5, 256)]]),
    ([CUDA_EMULATED], [(q, 2, 19, 512) for q in INT8_TYPES]))
def test_seeded_int8_matvec(target, qtype, n, rows, cols):
    check_matvec8(target.maker(int8_matvec=True), qtype, n, rows, cols)


@on("qtype", (CUDA_FULL, ALL_TYPES), ([CUDA_EMULATED], [QT.Q5_1]))
def test_seeded_embedding_every_type(target, qtype):
    check_embed(target.maker(), qtype)


@on("H,Hkv,D,window,ring,n,pos0,kv_dtype",
    (CUDA_FULL, [(*a, kv) for a in ATTN_CASES for kv in ("f16", "f32")]),
    ([CUDA_EMULATED], [(4, 2, 64, 16, 16, 5, 30, "f16"), (2, 1, 128, 0, 300, 1, 290, "f32")]))
def test_seeded_attention(target, H, Hkv, D, window, ring, n, pos0, kv_dtype):
    check_attention(target.maker(), H, Hkv, D, window, ring, n, pos0, kv_dtype)


@on("n,ring,pos0,kv_dtype",
    (CUDA_FULL, [(*k, kv) for k in KV_CASES for kv in ("f16", "f32")]),
    ([CUDA_EMULATED], [(40, 16, 3, "f16")]))
def test_seeded_kv_store(target, n, ring, pos0, kv_dtype):
    check_kv_store(target.maker(), n, ring, pos0, kv_dtype)


@on("rows,cols,group,with_weight", (CUDA_FULL, RMSNORM_CASES), ([CUDA_EMULATED], [(3, 512, 64, True)]))
def test_seeded_rmsnorm(target, rows, cols, group, with_weight):
    check_rmsnorm(target.maker(), rows, cols, group, with_weight)


@on("rows,head_dim,n_rot,heads,pos0,ff,inplace",
    (CUDA_FULL, ROPE_CASES),
    ([CUDA_EMULATED], [(4, 64, 32, 2, 17, True, False)]))
def test_seeded_rope(target, rows, head_dim, n_rot, heads, pos0, ff, inplace):
    check_rope(target.maker(), rows, head_dim, n_rot, heads, pos0, ff, inplace)


@on("which", ([*CUDA_FULL, CUDA_EMULATED], ["all"]))
def test_seeded_elementwise_ops(target, which):
    check_elementwise(target.maker())


@on("n", ([*CUDA_FULL, CUDA_EMULATED], [(2,)]))
def test_seeded_graph_replay_with_new_tokens_and_positions(target, n):
    check_replay(target.maker())


# ==== the suite can fail ===========================================================================
@pytest.mark.skipif(CPU[-1].skip is not None, reason=CPU[-1].skip or "")
def test_a_wrong_block_offset_is_caught(tmp_path, monkeypatch):
    """Copy the kernels, shift the Q8_0 dequantizer's read by one byte, and check that the op
    tests above would fail on it."""
    from g4rt.backends.cpu import compiler, native
    mutant = tmp_path / "cpu"
    shutil.copytree(compiler.source_dir(), mutant)
    q = (mutant / "quant.c").read_text()
    marker = "G4_MUTATION_POINT"
    assert marker in q, "quant.c lost its mutation marker"
    (mutant / "quant.c").write_text(q.replace(f"/* {marker} */ 0", f"/* {marker} */ 1"))
    monkeypatch.setenv("G4RT_CPU_SHADER_DIR", str(mutant))
    monkeypatch.setenv("G4RT_CPU_CACHE", str(tmp_path / "cache"))
    native._load.cache_clear()
    try:
        c = Case(3)
        table = c.src.add_raw("tab", QT.Q8_0, random_weight(QT.Q8_0, 9, 64), 64)
        c.ops.append(ops.EmbedLookup(c.buf("e", 64), table, 1.0))
        a, b = run_both(c, "e", CPU[-1].make(threads=1))         # the portable scalar path
        assert rel_err(b, a) > REL["embed"] * 100
    finally:
        native._load.cache_clear()


@pytest.mark.slow     # two minutes: a sanitizer build and the native CPU op cases under it
@pytest.mark.skipif(_SANITIZE_RUN, reason="inside the sanitizer run")
@pytest.mark.skipif(CPU[-1].skip is not None, reason=CPU[-1].skip or "")
def test_kernels_under_address_and_undefined_sanitizers(tmp_path):
    """Runs this file's native CPU cases in a subprocess with the library built under
    -fsanitize=address,undefined (libasan preloaded into Python); any report fails it."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed for the sanitizer run")
    asan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not asan or not os.path.isfile(asan):
        pytest.skip("libasan is not installed (apt-get install gcc provides it)")
    env = dict(os.environ, G4RT_SANITIZE_RUN="1", LD_PRELOAD=asan, G4RT_CC=gcc,
               G4RT_CPU_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined "
                               "-fno-omit-frame-pointer -O1",
               G4RT_CPU_CACHE=str(tmp_path / "cache"),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    tests = os.path.abspath(__file__)
    moe = os.path.join(os.path.dirname(tests), "test_moe.py")      # the MoE kernels' gather and scatter too
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", tests,
                        moe + "::test_native_moe_ops",
                        "-k", "not vulkan and not cuda and not seeded and not long_cache "
                              "and not wrong_block_offset and not sanitizers and not ops_support"],
                       env=env, capture_output=True, text=True, timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "runtime error" not in out and "AddressSanitizer" not in out, out[-6000:]


# ==== media ops: the encoders' LayerNorm / bias / position lookup, soft tokens, image blocks =====
# (numpy, the native CPU, Vulkan and CUDA: LayerNorm, AddVector, GatherAdd, TakeRows; Vulkan and
# CUDA also Attention.ahead, the text model's part)
@on("rows,cols,with_weight,with_bias,options",
    (CPU, [(*case, t) for case in LAYERNORM_CASES for t in threads(1, 3)]),
    ([VULKAN], [(*case, {}) for case in LAYERNORM_CASES]),
    ([CUDA, CUDA_EMULATED, CUDA_SIM], [(*case, {}) for case in LAYERNORM_CASES]))
def test_seeded_layernorm(target, rows, cols, with_weight, with_bias, options):
    check_layernorm(target.maker(**options), rows, cols, with_weight, with_bias)


@on("options", (CPU, threads(1, 2, 3)), ([VULKAN], [{}]), ([CUDA, CUDA_EMULATED, CUDA_SIM], [{}]))
def test_seeded_add_vector_gather_add_take_rows(target, options):
    check_add_vector_gather_take(target.maker(**options))


@on("options", ([VULKAN], KERNELS), ([CUDA, CUDA_EMULATED, CUDA_SIM], [{}]))
def test_seeded_take_rows(target, options):
    check_take_rows(target.maker(**options))


@on("H,Hkv,D,window,ring,n,pos0,blocks,kv_dtype,options",
    (CPU, [(*case, kv, t) for case in ATTN_AHEAD_CASES for kv in ("f16", "f32") for t in threads(1, 2)]),
    ([CUDA, CUDA_EMULATED, CUDA_SIM], [(*case, kv, {}) for case in ATTN_AHEAD_CASES for kv in ("f16", "f32")]))
def test_seeded_attention_with_keys_ahead(target, H, Hkv, D, window, ring, n, pos0, blocks, kv_dtype, options):
    check_attention_ahead(target.maker(**options), H, Hkv, D, window, ring, n, pos0, blocks, kv_dtype)


#: (n_head, n_kv, D, window, ring, steps): each step (rows, image blocks among them)
AHEAD_STEPS = [
    (4, 2, 64, 16, 16, [(5, ()), (40, ((2, 38),)), (1, ()), (20, ((0, 7), (9, 20))), (1, ())]),
    (2, 1, 128, 0, 96, [(3, ()), (30, ((1, 29),)), (1, ())]),
    (4, 2, 64, 8, 8, [(2, ()), (3, ((0, 2),)), (1, ())]),
]


@on("kv_dtype,n_head,n_kv,D,window,ring,steps,options",
    (CPU, [(kv, *a, {"threads": t}) for kv in ("f32", "f16") for a in AHEAD_STEPS for t in (1, 2)]),
    ([VULKAN], [(kv, *a, k) for k in KERNELS for kv in ("f32", "f16") for a in AHEAD_STEPS]))
def test_attention_with_keys_ahead_through_the_cache(target, kv_dtype, n_head, n_kv, D, window, ring, steps, options):
    """Prefill, then a media chunk whose image rows see their whole image, then decode."""
    ref, be = NumpyBackend(kv_dtype=kv_dtype), target.make(kv_dtype, **options)
    pos = 0
    try:
        for i, (n, blocks) in enumerate(steps):
            c = attention_case(n, n_head, n_kv, D, window, ring, seed=20 + i)
            if blocks:
                ahead = np.zeros((n, 1))
                for b0, b1 in blocks:
                    ahead[b0:b1, 0] = np.arange(b1 - b0 - 1, -1, -1)
                c.input("ahead", ahead)
                c.ops.insert(0, c.ops.pop())            # the input's lookup first
                att = c.ops[-2]
                c.ops[-2] = ops.Attention(att.out, att.q, att.k, att.v, att.cache_k, att.cache_v, att.n_head,
                                          att.n_kv_head, att.head_dim, att.window, att.scale, "ahead")
            for b in (ref, be):
                b.load_weights(c.src.specs, c.src)
                if i == 0:
                    b.allocate_caches(c.caches)
            a, got = run_compiled(c.graph("o"), ref, be, np.arange(n, dtype=np.int32), pos)
            tol = REL["attention_f16" if kv_dtype == "f16" else "attention"]
            assert rel_err(got, a) < tol, (i, pos, n)
            pos += n
    finally:
        be.close()


# ==== docs/ops-support.md ===========================================================================
def test_ops_support_doc_is_current():
    spec = importlib.util.spec_from_file_location("ops_support_table", REPO / "scripts" / "ops_support_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert (REPO / "docs" / "ops-support.md").read_text() == table.build(), \
        "docs/ops-support.md is out of date: run scripts/ops_support_table.py"
    # the reference, which defines each op, runs every op class the table lists
    from g4rt.backends.numpy_ref.backend import OP_FUNCTIONS
    assert set(ops.op_classes()) == set(OP_FUNCTIONS)
