"""Gemma 4 mixture of experts (the 26B-A4B architecture): the MoE fixtures against their exact
references on every CPU backend, the routing and expert ops against the numpy reference, and
files whose expert tensors disagree with their keys."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from conftest import FIXTURES
from g4rt import errors as E
from g4rt import ops as O
from g4rt.backends.numpy_ref.backend import moe_matmul, moe_route, moe_sum
from op_cases import Case, random_weight, rel_err, rng

MOE = FIXTURES.parent / "fixtures-moe"
HAVE_MOE = (MOE / "MANIFEST.json").is_file()
NEED_MOE = pytest.mark.skipif(not HAVE_MOE, reason=f"{MOE} (the MoE fixtures) is absent")
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
from conftest import vulkan_skip_reason  # noqa: E402

HAVE_VULKAN = vulkan_skip_reason() is None
BACKENDS = ["numpy"] + (["cpu"] if CC else []) + (["vulkan"] if HAVE_VULKAN else [])
NAMES = ["g4-moe-F32", "g4-moe-Q8_0", "g4-moe-Q4_0-pure", "g4-moe-Q4_K_M"]


# ---- the reference's own semantics, against a direct float64 formulation --------------------------
def _route_direct(logits, k, scale):
    out = []
    for row in logits.astype(np.float64):
        p = np.exp(row - row.max())
        p /= p.sum()
        order = sorted(range(len(row)), key=lambda e: (-row[e], e))[:k]      # ties: lower index
        w = p[order] / p[order].sum()
        if scale is not None:
            w = w * scale[order]
        out.append(list(w) + order)
    return np.array(out)


@pytest.mark.parametrize("k", [1, 2, 8])
def test_reference_routing(k):
    logits = rng.standard_normal((9, 8)).astype(np.float32)
    logits[0] = 0.5                      # all tied: experts 0..k-1
    logits[1, [6, 2]] = 7.0              # a tie at the top: 2 before 6
    scale = rng.uniform(0.5, 2, 8).astype(np.float32)
    got = moe_route(logits, k, scale)
    want = _route_direct(logits, k, scale.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert list(got[0, k:]) == list(range(k))
    if k >= 2:
        assert list(got[1, k:k + 2]) == [2, 6]


def test_reference_expert_matmul_and_sum():
    rows, k, n_exp, N, K = 5, 2, 4, 3, 6
    w = rng.standard_normal((n_exp * N, K)).astype(np.float32)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    route = moe_route(rng.standard_normal((rows, n_exp)).astype(np.float32), k)
    y = moe_matmul(x, route, w, n_exp)
    for r in range(rows):
        for j in range(k):
            e = int(route[r, k + j])
            np.testing.assert_allclose(y[r * k + j], w[e * N:(e + 1) * N] @ x[r], rtol=1e-5)
    s = moe_sum(y, route)
    np.testing.assert_allclose(s[3], route[3, 0] * y[6] + route[3, 1] * y[7], rtol=1e-6)


# ---- native CPU kernels against the reference --------------------------------------------------
def _moe_case(n, k, n_exp, qtype, K, N, logits=None, per_selection=False):
    c = Case(n)
    lg = c.input("logits", rng.standard_normal((n, n_exp)) if logits is None else logits)
    c.src.add("scale", rng.uniform(0.5, 2.0, (1, n_exp)))
    route = c.buf("route", 2 * k)
    c.ops.append(O.MoeRoute(route, lg, k, "scale"))
    rows_x = n * k if per_selection else n
    if per_selection:   # a per-selection input: expand the token rows through a shared-input matmul first
        x0 = c.input("x0", rng.standard_normal((n, K)))
        c.src.add_raw("w0", QT.F32, random_weight(QT.F32, n_exp * K, K), K)
        x = c.buf("x", K, rows=rows_x)
        c.ops.append(O.MoeMatMul(x, x0, route, "w0", n_exp))
    else:
        x = c.input("x", rng.standard_normal((n, K)))
    c.src.add_raw("w", qtype, random_weight(qtype, n_exp * N, K), K)
    y = c.buf("y", N, rows=n * k)
    c.ops.append(O.MoeMatMul(y, x, route, "w", n_exp))
    c.ops.append(O.MoeSum(c.buf("s", N), y, route))
    return c


def _check_moe_output(out, k, ref, got, weight_rtol=1e-6):
    """route: the same experts in the same order, weights within rounding; else a relative bound."""
    if out == "route":
        assert np.array_equal(ref[:, k:], got[:, k:])
        np.testing.assert_allclose(got[:, :k], ref[:, :k], rtol=weight_rtol, atol=weight_rtol / 10)
    else:
        assert rel_err(got, ref) < 2e-5, (out, rel_err(got, ref))


if CC:
    from g4rt.backends.cpu.compiler import supported_isas
    ISAS = supported_isas()
else:
    ISAS = []


@pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.Q8_0, QT.Q4_0, QT.Q5_0, QT.Q4_K, QT.Q6_K],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("n,k,n_exp", [(1, 2, 8), (7, 2, 8), (40, 2, 8), (20, 2, 8), (3, 1, 4), (5, 4, 4),
                                     (16, 4, 4)])
def test_native_moe_ops(isa, qtype, n, k, n_exp):
    """Up to 16 tokens (a row-exact batch) take the matvec path, 17 and more the gathered tiled
    product; per-selection inputs (the down projection) on both paths."""
    from op_cases import run_both
    from g4rt.backends.cpu import CpuBackend
    K = 256 if qtype in (QT.Q4_K, QT.Q6_K) else 96
    c = _moe_case(n, k, n_exp, qtype, K, 40, per_selection=n in (7, 20))
    for out in ("route", "y", "s"):
        for threads in (1, 3):
            _check_moe_output(out, k, *run_both(c, out, CpuBackend(threads=threads, isa=isa, precision="exact")))


@pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")
def test_native_routing_ties_same_expert_and_every_expert():
    from op_cases import run_both
    from g4rt.backends.cpu import CpuBackend
    n, k, n_exp = 24, 2, 8
    logits = rng.standard_normal((n, n_exp))
    logits[0] = 1.0                                  # every expert tied: 0 and 1
    logits[1, [3, 5]] = 9.0                          # tied pair at the top: 3 then 5
    logits[2:10] = logits[2]                         # eight rows picking the same experts
    for e in range(n_exp):                           # and every expert first somewhere
        logits[10 + e, e] = 20.0
    c = _moe_case(n, k, n_exp, QT.Q4_0, 96, 32, logits=logits)
    a, b = run_both(c, "route", CpuBackend(threads=2, isa=ISAS[0], precision="exact"))
    assert np.array_equal(a[:, k:], b[:, k:])
    assert list(b[0, k:]) == [0, 1] and list(b[1, k:]) == [3, 5]
    assert set(b[10:18, k].astype(int)) == set(range(n_exp))
    a, b = run_both(c, "s", CpuBackend(threads=2, isa=ISAS[0], precision="exact"))
    assert rel_err(b, a) < 2e-5


@pytest.mark.skipif(not HAVE_VULKAN, reason=str(vulkan_skip_reason()))
@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.Q8_0, QT.Q4_0, QT.Q5_0, QT.Q4_K, QT.Q6_K],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("n,k,n_exp", [(1, 2, 8), (7, 2, 8), (40, 2, 8), (3, 1, 4), (5, 4, 4)])
def test_vulkan_moe_ops(qtype, n, k, n_exp):
    """The Vulkan kernels against the reference; a small buffer cap puts the experts in several
    chunks (whole experts each), so each dispatch skips the selections of the other chunks."""
    from op_cases import run_both
    from g4rt.backends.vulkan.backend import VulkanBackend
    K = 256 if qtype in (QT.Q4_K, QT.Q6_K) else 96
    c = _moe_case(n, k, n_exp, qtype, K, 40, per_selection=(n == 7))
    rb = c.src.raw["w"].shape[1]
    cap = -(-(40 * rb * 3 + 256 * 64) // 256) * 256          # ~3 experts of w per weight buffer
    for out in ("route", "y", "s"):
        _check_moe_output(out, k, *run_both(c, out, VulkanBackend(max_buffer_bytes=max(cap, 1 << 16))), weight_rtol=1e-5)


def _run_on(backend, case, out):
    backend.load_weights(case.src.specs, case.src)
    backend.allocate_caches(case.caches)
    try:
        return np.array(backend.compile(case.graph(out)).run(np.arange(case.n, dtype=np.int32), O.one_sequence(case.n, 0)),
                        copy=True)
    finally:
        backend.close()


def _sim_ok():
    from g4rt.testing.cuda.simulator import sim_available
    return sim_available()


@pytest.mark.skipif(not _sim_ok()[0], reason=str(_sim_ok()[1]))
@pytest.mark.parametrize("qtype", [QT.F16, QT.Q4_0, QT.Q5_0, QT.Q4_K, QT.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("n,k,n_exp", [(1, 2, 8), (7, 2, 8), (40, 2, 8), (3, 1, 4), (5, 4, 4)])
def test_cuda_moe_ops_on_the_simulator(qtype, n, k, n_exp):
    """The CUDA kernels (moe.cu, moe_matvec in matvec.cu) run on the CPU simulator against the
    reference."""
    from g4rt.backends.numpy_ref import NumpyBackend
    from test_cuda_sim import sim
    K = 256 if qtype in (QT.Q4_K, QT.Q6_K) else 96
    c = _moe_case(n, k, n_exp, qtype, K, 40, per_selection=(n == 7))
    for out in ("route", "y", "s"):
        _check_moe_output(out, k, _run_on(NumpyBackend(), c, out), _run_on(sim(), c, out))


@NEED_MOE
@pytest.mark.skipif(not _sim_ok()[0], reason=str(_sim_ok()[1]))
def test_cuda_fixture_on_the_simulator_meets_its_bar():
    """One MoE fixture through every CUDA kernel on the simulator (about a minute: the first
    prompt only; `G4RT_CUDA_EMULATE=sim g4rt parity` runs all six)."""
    from g4rt.tools import parity as P
    from g4rt.engine import Engine
    from test_cuda_sim import sim
    name = "g4-moe-Q4_K_M"
    full = np.load(MOE / "ref" / f"{name}.exact.npz")
    ref = {key: full[key] for key in full.files if key.endswith("_0")}
    e = Engine(MOE / "models" / f"{name}.gguf", backend=sim(), ctx=128)
    rows = P.compare(ref, P.run_reference(e, ref))
    e.close()
    w = P.worst(rows)
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05, w


# ---- the fixtures -------------------------------------------------------------------------------
def _bar(name):
    return json.loads((MOE / "MANIFEST.json").read_text())[name]["references"][name]["bar_vs_exact"]


@NEED_MOE
@pytest.mark.parametrize("backend", BACKENDS + (["cpu-i16"] if CC else []))
@pytest.mark.parametrize("name", NAMES)
def test_fixture_meets_its_bar(name, backend):
    from g4rt.tools import parity as P
    from g4rt.engine import Engine
    ref = np.load(MOE / "ref" / f"{name}.exact.npz")
    if backend.startswith("cpu"):
        from g4rt.backends.cpu import CpuBackend
        be = CpuBackend(precision="i16" if backend == "cpu-i16" else "exact")
    else:
        be = backend
    e = Engine(MOE / "models" / f"{name}.gguf", backend=be, ctx=256)
    if backend == "vulkan" and name != "g4-moe-Q4_K_M":
        e.close()
        pytest.skip("lavapipe is slow: one MoE fixture on Vulkan in CI (scripts/parity_report.py runs all)")
    if backend == "vulkan":      # lavapipe: two prompts, a short greedy tail (every position teacher-forced)
        from conftest import ref_subset
        ref = ref_subset(ref, 2)
    rows = P.compare(ref, P.run_reference(e, ref, n_greedy=8 if backend == "vulkan" else 32))
    e.close()
    w = P.worst(rows)
    bar = _bar(name)
    assert w["top1"] >= bar["min_top1"] and w["max_dlogit"] <= bar["max_dlogit"], w
    if backend == "cpu-i16":
        # int16-precision activations: the router flips a near-tied expert at a few positions
        # (large |dlogit| there, as llama.cpp's flips), the top-1 stays near-exact
        assert w["top1"] >= 0.97, w
        return
    # activations stay float: far inside the bar (llama.cpp's own flips set the bar's width)
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05, w


@NEED_MOE
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", ["f32"])
def test_decode_through_the_cache_equals_prefill(backend, kv_dtype):
    """With an f32 cache the paths differ only in summation order. (An f16 cache rounds K/V, and
    the router then flips near-tied experts at a few positions, as llama.cpp does: not a bug.)"""
    from conftest import check_decode_equals_prefill
    if backend == "numpy":
        from g4rt.backends.numpy_ref import NumpyBackend as make
    elif backend == "cpu":
        from functools import partial
        from g4rt.backends.cpu import CpuBackend
        make = partial(CpuBackend, precision="exact")       # the integer paths: bit-exact (test_row_exact)
    else:
        from g4rt.backends.vulkan import VulkanBackend as make
    ids = np.load(MOE / "ref" / "g4-moe-Q4_K_M.exact.npz")["ids_3"][:60]
    check_decode_equals_prefill(lambda kv: make(kv_dtype=kv), MOE / "models" / "g4-moe-Q4_K_M.gguf", ids,
                                kv_dtype, chunk=7)


# ---- files whose experts disagree with their keys --------------------------------------------------
def _crafted(tmp_path, key, vtype, value):
    from g4rt.gguf.validate import scan
    from test_gguf_hardening import set_kv
    data = bytearray((MOE / "models" / "g4-moe-Q4_0-pure.gguf").read_bytes())
    data = set_kv(data, scan(data, len(data)), key, vtype, value)
    p = tmp_path / "crafted.gguf"
    p.write_bytes(bytes(data))
    return p


@NEED_MOE
@pytest.mark.parametrize("key,value,fragment", [
    ("gemma4.expert_used_count", 9, "expert_used_count is 9; it must be between 1 and expert_count (8)"),
    ("gemma4.expert_used_count", 0, "expert_used_count is 0"),
    ("gemma4.expert_count", 4, "blk.0.ffn_gate_inp.weight has shape [256, 8]"),
    ("gemma4.expert_feed_forward_length", 64, "blk.0.ffn_gate_up_exps.weight has shape [256, 256, 8]"),
    ("gemma4.expert_count", 0, "router blk.0.ffn_gate_inp.weight"),
])
def test_expert_keys_that_disagree_are_refused(tmp_path, key, value, fragment):
    from g4rt.gguf.reader import GGUFFile
    from g4rt.model.config import load_config
    p = _crafted(tmp_path, key, 4, value)          # 4: uint32
    with pytest.raises(E.MetadataError) as ei:
        load_config(GGUFFile(p))
    assert fragment in str(ei.value) or (value == 0 and "expert_count is missing or 0" in str(ei.value)), str(ei.value)


@NEED_MOE
def test_info_shows_the_experts():
    from g4rt.tools.info import describe
    out = describe(MOE / "models" / "g4-moe-Q4_K_M.gguf")
    assert "- mixture of experts: 6 of 6 layers (layers 0, 1, 2, 3, 4, 5), 8 experts, top-2, expert FFN 128" in out
    assert "| `gemma4.expert_used_count` | UINT32 | 2 |" in out
    assert "| 5 | global | - | 128 | 4 | 1 | 1e+06 ×freqs | 128 | 512 | 2 of 8 × 128 | own |" in out


def test_synth_writes_a_loadable_moe_file(tmp_path):
    """`g4rt synth --moe` with the 26B-A4B's layout at small sizes: keys, 3-D expert tensors, K = V
    global layers and the Q5_0 fallback for widths that are no multiple of 256 all load and run."""
    from conftest import FIXTURES as FX
    from g4rt.engine import Engine
    from g4rt.gguf.reader import GGUFFile
    from g4rt.model.config import load_config
    from g4rt.model.shapes import MOE_26B, Shape
    from g4rt.tools.synth import write_synthetic
    vocab = FX / "models" / "g4-dense-Q4_0.gguf"
    if not vocab.is_file():
        pytest.skip("the fixtures' vocabulary is absent")
    small = Shape("tiny-moe", 512, 4, 320, 64, 2, 128, 1, k_eq_v_global=True, n_expert=8, n_expert_used=3,
                  expert_ffn=96)
    out = tmp_path / "moe.gguf"
    write_synthetic(out, 6, QT.Q4_K, vocab, echo=None, shape=small)
    f = GGUFFile(out)
    cfg = load_config(f)
    assert all(L.moe and L.n_expert == 8 and L.n_expert_used == 3 and L.expert_ffn == 96 for L in cfg.layers)
    assert [L.has_v_proj for L in cfg.layers] == [True] * 5 + [False]
    assert f.tensor("blk.0.ffn_down_exps.weight").qtype == QT.Q5_0          # 96 wide: Q5_0
    assert f.tensor("blk.0.ffn_gate_up_exps.weight").shape == (512, 192, 8)
    assert MOE_26B.n_expert == 128 and MOE_26B.n_expert_used == 8 and MOE_26B.expert_ffn == 704
    backends = BACKENDS
    outs = []
    for be in backends:
        e = Engine(out, backend=be, ctx=32)
        outs.append(e.forward([1, 2, 3, 4, 5], all_logits=True))
        e.close()
    assert np.all(np.isfinite(outs[0]))
    if len(outs) == 2:
        assert rel_err(outs[1], outs[0]) < 1e-3


@NEED_MOE
def test_memory_plan_of_a_moe_file():
    """`g4rt info --plan` on a MoE file: the derived router weights are part of the graph."""
    from click.testing import CliRunner
    from g4rt.cli import main
    r = CliRunner().invoke(main, ["info", "--plan", str(MOE / "models" / "g4-moe-Q4_K_M.gguf"), "--backend", "cuda",
                                  "--budget", "1GiB"])
    assert r.exit_code == 0, r.output
    assert "all 6 layers on the GPU" in r.output and "fits" in r.output
