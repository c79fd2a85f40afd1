"""Expert placement (`--cpu-moe` / `--n-cpu-moe N`): a MoE layer's expert products run on the
native CPU backend between GPU pieces. The cut itself (pure), the hybrid against the single
backend on every front present (numpy, Vulkan on lavapipe, CUDA on the simulator), decode
through the cache, and the refusals a user can hit from the command line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, vulkan_skip_reason
from g4rt import ops as O

MOE = FIXTURES.parent / "fixtures-moe"
NEED_MOE = pytest.mark.skipif(not (MOE / "MANIFEST.json").is_file(), reason=f"{MOE} (the MoE fixtures) is absent")
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
NEED_CC = pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")
MODEL = MOE / "models" / "g4-moe-Q4_K_M.gguf"


def _graph(n_tokens=1, path=MODEL):
    from g4rt.engine import Engine
    e = Engine(path, backend="numpy", ctx=64)
    try:
        return e.graph(n_tokens).graph, e.config
    finally:
        e.close()


# ---- the cut (pure) -------------------------------------------------------------------------------
@NEED_MOE
def test_expert_ranges_hold_exactly_the_expert_products():
    from g4rt.backends.graph_split import expert_op_ranges, layer_of
    g, cfg = _graph()
    ranges = expert_op_ranges(g)
    assert sorted(ranges) == [L.index for L in cfg.layers if L.moe]
    for layer, (s, e) in ranges.items():
        kinds = [op.kind for op in g.ops[s:e]]
        assert kinds[0] == "moe_matmul" and kinds[-1] == "moe_sum", kinds
        assert all(layer_of(lb) == layer for lb in g.labels[s:e])
        assert not any(isinstance(op, (O.KvStore, O.Attention, O.MoeRoute)) for op in g.ops[s:e])
        # every expert weight of the layer is read inside the range, and nowhere else
        inside = {w for op in g.ops[s:e] for w in O.op_weights(op) if g.weights[w].experts}
        outside = {w for i, op in enumerate(g.ops) if not s <= i < e for w in O.op_weights(op)
                   if w in inside}
        assert inside and not outside


@NEED_MOE
@pytest.mark.parametrize("front_layers,moe_layers", [(1 << 30, 1 << 30), (1 << 30, 2), (3, 1 << 30), (0, 1 << 30)])
def test_pieces_alternate_and_hand_over_only_what_is_read(front_layers, moe_layers):
    from g4rt.backends.graph_split import expert_op_ranges, op_sides, pieces
    g, cfg = _graph(n_tokens=5)
    sides = op_sides(g, front_layers, moe_layers)
    segs = pieces(g, sides)
    assert segs[0].start == 0 and segs[-1].end == len(g.ops)
    assert all(a.end == b.start and a.side != b.side for a, b in zip(segs, segs[1:]))
    for layer, (s, e) in expert_op_ranges(g).items():
        if layer < min(moe_layers, cfg.n_layer):
            assert set(sides[s:e]) == {"back"}
    n_front_layers = min(front_layers, cfg.n_layer)
    between = 0
    for seg in segs:
        if seg.side == "back" and seg.start < len(g.ops) and g.ops[seg.start].kind == "moe_matmul" \
                and seg.end <= len(g.ops) and g.ops[seg.end - 1].kind == "moe_sum" \
                and n_front_layers == cfg.n_layer:
            # an expert piece between GPU pieces takes the normed row and the route
            assert sorted(seg.inputs) == ["moe_in", "route"], seg.inputs
            between += 1
        for b in seg.inputs:      # an input is read before this piece writes it
            first_read = next(i for i in range(seg.start, seg.end) if b in g.ops[i].reads())
            assert not any(g.ops[i].out == b for i in range(seg.start, first_read))
    if n_front_layers == cfg.n_layer:        # the check above ran for every moved layer
        assert between == sum(1 for L in cfg.layers if L.moe and L.index < moe_layers)
    caches_by_side = {}
    for seg in segs:
        for c in seg.caches:
            assert caches_by_side.setdefault(c, seg.side) == seg.side


@NEED_MOE
def test_a_placement_that_splits_a_cache_is_refused():
    from g4rt.backends.graph_split import pieces
    from g4rt.errors import G4rtError
    g, _ = _graph()
    store = next(i for i, op in enumerate(g.ops) if isinstance(op, O.KvStore))
    sides = ["front"] * len(g.ops)
    sides[store] = "back"                    # the attention that reads the cache stays in front
    with pytest.raises(G4rtError, match="both sides"):
        pieces(g, sides)


# ---- the hybrid against one backend ----------------------------------------------------------------
def _fronts():
    from g4rt.testing.cuda.simulator import sim_available
    out = ["numpy"]
    out.append(pytest.param("vulkan", marks=pytest.mark.skipif(vulkan_skip_reason() is not None,
                                                                 reason=str(vulkan_skip_reason()))))
    ok, why = sim_available()
    out.append(pytest.param("cuda-sim", marks=pytest.mark.skipif(not ok, reason=str(why))))
    return out


def _front(name, kv_dtype="f16"):
    if name == "numpy":
        from g4rt.backends.numpy_ref import NumpyBackend
        return NumpyBackend(kv_dtype=kv_dtype)
    if name == "vulkan":
        from g4rt.backends.vulkan import VulkanBackend
        return VulkanBackend(kv_dtype=kv_dtype)
    from test_cuda_sim import sim
    return sim(kv_dtype)


def _hybrid(front, front_layers, moe_layers, kv_dtype="f16"):
    from g4rt.backends.cpu import CpuBackend
    from g4rt.backends.hybrid import HybridBackend, layers_split
    # exact CPU half: these tests are about where layers run, against exact single backends
    return HybridBackend(_front(front, kv_dtype), CpuBackend(kv_dtype=kv_dtype, precision="exact"),
                         layers_split(front_layers), back_expert_layers=moe_layers)


@NEED_MOE
@NEED_CC
@pytest.mark.parametrize("front", _fronts())
@pytest.mark.parametrize("front_layers,moe_layers", [(1 << 30, 1 << 30), (4, 2)], ids=["cpu-moe", "gpu4-ncpumoe2"])
def test_cpu_moe_equals_the_single_backend_and_meets_the_bar(front, front_layers, moe_layers):
    from g4rt.tools import parity as P
    from g4rt.engine import Engine
    full = np.load(MOE / "ref" / "g4-moe-Q4_K_M.exact.npz")
    ref = {k: full[k] for k in full.files if k.endswith("_0")}
    hb = _hybrid(front, front_layers, moe_layers)
    e = Engine(MODEL, backend=hb, ctx=128)
    try:
        got = P.run_reference(e, ref)
        assert sum(s.side == "back" for s in hb.last_pieces) >= 2      # experts between GPU parts
        ids = ref["ids_0"]
        e.reset()
        hybrid_logits = e.forward(ids, all_logits=True)
    finally:
        e.close()
    w = P.worst(P.compare(ref, got))
    assert w["top1"] >= 0.99 and w["max_dlogit"] <= 0.05, w
    single = Engine(MODEL, backend=_front(front), ctx=128)
    try:
        alone = single.forward(ids, all_logits=True)
    finally:
        single.close()
    np.testing.assert_allclose(hybrid_logits, alone, atol=2e-3, rtol=0)


@NEED_MOE
@NEED_CC
def test_cpu_moe_decode_through_the_cache_equals_prefill():
    from conftest import check_decode_equals_prefill
    ids = np.load(MOE / "ref" / "g4-moe-Q4_K_M.exact.npz")["ids_3"][:40]
    check_decode_equals_prefill(lambda kv: _hybrid("numpy", 1 << 30, 1 << 30, kv), MODEL, ids, "f32", chunk=7)


@NEED_MOE
@NEED_CC
@pytest.mark.parametrize("front", _fronts())
def test_hand_over_bytes_per_token(front):
    """Per MoE layer and token through the host: the normed row and the route to the CPU and
    the summed row back. The residual and dense-MLP rows stay on a GPU from one piece to the
    next (numpy, which cannot keep them, sends them through the host)."""
    from g4rt.engine import Engine
    hb = _hybrid(front, 1 << 30, 1 << 30)
    e = Engine(MODEL, backend=hb, ctx=64)
    try:
        e.forward([5])
        cg = e.graph(1)
        cfg = e.config
    finally:
        e.close()
    n_moe = sum(L.moe for L in cfg.layers)
    k = max(L.n_expert_used for L in cfg.layers)
    E = cfg.n_embd
    kept_on_host = 0 if front != "numpy" else 2 * E * 4
    assert cg.transfer_bytes == n_moe * ((E + 2 * k) * 4 + E * 4 + kept_on_host)
    fronts = [s for s in cg.pieces if s.side == "front"]
    if front != "numpy":
        assert all(sorted(s.kept_in) == ["o", "x"] for s in fronts[1:]), [s.kept_in for s in fronts]


# ---- what a user can get wrong ------------------------------------------------------------------
@NEED_MOE
@pytest.mark.parametrize("args,fragment", [
    (["--backend", "cpu", "--cpu-moe"], "needs a GPU backend"),
    (["--backend", "numpy", "--n-cpu-moe", "2"], "needs a GPU backend"),
    (["--backend", "vulkan", "--cpu-moe", "--n-cpu-moe", "2"], "not both"),
    (["--backend", "vulkan", "--n-cpu-moe", "99"], "more than the model's"),
])
def test_placement_refusals(args, fragment):
    _refused(["run", str(MODEL), "-p", "hi", "-n", "1", "-q"] + args, fragment)


def test_cpu_moe_on_a_dense_model_is_refused():
    dense = FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf"
    if not dense.is_file():
        pytest.skip(f"{dense} is absent")
    _refused(["run", str(dense), "-p", "hi", "-n", "1", "-q", "--backend", "vulkan", "--cpu-moe"],
             "no mixture-of-experts layers")


def _refused(args, fragment):
    """One `g4rt: error:` line naming the problem, exit != 0, no traceback; checked before any
    device opens (so it holds without a GPU too)."""
    proc = subprocess.run([sys.executable, "-m", "g4rt"] + args, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and fragment in proc.stderr, proc.stderr
    assert proc.stderr.startswith("g4rt: error: ") and "Traceback" not in proc.stderr, proc.stderr


@NEED_MOE
@NEED_CC
def test_cpu_moe_fits_where_the_whole_model_does_not():
    """A card too small for the experts takes the rest with --cpu-moe; one too small even for
    that is refused before anything is uploaded, with what to change."""
    from g4rt.backends.cpu import CpuBackend
    from g4rt.backends.hybrid import HybridBackend, layers_split
    from g4rt.engine import Engine
    from g4rt.errors import G4rtError
    from test_cuda_compile import emulated
    path = MOE / "models" / "g4-moe-F32.gguf"
    card = 298 << 20          # ~27 MiB once the reserve is kept: the model needs ~36, without experts ~18
    with pytest.raises(G4rtError, match="--gpu-layers"):
        Engine(path, backend=emulated(total_memory=card), ctx=64).forward([2, 3])
    hb = HybridBackend(emulated(total_memory=card), CpuBackend(), layers_split(1 << 30), back_expert_layers=1 << 30,
                       batch=64)
    e = Engine(path, backend=hb, ctx=64)
    try:
        assert np.isfinite(e.forward([2, 3])).all()
    finally:
        e.close()
    hb = HybridBackend(emulated(total_memory=280 << 20), CpuBackend(), layers_split(1 << 30),
                       back_expert_layers=1 << 30, batch=64)
    e = Engine(path, backend=hb, ctx=64)
    try:
        with pytest.raises(G4rtError, match="--cpu-moe"):
            e.forward([2, 3])
    finally:
        e.close()
