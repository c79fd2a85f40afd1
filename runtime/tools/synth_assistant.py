"""A random-weight Gemma 4 MTP assistant (`gemma4-assistant`) for a shape of model/shapes.py, for
measuring what a draft step costs (`g4rt synth OUT.gguf --assistant`): the published assistant
size (4 layers, hidden 1024, as Google's 31B assistant; llama.cpp PR 28335's table), its layers
[sliding, sliding, sliding, full] with the target's head dims and KV heads, 8 query heads and an
FFN of 4 x hidden (those two are this file's choice: the published table gives neither), the
keys and tensors llama.cpp's converter writes (Gemma4AssistantModel), tied embeddings and the
target's vocabulary. Random quantized blocks and near-1 norms, as tools/synth.py writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from gguf import GGUFValueType, GGUFWriter

from ..gguf.quant_types import block_geometry
from ..model.shapes import DENSE_12B, Shape
from .synth import QT, ROPE_BASE, ROPE_BASE_SWA, SynthError, _copy_tokenizer, tensor_rows

ARCH = "gemma4-assistant"
HIDDEN, LAYERS, HEADS, FFN_FACTOR = 1024, 4, 8, 4
LAYER_SLIDING = [True, True, True, False]


def assistant_plan(qtype: QT, n_vocab: int, shape: Shape, hidden: int = HIDDEN) -> list[tuple[str, QT, int, int]]:
    """(name, type, rows, cols), matrices in `qtype`, vectors F32."""
    ffn = FFN_FACTOR * hidden
    plan = [("token_embd.weight", qtype, n_vocab, hidden), ("output_norm.weight", QT.F32, 1, hidden),
            ("rope_freqs.weight", QT.F32, 1, shape.d_global // 2),
            ("nextn.pre_projection.weight", qtype, hidden, 2 * shape.hidden),
            ("nextn.post_projection.weight", qtype, shape.hidden, hidden)]
    for i, sliding in enumerate(LAYER_SLIDING[:LAYERS]):
        D = shape.d_swa if sliding else shape.d_global
        p = f"blk.{i}."
        plan += [(p + "attn_norm.weight", QT.F32, 1, hidden), (p + "attn_q.weight", qtype, HEADS * D, hidden),
                 (p + "attn_q_norm.weight", QT.F32, 1, D), (p + "attn_output.weight", qtype, hidden, HEADS * D),
                 (p + "post_attention_norm.weight", QT.F32, 1, hidden), (p + "layer_output_scale.weight", QT.F32, 1, 1),
                 (p + "ffn_norm.weight", QT.F32, 1, hidden), (p + "ffn_gate.weight", qtype, ffn, hidden),
                 (p + "ffn_up.weight", qtype, ffn, hidden), (p + "ffn_down.weight", qtype, hidden, ffn),
                 (p + "post_ffw_norm.weight", QT.F32, 1, hidden)]
    for name, qt, rows, cols in plan:
        block, _ = block_geometry(qt)
        if cols % block:
            raise SynthError(f"{name}: rows of {cols} are no multiple of {qt.name}'s blocks of {block}")
    return plan


def write_synthetic_assistant(out: Path, qtype: QT, vocab: Optional[Path], seed: int = 0, echo=None,
                              shape: Shape = DENSE_12B) -> int:
    """Write the assistant for a target of `shape`; returns the tensor bytes."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(out, ARCH)
    K = f"{ARCH}."
    w.add_key_value("general.type", "model", GGUFValueType.STRING)
    w.add_key_value("general.name", f"Synthetic Gemma 4 {shape.label} MTP assistant {qtype.name}", GGUFValueType.STRING)
    w.add_uint32(K + "block_count", LAYERS)
    w.add_uint32(K + "context_length", DENSE_12B.context_length)
    w.add_uint32(K + "embedding_length", HIDDEN)
    w.add_uint32(K + "feed_forward_length", FFN_FACTOR * HIDDEN)
    w.add_uint32(K + "attention.head_count", HEADS)
    w.add_key_value(K + "attention.head_count_kv", [shape.kv_swa if s else shape.kv_global for s in LAYER_SLIDING],
                    GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    w.add_float32(K + "rope.freq_base", ROPE_BASE)
    w.add_float32(K + "rope.freq_base_swa", ROPE_BASE_SWA)
    w.add_float32(K + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(K + "attention.key_length", shape.d_global)
    w.add_uint32(K + "attention.value_length", shape.d_global)
    w.add_uint32(K + "attention.sliding_window", shape.window)
    w.add_uint32(K + "attention.shared_kv_layers", LAYERS)
    w.add_uint32(K + "embedding_length_per_layer_input", 0)
    w.add_key_value(K + "attention.sliding_window_pattern", LAYER_SLIDING, GGUFValueType.ARRAY,
                    sub_type=GGUFValueType.BOOL)
    w.add_uint32(K + "attention.key_length_swa", shape.d_swa)
    w.add_uint32(K + "attention.value_length_swa", shape.d_swa)
    w.add_uint32(K + "rope.dimension_count", shape.d_global)
    w.add_uint32(K + "rope.dimension_count_swa", shape.d_swa)
    w.add_uint32(K + "embedding_length_out", shape.hidden)
    w.add_uint32(K + "nextn_predict_layers", LAYERS)
    n_vocab = _copy_tokenizer(w, vocab) if vocab else shape.n_vocab
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32("general.file_type", 2 if qtype == QT.Q4_0 else 15)

    plan = assistant_plan(qtype, n_vocab, shape)
    total = 0
    for name, qt, rows, cols in plan:
        block, size = block_geometry(qt)
        nbytes = rows * (cols // block) * size
        w.add_tensor_info(name, (cols,) if rows == 1 else (rows, cols),
                          np.dtype(np.float32) if qt == QT.F32 else np.dtype(np.float16), nbytes, raw_dtype=qt)
        total += nbytes
    w.write_header_to_file(out)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    for name, qt, rows, cols in plan:
        w.write_padding(fout, fout.tell())
        for part in tensor_rows(name, qt, rows, cols, rng):
            part.tofile(fout)
    w.write_padding(fout, fout.tell())
    w.close()
    if echo:
        echo(f"  {total / 2**30:.2f} GiB")
    return total
