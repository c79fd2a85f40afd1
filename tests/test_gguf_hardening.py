"""One crafted file per hardened check: each must fail with its exact error class, naming the key
or tensor and the byte offset, fast and without allocating what the file declares."""

from __future__ import annotations

import struct
import time
import tracemalloc

import pytest

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
from g4rt import errors
from g4rt.gguf.reader import GGUFFile
from g4rt.gguf.validate import ARRAY, SCALAR_TYPES, STRING, Header, scan
from g4rt.model.config import load_config
from g4rt.model.graph import build_graph, weight_specs
from g4rt.ops import WeightSpec

pytestmark = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)

DENSE = "g4-dense-Q4_0-pure.gguf"
EDGE = "g4-edge-Q4_0-pure.gguf"
U32, U64, F32 = 4, 10, 6          # GGUF value type ids used below


# ---- crafting helpers -----------------------------------------------------------------------------
def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def enc_str(s) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def enc_val(vtype: int, value, sub: int | None = None) -> bytes:
    if vtype == STRING:
        return enc_str(value)
    if vtype == ARRAY:
        return u32(sub) + u64(len(value)) + b"".join(enc_val(sub, v) for v in value)
    return struct.pack("<" + SCALAR_TYPES[vtype][0], value)


def make_gguf(kvs=(), tensors=(), data=b"", version=3, alignment=32) -> bytes:
    """kvs: (key, vtype, value[, subtype]); tensors: (name, dims, type id, data offset)."""
    head = b"GGUF" + u32(version) + u64(len(tensors)) + u64(len(kvs))
    for key, vtype, value, *sub in kvs:
        head += enc_str(key) + u32(vtype) + enc_val(vtype, value, *sub)
    for name, dims, tid, off in tensors:
        head += enc_str(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(tid) + u64(off)
    return head + b"\0" * (-len(head) % alignment) + data


def fixture(name: str = DENSE) -> tuple[bytearray, Header]:
    data = bytearray((FIXTURES / "models" / name).read_bytes())
    return data, scan(data, len(data))


def put(data: bytearray, off: int, raw: bytes) -> bytearray:
    data[off:off + len(raw)] = raw
    return data


def tensor(hdr: Header, name: str):
    return next(t for t in hdr.tensors if t.name == name)


def set_kv(data: bytearray, hdr: Header, key: str, vtype: int, value, sub: int | None = None) -> bytearray:
    """Re-encode one key's value (any type): splice the header, keep the data section aligned."""
    e = hdr.kv[key]
    head = bytes(data[:e.type_offset]) + u32(vtype) + enc_val(vtype, value, sub) + bytes(data[e.end:hdr.header_end])
    return bytearray(head + b"\0" * (-len(head) % hdr.alignment) + bytes(data[hdr.data_start:]))


def add_kv(data: bytearray, hdr: Header, key: str, vtype: int, value) -> bytearray:
    first_tensor = hdr.tensors[0].offset if hdr.tensors else hdr.header_end
    head = (bytes(data[:16]) + u64(len(hdr.kv) + 1) + bytes(data[24:first_tensor]) + enc_str(key) + u32(vtype)
            + enc_val(vtype, value) + bytes(data[first_tensor:hdr.header_end]))
    return bytearray(head + b"\0" * (-len(head) % hdr.alignment) + bytes(data[hdr.data_start:]))


def open_all(path):
    """Everything opening a model does before weights move: file, config, graph."""
    f = GGUFFile(path)
    cfg = load_config(f)
    build_graph(cfg, weight_specs(f), 2, 64)
    return f


def expect(tmp_path, data, cls, *fragments):
    p = tmp_path / "crafted.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(errors.G4rtError) as ei:
        open_all(p)
    assert type(ei.value) is cls, f"{type(ei.value).__name__}: {ei.value}"
    for frag in fragments:
        assert frag in str(ei.value), str(ei.value)
    return ei.value


# ---- header ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("content,cls", [
    (b"", errors.NotGGUFError), (b"PK\x03\x04 a zip file", errors.NotGGUFError),
    (b"GGUF\x03\x00\x00\x00\x00", errors.TruncatedFileError),
])
def test_not_gguf_or_too_short(tmp_path, content, cls):
    expect(tmp_path, content, cls)


