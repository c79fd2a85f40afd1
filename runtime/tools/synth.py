"""Random-weight GGUF files with the Gemma 4 12B's shapes (or the 26B-A4B mixture of experts')
and N layers, for benchmarks and memory tests where the real models cannot be downloaded; the
command is `g4rt synth OUT.gguf --layers N --type Q4_0|Q4_K [--moe]` (cli/bench.py), the
dimensions are model/shapes.py's.

Same metadata keys as the fixtures' g4-dense-Q4_0-pure.gguf (llama.cpp's converter output), with
the shape's values, RoPE bases 1e4 (sliding) / 1e6 (global) with proportional RoPE (rope_freqs:
1.0 for the first quarter of the pairs, 1e30 after) on global layers, final softcap 30, tied
embeddings; the real 262,144-token Gemma 4 vocabulary (tokenizer.* copied from a vocabulary GGUF).
On the 26B-A4B, rows whose width is no multiple of 256 (the dense down projection, 2112, and the
experts', 704) are Q5_0 in a Q4_K file, as llama-quantize falls back.

Matrices are random quantized blocks (random quant bits, small finite f16 scales: no quantizer is
run), norms F32 near 1. Tensors are streamed to disk a block of rows at a time, so memory stays
small even for a 48-layer (~7 GB) file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from ..errors import G4rtError
from ..gguf.quant_types import block_geometry
from ..model.shapes import DENSE_12B, Shape

QT = GGMLQuantizationType
ARCH = "gemma4"

ROPE_BASE, ROPE_BASE_SWA = 1e6, 1e4
ROPE_PARTIAL = 0.25                # proportional RoPE: this fraction of the pairs rotate
CHUNK_BYTES = 64 << 20             # rows generated and written at a time


class SynthError(G4rtError):
    """A synthetic file cannot be written as asked (a type without a generator, a vocabulary
    file without tokens)."""


def default_vocab_path() -> Optional[Path]:
    here = Path(__file__).resolve()
    for base in (here.parents[3], here.parents[2]):     # beside the checkout, or in it
        p = base / "shared" / "fixtures" / "tokenizer" / "ggml-vocab-gemma-4.gguf"
        if p.is_file():
            return p
    return None


def layer_is_sliding(i: int, shape: Shape = DENSE_12B) -> bool:
    return (i + 1) % shape.period != 0


def shared_kv_layers(n_layers: int, shape: Shape = DENSE_12B) -> int:
    """How many tail layers reuse KV in an n-layer file of `shape`: the shape's own count at its
    published depth, else the same fraction, leaving at least one period of producers."""
    if not shape.shared_kv_layers:
        return 0
    if n_layers == shape.n_layer:
        return shape.shared_kv_layers
    return max(0, min(round(n_layers * shape.shared_kv_layers / shape.n_layer), n_layers - shape.period))


def layer_ffn(i: int, n_layers: int, shape: Shape = DENSE_12B) -> int:
    shared = i >= n_layers - shared_kv_layers(n_layers, shape)
    return 2 * shape.ffn if shared and shape.double_wide_shared else shape.ffn


def tensor_plan(n_layers: int, qtype: QT, n_vocab: int, shape: Shape = DENSE_12B) -> list[tuple[str, QT, int, int]]:
    """(name, type, rows, cols) in the order llama.cpp's converter writes them (sorted names per
    layer); 3-D expert tensors are listed with rows = experts x rows per expert. Edge shapes add
    the per-layer embeddings (PLE: the table, its model projection and norm, per layer the gate,
    projection and post norm) and drop K/V (and the K norm) on the shared-KV tail layers."""
    E, P = shape.hidden, shape.per_layer_dim
    first_shared = n_layers - shared_kv_layers(n_layers, shape)
    plan = [("output_norm.weight", QT.F32, 1, E),
            ("rope_freqs.weight", QT.F32, 1, shape.d_global // 2),
            ("token_embd.weight", qtype, n_vocab, E)]
    if P:
        plan += [("per_layer_model_proj.weight", qtype, n_layers * P, E),
                 ("per_layer_proj_norm.weight", QT.F32, 1, P),
                 ("per_layer_token_embd.weight", qtype, n_vocab, n_layers * P)]
    for i in range(n_layers):
        sl = layer_is_sliding(i, shape)
        D, KV = (shape.d_swa, shape.kv_swa) if sl else (shape.d_global, shape.kv_global)
        F = layer_ffn(i, n_layers, shape)
        p = f"blk.{i}."
        t = [
            (p + "attn_norm.weight", QT.F32, 1, E),
            (p + "attn_output.weight", qtype, E, shape.n_head * D),
            (p + "attn_q.weight", qtype, shape.n_head * D, E),
            (p + "attn_q_norm.weight", QT.F32, 1, D),
            (p + "ffn_down.weight", qtype, E, F),
            (p + "ffn_gate.weight", qtype, F, E),
            (p + "ffn_norm.weight", QT.F32, 1, E),
            (p + "ffn_up.weight", qtype, F, E),
            (p + "layer_output_scale.weight", QT.F32, 1, 1),
            (p + "post_attention_norm.weight", QT.F32, 1, E),
            (p + "post_ffw_norm.weight", QT.F32, 1, E),
        ]
        if P:
            t += [(p + "inp_gate.weight", qtype, P, E), (p + "proj.weight", qtype, E, P),
                  (p + "post_norm.weight", QT.F32, 1, E)]
        if i < first_shared:
            t += [(p + "attn_k.weight", qtype, KV * D, E), (p + "attn_k_norm.weight", QT.F32, 1, D)]
            if sl or not shape.k_eq_v_global:
                t.append((p + "attn_v.weight", qtype, KV * D, E))
        if shape.n_expert:
            X, F = shape.n_expert, shape.expert_ffn
            t += [
                (p + "ffn_gate_inp.weight", QT.F32, X, E),
                (p + "ffn_gate_inp.scale", QT.F32, 1, E),
                (p + "ffn_gate_up_exps.weight", qtype, X * 2 * F, E),
                (p + "ffn_down_exps.weight", qtype, X * E, F),
                (p + "ffn_down_exps.scale", QT.F32, 1, X),
                (p + "pre_ffw_norm_2.weight", QT.F32, 1, E),
                (p + "post_ffw_norm_1.weight", QT.F32, 1, E),
                (p + "post_ffw_norm_2.weight", QT.F32, 1, E),
            ]
        plan += sorted(t)
    # rows whose width is no multiple of the type's block fall back to Q5_0, as llama-quantize does
    return [(n, QT.Q5_0 if qt != QT.F32 and cols % block_geometry(qt)[0] else qt, rows, cols)
            for n, qt, rows, cols in plan]


def gguf_shape(name: str, rows: int, cols: int, shape: Shape) -> tuple[int, ...]:
    """numpy-order shape for the GGUF writer (which reverses it): experts as a third dimension."""
    if name.endswith("_exps.weight"):
        return (shape.n_expert, rows // shape.n_expert, cols)
    return (cols,) if rows == 1 else (rows, cols)


def random_blocks(qtype: QT, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Raw blocks: random quant bits with finite f16 scales chosen so that a 3840-wide dot
    product of unit activations stays O(1) (no quantizer is run)."""
    block, size = block_geometry(qtype)
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)

    def f16(lo, hi, signed=True):
        v = rng.uniform(lo, hi, n_blocks)
        if signed:
            v *= rng.choice(np.array([-1.0, 1.0]), n_blocks)
        return v.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)

    if qtype in (QT.Q4_0, QT.Q5_0):
        raw[:, 0:2] = f16(0.002, 0.006) if qtype == QT.Q4_0 else f16(0.001, 0.003)   # |w| <= 8 d / 16 d
    elif qtype == QT.Q4_K:
        raw[:, 0:2] = f16(0.0001, 0.0002, signed=False)   # d * (6-bit scale) * (4-bit q)
        raw[:, 2:4] = f16(0.0002, 0.0004, signed=False)   # dmin * (6-bit min)
    else:
        raise SynthError(f"synth writes Q4_0, Q4_K (and Q5_0 expert rows), not {qtype.name}")
    return raw


