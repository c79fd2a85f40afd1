"""`g4rt synth --edge`: random-weight files with Gemma 4 E2B's layout (per-layer embeddings, a
shared-KV tail with a double-wide MLP, 1 KV head, 4 sliding : 1 global), for measuring a separate
E2B-shaped draft model against the MTP assistant (docs/benchmarks/speculative.md)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from conftest import FIXTURES

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def test_e2b_plan_has_the_published_layout():
    """The 35-layer E2B plan, without writing it: 20 shared-KV tail layers without K/V, their MLP
    2 x 6144, the PLE table 262,144 x 35 x 256, head dims 256 / 512 and 1 KV head."""
    from g4rt.model.shapes import EDGE_E2B as S
    from g4rt.tools.synth import layer_is_sliding, shared_kv_layers, tensor_plan
    plan = {n: (qt, rows, cols) for n, qt, rows, cols in tensor_plan(S.n_layer, QT.Q4_0, S.n_vocab, S)}
    assert (S.hidden, S.n_layer, S.per_layer_dim, S.window) == (1536, 35, 256, 512)
    assert shared_kv_layers(S.n_layer, S) == 20
    assert plan["per_layer_token_embd.weight"] == (QT.Q4_0, 262144, 35 * 256)
    assert plan["per_layer_model_proj.weight"][1:] == (35 * 256, 1536)
    assert plan["token_embd.weight"][1:] == (262144, 1536)
    full = [i for i in range(35) if not layer_is_sliding(i, S)]
    assert full == [4, 9, 14, 19, 24, 29, 34]
    for i in range(35):
        p = f"blk.{i}."
        assert (p + "attn_k.weight" in plan) == (i < 15)
        assert plan[p + "ffn_up.weight"][1] == (12288 if i >= 15 else 6144)
        assert plan[p + "inp_gate.weight"][1:] == (256, 1536) and plan[p + "proj.weight"][1:] == (1536, 256)
    assert plan["blk.13.attn_k.weight"][1:] == (256, 1536)          # sliding: 1 KV head x 256
    assert plan["blk.14.attn_k.weight"][1:] == (512, 1536)          # global: 1 KV head x 512
    assert plan["blk.14.attn_q.weight"][1:] == (8 * 512, 1536)


@pytest.mark.skipif(not CC, reason="no C compiler: the native CPU backend cannot be built")
def test_synth_edge_file_loads_and_runs_on_the_native_cpu(tmp_path):
    """The E2B layout at small sizes (10 layers, the last 5 shared-KV): the keys load as an edge
    model (PLE, shared tail, per-layer FFN widths) and a few tokens run on the native CPU as on
    the numpy reference."""
    from g4rt.engine import Engine
    from g4rt.gguf.reader import GGUFFile
    from g4rt.model.config import load_config
    from g4rt.model.shapes import Shape
    from g4rt.tools.synth import write_synthetic
    vocab = FIXTURES / "models" / "g4-dense-Q4_0.gguf"
    if not vocab.is_file():
        pytest.skip("the fixtures' vocabulary is absent")
    small = Shape("tiny-edge", 256, 4, 512, 64, 1, 128, 1, n_layer=35, window=16, period=5, per_layer_dim=64,
                  shared_kv_layers=20, double_wide_shared=True)
    out = tmp_path / "edge.gguf"
    write_synthetic(out, 10, QT.Q4_0, vocab, echo=None, shape=small)
    cfg = load_config(GGUFFile(out))
    assert cfg.per_layer_dim == 64 and cfg.shared_kv_layers == 5
    assert [L.ffn_dim for L in cfg.layers] == [512] * 5 + [1024] * 5
    assert [L.kv_source for L in cfg.layers][5:] == [3, 3, 3, 3, 4]
    assert [L.sliding for L in cfg.layers] == [(i + 1) % 5 != 0 for i in range(10)]
    outs = []
    for be, opts in (("numpy", {}), ("cpu", dict(precision="exact", kv_dtype="f32"))):
        e = Engine(out, backend=be, ctx=32, **opts)
        try:
            outs.append(e.forward([2, 10, 20, 30, 40, 50], all_logits=True))
        finally:
            e.close()
    assert all(np.all(np.isfinite(o)) for o in outs)
    assert (outs[0].argmax(-1) == outs[1].argmax(-1)).all()
    assert np.abs(outs[1] - outs[0]).max() <= 1e-2 * max(1.0, float(np.abs(outs[0]).max()))
