"""The CUDA kernels themselves, without a GPU: shaders/cuda compiled for the CPU simulator
(runtime/testing/cuda/simulator.py, shaders/cuda/sim/cuda_sim.h: every CUDA thread a fiber, real
barriers and warp shuffles) and driven by CudaBackend's host code through the emulated driver.

- (per-op conformance on the simulator is the `cuda-sim` backend of tests/test_backend_ops.py);
- the simulator enforces what the hardware leaves undefined (warp collectives over exited lanes,
  divergent collectives) and a kernel that lacks a barrier fails its conformance check here;
- fixture models through the kernels: exact references meet their bars, decode through the KV
  cache equals prefill, a hybrid split (simulated GPU front, CPU back) meets the bar.

The whole GPU suite also runs on the simulator: G4RT_CUDA_EMULATE=sim pytest tests/test_backend_ops.py -k cuda
tests/test_cuda_model.py (docs/cuda.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES, check_decode_equals_prefill, check_fixture_bar
from g4rt.backends.cuda.kernels import all_kernels
from g4rt.testing.cuda.simulator import SimFault, SimKernels, sim_available

import op_cases

SIM_OK, SIM_REASON = sim_available()
pytestmark = pytest.mark.skipif(not SIM_OK, reason=SIM_REASON or "CUDA simulator unavailable")
needs_fixtures = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)


def sim(kv_dtype="f16", int8_matvec=False):
    from g4rt.backends.cuda.backend import CudaBackend
    from g4rt.testing.cuda.emulated_driver import EmulatedDriver
    return CudaBackend(driver=EmulatedDriver(kernels="sim"), kv_dtype=kv_dtype, int8_matvec=int8_matvec)


# ---- the simulator itself --------------------------------------------------------------------
def test_every_kernel_is_simulated_with_the_host_signature():
    from g4rt.testing.cuda.simulator import shared_kernels
    k = shared_kernels()          # compiles every file; a signature mismatch raises
    seen = {name: sig for m in k._modules.values() for name, (_, sig) in m.kernels.items()}
    assert seen == all_kernels()


def _mutated_sources(tmp_path, fname, old, new):
    d = tmp_path / "cuda"
    shutil.copytree(Path(__file__).resolve().parents[1] / "shaders" / "cuda", d)
    p = d / fname
    src = p.read_text()
    assert old in src, f"{old!r} not in {fname}"
    p.write_text(src.replace(old, new, 1))
    return d


ADD_BODY = "G4RT_GRID_STRIDE(i, n) out[i] = a[i] + b[i];"


def _launch_add(kernels):
    a = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    kernels.launch("add", (1, 1, 1), (64, 1, 1), [a.ctypes.data, a.ctypes.data, out.ctypes.data, 64])
    return a, out


def test_plain_launch_runs_the_kernel(tmp_path):
    k = SimKernels(_mutated_sources(tmp_path, "elementwise.cu", ADD_BODY, ADD_BODY))
    a, out = _launch_add(k)
    np.testing.assert_array_equal(out, 2 * a)
    with pytest.raises(SimFault, match="empty grid"):
        k.launch("add", (0, 1, 1), (64, 1, 1), [a.ctypes.data, a.ctypes.data, out.ctypes.data, 64])
    with pytest.raises(SimFault, match="block size"):
        k.launch("add", (1, 1, 1), (2048, 1, 1), [a.ctypes.data, a.ctypes.data, out.ctypes.data, 64])


@pytest.mark.parametrize("body,match", [
    # a shuffle over lanes that have returned is undefined on the hardware
    ("if (threadIdx.x & 1) return; out[threadIdx.x] = warp_sum(1.0f);", "exited"),
    # half a warp at __syncthreads, the other half at a warp collective
    ("if (threadIdx.x & 1) __syncthreads(); else __syncwarp();", "syncthreads"),
    # lanes that disagree on the mask of a collective
    ("__syncwarp(threadIdx.x < 16 ? 0xffffu : 0xffffffffu);", "mask"),
])
def test_collective_misuse_is_reported(tmp_path, body, match):
    k = SimKernels(_mutated_sources(tmp_path, "elementwise.cu", ADD_BODY, body))
    with pytest.raises(SimFault, match=match):
        _launch_add(k)


def test_portable_fiber_switch(tmp_path, monkeypatch):
    """The ucontext fallback (non-x86-64 machines) runs barriers and shuffles the same way."""
    monkeypatch.setenv("G4RT_SIM_CXXFLAGS", "-DG4SIM_UCONTEXT")
    k = SimKernels(_mutated_sources(tmp_path, "elementwise.cu", ADD_BODY, ADD_BODY))
    a, out = _launch_add(k)
    np.testing.assert_array_equal(out, 2 * a)
    x = np.random.default_rng(3).standard_normal((2, 256)).astype(np.float32)
    y = np.zeros_like(x)
    k.launch("rmsnorm", (1, 2, 1), (64, 1, 1), [x.ctypes.data, y.ctypes.data, 0, 256, 256, 1e-6])
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_a_missing_barrier_fails_conformance(tmp_path, monkeypatch):
    """matmul.cu without the barrier that protects its shared tiles: threads run ahead and read
    tiles the others have not finished with, so the product is wrong (the simulator is not lenient)."""
    src = _mutated_sources(tmp_path, "matmul.cu", "        __syncthreads();\n    }\n#pragma unroll",
                           "    }\n#pragma unroll")
    monkeypatch.setenv("G4RT_CUDA_SHADER_DIR", str(src))
    with pytest.raises(AssertionError, match="max \\|diff\\|"):
        op_cases.check_matmul(sim, QT.F32, 20, rows=11, cols=100)   # > ROW_EXACT_MAX: the tiled kernel


def test_f16_cache_rounding_matches_numpy():
    """kv_store_f16's float->half conversion (the C++ one in common.cuh on the simulator) rounds
    to nearest even like numpy, including subnormals, overflow to inf and ties."""
    rng = np.random.default_rng(11)
    vals = np.concatenate([
        rng.standard_normal(4000) * 10.0 ** rng.integers(-9, 6, 4000),
        [0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
         5.9604645e-08, 6.1035156e-05, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, np.inf, -np.inf],
    ]).astype(np.float32)
    n = len(vals) // 4 * 4
    k = vals[:n].reshape(-1, 4)
    from g4rt.testing.cuda.simulator import shared_kernels
    kern = shared_kernels()
    ck = np.zeros(k.shape, np.uint16)
    cv = np.zeros(k.shape, np.uint16)
    rows = k.shape[0]       # common.cuh: [pos0, n, n token ids, then per row: pos, slot, segment start, rows]
    params = np.concatenate([[0, rows], np.zeros(rows), np.stack(
        [np.arange(rows), np.zeros(rows), np.zeros(rows), np.full(rows, rows)], axis=1).reshape(-1)]).astype(np.int32)
    kern.launch("kv_store_f16", (8, 1, 1), (256, 1, 1),
                [k.ctypes.data, k.ctypes.data, ck.ctypes.data, cv.ctypes.data, params.ctypes.data,
                 k.shape[0], 4, k.shape[0]])
    with np.errstate(over="ignore"):
        want = k.astype(np.float16)
    np.testing.assert_array_equal(ck.view(np.float16), want)


# ---- fixture models through the kernels ------------------------------------------------------
def _engine(model, **kw):
    from g4rt.engine import Engine
    p = FIXTURES / "models" / f"{model}.gguf"
    if not p.is_file():
        pytest.skip(f"{p.name} is not in this fixtures folder")
    return Engine(p, **kw)


# One of each: Q4_0 (12B QAT release), Q4_K_M (community quants), edge (per-layer embeddings,
# shared KV), K=V (31B-style). The 1024-window model's long prompt takes ~10 min on the
# simulator: it runs with the full GPU suite (G4RT_CUDA_EMULATE=sim), not in CI; the op cases
# cover window 1024 past the ring.
SIM_MODELS = [("g4-dense-Q4_0", "g4-dense-Q4_0.exact.npz"),
              pytest.param("g4-dense-Q4_K_M", "g4-dense-Q4_K_M.exact.npz", marks=pytest.mark.slow),
              ("g4-edge-Q4_K_M", "g4-edge-Q4_K_M.exact.npz"),
              pytest.param("g4-dense-keqv-Q4_0-pure", "g4-dense-keqv-Q4_0-pure.exact.npz",
                           marks=pytest.mark.slow)]


@needs_fixtures
@pytest.mark.parametrize("model,ref", SIM_MODELS)
def test_fixture_meets_bar_vs_exact(model, ref):
    e = _engine(model, backend=sim("f16"), ctx=4096)
    try:
        w = check_fixture_bar(e, model, ref, n_greedy=8)
    finally:
        e.close()
    assert w["top1"] >= 0.99


@needs_fixtures
@pytest.mark.parametrize("kv_dtype", [pytest.param("f32", marks=pytest.mark.slow), "f16"])
def test_decode_through_cache_equals_prefill(kv_dtype):
    model = "g4-edge-Q4_K_M"
    ids = np.load(FIXTURES / "ref" / f"{model}.exact.npz")["ids_3"][:40]
    check_decode_equals_prefill(sim, FIXTURES / "models" / f"{model}.gguf", ids, kv_dtype, 7)


@needs_fixtures
def test_hybrid_simulated_gpu_front_cpu_back_meets_the_bar():
    from g4rt.backends.numpy_ref import NumpyBackend
    from g4rt.backends.hybrid import HybridBackend, layers_split
    model = "g4-dense-Q4_K_M"
    hb = HybridBackend(sim("f16"), NumpyBackend(kv_dtype="f16"), layers_split(3))
    e = _engine(model, backend=hb, ctx=4096)
    try:
        check_fixture_bar(e, model, f"{model}.exact.npz", n_greedy=4)
        assert hb.last_partition.split > 0 and hb.last_partition.transfers
    finally:
        e.close()


def test_the_environment_knob_selects_the_simulator(monkeypatch):
    """G4RT_CUDA_EMULATE=sim: `--backend cuda` (and the GPU test files) run on the simulator.
    The production driver never reads the knob: the registry passes driver_from_env()'s stand-in."""
    from g4rt.backends import create_backend
    from g4rt.backends.cuda.driver import cuda_available
    from g4rt.testing.cuda import driver_from_env
    monkeypatch.delenv("G4RT_CUDA_EMULATE", raising=False)
    assert driver_from_env() is None
    for value, kind in (("1", "numpy"), (" Numpy ", "numpy"), ("sim", "sim")):
        monkeypatch.setenv("G4RT_CUDA_EMULATE", value)
        assert (driver_from_env().sim is not None) == (kind == "sim")
    assert cuda_available(driver=driver_from_env()) == (True, "Simulated CUDA device (CPU)")
    be = create_backend("cuda")
    try:
        assert be.drv.sim is not None and "Simulated" in be.device_name
    finally:
        be.close()
