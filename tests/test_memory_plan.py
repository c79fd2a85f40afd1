"""The memory plan (weights, KV cache, scratch; what fits a budget), the default context policy,
and the run-time context limits of the engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
from g4rt import memory_plan
from g4rt.model import synthetic
from g4rt.cli import run
from g4rt.engine import Engine
from g4rt.errors import ContextOverflowError, G4rtError, InsufficientMemoryError
from g4rt.gguf.reader import GGUFFile
from g4rt.model.config import load_config
from g4rt.model.graph import build_graph, kv_caches, weight_specs

needs_fixtures = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)
MOE_FILE = FIXTURES.parent / "fixtures-moe" / "models" / "g4-moe-Q4_0-pure.gguf"
needs_moe = pytest.mark.skipif(not MOE_FILE.is_file(), reason=f"{MOE_FILE} (the MoE fixture) is absent")
GiB = 1 << 30


def model(name: str):
    f = GGUFFile(FIXTURES / "models" / f"{name}.gguf")
    return f, load_config(f), weight_specs(f)


# ---- arithmetic ---------------------------------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("name", ["g4-dense-Q4_0-pure", "g4-edge-Q4_K_M", "g4-dense-keqv-F32"])
@pytest.mark.parametrize("ctx", [1, 7, 16, 300])
def test_parts_match_the_file_and_the_graph(name, ctx):
    f, cfg, specs = model(name)
    plan = memory_plan.make_plan(cfg, specs, ctx, kv_bytes=2, batch=5)
    # weights: exactly the tensor bytes in the file
    assert plan.weights_device == sum(t.nbytes for t in f.tensors.values()) and plan.weights_host == 0
    # KV: exactly the caches the graph allocates, at 2 bytes a value
    assert plan.kv_device == 2 * sum(c.rows * c.cols for c in kv_caches(cfg, ctx).values())
    assert plan.kv_sliding + plan.kv_global == plan.kv_device
    # scratch: the buffers of the largest graph (batch capped by ctx)
    g = build_graph(cfg, specs, min(5, ctx), ctx)
    assert plan.scratch_device == sum(b.rows * b.cols * 4 for b in g.buffers.values())


@needs_fixtures
def test_kv_by_layer_kind():
    _, cfg, _ = model("g4-edge-Q4_0-pure")     # window 8; layers 5-7 share the caches of 3 and 4
    per = memory_plan.kv_bytes_per_layer(cfg, 100, 2)
    sliding = 2 * 8 * 128 * 2                   # K and V, min(ctx, window) rows, width 2 heads x 64
    glob = 2 * 100 * 256 * 2                    # ctx rows, width 2 heads x 128
    assert per == [sliding] * 4 + [glob] + [0, 0, 0]
    assert memory_plan.kv_bytes_per_layer(cfg, 5, 4) == [2 * 5 * 128 * 4] * 4 + [2 * 5 * 256 * 4] + [0] * 3


@needs_fixtures
def test_hybrid_split_conserves_bytes():
    _, cfg, specs = model("g4-dense-Q4_0-pure")
    full = memory_plan.make_plan(cfg, specs, 512)
    for k in range(cfg.n_layer + 1):
        p = memory_plan.make_plan(cfg, specs, 512, gpu_layers=k)
        assert p.weights_device + p.weights_host == full.weights_device
        assert p.kv_device + p.kv_host == full.kv_device
        assert p.hybrid == (k < cfg.n_layer)
    half = memory_plan.make_plan(cfg, specs, 512, gpu_layers=3)
    layer_w, other = memory_plan.layer_weight_bytes(cfg, specs)
    assert half.weights_device == sum(layer_w[:3]) and half.weights_host == sum(layer_w[3:]) + other
    with pytest.raises(G4rtError):
        memory_plan.make_plan(cfg, specs, 512, gpu_layers=cfg.n_layer + 1)


# ---- what fits a budget ------------------------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("kv_bytes,materialized", [(2, False), (4, True)])
def test_max_context_is_the_largest_that_fits(kv_bytes, materialized):
    _, cfg, specs = model("g4-dense-Q4_0-pure")

    def total(ctx):
        return memory_plan.make_plan(cfg, specs, ctx, kv_bytes=kv_bytes, materialized_attention=materialized).device_total
    for budget in (total(100), total(3000) + 1234, total(cfg.context_length) - 1):
        fit = memory_plan.max_context(cfg, specs, budget, kv_bytes=kv_bytes, materialized_attention=materialized)
        assert total(fit) <= budget < total(fit + 1)
    assert memory_plan.max_context(cfg, specs, 10 * GiB, kv_bytes=kv_bytes) == cfg.context_length
    assert memory_plan.max_context(cfg, specs, 10 * GiB, kv_bytes=kv_bytes, limit=777) == 777
    assert memory_plan.max_context(cfg, specs, 1000) == 0        # less than the weights


@needs_fixtures
def test_max_gpu_layers_is_the_most_that_fit():
    _, cfg, specs = model("g4-dense-Q4_0-pure")
    ctx = 4096
    totals = [memory_plan.make_plan(cfg, specs, ctx, gpu_layers=k).device_total for k in range(cfg.n_layer + 1)]
    assert totals == sorted(totals)
    for k in range(cfg.n_layer):
        assert memory_plan.max_gpu_layers(cfg, specs, ctx, totals[k]) == k
    assert memory_plan.max_gpu_layers(cfg, specs, ctx, totals[-1]) == cfg.n_layer


@needs_fixtures
def test_over_budget_is_refused_with_what_fits():
    _, cfg, specs = model("g4-dense-Q4_0-pure")
    budget = memory_plan.make_plan(cfg, specs, 1000).device_total
    with pytest.raises(InsufficientMemoryError) as ei:
        memory_plan.make_plan(cfg, specs, 8000, budget=budget, model="m.gguf", device="GPU")
    msg = str(ei.value)
    fit = memory_plan.max_context(cfg, specs, budget)
    assert 1000 <= fit < 8000 and f"--ctx {fit}" in msg and "m.gguf at context 8000" in msg
    layers = memory_plan.max_gpu_layers(cfg, specs, 8000, budget)
    assert f"{layers} of 6 layers on the GPU" in msg
    plan = memory_plan.make_plan(cfg, specs, 8000, budget=budget, check=False)
    assert not plan.fits and plan.fit_ctx == fit and "does NOT fit" in plan.markdown()
    with pytest.raises(InsufficientMemoryError, match="weights alone"):
        memory_plan.make_plan(cfg, specs, 16, budget=1000)


@needs_fixtures
def test_default_context_policy():
    _, cfg, specs = model("g4-dense-Q4_0-pure")
    assert memory_plan.default_context(cfg, specs) == min(cfg.context_length, 8192)
    huge = dataclasses.replace(cfg, context_length=262144)
    assert memory_plan.default_context(huge, specs) == 8192          # never the trained 256K blindly
    budget = memory_plan.make_plan(cfg, specs, 3000, kv_bytes=4).device_total
    ctx = memory_plan.default_context(cfg, specs, budget)
    assert ctx % 256 == 0 and 3000 - 256 < ctx <= 3000
    with pytest.raises(InsufficientMemoryError):
        memory_plan.default_context(cfg, specs, 1000)


@pytest.mark.parametrize("text,value", [("12GiB", 12 * GiB), ("12G", 12 * GiB), ("12GB", 12 * 10**9),
                                        ("11.5 GiB", int(11.5 * GiB)), ("512MiB", 512 << 20), ("4096", 4096),
                                        ("1t", 1 << 40)])
def test_parse_size(text, value):
    assert memory_plan.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "twelve", "12XB", "-1G", "1..5G"])
def test_parse_size_refuses(text):
    with pytest.raises(G4rtError):
        memory_plan.parse_size(text)


# ---- the 12B on a 12 GB card ----------------------------------------------------------------------------
def test_12b_shape_and_fit():
    cfg, specs = synthetic.gemma4_12b_shape()
    E, F, V = 3840, 15360, 262144
    q4 = lambda n: n // 32 * 18                                         # noqa: E731 (Q4_0 bytes)
    sliding = E * (4096 + 2048 + 2048) + 4096 * E + 3 * E * F           # q, k, v, o, ffn
    glob = E * (8192 + 2048 + 2048) + 8192 * E + 3 * E * F
    matrices = q4(40 * sliding + 8 * glob + V * E)
    norms = 4 * (40 * (4 * E + 2 * 256 + 1) + 8 * (4 * E + 2 * 512 + 1) + E + 256)   # F32, + rope_freqs
    plan8k = memory_plan.make_plan(cfg, specs, 8192, kv_bytes=2)
    assert plan8k.weights_device == matrices + norms
    assert 6.2 * GiB < plan8k.weights_device < 6.4 * GiB
    # KV: 40 sliding layers hold 1024 positions of K+V (2048 wide), 8 global layers ctx positions
    assert plan8k.kv_sliding == 40 * 2 * 1024 * 2048 * 2
    assert plan8k.kv_global == 8 * 2 * 8192 * 2048 * 2
    budget = 12 * GiB - 512 * (1 << 20)
    for ctx in (8192, 16384, 32768):
        assert memory_plan.make_plan(cfg, specs, ctx, kv_bytes=2, budget=budget).fits
    fit = memory_plan.max_context(cfg, specs, budget, kv_bytes=2)
    assert 65536 < fit < 98304
    with pytest.raises(InsufficientMemoryError, match=f"--ctx {fit}"):
        memory_plan.make_plan(cfg, specs, 131072, kv_bytes=2, budget=budget)


def test_memory_table_doc_is_current():
    import importlib.util
    spec = importlib.util.spec_from_file_location("memory_table", memory_plan.__file__.replace("runtime/memory_plan.py", "scripts/memory_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = memory_plan.__file__.replace("runtime/memory_plan.py", "docs/memory-plan.md")
    assert open(doc).read() == mod.build(12 * GiB, 512 << 20), "rerun scripts/memory_table.py"


# ---- mixture of experts: the 26B-A4B, --cpu-moe / --n-cpu-moe ------------------------------------------
@pytest.fixture(scope="module")
def moe26():
    return synthetic.gemma4_26b_a4b_shape("Q4_K_M")


def test_26b_shape_and_weights():
    E, V, X, F, FFN = 2816, 262144, 128, 704, 2112
    experts = 30 * X * 3 * F * E                                        # gate+up and down, every layer
    sliding = E * (4096 + 2048 + 2048) + 4096 * E                       # q, k, v, o
    glob = E * (8192 + 1024) + 8192 * E                                 # q, k (= v), o
    matrices = experts + 25 * sliding + 5 * glob + 30 * 3 * E * FFN + V * E
    # F32: router, 7 norms + router scale + derived router norm (E wide), expert scales, output scale,
    # q/k norms, output norm, rope_freqs
    f32 = 4 * (30 * (X * E + 9 * E + X + 1) + 25 * 2 * 256 + 5 * 2 * 512 + E + 256)
    sizes = {}
    for q, bits in (("Q4_0", 4.5), ("Q8_0", 8.5)):
        cfg, specs = synthetic.gemma4_26b_a4b_shape(q)
        plan = memory_plan.make_plan(cfg, specs, 4096)
        assert plan.weights_device == matrices * bits / 8 + f32
        assert plan.experts_device == experts * bits / 8 and plan.experts_host == 0
        sizes[q] = plan.weights_device
    assert 25e9 < matrices < 26e9                                       # "26B" parameters
    assert 13 * GiB < sizes["Q4_0"] < 15 * GiB and 24 * GiB < sizes["Q8_0"] < 27 * GiB
    cfg, specs = synthetic.gemma4_26b_a4b_shape("Q4_K_M")
    assert sizes["Q4_0"] < memory_plan.make_plan(cfg, specs, 4096).weights_device < sizes["Q8_0"]
    assert cfg.n_layer == 30 and cfg.context_length == 262144 and cfg.tied_output
    is_sliding = [(i + 1) % 6 != 0 for i in range(30)]
    assert [L.has_v_proj for L in cfg.layers] == [L.sliding for L in cfg.layers] == is_sliding  # K = V when global
    assert all(L.moe and (L.n_expert, L.n_expert_used, L.expert_ffn) == (X, 8, F) for L in cfg.layers)
    assert specs["blk.0.ffn_gate_up_exps.weight"].experts == X and specs["blk.0.ffn_gate_inp.weight"].qtype == QT.F32
    # Q4_K_M: Q6_K head, Q4_K elsewhere, 704/2112-wide rows fall back (Q4_K -> Q5_0, Q6_K -> Q8_0)
    assert specs["token_embd.weight"].qtype == QT.Q6_K and specs["blk.3.ffn_gate_up_exps.weight"].qtype == QT.Q4_K
    down = [specs[f"blk.{i}.ffn_down_exps.weight"].qtype for i in range(30)]
    assert set(down) == {QT.Q5_0, QT.Q8_0} and down.count(QT.Q8_0) == 14
    assert down == [specs[f"blk.{i}.ffn_down.weight"].qtype for i in range(30)]
    assert {specs[f"blk.{i}.attn_v.weight"].qtype for i in range(30) if (i + 1) % 6} == {QT.Q4_K, QT.Q6_K}
    with pytest.raises(G4rtError, match="unknown quantization"):
        synthetic.gemma4_26b_a4b_shape("Q3_X")


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K"])
def test_26b_shape_matches_synth(qtype):
    """The plan's 26B-A4B and `g4rt synth --moe` describe the same file (the plan adds the router
    norm weights the loader derives)."""
    from g4rt.model.graph import router_norm_name
    from g4rt.model.shapes import MOE_26B
    from g4rt.tools.synth import tensor_plan
    _, specs = synthetic.gemma4_26b_a4b_shape(qtype)
    ours = {n: (s.qtype, s.rows, s.cols) for n, s in specs.items() if n not in {router_norm_name(i) for i in range(30)}}
    assert ours == {n: (qt, r, c) for n, qt, r, c in tensor_plan(30, QT[qtype], 262144, MOE_26B)}


def test_cpu_moe_conserves_bytes(moe26):
    cfg, specs = moe26
    full = memory_plan.make_plan(cfg, specs, 8192)
    experts = memory_plan.expert_weight_bytes(cfg, specs)
    for k in (None, 20, 0):
        for n in (0, 1, 7, 29, 30):
            p = memory_plan.make_plan(cfg, specs, 8192, gpu_layers=k, cpu_moe_layers=n)
            assert p.weights_device + p.weights_host == full.weights_device
            assert p.experts_device + p.experts_host == sum(experts) == full.experts_device
            assert p.kv_device + p.kv_host == full.kv_device and p.cpu_moe_layers == n
            assert p.hybrid == (n > 0 or k is not None)
    p = memory_plan.make_plan(cfg, specs, 8192, cpu_moe_layers=7)
    assert p.weights_host == p.experts_host == sum(experts[:7]) and p.kv_host == 0
    assert p.weights_device == full.weights_device - sum(experts[:7]) and p.scratch_device == full.scratch_device
    assert 0 < p.scratch_host < 100 << 20                     # the expert products' activations only
    assert p.moe_transfer == 7 * (2 * 2816 * 4 + 2 * 8 * 4)
    assert memory_plan.make_plan(cfg, specs, 8192, cpu_moe_layers=30).experts_device == 0
    with pytest.raises(G4rtError, match="0..30"):
        memory_plan.make_plan(cfg, specs, 8192, cpu_moe_layers=31)


def test_n_cpu_moe_is_monotone(moe26):
    cfg, specs = moe26
    plans = [memory_plan.make_plan(cfg, specs, 32768, cpu_moe_layers=n) for n in range(31)]
    for a, b in zip(plans, plans[1:]):
        assert b.device_total < a.device_total and b.host_total > a.host_total
        assert b.experts_host > a.experts_host
    with_split = [memory_plan.make_plan(cfg, specs, 32768, gpu_layers=20, cpu_moe_layers=n).device_total for n in range(31)]
    assert with_split == sorted(with_split, reverse=True)
    assert len(set(with_split[20:])) == 1                     # the experts of layers >= 20 are on the host anyway


def test_fewest_cpu_moe_layers_is_the_smallest_that_fits(moe26):
    cfg, specs = moe26
    ctx = 65536
    plans = [memory_plan.make_plan(cfg, specs, ctx, cpu_moe_layers=n) for n in range(31)]

    def brute(budget, host_budget=None):
        return next((n for n, p in enumerate(plans) if p.device_total <= budget
                     and (host_budget is None or p.host_total <= host_budget)), None)
    budgets = [p.device_total + d for p in plans[::3] for d in (-1, 0)] + [plans[-1].device_total - 1, 64 * GiB]
    for budget in budgets:
        assert memory_plan.min_cpu_moe_layers(cfg, specs, ctx, budget) == brute(budget)
    hosts = [plans[12].host_total, plans[12].host_total - 1]
    for host in hosts:
        assert memory_plan.min_cpu_moe_layers(cfg, specs, ctx, plans[12].device_total, host_budget=host) == \
            brute(plans[12].device_total, host)
    # the plan over budget suggests it, and the error names it
    budget = plans[12].device_total
    plan = memory_plan.make_plan(cfg, specs, ctx, budget=budget, check=False, model="26b", device="GPU")
    assert not plan.fits and plan.fit_cpu_moe == brute(budget) == 12
    assert "12 (--n-cpu-moe 12)" in plan.markdown()
    with pytest.raises(InsufficientMemoryError, match="--n-cpu-moe 12"):
        memory_plan.make_plan(cfg, specs, ctx, budget=budget)
    assert memory_plan.make_plan(cfg, specs, ctx, budget=budget, cpu_moe_layers=12).fits
    assert memory_plan.make_plan(cfg, specs, ctx, budget=plans[-1].device_total, check=False).fit_cpu_moe == 30
    assert "(--cpu-moe)" in memory_plan.make_plan(cfg, specs, ctx, budget=plans[-1].device_total, check=False).advice()


def test_host_budget(moe26):
    cfg, specs = moe26
    p = memory_plan.make_plan(cfg, specs, 8192, cpu_moe_layers=30, budget=11 * GiB, host_budget=64 * GiB)
    assert p.fits and "within the budget of 11.00 GiB and the host budget of 64.00 GiB" in p.advice()
    small = p.host_total - 1
    with pytest.raises(InsufficientMemoryError, match="more than the host RAM budget") as ei:
        memory_plan.make_plan(cfg, specs, 8192, cpu_moe_layers=30, budget=11 * GiB, host_budget=small)
    fewer = memory_plan.min_cpu_moe_layers(cfg, specs, 8192, 11 * GiB, host_budget=small)
    assert fewer is not None and f"--n-cpu-moe {fewer}" in str(ei.value)
    p = memory_plan.make_plan(cfg, specs, 8192, cpu_moe_layers=30, budget=11 * GiB, host_budget=GiB, check=False)
    assert not p.fits_host and p.fits_device and p.fit_cpu_moe is None and p.fit_gpu_layers is None
    assert "weights in host RAM alone exceed it" in p.advice() and "does NOT fit" in p.markdown()
    assert memory_plan.make_plan(cfg, specs, 8192, budget=11 * GiB, check=False).fits_host    # nothing on the host


@needs_fixtures
def test_cpu_moe_needs_experts():
    _, cfg, specs = model("g4-dense-Q4_0-pure")
    with pytest.raises(G4rtError, match="no expert tensors"):
        memory_plan.make_plan(cfg, specs, 512, cpu_moe_layers=1)
    assert memory_plan.min_cpu_moe_layers(cfg, specs, 512, 1 << 40) is None


@needs_moe
def test_cli_plan_cpu_moe(capsys):
    path = str(MOE_FILE)
    base = ["info", path, "--plan", "--backend", "cuda", "--budget", "1GiB", "--host-budget", "1GiB"]
    assert run(base + ["--cpu-moe"]) == 0
    out = capsys.readouterr().out
    assert "all 6 layers on the GPU (cuda), every layer's experts in host RAM (--cpu-moe)" in out
    assert "| part | GPU (cuda) | host |" in out and "| &nbsp; routed experts | 0 B |" in out
    assert "Host RAM budget 1.00 GiB: fits" in out
    assert run(base + ["--n-cpu-moe", "2"]) == 0
    assert "the experts of layers 0-1 in host RAM (--n-cpu-moe 2)" in capsys.readouterr().out
    assert run(["info", path, "--plan", "--backend", "vulkan", "--budget", "1GiB"]) == 0
    out = capsys.readouterr().out
    assert "| &nbsp; routed experts |" in out and "| host |" not in out
    # over budget: the fewest host-side expert layers that fit is named
    f = GGUFFile(MOE_FILE)
    cfg = load_config(f)
    from g4rt.model.graph import model_weight_specs
    specs, _ = model_weight_specs(cfg, f)
    budget = memory_plan.make_plan(cfg, specs, 4096, cpu_moe_layers=3).device_total
    assert run(["info", path, "--plan", "--backend", "cuda", "--budget", str(budget), "--ctx", "4096"]) == 1
    assert "--n-cpu-moe 3" in capsys.readouterr().err
    assert run(["info", path, "--plan", "--backend", "cuda", "--budget", str(budget), "--ctx", "4096",
                "--n-cpu-moe", "3", "--host-budget", "1GiB"]) == 0
    capsys.readouterr()


@needs_moe
@pytest.mark.parametrize("args,message", [
    (["--n-cpu-moe", "7"], "--n-cpu-moe must be in 0..6"),
    (["--n-cpu-moe", "-1"], "--n-cpu-moe must be in 0..6"),
    (["--cpu-moe", "--n-cpu-moe", "2"], "not both"),
    (["--cpu-moe", "--backend", "cpu"], "needs a GPU backend"),
    (["--cpu-moe", "--host-budget", "1MiB"], "more than the host RAM budget of 1.00 MiB"),
])
def test_cli_plan_cpu_moe_refusals(capsys, args, message):
    argv = ["info", str(MOE_FILE), "--plan", "--backend", "cuda", "--budget", "1GiB"] + args
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("g4rt: error: ") and message in err


@needs_fixtures
def test_cli_plan_cpu_moe_on_a_dense_model(capsys):
    path = str(FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf")
    assert run(["info", path, "--plan", "--backend", "cuda", "--budget", "1GiB", "--cpu-moe"]) == 1
    assert "no mixture-of-experts layers" in capsys.readouterr().err
    assert run(["info", path, "--n-cpu-moe", "1"]) == 1
    assert "only apply with --plan" in capsys.readouterr().err


# ---- engine: default ctx, budget, run-time limits ------------------------------------------------------
@needs_fixtures
def test_engine_default_context_and_budget():
    path = FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf"
    assert Engine(path).ctx == 8192
    _, cfg, specs = model("g4-dense-Q4_0-pure")
    budget = memory_plan.make_plan(cfg, specs, 1000, kv_bytes=4).device_total
    e = Engine(path, backend="numpy", memory_budget=budget)
    assert 768 <= e.ctx <= 1000 and e.ctx % 256 == 0
    with pytest.raises(InsufficientMemoryError, match="--ctx"):
        Engine(path, backend="numpy", ctx=8000, memory_budget=budget)


@needs_fixtures
def test_engine_plans_the_kv_cache_in_the_backends_own_precision():
    """An f16 cache takes half the bytes of f32: with the same budget a backend that keeps f16
    (the GPU backends' default, or kv_dtype="f16") gets about twice the context."""
    from g4rt.backends.numpy_ref import NumpyBackend
    from g4rt.engine import kv_value_bytes
    path = FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf"
    _, cfg, specs = model("g4-dense-Q4_0-pure")
    budget = memory_plan.make_plan(cfg, specs, 1000, kv_bytes=4).device_total
    f32 = Engine(path, backend="numpy", memory_budget=budget).ctx
    f16 = Engine(path, backend=NumpyBackend(kv_dtype="f16"), memory_budget=budget).ctx
    assert f16 >= 1.5 * f32, (f16, f32)
    assert Engine(path, backend="numpy", kv_dtype="f16", memory_budget=budget).ctx == f16
    assert [kv_value_bytes(b) for b in ("numpy", "cpu", "vulkan", "cuda", "auto")] == [4, 2, 2, 2, 4]
    assert kv_value_bytes("vulkan", "f32") == 4


@needs_fixtures
def test_context_end_stops_cleanly():
    e = Engine(FIXTURES / "models" / "g4-dense-F32.gguf", ctx=8)
    assert e.remaining == 8
    e.forward([2, 10, 11, 12, 13])
    assert (e.pos, e.remaining) == (5, 3)
    with pytest.raises(ContextOverflowError, match="9 tokens do not fit the context of 8"):
        e.forward([14, 15, 16, 17])
    assert (e.pos, e.remaining) == (5, 3)          # a refused batch changes nothing
    out = e.forward([14, 15, 16])
    assert out.shape[0] == 1 and np.isfinite(out).all() and e.remaining == 0
    with pytest.raises(ContextOverflowError):
        e.forward([17])
    e.reset()
    assert e.remaining == 8


@needs_fixtures
def test_prompt_longer_than_context():
    e = Engine(FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf", ctx=16)
    with pytest.raises(ContextOverflowError, match="17 tokens do not fit the context of 16"):
        e.forward(list(range(2, 19)))
    assert e.pos == 0


# ---- CLI ---------------------------------------------------------------------------------------------
@needs_fixtures
def test_cli_plan(capsys):
    path = str(FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf")
    assert run(["info", path, "--plan", "--backend", "vulkan", "--budget", "1GiB", "--ctx", "4096"]) == 0
    out = capsys.readouterr().out
    assert "## Memory plan: g4-dense-Q4_0-pure.gguf" in out and "KV cache f16" in out and "fits" in out
    assert run(["info", path, "--plan"]) == 0          # cpu: budget from MemAvailable, f16 KV
    assert "KV cache f16" in capsys.readouterr().out
    assert run(["info", path, "--plan", "--backend", "numpy"]) == 0    # the reference keeps f32
    assert "KV cache f32" in capsys.readouterr().out
    assert run(["info", path, "--plan", "--backend", "cuda"]) == 1
    assert "needs --budget" in capsys.readouterr().err
    assert run(["info", path, "--plan", "--backend", "cuda", "--budget", "3MiB", "--ctx", "8192"]) == 1
    cap = capsys.readouterr()
    assert "does NOT fit" in cap.out and cap.err.startswith("g4rt: error: ") and "--ctx" in cap.err
    assert cap.err.count("\n") == 1
    assert run(["info", path, "--ctx", "64"]) == 1
    assert "only apply with --plan" in capsys.readouterr().err


def test_ring_slack_and_slots_are_planned():
    """Longer sliding rings (chat, speculative decoding) and several sequence slots (the server)
    are counted as the engine allocates them."""
    cfg, specs = synthetic.gemma4_12b_shape()
    base = memory_plan.make_plan(cfg, specs, 8192)
    slack = memory_plan.make_plan(cfg, specs, 8192, ring_slack=8)
    slots = memory_plan.make_plan(cfg, specs, 8192, slots=3)
    n_sliding = sum(1 for L in cfg.layers if L.window and L.owns_kv)
    width = next(L.kv_width for L in cfg.layers if L.window)
    assert slack.kv_sliding - base.kv_sliding == n_sliding * 2 * 8 * width * 2
    assert slack.kv_global == base.kv_global
    assert slots.kv_device == 3 * base.kv_device
    assert memory_plan.max_context(cfg, specs, 10 << 30, slots=2) < memory_plan.max_context(cfg, specs, 10 << 30)


def test_cli_plan_counts_parallel_slots_and_draft_rows(capsys):
    """`g4rt info --plan --parallel S --draft-max K`: the KV cache of S slots with K-row-longer rings."""
    from g4rt.cli import main
    path = FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    kv = {}
    for args in ([], ["--parallel", "4", "--draft-max", "8"]):
        with pytest.raises(SystemExit) as e:
            main.main(["info", str(path), "--plan", "--ctx", "4096", "--budget", "1GiB", *args], standalone_mode=True)
        assert e.value.code == 0
        out = capsys.readouterr().out
        kv[len(args)] = next(line for line in out.splitlines() if line.startswith("| KV cache"))
    assert "4 sequence slots" in out and "8 rows longer" in out
    assert kv[0] != kv[4]


ASSISTANT = __import__("pathlib").Path(__file__).parent / "data" / "assistant" / "g4-dense-untied-F32-assistant-F32.gguf"


def _plan_cli(capsys, *args) -> tuple[int, str, str]:
    """`g4rt info ARGS` through the CLI's entry point (errors as one line and an exit code)."""
    from g4rt.cli import run as cli
    code = cli(["info", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_fixtures
def test_cli_plan_counts_an_mtp_assistant_without_a_kv_cache(capsys):
    """`info --plan --draft ASSISTANT`: the assistant's own tensors and one draft step's buffers per
    slot, no KV cache (it reads the target's), added to the target's total in the shared budget."""
    from g4rt.draft_plan import assistant_cost
    target = FIXTURES / "models" / "g4-dense-untied-F32.gguf"
    f, cfg, specs = model("g4-dense-untied-F32")
    want = assistant_cost(GGUFFile(ASSISTANT), cfg, specs, 256, where="CPU", slots=2, ring_slack=8)
    assert want.kv == 0 and want.weights == sum(t.nbytes for t in GGUFFile(ASSISTANT).tensors.values())
    assert want.scratch >= 2 * cfg.n_vocab * 4          # at least each slot's logits row
    code, out, _ = _plan_cli(capsys, target, "--plan", "--ctx", "256", "--parallel", "2", "--budget", "1GiB",
                             "--draft", ASSISTANT)
    assert code == 0
    assert "MTP assistant" in out and "none (it reads the target's)" in out
    assert f"| **total** | {memory_plan.human(want.total)} |" in out
    base = memory_plan.make_plan(cfg, specs, 256, check=False, slots=2, ring_slack=8)
    assert f"Target + draft on the CPU: {memory_plan.human(base.device_total + want.total)}" in out


@needs_fixtures
def test_cli_plan_counts_a_draft_models_cache_per_slot_and_refuses_what_does_not_fit(capsys):
    target = FIXTURES / "models" / "g4-dense-untied-F32.gguf"
    draft = FIXTURES / "models" / "g4-dense-untied-Q8_0.gguf"
    kv = {}
    for slots in (1, 3):
        code, out, _ = _plan_cli(capsys, target, "--plan", "--ctx", "256", "--parallel", slots, "--budget", "1GiB",
                                 "--draft", draft)
        assert code == 0 and "(draft model, on the CPU)" in out
        section = out[out.index("## Draft"):]
        kv[slots] = next(line for line in section.splitlines() if line.startswith("| KV cache"))
    assert kv[1] != kv[3]
    # a budget the target fits alone but not with its draft
    f, cfg, specs = model("g4-dense-untied-F32")
    alone = memory_plan.make_plan(cfg, specs, 256, check=False, ring_slack=8).device_total
    code, out, err = _plan_cli(capsys, target, "--plan", "--ctx", "256", "--budget", str(alone + 1024),
                               "--draft", draft)
    assert code != 0 and "does NOT fit" in out
    assert "with the draft g4-dense-untied-Q8_0.gguf" in err and "Traceback" not in err


def test_cli_draft_only_applies_with_plan(capsys):
    code, _, err = _plan_cli(capsys, ASSISTANT, "--draft", ASSISTANT)
    assert code != 0 and "--draft only apply with --plan" in err


MM_DIR = FIXTURES.parent / "fixtures-mm" / "models"


@pytest.mark.skipif(not (MM_DIR / "mmproj-g4u-mm-F32.gguf").is_file(), reason="../shared/fixtures-mm is absent")
def test_cli_plan_counts_an_offloaded_projector_in_the_gpu_budget(capsys):
    """On a GPU backend the projector's weights and largest encoder graph live beside the model
    (offloaded, as run / serve do): a budget the model fits alone but not with them is refused;
    --no-mmproj-offload keeps them in host memory."""
    from g4rt.mmproj.plan import projector_bytes
    from g4rt.mmproj.reader import load_projector
    model_file, mm = MM_DIR / "g4u-mm-F32.gguf", MM_DIR / "mmproj-g4u-mm-F32.gguf"
    f = GGUFFile(model_file)
    cfg = load_config(f)
    specs = weight_specs(f)
    alone = memory_plan.make_plan(cfg, specs, 256, check=False).device_total
    w, bufs = projector_bytes(load_projector(mm, cfg.n_embd))
    assert w == sum(t.nbytes for t in GGUFFile(mm).tensors.values()) and bufs > 0
    budget = alone + (w + bufs) // 2
    code, out, err = _plan_cli(capsys, model_file, "--plan", "--backend", "vulkan", "--budget", budget, "--ctx", 256,
                               "--mmproj", mm)
    assert code != 0 and "uploaded to the GPU (vulkan)" in out and "does NOT fit" in out
    assert f"Model + projector on the GPU (vulkan): {memory_plan.human(alone + w + bufs)}" in out
    assert "with the projector mmproj-g4u-mm-F32.gguf" in err
    code, out, _ = _plan_cli(capsys, model_file, "--plan", "--backend", "vulkan", "--budget", budget, "--ctx", 256,
                             "--mmproj", mm, "--no-mmproj-offload")
    assert code == 0 and "memory-mapped, read by the native CPU encoder" in out