def test_version_checks(tmp_path):
    expect(tmp_path, make_gguf(version=7), errors.BadVersionError, "byte offset 4", "unknown version 7")
    expect(tmp_path, make_gguf(version=1), errors.UnsupportedModelError, "version 1")
    be = bytearray(make_gguf()); be[4:8] = (3).to_bytes(4, "big")
    expect(tmp_path, be, errors.UnsupportedModelError, "big-endian")


@pytest.mark.parametrize("off,what", [(8, "tensor count"), (16, "metadata key count")])
def test_huge_counts(tmp_path, off, what):
    data, _ = fixture()
    expect(tmp_path, put(data, off, u64(1 << 60)), errors.OversizeLengthError, what, f"byte offset {off}")
    # Under the cap but more than the bytes left can hold (each entry has a minimum size).
    small = bytearray(make_gguf([("general.architecture", STRING, "gemma4")]))
    expect(tmp_path, put(small, off, u64(60_000)), errors.OversizeLengthError, what, "declares 60000")


def test_huge_key_length(tmp_path):
    data, hdr = fixture()
    e = hdr.kv["general.architecture"]
    expect(tmp_path, put(data, e.offset, u64(1 << 60)), errors.OversizeLengthError,
           "metadata key #0 length", f"byte offset {e.offset}")


def test_huge_string_value(tmp_path):
    data, hdr = fixture()
    e = hdr.kv["general.name"]
    expect(tmp_path, put(data, e.count_offset, u64(1 << 60)), errors.OversizeLengthError, "'general.name'",
           f"byte offset {e.count_offset}")


