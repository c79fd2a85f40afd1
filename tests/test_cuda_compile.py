"""CUDA backend checks that need no GPU (they run in CI):

- every kernel in shaders/cuda compiles with NVRTC (compute_80 and compute_90), each kernel's
  parameter list read back from the PTX matches the host's table, a broken kernel fails with
  NVRTC's log;
- the block decoders (quant_blocks.cuh), compiled as host C++, decode exactly like gguf.quants;
- the memory plan arithmetic, the hybrid partitioning and HybridBackend end to end (CPU + CPU);
- without a driver, CudaBackend() / create_backend("cuda") raise BackendUnavailableError;
- the CUDA backend's host code on the emulated driver (numpy kernels) against the numpy reference.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES, check_fixture_bar
from g4rt import ops
from g4rt.backends import create_backend
from g4rt.backends.numpy_ref import NumpyBackend
from g4rt.errors import BackendUnavailableError, G4rtError
from g4rt.gguf.quant_types import dequantize_rows

import op_cases

REPO = Path(__file__).resolve().parents[1]
SHADERS = REPO / "shaders" / "cuda"

try:
    from g4rt.backends.cuda import driver as cuda_driver
    from g4rt.backends.cuda import kernels
    cuda_driver.bindings()
    cuda_driver.nvrtc_version()
    HAVE_NVRTC, NVRTC_REASON = True, ""
except Exception as e:               # noqa: BLE001
    HAVE_NVRTC, NVRTC_REASON = False, f"NVRTC unavailable: {e}"

needs_nvrtc = pytest.mark.skipif(not HAVE_NVRTC, reason=NVRTC_REASON or "NVRTC unavailable")
needs_fixtures = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)


def kernel_files() -> list[str]:
    return sorted(p.name for p in SHADERS.glob("*.cu"))


# ---- NVRTC ----------------------------------------------------------------------------------
_ptx: dict[str, dict[str, str]] = {}


def _compile_all(arch: str) -> dict[str, str]:
    """Every .cu file (all types instantiated) for `arch`, compiled in parallel, once per process."""
    if arch not in _ptx:
        files = kernel_files()
        images = cuda_driver.compile_many([(f, arch, None) for f in files], src_dir=SHADERS)
        sigs = {}
        for f, img in zip(files, images):
            assert img and img.rstrip(b"\0"), f"{f}: empty PTX"
            sigs.update(cuda_driver.ptx_entry_signatures(img))
        _ptx[arch] = sigs
    return _ptx[arch]


@needs_nvrtc
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_every_kernel_compiles_and_matches_the_host_signatures(arch):
    sigs = _compile_all(arch)   # raises NvrtcError with the log on any compile error
    want = kernels.all_kernels()
    missing = sorted(set(want) - set(sigs))
    assert not missing, f"kernels the host launches but no file defines: {missing}"
    wrong = {k: (v, sigs[k]) for k, v in want.items() if sigs[k] != v}
    assert not wrong, f"host signature vs PTX parameters: {wrong}"
    for name in want:
        f, _ = kernels.kernel_file(name)
        assert (SHADERS / f).is_file()


@needs_nvrtc
def test_per_type_module_and_cubin():
    # what the runtime compiles: one typed file per weight type, SASS for the device
    img = cuda_driver.compile_file("matvec.cu", "sm_90", kernels.module_defines(QT.Q4_K), src_dir=SHADERS)
    assert img[:4] == b"\x7fELF"
    ptx = cuda_driver.compile_file("matmul.cu", "compute_80", kernels.module_defines(QT.Q6_K), src_dir=SHADERS)
    assert set(cuda_driver.ptx_entry_signatures(ptx)) == {"matmul_q6_k"}
    assert cuda_driver.compile_file("elementwise.cu", "sm_80", src_dir=SHADERS)[:4] == b"\x7fELF"


@needs_nvrtc
def test_broken_kernel_reports_the_nvrtc_log(tmp_path):
    for h in SHADERS.glob("*.cuh"):
        shutil.copy(h, tmp_path / h.name)
    (tmp_path / "broken.cu").write_text(
        '#include "common.cuh"\nextern "C" __global__ void broken(float* x) {\n'
        '    x[threadIdx.x] = undefined_symbol * 2.0f;\n}\n')
    with pytest.raises(cuda_driver.NvrtcError) as e:
        cuda_driver.compile_file("broken.cu", "compute_90", src_dir=tmp_path, use_cache=False)
    msg = str(e.value)
    assert "broken.cu" in msg and "undefined_symbol" in msg and "compute_90" in msg


def test_missing_kernel_file_is_a_clear_error(tmp_path):
    if not HAVE_NVRTC:
        pytest.skip(NVRTC_REASON)
    with pytest.raises(cuda_driver.NvrtcError, match="does not exist"):
        cuda_driver.compile_file("nope.cu", "compute_90", src_dir=tmp_path)


# ---- host build of the block decoders ---------------------------------------------------------
HARNESS = r'''
#include "quant_blocks.cuh"
#include <cstdio>
#include <vector>
template <int QT> int run(int rows, int K, int shift) {
    const int rb = K / QB<QT>::VALS * QB<QT>::BYTES;
    std::vector<unsigned char> buf((size_t)rows * rb + 64);
    unsigned char* w = buf.data() + shift;
    if (fread(w, 1, (size_t)rows * rb, stdin) != (size_t)rows * rb) return 2;
    std::vector<float4> xs(K / 4 + 1);
    float* x = (float*)xs.data();
    if (fread(x, 4, K, stdin) != (size_t)K) return 3;
    std::vector<float> out((size_t)rows * K), dots((size_t)rows * (K / 32));
    const int GPB = QB<QT>::VALS / 32;
    for (int r = 0; r < rows; r++) {
        const u8* row = w + (size_t)r * rb;
        for (int g = 0; g < K / 32; g++) {
            qb_group<QT>(row, g, K, &out[(size_t)r * K + 32 * g]);
            dots[(size_t)r * (K / 32) + g] =
                qb_dot32<QT>(row + (g / GPB) * QB<QT>::BYTES, g % GPB, x + 32 * g);
        }
    }
    fwrite(out.data(), 4, out.size(), stdout);
    fwrite(dots.data(), 4, dots.size(), stdout);
    return 0;
}
int main() {
    int h[4];
    if (fread(h, 4, 4, stdin) != 4) return 1;
    switch (h[0]) {
#define CASE(name, id) case id: return run<id>(h[1], h[2], h[3]);
        G4RT_FOR_EACH_QTYPE(CASE)
    }
    return 4;
}
'''


@pytest.fixture(scope="module")
def decoder_harness(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("no C++ compiler for the host build of quant_blocks.cuh")
    d = tmp_path_factory.mktemp("qb")
    (d / "h.cpp").write_text(HARNESS)
    exe = d / "h"
    r = subprocess.run([cxx, "-O1", "-std=c++17", f"-I{SHADERS}", str(d / "h.cpp"), "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.mark.parametrize("qtype", op_cases.ALL_TYPES, ids=lambda t: t.name)
def test_block_decoders_match_gguf(decoder_harness, qtype):
    rng = np.random.default_rng(int(qtype))
    rows, cols = 5, 768          # 3 K-quant super-blocks, 24 groups
    raw = op_cases.scaled_random_weight(rng, qtype, rows, cols)
    ref = dequantize_rows(raw, qtype, cols)
    x = rng.standard_normal(cols).astype(np.float32)
    shift = 4 if qtype == QT.F32 else 2     # rows at 2-byte aligned addresses, as in shared memory
    inp = np.array([int(qtype), rows, cols, shift], np.int32).tobytes() + raw.tobytes() + x.tobytes()
    r = subprocess.run([str(decoder_harness)], input=inp, capture_output=True)
    assert r.returncode == 0, r.returncode
    out = np.frombuffer(r.stdout, np.float32)
    dq = out[:rows * cols].reshape(rows, cols)
    dots = out[rows * cols:].reshape(rows, cols // 32)
    np.testing.assert_array_equal(dq, ref)                         # qb_dq32: bit-exact
    exact = (ref.reshape(rows, -1, 32).astype(np.float64) * x.reshape(1, -1, 32)).sum(-1)
    scale = np.abs(ref.reshape(rows, -1, 32)).sum(-1) * np.abs(x).max()
    assert np.all(np.abs(dots - exact) <= 1e-5 * scale + 1e-6)     # qb_dot32: fp32 rounding only


# ---- memory plan ----------------------------------------------------------------------------
def toy_graph(n_layers=4, n=1, E=256, ctx=512, qtype=QT.Q4_0):
    """A layered graph of the op contract (no model): embed, per layer norm/matmul/attention/store/add."""
    W = {"tok": ops.WeightSpec("tok", qtype, 1000, E), "norm": ops.WeightSpec("norm", QT.F32, 1, E)}
    bufs = {"tokens": ops.Buffer("tokens", n, 1, "i32"), "x": ops.Buffer("x", n, E), "h": ops.Buffer("h", n, E),
            "q": ops.Buffer("q", n, E), "a": ops.Buffer("a", n, E), "logits": ops.Buffer("logits", n, 1000)}
    caches, op_list, labels = {}, [ops.EmbedLookup("x", "tok", 1.0)], ["token_embd"]
    for i in range(n_layers):
        W[f"blk.{i}.w"] = ops.WeightSpec(f"blk.{i}.w", qtype, E, E)
        W[f"blk.{i}.norm"] = ops.WeightSpec(f"blk.{i}.norm", QT.F32, 1, E)
        caches[f"ck.{i}"] = ops.KvCache(f"ck.{i}", ctx, E)
        caches[f"cv.{i}"] = ops.KvCache(f"cv.{i}", ctx, E)
        op_list += [ops.RmsNorm("h", "x", f"blk.{i}.norm", 1e-6, E), ops.MatMul("q", "h", f"blk.{i}.w"),
                ops.Attention("a", "q", "q", "q", f"ck.{i}", f"cv.{i}", 4, 4, E // 4, 0, 1.0),
                ops.KvStore(f"ck.{i}", f"cv.{i}", "q", "q"), ops.Add("x", "x", "a")]
        labels += [f"blk.{i} attn_norm", f"blk.{i} attn_q", f"blk.{i} attention", f"blk.{i}.kv_store",
                   f"blk.{i} residual"]
    op_list += [ops.RmsNorm("h", "x", "norm", 1e-6, E), ops.MatMul("logits", "h", "tok")]
    labels += ["output_norm", "output"]
    return ops.Graph(n_tokens=n, buffers=bufs, caches=caches, weights=W, ops=op_list, output="logits", labels=labels)


def test_plan_memory_arithmetic():
    from g4rt.backends.cuda.plan import WEIGHT_PAD, plan_memory
    g = toy_graph()
    E = 256
    p16 = plan_memory(g, kv_dtype="f16")
    p32 = plan_memory(g, kv_dtype="f32")
    # weights: raw GGUF bytes + padding (256-aligned), plus f32 copies of the norm weights
    q4 = lambda rows, cols: -(-(rows * cols // 32 * 18 + WEIGHT_PAD) // 256) * 256
    f32w = lambda cols: -(-(cols * 4 + WEIGHT_PAD) // 256) * 256 + cols * 4
    expect_w = q4(1000, E) + f32w(E) + 4 * (q4(E, E) + f32w(E))
    assert p16.weights_bytes == expect_w
    assert p16.kv_bytes == 8 * 512 * E * 2 and p32.kv_bytes == 2 * p16.kv_bytes
    assert p16.total_bytes == p16.weights_bytes + p16.kv_bytes + p16.scratch_bytes
    assert p16.fits and p16.n_layers == 4 and p16.free_bytes is None
    # front sizes grow with the layer count; all layers = the whole graph
    assert p16.front_bytes == sorted(p16.front_bytes)
    assert p16.front_bytes[0] == 0 and p16.front_bytes[1] > 0      # 0 layers: nothing on the GPU
    assert p16.front_bytes[4] == p16.total_bytes
    # scratch scales with the batch
    assert plan_memory(g, batch=512).scratch_bytes > 100 * p16.scratch_bytes // 2


def test_plan_names_how_many_layers_fit():
    from g4rt.backends.cuda.plan import plan_memory
    g = toy_graph()
    full = plan_memory(g, reserve_bytes=0)
    per = full.front_bytes
    free = (per[2] + per[3]) // 2                 # room for 2 layers, not 3
    p = plan_memory(g, free_bytes=free, reserve_bytes=0)
    assert not p.fits and p.layers_that_fit == 2
    with pytest.raises(G4rtError, match=r"2 of 4 layers would fit: run with --gpu-layers 2"):
        p.check()
    p.check_split(p.split_for_layers[2])          # 2 layers: fine
    with pytest.raises(G4rtError, match="at most 2 of 4 layers"):
        p.check_split(p.split_for_layers[3])
    plan_memory(g, free_bytes=10 * per[4], reserve_bytes=0).check()


def test_plan_weights_before_any_graph():
    from g4rt.backends.cuda.plan import plan_weights, weight_bytes
    g = toy_graph()
    total, avail, fit, n = plan_weights(g.weights, None)
    assert total == sum(weight_bytes(s) for s in g.weights.values()) and n == -1
    other = weight_bytes(g.weights["tok"]) + weight_bytes(g.weights["norm"])
    layer = weight_bytes(g.weights["blk.0.w"]) + weight_bytes(g.weights["blk.0.norm"])
    total, avail, fit, n = plan_weights(g.weights, other + 3 * layer + 10, reserve_bytes=0)
    assert (fit, n) == (3, 4)


# ---- hybrid partitioning (pure) ---------------------------------------------------------------
def test_partition_toy_graph():
    from g4rt.backends.graph_split import layers_split, partition, raw_layer_split, sub_graphs
    g = toy_graph(n_layers=4)
    assert raw_layer_split(g, 0) == 0
    assert raw_layer_split(g, 1) == 1 + 5
    assert raw_layer_split(g, 4) == len(g.ops)
    s = layers_split(2)(g)
    p = partition(g, s)
    assert p.front_weights == {"tok", "blk.0.w", "blk.0.norm", "blk.1.w", "blk.1.norm"}
    assert p.back_weights == {"tok", "norm", "blk.2.w", "blk.2.norm", "blk.3.w", "blk.3.norm"}
    assert p.front_caches == {"ck.0", "cv.0", "ck.1", "cv.1"}
    assert p.back_caches == {"ck.2", "cv.2", "ck.3", "cv.3"}
    assert p.transfers == ["x"]                   # h, q, a are rewritten before the back reads them
    front, back, inputs = sub_graphs(g, p, "in.")
    assert len(front.ops) == s and back.ops[0] == ops.Slice("x", "in.x", 0, 0)
    assert back.caches["in.x"] == ops.KvCache("in.x", 1, 256)


def test_partition_snaps_around_shared_caches():
    from g4rt.backends.graph_split import layers_split, partition, raw_layer_split
    g = toy_graph(n_layers=4)
    # layer 3 reads layer 1's cache (shared KV): a split after layer 2 would cut cache 1
    op_list = list(g.ops)
    i3 = raw_layer_split(g, 3)
    op_list[i3 + 2] = ops.Attention("a", "q", "q", "q", "ck.1", "cv.1", 4, 4, 64, 0, 1.0)
    g2 = ops.Graph(g.n_tokens, g.buffers, g.caches, g.weights, op_list, g.output, labels=g.labels)
    first_use = raw_layer_split(g2, 1) + 2                      # layer 1's attention
    assert layers_split(3)(g2) == first_use                      # moved before cache 1's first op
    p = partition(g2, layers_split(3)(g2))
    assert not (p.front_caches & p.back_caches)
    assert layers_split(2)(g2) == first_use
    assert layers_split(1)(g2) == raw_layer_split(g2, 1)
    assert layers_split(4)(g2) == len(g2.ops)


@needs_fixtures
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("model,layers", [("g4-dense-Q4_0", 3), ("g4-edge-Q4_K_M", 5), ("g4-edge-F32", 2),
                                          ("g4-dense-keqv-F32", 6), ("g4-dense-F32", 0)])
def test_hybrid_cpu_cpu_equals_cpu(model, layers, backend):
    """The split machinery end to end: two CPU backends (numpy, or native: the host half of a
    --gpu-layers run) give bit-identical logits to one."""
    from g4rt.backends import create_backend
    from g4rt.backends.hybrid import HybridBackend, layers_split
    from g4rt.engine import Engine
    path = FIXTURES / "models" / f"{model}.gguf"
    ids = np.load(FIXTURES / "ref" / f"{model}.exact.npz")["ids_1"][:24]
    hb = HybridBackend(create_backend(backend), create_backend(backend), layers_split(layers))
    a = Engine(path, backend=backend, ctx=64, prefill_chunk=10)
    b = Engine(path, backend=hb, ctx=64, prefill_chunk=10)
    np.testing.assert_array_equal(b.forward(ids, all_logits=True), a.forward(ids, all_logits=True))
    for t in (5, 77, 300):
        np.testing.assert_array_equal(b.forward([t]), a.forward([t]))
    part = hb.last_partition
    assert not (part.front_caches & part.back_caches)
    if 0 < layers < 6:
        assert "x" in part.transfers


@needs_fixtures
def test_hybrid_observer_sees_every_op_once():
    from g4rt.backends.hybrid import HybridBackend, layers_split
    from g4rt.engine import Engine
    path = FIXTURES / "models" / "g4-dense-Q4_0.gguf"
    e = Engine(path, backend=HybridBackend(NumpyBackend(), NumpyBackend(), layers_split(2)), ctx=32)
    g = e.graph(3)
    seen = []
    g.run(np.array([2, 3, 4], np.int32), ops.one_sequence(3, 0), observer=lambda i, op, arr: seen.append(i))
    assert seen == list(range(len(g.graph.ops)))


# ---- no driver --------------------------------------------------------------------------------
def _no_cuda():
    from g4rt.backends.cuda.driver import cuda_available
    ok, reason = cuda_available()
    return ok, reason


def test_cuda_backend_unavailable_is_clear():
    ok, reason = _no_cuda()
    if ok:
        pytest.skip(f"a CUDA device is present ({reason})")
    assert reason
    from g4rt.backends.cuda.backend import CudaBackend
    with pytest.raises(BackendUnavailableError) as e:
        CudaBackend()
    msg = str(e.value)
    assert "CUDA" in msg and len(msg) > 20
    from g4rt.testing.cuda import driver_from_env
    if driver_from_env() is None:       # G4RT_CUDA_EMULATE puts a stand-in behind create_backend
        with pytest.raises(BackendUnavailableError):
            create_backend("cuda")


def test_cuda_backend_rejects_bad_kv_dtype():
    from g4rt.backends.cuda.backend import CudaBackend
    with pytest.raises(G4rtError, match="kv_dtype"):
        CudaBackend(kv_dtype="q8")


# ---- the host code on the emulated driver ------------------------------------------------------
def emulated(kv_dtype="f16", **kw):
    from g4rt.backends.cuda.backend import CudaBackend
    from g4rt.testing.cuda.emulated_driver import EmulatedDriver
    return CudaBackend(driver=EmulatedDriver(**kw), kv_dtype=kv_dtype)


@needs_fixtures
@pytest.mark.parametrize("model", ["g4-dense-Q4_0", "g4-edge-Q4_K_M", "g4-dense-keqv-F32"])
def test_emulated_engine_matches_cpu(model):
    from g4rt.engine import Engine
    path = FIXTURES / "models" / f"{model}.gguf"
    ids = np.load(FIXTURES / "ref" / f"{model}.exact.npz")["ids_2"][:30]
    ref = Engine(path, backend="numpy", ctx=64, prefill_chunk=16)
    be = emulated("f32")
    emu = Engine(path, backend=be, ctx=64, prefill_chunk=16)
    np.testing.assert_allclose(emu.forward(ids, all_logits=True), ref.forward(ids, all_logits=True),
                               rtol=0, atol=2e-4)
    for t in (9, 10, 11):
        np.testing.assert_allclose(emu.forward([t]), ref.forward([t]), rtol=0, atol=2e-4)
    assert be.drv.graph_launches > 0          # runs replayed recorded graphs
    emu.close()


@pytest.mark.slow     # the opt-in int8 path over a whole fixture on the emulator
@needs_fixtures
def test_emulated_int8_decode_stays_within_the_bar():
    """Decoding token by token with 8-bit activations (llama.cpp's rounding) on a Q4_K_M fixture
    (Q4_K and Q6_K weights): top-1 against the exact reference stays inside its bar, the logits
    move (the int8 path is in use) but by much less than the bar allows."""
    from g4rt.backends.cuda.backend import CudaBackend
    from g4rt.testing.cuda.emulated_driver import EmulatedDriver
    from g4rt.engine import Engine
    model = "g4-dense-Q4_K_M"
    be = CudaBackend(driver=EmulatedDriver(), kv_dtype="f16", int8_matvec=True)
    e = Engine(FIXTURES / "models" / f"{model}.gguf", backend=be, ctx=256, prefill_chunk=1)
    try:
        w = check_fixture_bar(e, model, f"{model}.exact.npz", n_prompts=2, n_greedy=1)
    finally:
        e.close()
    assert w["max_dlogit"] > 1e-3           # 8-bit activations were used


@needs_fixtures
@pytest.mark.parametrize("back", ["numpy", "cpu"])
def test_emulated_hybrid_gpu_front_cpu_back(back):
    from g4rt.backends import create_backend
    from g4rt.backends.hybrid import HybridBackend, layers_split
    from g4rt.engine import Engine
    path = FIXTURES / "models" / "g4-edge-Q4_0-pure.gguf"
    ids = np.load(FIXTURES / "ref" / "g4-edge-Q4_0-pure.exact.npz")["ids_0"][:20]
    ref = Engine(path, backend="numpy", ctx=64)
    hb = HybridBackend(emulated("f32"), create_backend(back, kv_dtype="f32", precision="exact"), layers_split(4))
    e = Engine(path, backend=hb, ctx=64)
    np.testing.assert_allclose(e.forward(ids, all_logits=True), ref.forward(ids, all_logits=True),
                               rtol=0, atol=2e-4)
    np.testing.assert_allclose(e.forward([42]), ref.forward([42]), rtol=0, atol=2e-4)
    assert hb.last_partition.split > 0 and hb.last_partition.transfers


@needs_fixtures
def test_emulated_memory_errors_name_the_layers_that_fit():
    from g4rt.backends.hybrid import HybridBackend, layers_split
    from g4rt.engine import Engine
    path = FIXTURES / "models" / "g4-dense-F32.gguf"
    with pytest.raises(G4rtError, match=r"--gpu-layers \d"):
        Engine(path, backend=emulated(total_memory=(256 << 20) + (12 << 20)), ctx=64)
    hb = HybridBackend(emulated(total_memory=(256 << 20) + (14 << 20)), NumpyBackend(), layers_split(6))
    e = Engine(path, backend=hb, ctx=64)
    with pytest.raises(G4rtError, match="layers would fit"):
        e.forward([2, 3])
