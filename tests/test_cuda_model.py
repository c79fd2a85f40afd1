"""The fixture models on the CUDA backend: every exact reference meets its bar, a hybrid split
(first layers on the GPU, the rest on the CPU) agrees with the full GPU run, and decoding
through the KV cache agrees with prefill. Runs only where a CUDA device is present, or on a
stand-in chosen by G4RT_CUDA_EMULATE (g4rt.testing.cuda.driver_from_env)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES, check_decode_equals_prefill,
                      check_fixture_bar, exact_refs)
from g4rt.backends.cuda.driver import cuda_available
from g4rt.engine import Engine
from g4rt.testing.cuda import driver_from_env

HAVE_CUDA, CUDA_REASON = cuda_available(driver=driver_from_env())
pytestmark = [pytest.mark.skipif(not HAVE_CUDA, reason=f"no CUDA device: {CUDA_REASON}"),
              pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)]


_engines: dict = {}


def model_path(model: str):
    p = FIXTURES / "models" / f"{model}.gguf"
    if not p.is_file():
        pytest.skip(f"{p.name} is not in this fixtures folder")
    return p


def engine(model: str, **kw) -> Engine:
    key = (model, tuple(sorted(kw.items())))
    if key not in _engines:
        _engines[key] = Engine(model_path(model), backend="cuda", ctx=4096, **kw)
    return _engines[key]


@pytest.mark.parametrize("model,ref", exact_refs())
def test_fixture_meets_bar_vs_exact(model, ref):
    check_fixture_bar(engine(model), model, ref)


def _hybrid(model, layers, kv_dtype="f16"):
    from g4rt.backends.numpy_ref import NumpyBackend
    from g4rt.backends.cuda.backend import CudaBackend
    from g4rt.backends.hybrid import HybridBackend, layers_split
    hb = HybridBackend(CudaBackend(driver=driver_from_env(), kv_dtype=kv_dtype), NumpyBackend(kv_dtype=kv_dtype),
                       layers_split(layers))
    return Engine(model_path(model), backend=hb, ctx=4096), hb


@pytest.mark.parametrize("model,layers", [("g4-dense-Q4_0-pure", 3), ("g4-edge-Q4_K_M", 4),
                                          ("g4-dense-untied-Q8_0", 5)])
def test_hybrid_split_matches_full_gpu_within_the_bar(model, layers):
    ids = np.load(FIXTURES / "ref" / f"{model}.exact.npz")["ids_0"]
    e, hb = _hybrid(model, layers)
    try:
        full = engine(model)
        full.reset()
        a = full.forward(ids, all_logits=True)
        b = e.forward(ids, all_logits=True)
        assert hb.last_partition.split > 0 and hb.last_partition.transfers
        assert np.abs(a - b).max() < 0.1, np.abs(a - b).max()
        assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.95
        check_fixture_bar(e, model, f"{model}.exact.npz")
    finally:
        e.close()


def _cuda(kv_dtype):
    from g4rt.backends.cuda.backend import CudaBackend
    return CudaBackend(driver=driver_from_env(), kv_dtype=kv_dtype)


@pytest.mark.parametrize("model,chunk", [("g4-dense-Q4_0", 5), ("g4-edge-Q4_K_M", 3), ("g4-dense-keqv-Q4_K_M", 7),
                                         ("g4-dense-Q6_K", 64)])
@pytest.mark.parametrize("kv_dtype", ["f32", "f16"])
def test_decode_through_cache_equals_prefill(model, chunk, kv_dtype):
    ids = np.load(FIXTURES / "ref" / f"{model}.exact.npz")["ids_3"][:60]
    check_decode_equals_prefill(_cuda, model_path(model), ids, kv_dtype, chunk)


@pytest.mark.parametrize("model", ["g4-dense-untied-Q8_0", "g4-dense-Q4_K_M", "g4-dense-F16"])
def test_gpu_matches_cpu_logits_closely(model):
    path = model_path(model)
    ids = np.load(FIXTURES / "ref" / f"{model}.exact.npz")["ids_1"]
    cpu = Engine(path, backend="numpy", ctx=256)
    gpu = Engine(path, backend="cuda", ctx=256, kv_dtype="f32")
    try:
        np.testing.assert_allclose(gpu.forward(ids, all_logits=True), cpu.forward(ids, all_logits=True),
                                   atol=2e-2, rtol=0)
    finally:
        gpu.close()
