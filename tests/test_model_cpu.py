"""The Gemma 4 graph on the CPU backends (the numpy reference and the native kernels) against the
fixtures' references."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFValueType

from conftest import (FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES, check_decode_equals_prefill,
                      check_fixture_bar, exact_refs, manifest, model_names)
from g4rt.engine import Engine
from g4rt.errors import G4rtError, UnsupportedModelError
from g4rt.gguf.reader import GGUFFile
from g4rt.model.config import load_config
from gguf_edit import rewrite_gguf

pytestmark = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)


_engines: dict[tuple[str, str], Engine] = {}


def engine(model: str, backend: str) -> Engine:
    """backend: a registry name ("cpu" runs exact here), or "cpu-i16" / "cpu-q8"."""
    if (model, backend) not in _engines:
        name, _, precision = backend.partition("-")
        if name == "cpu":
            from g4rt.backends.cpu import CpuBackend
            backend_obj = CpuBackend(precision=precision or "exact")
        else:
            backend_obj = name
        _engines[(model, backend)] = Engine(FIXTURES / "models" / f"{model}.gguf", backend=backend_obj, ctx=4096)
    return _engines[(model, backend)]


def test_every_fixture_has_an_exact_reference():
    names = {m for m, _ in exact_refs()}
    assert names == set(model_names()) and names


@pytest.mark.parametrize("backend", ["numpy", "cpu", "cpu-i16"])
@pytest.mark.parametrize("model,ref", exact_refs())
def test_fixture_meets_bar_vs_exact(model, ref, backend):
    # every teacher-forced position on both; the reference's greedy decoding is slow in numpy, so
    # it checks the first 4 continuation tokens there (the native backend all 32)
    w = check_fixture_bar(engine(model, backend), model, ref, n_greedy=4 if backend == "numpy" else 32)
    if backend == "cpu-i16":
        # the integer path auto takes: int16-precision activations, near-exact (docs/design.md)
        assert w["top1"] >= 0.98 and w["max_dlogit"] < 0.03, w
        return
    # Both sit far inside the bar: float32 vs float64 on identical weights (the native backend
    # decodes weights exactly too; its f16 KV cache costs ~1e-4).
    assert w["top1"] >= (1.0 if backend == "numpy" else 0.999) and w["max_dlogit"] < 1e-2, w


#: the fixtures README's files for quantized parity (a separate output matrix: less sensitive to
#: rounding); q8, llama.cpp's activation rounding, meets their bars (on the other files the bars,
#: llama.cpp's own distance + 0.02, are a coin toss for any int8 rounding: docs/design.md)
UNTIED_QUANTIZED = [(m, r) for m, r in exact_refs() if m.startswith("g4-dense-untied-") and "F32" not in m]


@pytest.mark.parametrize("model,ref", UNTIED_QUANTIZED)
def test_q8_meets_the_bar_on_the_quantized_parity_files(model, ref):
    w = check_fixture_bar(engine(model, "cpu-q8"), model, ref)
    assert w["top1"] < 0.999, w          # the q8 path ran (it is not exact)


@pytest.mark.parametrize("model,chunk", [("g4-dense-Q4_0", 5), ("g4-edge-Q4_K_M", 3), ("g4-dense-keqv-F32", 7)])
def test_decode_through_cache_equals_prefill(model, chunk):
    from g4rt.backends.numpy_ref import NumpyBackend
    ids = np.load(FIXTURES / "ref" / f"{model}.exact.npz")["ids_3"][:60]
    check_decode_equals_prefill(lambda kv: NumpyBackend(kv_dtype=kv), FIXTURES / "models" / f"{model}.gguf",
                                ids, "f32", chunk, tol=2e-4)


@pytest.mark.parametrize("kv_dtype", ["f32", "f16"])
@pytest.mark.parametrize("model,chunk", [("g4-dense-Q4_0", 5), ("g4-edge-Q4_K_M", 3), ("g4-dense-keqv-F32", 7),
                                         ("g4-dense-w1024-Q4_0-pure", 11)])
def test_native_decode_through_cache_equals_prefill(model, chunk, kv_dtype):
    from g4rt.backends.cpu import CpuBackend
    ids = np.load(FIXTURES / "ref" / f"{model}.exact.npz")["ids_3"][:60]
    check_decode_equals_prefill(lambda kv: CpuBackend(kv_dtype=kv), FIXTURES / "models" / f"{model}.gguf",
                                ids, kv_dtype, chunk)


def test_edge_config_shares_kv_like_llama_cpp():
    cfg = load_config(GGUFFile(FIXTURES / "models" / "g4-edge-F32.gguf"))
    assert cfg.per_layer_dim == 32 and cfg.shared_kv_layers == 3
    assert [L.kv_source for L in cfg.layers] == [0, 1, 2, 3, 4, 3, 3, 4]
    assert [L.ffn_dim for L in cfg.layers] == [512] * 5 + [1024] * 3
    assert [L.window for L in cfg.layers] == [8, 8, 8, 8, 0, 8, 8, 0]


def test_keqv_config_has_no_v_projection_on_global_layer():
    cfg = load_config(GGUFFile(FIXTURES / "models" / "g4-dense-keqv-F32.gguf"))
    assert [L.has_v_proj for L in cfg.layers] == [True] * 5 + [False]
    assert [L.n_kv_head for L in cfg.layers] == [2] * 5 + [1]
    glob = cfg.layers[5]
    assert (glob.head_dim, glob.rope_base, glob.rope_freq_factors) == (128, 1e6, True)


def test_gemma4_unified_alias_gives_same_logits(tmp_path):
    src = FIXTURES / "models" / "g4-dense-F32.gguf"
    dst = rewrite_gguf(src, tmp_path / "unified.gguf", arch="gemma4_unified")
    assert GGUFFile(dst).architecture == "gemma4_unified"
    ids = [2, 100, 200, 300]
    a = Engine(src, ctx=16).forward(ids)
    b = Engine(dst, ctx=16).forward(ids)
    np.testing.assert_array_equal(a, b)


def test_unknown_architecture_is_refused_by_name(tmp_path):
    dst = rewrite_gguf(FIXTURES / "models" / "g4-dense-F32.gguf", tmp_path / "llama.gguf", arch="llama")
    with pytest.raises(UnsupportedModelError, match="'llama'"):
        Engine(dst)


def test_context_overflow_is_a_clear_error():
    e = Engine(FIXTURES / "models" / "g4-dense-F32.gguf", ctx=8)
    with pytest.raises(G4rtError, match="do not fit the context of 8"):
        e.forward(list(range(2, 12)))


def test_manifest_lists_every_model():
    assert set(manifest()) >= set(model_names())


def test_linear_rope_scaling_divides_global_layer_angles(tmp_path):
    src = FIXTURES / "models" / "g4-dense-F32.gguf"
    dst = rewrite_gguf(src, tmp_path / "scaled.gguf", set_keys={
        "gemma4.rope.scaling.type": ("linear", GGUFValueType.STRING),
        "gemma4.rope.scaling.factor": (4.0, GGUFValueType.FLOAT32)})
    scaled, plain = Engine(dst, backend="numpy", ctx=64), Engine(src, backend="numpy", ctx=64)
    assert scaled.config.rope_linear_factor == 4.0
    ff = scaled.derived["rope_freqs.linear_scaled"]
    np.testing.assert_array_equal(ff, plain.backend.weight("rope_freqs.weight") * 4.0)
    g = scaled.graph(3).graph
    ropes = {lab: op for lab, op in zip(g.labels, g.ops) if op.kind == "rope"}
    assert ropes["blk.5.rope_q"].freq_factors == "rope_freqs.linear_scaled"   # global layer
    assert ropes["blk.0.rope_q"].freq_factors is None                          # sliding: unscaled
    ids = [2, 100, 200, 300, 400, 500]
    assert not np.allclose(scaled.forward(ids), plain.forward(ids), atol=1e-3)