def tensor_rows(name: str, qtype: QT, rows: int, cols: int, rng) -> Iterator[np.ndarray]:
    """The tensor's bytes, a block of rows at a time."""
    if qtype == QT.F32 and rows > 1:      # a router: logits of unit activations stay O(1)
        yield (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32).view(np.uint8).reshape(-1)
        return
    if qtype == QT.F32:
        if name == "rope_freqs.weight":
            v = np.full(cols, 1e30, np.float32)
            v[: int(cols * ROPE_PARTIAL)] = 1.0
        elif name.endswith(("layer_output_scale.weight", "ffn_down_exps.scale")):
            v = rng.uniform(0.3, 0.9, cols).astype(np.float32)
        else:   # RMSNorm scales
            v = (1.0 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
        yield v.view(np.uint8)
        return
    block, size = block_geometry(qtype)
    row_bytes = cols // block * size
    step = max(1, CHUNK_BYTES // row_bytes)
    for r0 in range(0, rows, step):
        n = min(step, rows - r0)
        yield random_blocks(qtype, n * cols // block, rng).reshape(-1)


def _copy_tokenizer(w: GGUFWriter, vocab: Path) -> int:
    r = GGUFReader(vocab)
    n_vocab = 0
    for key, field in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        types = field.types
        if types[0] == GGUFValueType.ARRAY:
            sub = types[1]
            if sub == GGUFValueType.STRING:
                val = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                val = [field.parts[i][0].item() for i in field.data]
            w.add_key_value(key, val, GGUFValueType.ARRAY, sub_type=sub)
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(val)
        elif types[0] == GGUFValueType.STRING:
            w.add_key_value(key, bytes(field.parts[field.data[0]]).decode("utf-8"), types[0])
        else:
            w.add_key_value(key, field.parts[field.data[0]][0].item(), types[0])
    if not n_vocab:
        raise SynthError(f"{vocab}: no tokenizer.ggml.tokens")
    return n_vocab


def write_synthetic(out: Path, n_layers: int, qtype: QT, vocab: Optional[Path], seed: int = 0,
                    echo=None, shape: Shape = DENSE_12B) -> int:
    """Write the file; echo (click.echo's signature), when given, shows the bytes written so far."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(out, ARCH)
    sliding = [layer_is_sliding(i, shape) for i in range(n_layers)]
    # metadata: the fixture's keys, in its order
    w.add_key_value("general.type", "model", GGUFValueType.STRING)
    w.add_key_value("general.name", f"Synthetic Gemma 4 {shape.label}-shaped {n_layers}-layer {qtype.name}",
                    GGUFValueType.STRING)
    w.add_key_value("general.size_label", shape.label, GGUFValueType.STRING)
    w.add_uint32(f"{ARCH}.block_count", n_layers)
    w.add_uint32(f"{ARCH}.context_length", DENSE_12B.context_length)   # every synthetic file: the 12B's
    w.add_uint32(f"{ARCH}.embedding_length", shape.hidden)
    ffn = [layer_ffn(i, n_layers, shape) for i in range(n_layers)]
    if len(set(ffn)) == 1:
        w.add_uint32(f"{ARCH}.feed_forward_length", shape.ffn)
    else:                     # per layer, as llama.cpp's converter writes a double-wide tail
        w.add_key_value(f"{ARCH}.feed_forward_length", ffn, GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    w.add_uint32(f"{ARCH}.attention.head_count", shape.n_head)
    # per layer (sliding and global counts differ), as llama.cpp writes for non-uniform counts
    w.add_key_value(f"{ARCH}.attention.head_count_kv", [shape.kv_swa if s else shape.kv_global for s in sliding],
                    GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    if shape.n_expert:
        w.add_uint32(f"{ARCH}.expert_count", shape.n_expert)
        w.add_uint32(f"{ARCH}.expert_used_count", shape.n_expert_used)
        w.add_uint32(f"{ARCH}.expert_feed_forward_length", shape.expert_ffn)
    w.add_float32(f"{ARCH}.rope.freq_base", ROPE_BASE)
    w.add_float32(f"{ARCH}.rope.freq_base_swa", ROPE_BASE_SWA)
    w.add_float32(f"{ARCH}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(f"{ARCH}.attention.key_length", shape.d_global)
    w.add_uint32(f"{ARCH}.attention.value_length", shape.d_global)
    w.add_float32(f"{ARCH}.final_logit_softcapping", 30.0)
    w.add_uint32(f"{ARCH}.attention.sliding_window", shape.window)
    w.add_uint32(f"{ARCH}.attention.shared_kv_layers", shared_kv_layers(n_layers, shape))
    w.add_uint32(f"{ARCH}.embedding_length_per_layer_input", shape.per_layer_dim)
    w.add_key_value(f"{ARCH}.attention.sliding_window_pattern", sliding, GGUFValueType.ARRAY,
                    sub_type=GGUFValueType.BOOL)
    w.add_uint32(f"{ARCH}.attention.key_length_swa", shape.d_swa)
    w.add_uint32(f"{ARCH}.attention.value_length_swa", shape.d_swa)
    w.add_uint32(f"{ARCH}.rope.dimension_count", shape.d_global)
    w.add_uint32(f"{ARCH}.rope.dimension_count_swa", shape.d_swa)
    n_vocab = _copy_tokenizer(w, vocab) if vocab else shape.n_vocab
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32("general.file_type", 2 if qtype == QT.Q4_0 else 15)   # MOSTLY_Q4_0 / MOSTLY_Q4_K_M

    plan = tensor_plan(n_layers, qtype, n_vocab, shape)
    total = 0
    for name, qt, rows, cols in plan:
        block, size = block_geometry(qt)
        nbytes = rows * (cols // block) * size
        w.add_tensor_info(name, gguf_shape(name, rows, cols, shape),
                          np.dtype(np.float32) if qt == QT.F32 else np.dtype(np.float16),
                          nbytes, raw_dtype=qt)
        total += nbytes
    w.write_header_to_file(out)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    done = 0
    for name, qt, rows, cols in plan:
        w.write_padding(fout, fout.tell())
        for part in tensor_rows(name, qt, rows, cols, rng):
            part.tofile(fout)
            done += part.nbytes
        if echo and rows > 1:
            echo(f"\r  {done / 2**30:6.2f} / {total / 2**30:.2f} GiB", nl=False)
    w.write_padding(fout, fout.tell())
    w.close()
    if echo:
        echo("")
    return total
