"""`g4rt synth OUT.gguf --layers N --type Q4_0|Q4_K`: a random-weight GGUF with the Gemma 4 12B's
shapes, for benchmarks and memory tests where the real 12B cannot be downloaded.

Same metadata keys as the fixtures' g4-dense-Q4_0-pure.gguf (llama.cpp's converter output), with
the 12B's values: hidden 3840, 16 heads, sliding layers head_dim 256 with 8 KV heads, global
layers head_dim 512 with 4 KV heads, FFN 15360, 5 sliding : 1 global, window 1024, RoPE bases 1e4
(sliding) / 1e6 (global) with proportional RoPE (rope_freqs: 1.0 for the first quarter of the
pairs, 1e30 after) on global layers, final softcap 30, tied embeddings; the real 262,144-token
Gemma 4 vocabulary (tokenizer.* copied from a vocabulary GGUF).

Matrices are random quantized blocks (random quant bits, small finite f16 scales: no quantizer is
run), norms F32 near 1. Tensors are streamed to disk a block of rows at a time, so memory stays
small even for a 48-layer (~7 GB) file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import click
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from .quant_types import block_geometry

QT = GGMLQuantizationType
ARCH = "gemma4"

# The Gemma 4 12B (dense) shape.
E, N_HEAD, FFN, VOCAB_DEFAULT = 3840, 16, 15360, 262144
D_SWA, KV_SWA = 256, 8
D_GLOBAL, KV_GLOBAL = 512, 4
WINDOW, PATTERN = 1024, 6          # every 6th layer is global
ROPE_BASE, ROPE_BASE_SWA = 1e6, 1e4
ROPE_PARTIAL = 0.25                # proportional RoPE: this fraction of the pairs rotate
CHUNK_BYTES = 64 << 20             # rows generated and written at a time


def default_vocab_path() -> Optional[Path]:
    here = Path(__file__).resolve()
    for base in (here.parent.parent.parent, here.parent.parent):
        p = base / "shared" / "fixtures" / "tokenizer" / "ggml-vocab-gemma-4.gguf"
        if p.is_file():
            return p
    return None


def layer_is_sliding(i: int) -> bool:
    return (i + 1) % PATTERN != 0


def tensor_plan(n_layers: int, qtype: QT, n_vocab: int) -> list[tuple[str, QT, int, int]]:
    """(name, type, rows, cols) in the order llama.cpp's converter writes them."""
    plan = [("output_norm.weight", QT.F32, 1, E),
            ("rope_freqs.weight", QT.F32, 1, D_GLOBAL // 2),
            ("token_embd.weight", qtype, n_vocab, E)]
    for i in range(n_layers):
        sl = layer_is_sliding(i)
        D, KV = (D_SWA, KV_SWA) if sl else (D_GLOBAL, KV_GLOBAL)
        p = f"blk.{i}."
        plan += [
            (p + "attn_k.weight", qtype, KV * D, E),
            (p + "attn_k_norm.weight", QT.F32, 1, D),
            (p + "attn_norm.weight", QT.F32, 1, E),
            (p + "attn_output.weight", qtype, E, N_HEAD * D),
            (p + "attn_q.weight", qtype, N_HEAD * D, E),
            (p + "attn_q_norm.weight", QT.F32, 1, D),
            (p + "attn_v.weight", qtype, KV * D, E),
            (p + "ffn_down.weight", qtype, E, FFN),
            (p + "ffn_gate.weight", qtype, FFN, E),
            (p + "ffn_norm.weight", QT.F32, 1, E),
            (p + "ffn_up.weight", qtype, FFN, E),
            (p + "layer_output_scale.weight", QT.F32, 1, 1),
            (p + "post_attention_norm.weight", QT.F32, 1, E),
            (p + "post_ffw_norm.weight", QT.F32, 1, E),
        ]
    return plan


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

    if qtype == QT.Q4_0:
        raw[:, 0:2] = f16(0.002, 0.006)              # |w| <= 8 d
    elif qtype == QT.Q4_K:
        raw[:, 0:2] = f16(0.0001, 0.0002, signed=False)   # d * (6-bit scale) * (4-bit q)
        raw[:, 2:4] = f16(0.0002, 0.0004, signed=False)   # dmin * (6-bit min)
    else:
        raise click.BadParameter(f"synth writes Q4_0 or Q4_K, not {qtype.name}")
    return raw


def tensor_rows(name: str, qtype: QT, rows: int, cols: int, rng) -> Iterator[np.ndarray]:
    """The tensor's bytes, a block of rows at a time."""
    if qtype == QT.F32:
        if name == "rope_freqs.weight":
            v = np.full(cols, 1e30, np.float32)
            v[: int(cols * ROPE_PARTIAL)] = 1.0
        elif name.endswith("layer_output_scale.weight"):
            v = np.array([rng.uniform(0.3, 0.9)], np.float32)
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
        raise click.ClickException(f"{vocab}: no tokenizer.ggml.tokens")
    return n_vocab


def write_synthetic(out: Path, n_layers: int, qtype: QT, vocab: Optional[Path], seed: int = 0,
                    echo=click.echo) -> int:
    rng = np.random.default_rng(seed)
    w = GGUFWriter(out, ARCH)
    sliding = [layer_is_sliding(i) for i in range(n_layers)]
    # metadata: the fixture's keys, in its order
    w.add_key_value("general.type", "model", GGUFValueType.STRING)
    w.add_key_value("general.name", f"Synthetic Gemma 4 12B-shaped {n_layers}-layer {qtype.name}", GGUFValueType.STRING)
    w.add_key_value("general.size_label", "12B", GGUFValueType.STRING)
    w.add_uint32(f"{ARCH}.block_count", n_layers)
    w.add_uint32(f"{ARCH}.context_length", 131072)
    w.add_uint32(f"{ARCH}.embedding_length", E)
    w.add_uint32(f"{ARCH}.feed_forward_length", FFN)
    w.add_uint32(f"{ARCH}.attention.head_count", N_HEAD)
    # per layer (8 on sliding, 4 on global layers), as llama.cpp writes for non-uniform counts
    w.add_key_value(f"{ARCH}.attention.head_count_kv", [KV_SWA if s else KV_GLOBAL for s in sliding],
                    GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
    w.add_float32(f"{ARCH}.rope.freq_base", ROPE_BASE)
    w.add_float32(f"{ARCH}.rope.freq_base_swa", ROPE_BASE_SWA)
    w.add_float32(f"{ARCH}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(f"{ARCH}.attention.key_length", D_GLOBAL)
    w.add_uint32(f"{ARCH}.attention.value_length", D_GLOBAL)
    w.add_float32(f"{ARCH}.final_logit_softcapping", 30.0)
    w.add_uint32(f"{ARCH}.attention.sliding_window", WINDOW)
    w.add_uint32(f"{ARCH}.attention.shared_kv_layers", 0)
    w.add_uint32(f"{ARCH}.embedding_length_per_layer_input", 0)
    w.add_key_value(f"{ARCH}.attention.sliding_window_pattern", sliding, GGUFValueType.ARRAY,
                    sub_type=GGUFValueType.BOOL)
    w.add_uint32(f"{ARCH}.attention.key_length_swa", D_SWA)
    w.add_uint32(f"{ARCH}.attention.value_length_swa", D_SWA)
    w.add_uint32(f"{ARCH}.rope.dimension_count", D_GLOBAL)
    w.add_uint32(f"{ARCH}.rope.dimension_count_swa", D_SWA)
    n_vocab = _copy_tokenizer(w, vocab) if vocab else VOCAB_DEFAULT
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32("general.file_type", 2 if qtype == QT.Q4_0 else 15)   # MOSTLY_Q4_0 / MOSTLY_Q4_K_M

    plan = tensor_plan(n_layers, qtype, n_vocab)
    total = 0
    for name, qt, rows, cols in plan:
        block, size = block_geometry(qt)
        nbytes = rows * (cols // block) * size
        shape = (cols,) if rows == 1 else (rows, cols)     # numpy order; the writer reverses it
        w.add_tensor_info(name, shape, np.dtype(np.float32) if qt == QT.F32 else np.dtype(np.float16),
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


@click.command("synth")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--layers", "n_layers", type=click.IntRange(1, 256), default=6, show_default=True)
@click.option("--type", "qtype", type=click.Choice(["Q4_0", "Q4_K"]), default="Q4_0", show_default=True,
              help="type of every matrix (the embedding included); norms are F32")
@click.option("--vocab", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="GGUF whose tokenizer.* metadata to copy (default: the fixtures' real Gemma 4 vocabulary)")
@click.option("--seed", default=0, show_default=True)
def synth_command(out, n_layers, qtype, vocab, seed):
    """Write a random-weight GGUF with the Gemma 4 12B's shapes and N layers."""
    vocab = vocab or default_vocab_path()
    if vocab is None:
        raise click.ClickException("no vocabulary GGUF found: pass --vocab PATH "
                                   "(e.g. shared/fixtures/tokenizer/ggml-vocab-gemma-4.gguf)")
    q = QT[qtype]
    click.echo(f"writing {out}: {n_layers} layers, {qtype}, vocabulary from {vocab}")
    total = write_synthetic(out, n_layers, q, vocab, seed)
    click.echo(f"{out}: {total / 2**30:.2f} GiB of tensors")