def test_huge_array_and_memory_stays_bounded(tmp_path):
    data, hdr = fixture()
    e = hdr.kv["tokenizer.ggml.scores"]
    p = tmp_path / "huge.gguf"
    p.write_bytes(bytes(put(data, e.count_offset, u64(1 << 60))))
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(errors.OversizeLengthError,
                       match=f"'tokenizer.ggml.scores' array length at byte offset {e.count_offset}"):
        GGUFFile(p)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 1 << 20, (elapsed, peak)
    # Just over what the rest of the file can hold: refused before any element is read.
    left = hdr.file_size - e.value_offset
    expect(tmp_path, put(data, e.count_offset, u64(left // 4 + 1)), errors.OversizeLengthError, "bytes are left")


def test_opening_a_real_vocabulary_costs_header_memory_only():
    # 262,144 tokens + 514,906 merges: the scan keeps offsets, not values (the `gguf` package's
    # reader needs ~40 s and >1 GB for this file).
    tracemalloc.start()
    f = GGUFFile(FIXTURES / "tokenizer" / "ggml-vocab-gemma-4.gguf")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 256 << 10, peak
    assert len(f.get("tokenizer.ggml.tokens")) == 262144 and len(f.get("tokenizer.ggml.merges")) == 514906


@pytest.mark.parametrize("length", [1 << 62, 2**64 - 1])   # the second once overflowed ssize_t (fuzz)
@pytest.mark.parametrize("element", [0, 7])
def test_huge_string_inside_array(tmp_path, length, element):
    data, hdr = fixture()
    e = hdr.kv["tokenizer.ggml.tokens"]
    pos = e.value_offset
    for _ in range(element):
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]
    expect(tmp_path, put(data, pos, u64(length)), errors.OversizeLengthError,
           f"'tokenizer.ggml.tokens' element {element}", f"byte offset {pos}")


def test_value_type_ids(tmp_path):
    data, hdr = fixture()
    e = hdr.kv["gemma4.block_count"]
    expect(tmp_path, put(bytearray(data), e.type_offset, u32(13)), errors.BadValueTypeError, "unknown value type id 13",
           "'gemma4.block_count'", f"byte offset {e.type_offset}")
    a = hdr.kv["tokenizer.ggml.scores"]
    expect(tmp_path, put(bytearray(data), a.type_offset + 4, u32(ARRAY)), errors.BadValueTypeError, "nested arrays")
    expect(tmp_path, put(bytearray(data), a.type_offset + 4, u32(200)), errors.BadValueTypeError,
           "unknown value type id 200")


def test_duplicate_key(tmp_path):
    kv = ("general.architecture", STRING, "gemma4")
    expect(tmp_path, make_gguf([kv, ("general.name", STRING, "x"), kv]), errors.DuplicateKeyError,
           "'general.architecture'", "first at byte offset 24")


@pytest.mark.parametrize("key", [b"", b"bad\xff\xfekey"])
def test_bad_key_names(tmp_path, key):
    expect(tmp_path, make_gguf([(key, U32, 1)]), errors.BadNameError, "byte offset 24")


def test_bad_tensor_names(tmp_path):
    f32 = 0
    long = make_gguf([("general.architecture", STRING, "gemma4")], [("t" * 64, [4], f32, 0)], b"\0" * 32)
    expect(tmp_path, long, errors.BadNameError, "longer than 63")
    data, hdr = fixture()
    t = hdr.tensors[3]
    expect(tmp_path, put(data, t.offset + 8, b"\xc3"), errors.BadNameError, "not valid UTF-8",
           f"byte offset {t.offset}")


def test_duplicate_tensor_name(tmp_path):
    data, hdr = fixture()
    a, b = tensor(hdr, "blk.0.attn_q.weight"), tensor(hdr, "blk.0.attn_k.weight")
    first, second = sorted((a.offset, b.offset))
    expect(tmp_path, put(data, b.offset + 8, a.name.encode()), errors.DuplicateTensorError,
           "'blk.0.attn_q.weight'", f"byte offset {second}", f"first at byte offset {first}")


# ---- tensor infos ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_dims", [0, 5, 1 << 31])
def test_dimension_count(tmp_path, n_dims):
    data, hdr = fixture()
    t = tensor(hdr, "blk.0.ffn_up.weight")
    expect(tmp_path, put(data, t.dims_offset - 4, u32(n_dims)), errors.TensorShapeError, "'blk.0.ffn_up.weight'",
           f"{n_dims} dimensions")


@pytest.mark.parametrize("dims,msg", [((256, 0), "dimension 1 is 0"), ((256, 1 << 31), "dimension 1 is 2147483648"),
                                      ((1 << 21, 1 << 20), "elements")])
def test_dimensions(tmp_path, dims, msg):
    data, hdr = fixture()
    t = tensor(hdr, "blk.0.ffn_up.weight")
    expect(tmp_path, put(data, t.dims_offset, u64(dims[0]) + u64(dims[1])), errors.TensorShapeError, msg,
           "'blk.0.ffn_up.weight'")


def test_unknown_tensor_type(tmp_path):
    data, hdr = fixture()
    t = tensor(hdr, "token_embd.weight")
    for tid in (4, 99, 1 << 31):   # 4 was Q4_2, removed from ggml
        expect(tmp_path, put(bytearray(data), t.type_offset, u32(tid)), errors.UnknownTensorTypeError,
               f"unknown tensor type id {tid}", f"byte offset {t.type_offset}")


def test_columns_not_a_block_multiple(tmp_path):
    data, hdr = fixture()
    t = tensor(hdr, "token_embd.weight")      # Q4_0: 32 values a block
    expect(tmp_path, put(data, t.dims_offset, u64(250)), errors.TensorShapeError, "250 columns", "block size 32")


def test_misaligned_offset(tmp_path):
    data, hdr = fixture()
    t = tensor(hdr, "blk.1.attn_q.weight")
    expect(tmp_path, put(data, t.data_offset_field, u64(t.data_offset + 16)), errors.TensorAlignmentError,
           "'blk.1.attn_q.weight'", "alignment 32", f"byte offset {t.data_offset_field}")


def test_offset_past_end(tmp_path):
    data, hdr = fixture()
    t = tensor(hdr, "blk.1.attn_q.weight")
    expect(tmp_path, put(bytearray(data), t.data_offset_field, u64(1 << 62)), errors.TensorOutOfBoundsError,
           "'blk.1.attn_q.weight'")
    last = max(hdr.tensors, key=lambda t: t.data_offset)
    expect(tmp_path, data[:-1], errors.TensorOutOfBoundsError, repr(last.name), "past the end")


def test_overlapping_tensors(tmp_path):
    data, hdr = fixture()
    a, b = tensor(hdr, "blk.2.ffn_gate.weight"), tensor(hdr, "blk.3.attn_v.weight")
    expect(tmp_path, put(data, b.data_offset_field, u64(a.data_offset + 32)), errors.TensorOverlapError,
           repr(a.name), repr(b.name), f"byte offset {b.data_offset_field}")


@pytest.mark.parametrize("vtype,value,msg", [(U32, 48, "48 is not a power of two"), (U32, 0, "0 is not"),
                                             (U64, 64, "type UINT64")])
def test_bad_alignment(tmp_path, vtype, value, msg):
    kvs = [("general.architecture", STRING, "gemma4"), ("general.alignment", vtype, value)]
    expect(tmp_path, make_gguf(kvs, [("t", [8], 0, 0)], b"\0" * 32), errors.BadAlignmentError, msg)


def test_custom_alignment_is_honoured(tmp_path):
    kvs = [("general.architecture", STRING, "gemma4"), ("general.alignment", U32, 64)]
    p = tmp_path / "a64.gguf"
    p.write_bytes(make_gguf(kvs, [("a", [8], 0, 0), ("b", [8], 0, 64)], b"\1" * 128, alignment=64))
    f = GGUFFile(p)
    assert f.header.alignment == 64 and f.tensors["b"].offset == f.header.data_start + 64
    p.write_bytes(make_gguf(kvs, [("a", [8], 0, 0), ("b", [8], 0, 32)], b"\1" * 128, alignment=64))
    with pytest.raises(errors.TensorAlignmentError, match="alignment 64"):
        GGUFFile(p)


@pytest.mark.parametrize("where,cls", [
    ("magic", errors.NotGGUFError), ("version", errors.TruncatedFileError), ("counts", errors.TruncatedFileError),
    # so early that the declared counts cannot fit what is left: the count check speaks first
    ("early_kv", errors.OversizeLengthError),
    ("kv_type", errors.TruncatedFileError), ("kv_value", errors.TruncatedFileError),
    ("string_array", errors.OversizeLengthError),
    ("tensor_dims", errors.TruncatedFileError), ("tensor_offset", errors.TruncatedFileError),
    ("padding", errors.TruncatedFileError)])
def test_truncated_header(tmp_path, where, cls):
    data, hdr = fixture()
    kv, t = hdr.kv["tokenizer.ggml.bos_token_id"], hdr.tensors[5]
    merges = hdr.kv["tokenizer.ggml.merges"]
    cut = {"magic": 2, "version": 6, "counts": 20, "early_kv": hdr.kv["gemma4.block_count"].value_offset + 1,
           "kv_type": kv.type_offset + 2, "kv_value": kv.value_offset + 1, "string_array": merges.end - 3,
           "tensor_dims": t.dims_offset + 3, "tensor_offset": t.data_offset_field + 7,
           "padding": hdr.header_end + 1}[where]
    expect(tmp_path, data[:cut], cls)


# ---- metadata value types (config.py) ---------------------------------------------------------------
@pytest.mark.parametrize("key,vtype,value,sub,frag", [
    ("gemma4.block_count", STRING, "6", None, "block_count must be an integer scalar"),
    ("gemma4.block_count", ARRAY, [6], U32, "block_count must be an integer scalar"),
    ("gemma4.block_count", F32, 6.0, None, "block_count must be an integer scalar"),
    ("gemma4.attention.head_count_kv", STRING, "2", None, "head_count_kv must be an integer or an integer array"),
    ("gemma4.attention.head_count_kv", ARRAY, ["2"] * 6, STRING, "head_count_kv must be an integer scalar"),
    ("gemma4.attention.layer_norm_rms_epsilon", STRING, "1e-6", None, "layer_norm_rms_epsilon must be a number"),
    ("gemma4.rope.freq_base", ARRAY, [1.0], F32, "freq_base must be a number"),
    ("gemma4.attention.sliding_window_pattern", STRING, "5:1", None, "sliding_window_pattern must be"),
    ("gemma4.final_logit_softcapping", STRING, "30", None, "final_logit_softcapping must be a number"),
    ("general.architecture", U32, 4, None, "general.architecture is not a string"),
])
def test_metadata_types(tmp_path, key, vtype, value, sub, frag):
    data, hdr = fixture()
    expect(tmp_path, set_kv(data, hdr, key, vtype, value, sub), errors.MetadataTypeError, frag)


def test_head_count_kv_array_is_legal(tmp_path):
    data, hdr = fixture()
    p = tmp_path / "kv_array.gguf"
    p.write_bytes(bytes(set_kv(data, hdr, "gemma4.attention.head_count_kv", ARRAY, [2] * 6, U32)))
    assert [L.n_kv_head for L in load_config(open_all(p)).layers] == [2] * 6


def test_absurd_block_count_fails_fast(tmp_path):
    data, hdr = fixture()
    t0 = time.perf_counter()
    expect(tmp_path, set_kv(data, hdr, "gemma4.block_count", U32, (1 << 32) - 1), errors.MetadataError, "block_count")
    assert time.perf_counter() - t0 < 1.0


def test_missing_key(tmp_path):
    data, hdr = fixture()
    e = hdr.kv["gemma4.embedding_length"]
    # rename the key in place (same length), so the required one is absent
    expect(tmp_path, put(data, e.offset + 8, b"gemma4.embedding_lengtX"), errors.MissingKeyError, "embedding_length")


# ---- tensor shapes the config implies (graph.py) --------------------------------------------------------
@pytest.mark.parametrize("name,dims,frag", [
    ("blk.0.attn_q.weight", (256, 128), "expected [256, 256]"),
    ("blk.0.attn_k.weight", (256, 64), "expected [256, 128]"),
    ("blk.0.attn_v.weight", (256, 64), "expected [256, 128]"),
    ("blk.0.attn_output.weight", (256, 128), "expected [256, 256]"),
    ("blk.0.ffn_gate.weight", (256, 256), "expected [256, 512]"),
    ("blk.0.ffn_up.weight", (256, 256), "expected [256, 512]"),
    ("blk.0.ffn_down.weight", (512, 128), "expected [512, 256]"),
    ("blk.0.attn_norm.weight", (128,), "expected [256, 1]"),
    ("blk.0.attn_q_norm.weight", (32,), "expected [64, 1]"),
    ("blk.5.attn_k_norm.weight", (64,), "expected [128, 1]"),
    ("blk.0.post_ffw_norm.weight", (128,), "expected [256, 1]"),
    ("output_norm.weight", (64,), "expected [256, 1]"),
])
def test_layer_tensor_shapes(tmp_path, name, dims, frag):
    data, hdr = fixture()
    t = tensor(hdr, name)
    assert len(dims) == len(t.dims) and dims != t.dims
    # Shrinking keeps the data inside its old range: only the shape check can object.
    expect(tmp_path, put(data, t.dims_offset, b"".join(u64(d) for d in dims)), errors.TensorShapeError, repr(name),
           frag)


@pytest.mark.parametrize("name", ["blk.1.attn_norm.weight", "output_norm.weight", "rope_freqs.weight",
                                  "blk.5.layer_output_scale.weight"])
def test_one_row_tensors_must_have_one_row(name):
    # Same element count as a [cols/4, 4] matrix: only the row check can catch it.
    f = GGUFFile(FIXTURES / "models" / DENSE)
    cfg, specs = load_config(f), weight_specs(f)
    s = specs[name]
    specs[name] = WeightSpec(name, s.qtype, 4 * s.rows, s.cols)
    with pytest.raises(errors.TensorShapeError, match=repr(name)):
        build_graph(cfg, specs, 1, 16)


@pytest.mark.parametrize("name,dims", [("blk.0.inp_gate.weight", (256, 16)), ("blk.0.proj.weight", (32, 128)),
                                       ("per_layer_token_embd.weight", (256, 1024)),
                                       ("per_layer_model_proj.weight", (256, 128)),
                                       ("blk.0.post_norm.weight", (128,))])
def test_ple_tensor_shapes(tmp_path, name, dims):
    data, hdr = fixture(EDGE)
    t = tensor(hdr, name)
    assert len(dims) == len(t.dims) and dims != t.dims
    expect(tmp_path, put(data, t.dims_offset, b"".join(u64(d) for d in dims)), errors.TensorShapeError, repr(name))


def test_heads_not_a_multiple_of_kv_heads(tmp_path):
    data, hdr = fixture()
    expect(tmp_path, set_kv(data, hdr, "gemma4.attention.head_count_kv", U32, 3), errors.TensorShapeError,
           "4 heads are not a multiple of 3 KV heads")


def test_missing_tensor(tmp_path):
    data, hdr = fixture()
    t = tensor(hdr, "blk.2.ffn_up.weight")
    expect(tmp_path, put(data, t.offset + 8, b"blk.2.ffn_uX.weight"), errors.MissingTensorError,
           "'blk.2.ffn_up.weight'")


# ---- valid but unsupported -------------------------------------------------------------------------------
def test_other_architecture(tmp_path):
    data, hdr = fixture()
    expect(tmp_path, set_kv(data, hdr, "general.architecture", STRING, "qwen3"), errors.UnsupportedModelError,
           "'qwen3'", "gemma4")


@pytest.mark.parametrize("how", ["clip", "general.type"])
def test_mmproj_file(tmp_path, how):
    data, hdr = fixture()
    data = (set_kv(data, hdr, "general.architecture", STRING, "clip") if how == "clip"
            else set_kv(data, hdr, "general.type", STRING, "mmproj"))
    expect(tmp_path, data, errors.UnsupportedModelError, "mmproj", "not a text model", "gemma4")


def test_expert_keys_on_a_dense_file(tmp_path):
    """Expert keys that the tensors do not back: refused, naming what is missing."""
    data, hdr = fixture()
    expect(tmp_path, add_kv(data, hdr, "gemma4.expert_count", U32, 128), errors.MetadataError,
           "expert_used_count is 0; it must be between 1 and expert_count (128)")
    data = add_kv(data, hdr, "gemma4.expert_count", U32, 128)
    hdr = scan(data, len(data))
    data = add_kv(data, hdr, "gemma4.expert_used_count", U32, 8)
    hdr = scan(data, len(data))
    data = add_kv(data, hdr, "gemma4.expert_feed_forward_length", U32, 704)
    expect(tmp_path, data, errors.MetadataError, "expert_count is 128 but no layer has expert tensors")


def test_quant_type_without_kernel(tmp_path):
    data, hdr = fixture()
    t = tensor(hdr, "blk.0.ffn_up.weight")
    # IQ4_NL has Q4_0's block geometry (32 values in 18 bytes), so the file stays consistent.
    err = expect(tmp_path, put(data, t.type_offset, u32(20)), errors.UnsupportedModelError, "IQ4_NL",
                 "'blk.0.ffn_up.weight'")
    assert "supported: F32" in str(err) and "Q4_0" in str(err)


def test_vocab_only_file_is_not_a_model(tmp_path):
    with pytest.raises(errors.G4rtError):
        open_all(FIXTURES / "tokenizer" / "ggml-vocab-gemma-4.gguf")


def test_every_fixture_passes_validation():
    for p in sorted((FIXTURES / "models").glob("*.gguf")):
        open_all(p)
