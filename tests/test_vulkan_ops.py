"""Every Vulkan kernel against the CPU reference backend, op by op, on fresh random inputs.

Inputs reach both backends the same way: an F32 "table" weight per input row block, copied in by
an EmbedLookup of tokens 0..n-1 (exact), so each test graph is a plain op list that any backend
runs. Error bound per op: max|vk - cpu| / max|cpu| (REL below), chosen from what f32 accumulation
in another order (and f16 KV storage, for attention over the cache) can cost; the reference's
own values are never recomputed here.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from g4rt import ops as O
from g4rt.backends.numpy_ref import NumpyBackend
from g4rt.errors import BackendUnavailableError
from conftest import vulkan_skip_reason
from g4rt.gguf.quant_types import block_geometry
from op_cases import ALL_TYPES, Case, attention_case, elementwise_case, long_cache_decode, random_weight, rel_err, rng

_SKIP = vulkan_skip_reason()
if _SKIP is None:
    from g4rt.backends.vulkan import VulkanBackend

pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")

REL = {  # max|a-b| / max|b|
    "matmul": 2e-5, "embed": 1e-6, "rmsnorm": 2e-6, "rope": 2e-5, "attention": 1e-5,
    "attention_f16": 2e-3, "elementwise": 2e-6, "kv_store_f16": 1e-3,
}
def make_backends(caches=None, **vk_options):
    vk = VulkanBackend(**vk_options)
    cpu = NumpyBackend(kv_dtype=vk_options.get("kv_dtype", "f16"))
    return cpu, vk


def run_both(case: Case, out: str, cpu=None, vk=None, pos0=0, observe=False, **vk_options):
    if cpu is None:
        cpu, vk = make_backends(**vk_options)
        for be in (cpu, vk):
            be.load_weights(case.src.specs, case.src)
            be.allocate_caches(case.caches)
    g = case.graph(out)
    toks = np.arange(case.n, dtype=np.int32)
    if observe:
        seen = {"cpu": [], "vk": []}
        a = cpu.compile(g).run(toks, pos0, observer=lambda i, op, arr: seen["cpu"].append(arr))
        b = vk.compile(g).run(toks, pos0, observer=lambda i, op, arr: seen["vk"].append(arr))
        return a, b, seen
    return cpu.compile(g).run(toks, pos0), vk.compile(g).run(toks, pos0)


# ---- matmul: every type, matvec (n=1, n<=8) and matmul (n>8), odd rows, chunked weights ------
# kernels: "cpu" = the barrier-free set lavapipe uses by default, "gpu" = the subgroup / tiled
# kernels meant for GPUs (both are checked here, on whatever device runs the tests)
@pytest.mark.parametrize("kernels", ["cpu", "gpu"])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 5, 37])
def test_matmul(qtype, n, kernels):
    block, size = block_geometry(qtype)
    cols = 512 if block == 256 else (96 if block == 32 else 72)   # 72: float rows with a tail
    rows = 77
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, cols)))
    c.src.add_raw("w", qtype, random_weight(qtype, rows, cols), cols)
    c.ops.append(O.MatMul(c.buf("y", rows), x, "w"))
    # ~9 weight rows per buffer: several chunks, one dispatch each, the last one partial (the
    # same cap splits the activations into row bands)
    cap = max(32 * cols, 9 * (cols // block) * size)
    a, b = run_both(c, "y", max_buffer_bytes=-(-cap // 256) * 256, kernels=kernels)
    assert rel_err(b, a) < REL["matmul"]


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_embed_every_type_chunked_table(qtype):
    block, size = block_geometry(qtype)
    cols = 512 if block == 256 else 96
    rows = 50
    c = Case(7)
    table = c.src.add_raw("tab", qtype, random_weight(qtype, rows, cols), cols)
    c.buffers["tokens"] = O.Buffer("tokens", 7, 1, "i32")
    c.ops.append(O.EmbedLookup(c.buf("e", cols), table, 0.5))
    g = c.graph("e")
    cap = max(4 * cols, 8 * (cols // block) * size)
    cpu, vk = make_backends(max_buffer_bytes=-(-cap // 256) * 256)
    for be in (cpu, vk):
        be.load_weights(c.src.specs, c.src)
        be.allocate_caches({})
    assert len(vk.weights[table].chunks) > 3
    toks = np.array([0, 49, 8, 9, 23, 24, 49], np.int32)    # chunk edges
    a = cpu.compile(g).run(toks, 0)
    b = vk.compile(g).run(toks, 0)
    assert rel_err(b, a) < REL["embed"]


def test_weights_through_device_staging_upload():
    """The device-only upload path (staging buffer + copy kernel) that discrete GPUs use."""
    c = Case(3)
    x = c.input("x", rng.standard_normal((3, 256)))
    x2 = c.input("x2", rng.standard_normal((3, 96)))
    c.src.add_raw("w", QT.Q4_K, random_weight(QT.Q4_K, 33, 256), 256)
    c.src.add_raw("w2", QT.Q4_0, random_weight(QT.Q4_0, 31, 96), 96)   # 31 * 54 B: not whole words
    c.ops.append(O.MatMul(c.buf("y", 33), x, "w"))
    c.ops.append(O.MatMul(c.buf("z", 31), x2, "w2"))
    c.ops.append(O.Slice(c.buf("y2", 31), "y", 0, 0))
    c.ops.append(O.Add("z", "z", "y2"))
    a, b = run_both(c, "z", weight_memory="device")
    assert rel_err(b, a) < REL["matmul"]


# ---- norms, rope --------------------------------------------------------------------------
@pytest.mark.parametrize("group,with_weight", [(256, True), (64, True), (64, False)])
def test_rmsnorm(group, with_weight):
    c = Case(5)
    x = c.input("x", rng.standard_normal((5, 256)) * 3)
    w = c.src.add("nw", rng.standard_normal((1, group))) if with_weight else None
    c.ops.append(O.RmsNorm(c.buf("y", 256), x, w, 1e-6, group))
    a, b = run_both(c, "y")
    assert rel_err(b, a) < REL["rmsnorm"]


@pytest.mark.parametrize("head_dim,n_rot,base,ff,pos0", [
    (64, 64, 10000.0, False, 0),
    (128, 128, 1e6, True, 2300),        # proportional RoPE: factors 1 then 1e30
    (64, 32, 10000.0, False, 9000),     # partial rotation: columns past n_rot are copied
])
def test_rope(head_dim, n_rot, base, ff, pos0):
    n = 6
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, 4 * head_dim)))
    ffn = None
    if ff:
        f = np.ones(n_rot // 2, np.float32)
        f[n_rot // 8:] = 1e30
        ffn = c.src.add("ff", f[None, :])
    c.ops.append(O.Rope(c.buf("y", 4 * head_dim), x, head_dim, n_rot, base, ffn))
    a, b = run_both(c, "y", pos0=pos0)
    assert rel_err(b, a) < REL["rope"]


# ---- elementwise --------------------------------------------------------------------------
def test_elementwise_ops():
    c = elementwise_case()
    a, b, seen = run_both(c, "sl", observe=True)
    assert rel_err(b, a) < REL["elementwise"]
    for i, (x, y) in enumerate(zip(seen["cpu"], seen["vk"])):
        assert rel_err(y, x) < REL["elementwise"], c.ops[i]


def test_softcap_and_gelu_large_inputs_stay_finite():
    c = Case(2)
    x = c.input("x", np.array([[-1e4, -80.0, -3.0, 0.0, 1e-3, 3.0, 80.0, 1e4]] * 2))
    c.ops += [O.Softcap(c.buf("y", 8), x, 30.0), O.Gelu(c.buf("z", 8), x), O.Add("y", "y", "z")]
    a, b = run_both(c, "y")
    assert rel_err(b, a) < REL["elementwise"]


# ---- attention + KV store: window, GQA, ring wrap-around, pos0 > 0, f16/f32 KV ---------------
@pytest.mark.parametrize("kernels", ["cpu", "gpu"])
@pytest.mark.parametrize("kv_dtype", ["f32", "f16"])
@pytest.mark.parametrize("n_head,n_kv,D,window,ring", [
    (4, 2, 64, 16, 16),      # sliding window 16 in a 16-row ring: wraps around
    (4, 1, 128, 0, 64),      # global, 1 KV head (GQA 4:1)
    (2, 2, 256, 5, 5),       # window 5, head_dim 256 (n > ring in one batch)
    (4, 2, 96, 12, 12),      # head_dim a multiple of 8 but not of 32
    (2, 1, 512, 0, 80),      # the 12B's global head_dim
])
def test_attention_through_the_cache(kv_dtype, n_head, n_kv, D, window, ring, kernels):
    cpu, vk = make_backends(kv_dtype=kv_dtype, kernels=kernels)
    pos = 0
    steps = [7, 1, 1, 12, 1, 30 if ring >= 30 else ring + 3, 1, 9, 1]   # prefills, decodes, n > ring
    for i, n in enumerate(steps):
        if pos + n > (ring if window == 0 else 10 ** 6):
            break
        c = attention_case(n, n_head, n_kv, D, window, ring, seed=i)
        for be in (cpu, vk):
            be.load_weights(c.src.specs, c.src)
            if i == 0:
                be.allocate_caches(c.caches)
        a, b, seen = run_both(c, "o", cpu=cpu, vk=vk, pos0=pos, observe=True)
        tol = REL["attention_f16" if kv_dtype == "f16" else "attention"]
        assert rel_err(b, a) < tol, (i, pos, n)
        # the cache after KvStore (rows never written are zero on both sides)
        tol_c = REL["kv_store_f16"] if kv_dtype == "f16" else 1e-7
        assert rel_err(seen["vk"][-1], seen["cpu"][-1].astype(np.float32)) < tol_c
        pos += n
    assert pos > ring or window == 0


# ---- buffers larger than one storage buffer: split into row bands ----------------------------
def test_row_bands_when_buffers_exceed_one_storage_buffer():
    n, E, F = 40, 256, 384
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, E)))
    c.src.add_raw("w1", QT.Q8_0, random_weight(QT.Q8_0, F, E), E)
    c.src.add_raw("w2", QT.Q4_0, random_weight(QT.Q4_0, E, F), F)
    nw = c.src.add("nw", rng.standard_normal((1, E)))
    c.ops += [
        O.RmsNorm(c.buf("h", E), x, nw, 1e-6, E),
        O.MatMul(c.buf("u", F), "h", "w1"),
        O.GeluMul("u", "u", "u"),
        O.MatMul(c.buf("d", E), "u", "w2"),
        O.Add("x", "x", "d"),
        O.Slice(c.buf("last", E, rows=1), "x", n - 1, 0),
        O.Rope(c.buf("r", E), "x", 64, 64, 10000.0, None),
        O.Add("r", "r", "x"),
    ]
    # 16 KiB arenas: a [40, 384] f32 buffer (60 KiB) spans 4 arenas
    cpu, vk = make_backends(max_buffer_bytes=16 << 10)
    for be in (cpu, vk):
        be.load_weights(c.src.specs, c.src)
        be.allocate_caches({})
    vg = vk.compile(c.graph("r"))
    assert len(vg.locs["u"].pieces) >= 4
    a = cpu.compile(c.graph("r")).run(np.arange(n), 3)
    b = vg.run(np.arange(n), 3)
    assert rel_err(b, a) < REL["matmul"] * 5


# ---- the recorded sequence is replayed: new tokens / pos0 without re-recording ----------------
def test_replay_with_new_tokens_and_positions():
    c = Case(3)
    table = c.src.add_raw("tab", QT.Q4_0, random_weight(QT.Q4_0, 20, 64), 64)
    c.ops += [O.EmbedLookup(c.buf("e", 64), table, 1.0), O.Rope(c.buf("r", 64), "e", 64, 64, 1e4, None)]
    cpu, vk = make_backends()
    for be in (cpu, vk):
        be.load_weights(c.src.specs, c.src)
        be.allocate_caches({})
    gc, gv = cpu.compile(c.graph("r")), vk.compile(c.graph("r"))
    seq = gv.seq
    for toks, pos0 in [([1, 2, 3], 0), ([19, 0, 7], 100), ([5, 5, 5], 4000)]:
        assert rel_err(gv.run(np.array(toks), pos0), gc.run(np.array(toks), pos0)) < REL["rope"]
    assert gv.seq is seq


# ---- device selection errors ---------------------------------------------------------------
def test_unknown_device_index_and_name_are_clear_errors():
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        VulkanBackend(device=99)
    with pytest.raises(BackendUnavailableError, match="no Vulkan device name contains"):
        VulkanBackend(device="no-such-gpu-xyz")


def test_device_by_name_substring():
    from g4rt.backends.vulkan.device import probe_devices
    name = probe_devices()[0][0]
    be = VulkanBackend(device=name[:6].upper())
    assert be.info.index == 0 and name in be.device_name
    be.close()


# ---- long loops: the 12B's widest rows and a long cache ---------------------------------------
@pytest.mark.parametrize("kernels", ["cpu", "gpu"])
@pytest.mark.parametrize("n", [1, 40])
def test_matmul_with_the_12b_ffn_width(n, kernels):
    """K = 15360 (the 12B's ffn_down): loops long enough that a truncating driver would show."""
    K, rows = 15360, 70
    c = Case(n)
    x = c.input("x", rng.standard_normal((n, K)))
    c.src.add_raw("w", QT.Q4_0, random_weight(QT.Q4_0, rows, K), K)
    c.ops.append(O.MatMul(c.buf("y", rows), x, "w"))
    a, b = run_both(c, "y", kernels=kernels)
    assert rel_err(b, a) < REL["matmul"] * 2


def test_attention_over_a_long_cache():
    """A decode step at position 3000 over a 3072-row global cache with head_dim 512."""
    cpu, vk = make_backends(kv_dtype="f32")
    a, b = long_cache_decode([cpu, vk])
    assert rel_err(b, a) < REL["attention"] * 10
