"""Row-exact small batches on every backend: a batch of up to ops.ROW_EXACT_MAX (16) rows
gives every row the very bits a one-row decode step gives it. Speculative verification and
several sequences decoded together rest on this: they reproduce plain greedy decoding token for
token only if a row's logits do not depend on what else is in its batch."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import FIXTURES
from g4rt.ops import ROW_EXACT_MAX, one_sequence

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")
MOE = FIXTURES.parent / "fixtures-moe"


def _case(path, ref, start, kv_dtype, threads, sizes, backend="cpu"):
    from g4rt.engine import Engine
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    r = np.load(ref)
    ids = max((r[k] for k in r.files if k.startswith("ids")), key=len)
    start = min(start, len(ids) - ROW_EXACT_MAX)
    # ring slack: moving back over a wrapped sliding window must be exact (Engine.reusable_prefix)
    if backend == "cuda-sim":
        from test_cuda_sim import sim
        e = Engine(path, backend=sim(kv_dtype), ctx=len(ids) + 8, ring_slack=ROW_EXACT_MAX)
    else:
        opts = {"threads": threads} if backend == "cpu" else {}
        if backend.startswith("vulkan"):
            backend, opts = "vulkan", {"kernels": backend.split(":")[1]}
        e = Engine(path, backend=backend, ctx=len(ids) + 8, kv_dtype=kv_dtype, ring_slack=ROW_EXACT_MAX, **opts)
    try:
        e.forward(ids[:start])
        p = e.pos
        decode = np.concatenate([e.forward([t]) for t in ids[start:start + max(sizes)]])
        for n in sizes:
            e.truncate(p)
            batch = e.forward(ids[start:start + n], all_logits=True)
            np.testing.assert_array_equal(batch, decode[:n], err_msg=f"{path.name}: a batch of {n} rows")
    finally:
        e.close()


@pytest.mark.parametrize("name", ["g4-dense-Q4_0-pure", "g4-dense-Q4_K_M", "g4-dense-Q6_K", "g4-dense-F32",
                                  "g4-dense-BF16", "g4-dense-Q8_0", "g4-dense-keqv-Q4_K_M", "g4-edge-Q4_K_M",
                                  "g4-dense-untied-Q4_0-pure"])
@pytest.mark.parametrize("kv_dtype", ["f16", "f32"])
def test_batch_rows_equal_decode_steps(name, kv_dtype):
    """Window-16 fixtures with 40 tokens cached: the batch crosses ring wraps."""
    _case(FIXTURES / "models" / f"{name}.gguf", FIXTURES / "ref" / f"{name}.exact.npz", 40, kv_dtype, 2,
          (2, 5, 9, ROW_EXACT_MAX))


@pytest.mark.parametrize("threads", [1, 2])
def test_long_context_split_attention_is_row_exact(threads):
    """1,000 cached positions: decode splits the keys across threads (flash-decoding); each row of
    a batch takes the same split."""
    name = "g4-dense-w1024-Q4_0-pure"
    _case(FIXTURES / "models" / f"{name}.gguf", FIXTURES / "ref" / f"{name}.long.exact.npz", 1000, "f16",
          threads, (3, ROW_EXACT_MAX))


@pytest.mark.parametrize("name", ["g4-dense-Q4_K_M", "g4-edge-Q4_0-pure", "g4-dense-keqv-F32"])
@pytest.mark.parametrize("kv_dtype", ["f16", "f32"])
def test_numpy_reference_is_row_exact_too(name, kv_dtype):
    _case(FIXTURES / "models" / f"{name}.gguf", FIXTURES / "ref" / f"{name}.exact.npz", 40, kv_dtype, 1,
          (2, 9, ROW_EXACT_MAX), backend="numpy")


def _gpu_backends():
    from conftest import vulkan_skip_reason
    from g4rt.testing.cuda.simulator import sim_available
    vk = pytest.mark.skipif(vulkan_skip_reason() is not None, reason=str(vulkan_skip_reason()))
    ok, why = sim_available()
    return [pytest.param("vulkan:cpu", marks=vk), pytest.param("vulkan:gpu", marks=vk),
            pytest.param("cuda-sim", marks=pytest.mark.skipif(not ok, reason=str(why)))]


@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("name", ["g4-dense-Q4_K_M", "g4-edge-Q4_0-pure"])
@pytest.mark.parametrize("kv_dtype", ["f16", pytest.param("f32", marks=pytest.mark.slow)])
def test_gpu_backends_are_row_exact_too(backend, name, kv_dtype):
    """Vulkan (both kernel sets, on lavapipe) and the CUDA kernels (on the simulator)."""
    _case(FIXTURES / "models" / f"{name}.gguf", FIXTURES / "ref" / f"{name}.exact.npz", 40, kv_dtype, 1,
          (2, 9, ROW_EXACT_MAX), backend=backend)


def test_moe_batch_rows_equal_decode_steps():
    name = "g4-moe-Q4_K_M"
    _case(MOE / "models" / f"{name}.gguf", MOE / "ref" / f"{name}.exact.npz", 100, "f16", 2, (2, ROW_EXACT_MAX))
    _case(MOE / "models" / f"{name}.gguf", MOE / "ref" / f"{name}.exact.npz", 100, "f16", 1, (3,), backend="numpy")


def test_the_c_kernels_use_the_contracts_limit():
    """g4cpu.h cannot import ops.ROW_EXACT_MAX; it must state the same number."""
    import re
    from g4rt.backends.cpu.compiler import source_dir
    header = (source_dir() / "g4cpu.h").read_text()
    assert int(re.search(r"#define G4_ROW_EXACT_MAX (\d+)", header).group(1)) == ROW_EXACT_MAX


def _isas():
    try:
        from g4rt.backends.cpu.compiler import supported_isas
        return supported_isas()
    except Exception:                 # noqa: BLE001 - no compiler: the module skips anyway
        return ["scalar"]


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"])
def test_matmul_rows_equal_one_row_matmuls(qtype, isa):
    """Every weight type, every code path the host runs: a matmul of n <= 16 rows gives each row
    the bits of that row's one-row matmul (the multi-row kernels decode a block once for several
    rows and must not change any row's arithmetic)."""
    from gguf import GGMLQuantizationType as QT

    from g4rt import ops as O
    from g4rt.backends.cpu import CpuBackend
    from op_cases import Case, random_weight, rng
    qt = QT[qtype]
    K = 512
    n = 11
    x = rng.standard_normal((n, K)).astype(np.float32)
    raw = random_weight(qt, 37, K)

    def run(rows):
        c = Case(len(rows))
        xi = c.input("x", x[rows])
        w = c.src.add_raw("w", qt, raw, K)
        c.ops.append(O.MatMul(c.buf("y", 37), xi, w))
        be = CpuBackend(isa=isa, threads=2)
        be.load_weights(c.src.specs, c.src)
        be.allocate_caches({})
        try:
            return np.array(be.compile(c.graph("y")).run(np.arange(len(rows)), one_sequence(len(rows), 0)))
        finally:
            be.close()
    together = run(list(range(n)))
    for r in range(n):
        np.testing.assert_array_equal(together[r], run([r])[0], err_msg=f"{qtype} row {r}")
