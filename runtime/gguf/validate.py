"""A bounded, allocation-free pre-scan of a GGUF header, done before anything trusts the file.

GGUF files come from the internet. llama.cpp's parser had heap overflows in 2024 from crafted
tensor counts, string lengths, array sizes and tensor offsets, and the `gguf` package's reader
is not hardened either (a huge array count makes numpy allocate; a bad offset gives odd
exceptions; a 262k-token vocabulary costs it ~40 s and >1 GB). This module walks the header with
`struct` over the memory map, checks every declared size against the bytes that are actually
left, and records only offsets: memory is O(keys + tensors), never O(a declared length).

Every failure raises a specific G4rtError subclass whose message names the file, the key or
tensor, and the byte offset of the bad field.

Layout (versions 2 and 3, little-endian): magic "GGUF", u32 version, u64 tensor_count,
u64 kv_count; kv_count x (string key, u32 type, value); tensor_count x (string name, u32 n_dims,
u64 dims[n_dims], u32 type, u64 offset); padding to `general.alignment`; tensor data.
A string is a u64 byte length and the bytes; an array is a u32 element type, a u64 count and
the elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import (BadAlignmentError, BadNameError, BadValueTypeError, BadVersionError, DuplicateKeyError,
                      DuplicateTensorError, ModelFileError, NotGGUFError, OversizeLengthError, TensorAlignmentError,
                      TensorOutOfBoundsError, TensorOverlapError, TensorShapeError, TruncatedFileError,
                      UnknownTensorTypeError, UnsupportedModelError)

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
HEADER_BYTES = 24                 # magic, version, tensor_count, kv_count

# Sanity caps far above any real model (Gemma 4: ~900 tensors, ~50 keys, 262k tokens, 515k
# merges). They bound the work and the memory that decoding a value may later cost.
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_ARRAY = 1 << 24
MAX_STRING = 1 << 24
MAX_KEY_LEN = 1 << 16
MAX_TENSOR_NAME = 63              # ggml's GGML_MAX_NAME is 64 including the NUL
MAX_DIMS = 4                      # GGML_MAX_DIMS
MAX_DIM = 1 << 31                 # exclusive
MAX_ELEMENTS = 1 << 40            # exclusive

# Smallest possible encodings: they bound counts by the bytes left before any loop runs.
_MIN_KV_BYTES = 8 + 1 + 4 + 1     # key length, 1-byte key, type, 1-byte value
_MIN_TENSOR_BYTES = 8 + 1 + 4 + 8 + 4 + 8

#: Fixed-size value types: id -> (struct code, byte size).
SCALAR_TYPES: dict[int, tuple[str, int]] = {
    GGUFValueType.UINT8: ("B", 1), GGUFValueType.INT8: ("b", 1),
    GGUFValueType.UINT16: ("H", 2), GGUFValueType.INT16: ("h", 2),
    GGUFValueType.UINT32: ("I", 4), GGUFValueType.INT32: ("i", 4),
    GGUFValueType.FLOAT32: ("f", 4), GGUFValueType.BOOL: ("?", 1),
    GGUFValueType.UINT64: ("Q", 8), GGUFValueType.INT64: ("q", 8),
    GGUFValueType.FLOAT64: ("d", 8),
}
STRING, ARRAY = int(GGUFValueType.STRING), int(GGUFValueType.ARRAY)
TYPE_NAMES = {int(t): t.name for t in GGUFValueType}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class KvEntry:
    key: str
    offset: int                 # start of the entry (the key's length field)
    type_offset: int            # the u32 value type id
    vtype: int
    subtype: Optional[int]      # element type of an array
    count: int                  # array length (1 for a scalar or string)
    count_offset: int           # the u64 array count (or the string length); -1 for scalars
    value_offset: int           # first byte of the value (an array's first element)
    end: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    offset: int                 # start of the tensor info (the name's length field)
    dims: tuple[int, ...]       # GGUF order: dims[0] is contiguous
    dims_offset: int
    ggml_type: GGMLQuantizationType
    type_offset: int
    data_offset: int            # relative to the data section
    data_offset_field: int      # where that u64 lies
    nbytes: int
    end: int


@dataclass
class Header:
    """What the scan proved about a file: every structure's position, sizes all in bounds."""
    version: int
    file_size: int
    alignment: int
    kv: dict[str, KvEntry] = field(default_factory=dict)
    tensors: list[TensorEntry] = field(default_factory=list)
    header_end: int = HEADER_BYTES     # end of the tensor infos
    data_start: int = HEADER_BYTES     # header_end rounded up to the alignment

    def tensor_start(self, t: TensorEntry) -> int:
        return self.data_start + t.data_offset


class _Scan:
    def __init__(self, buf, size: int, name: str):
        self.buf, self.size, self.name, self.pos = buf, size, name, 0

    def where(self, what: str, off: int) -> str:
        return f"{self.name}: {what} at byte offset {off}"

    def left(self) -> int:
        return self.size - self.pos

    def fixed(self, st: struct.Struct, what: str) -> int:
        if self.pos + st.size > self.size:
            raise TruncatedFileError(
                f"{self.where(what, self.pos)}: the file ends after {self.size} bytes "
                f"(truncated)")
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def length(self, what: str, cap: int, unit: int = 1, unit_name: str = "bytes") -> int:
        """A declared u64 length/count: within the cap and within the bytes left."""
        off = self.pos
        n = self.fixed(_U64, what)
        if n > cap:
            raise OversizeLengthError(
                f"{self.where(what, off)}: declares {n} {unit_name}, more than g4rt accepts "
                f"({cap}); the file is corrupt or hostile")
        if n * unit > self.left():
            raise OversizeLengthError(
                f"{self.where(what, off)}: declares {n} {unit_name}"
                + (f" ({n * unit} bytes at least)" if unit > 1 else "")
                + f" but only {self.left()} bytes are left in the file (truncated or corrupt)")
        return n

    def text(self, what: str, cap: int, kind: str) -> tuple[str, int]:
        """A string that must be a valid, non-empty UTF-8 name (key or tensor name)."""
        off = self.pos
        n = self.length(what + " length", MAX_STRING)
        if n == 0 or n > cap:
            raise BadNameError(f"{self.where(what, off)}: a {kind} name of {n} bytes "
                               f"({'empty' if n == 0 else f'longer than {cap}'})")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8"), off
        except UnicodeDecodeError:
            raise BadNameError(f"{self.where(what, off)}: {kind} name {raw[:40]!r} is not "
                               f"valid UTF-8") from None


def _check_type_id(sc: _Scan, t: int, key: str, off: int, element: bool) -> None:
    what = f"metadata key {key!r}" + (" array element type" if element else " value type")
    if t not in TYPE_NAMES:
        raise BadValueTypeError(f"{sc.where(what, off)}: unknown value type id {t}")
    if element and t == ARRAY:
        raise BadValueTypeError(f"{sc.where(what, off)}: nested arrays are not accepted")


def _scan_kv(sc: _Scan, hdr: Header, index: int) -> KvEntry:
    start = sc.pos
    key, _ = sc.text(f"metadata key #{index}", MAX_KEY_LEN, "metadata key")
    if key in hdr.kv:
        raise DuplicateKeyError(f"{sc.where(f'metadata key {key!r}', start)}: duplicate key (first at "
                                f"byte offset {hdr.kv[key].offset})")
    type_off = sc.pos
    vtype = sc.fixed(_U32, f"metadata key {key!r} value type")
    _check_type_id(sc, vtype, key, type_off, element=False)
    subtype, count, count_off = None, 1, -1
    if vtype in SCALAR_TYPES:
        size = SCALAR_TYPES[vtype][1]
        if size > sc.left():
            raise TruncatedFileError(f"{sc.where(f'metadata key {key!r} value', sc.pos)}: the file "
                                     f"ends after {sc.size} bytes (truncated)")
        value_off = sc.pos
        sc.pos += size
    elif vtype == STRING:
        count_off = sc.pos
        n = sc.length(f"metadata key {key!r} string length", MAX_STRING)
        value_off = sc.pos
        sc.pos += n
    else:
        sub_off = sc.pos
        subtype = sc.fixed(_U32, f"metadata key {key!r} array element type")
        _check_type_id(sc, subtype, key, sub_off, element=True)
        count_off = sc.pos
        unit = 8 if subtype == STRING else SCALAR_TYPES[subtype][1]
        count = sc.length(f"metadata key {key!r} array length", MAX_ARRAY, unit, "elements")
        value_off = sc.pos
        if subtype == STRING:
            sc.pos = _walk_strings(sc, key, count)
        else:
            sc.pos += count * unit
    return KvEntry(key, start, type_off, vtype, subtype, count, count_off, value_off, sc.pos)


def _walk_strings(sc: _Scan, key: str, count: int) -> int:
    """Skip `count` strings (lengths only; nothing is decoded or kept); return the end offset."""
    buf, size, pos, unpack = sc.buf, sc.size, sc.pos, _U64.unpack_from
    try:
        # Fast path (a vocabulary has ~10^5-10^6 entries): once a bad length sends `pos` past the
        # end, the next read fails at once, so no check is needed inside the loop.
        for _ in range(count):
            (n,) = unpack(buf, pos)
            pos += 8 + n
        if pos <= size:
            return pos
    except (struct.error, OverflowError):   # offset past the end, or past what ssize_t holds
        pass
    pos = sc.pos        # slow path: find the bad element and say where it is
    for i in range(count):
        if pos + 8 > size:
            raise TruncatedFileError(f"{sc.where(f'metadata key {key!r} element {i} length', pos)}: the "
                                     f"file ends after {size} bytes (truncated)")
        (n,) = unpack(buf, pos)
        if n > size - pos - 8:
            raise OversizeLengthError(
                f"{sc.where(f'metadata key {key!r} element {i}', pos)}: declares a {n}-byte string "
                f"but only {size - pos - 8} bytes are left (truncated or corrupt)")
        pos += 8 + n
    raise AssertionError("unreachable: the fast path failed but every element fits")


def _scan_tensor(sc: _Scan, index: int, names: dict[str, int]) -> TensorEntry:
    start = sc.pos
    name, _ = sc.text(f"tensor info #{index}", MAX_TENSOR_NAME, "tensor")
    what = f"tensor {name!r}"
    if name in names:
        raise DuplicateTensorError(f"{sc.where(what, start)}: duplicate tensor name (first at byte "
                                   f"offset {names[name]})")
    names[name] = start
    nd_off = sc.pos
    n_dims = sc.fixed(_U32, what + " n_dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise TensorShapeError(f"{sc.where(what, nd_off)}: {n_dims} dimensions (1 to {MAX_DIMS} "
                               f"are possible)")
    dims_off = sc.pos
    dims = tuple(sc.fixed(_U64, f"{what} dimension {j}") for j in range(n_dims))
    n_el = 1
    for j, d in enumerate(dims):
        if not 1 <= d < MAX_DIM:
            raise TensorShapeError(f"{sc.where(what, dims_off + 8 * j)}: dimension {j} is {d} "
                                   f"(must be 1 .. {MAX_DIM - 1})")
        n_el *= d
    if n_el >= MAX_ELEMENTS:
        raise TensorShapeError(f"{sc.where(what, dims_off)}: shape {list(dims)} has {n_el} elements "
                               f"(at most {MAX_ELEMENTS - 1})")
    type_off = sc.pos
    tid = sc.fixed(_U32, what + " type")
    try:
        gtype = GGMLQuantizationType(tid)
        block, size = GGML_QUANT_SIZES[gtype]
    except (ValueError, KeyError):
        raise UnknownTensorTypeError(f"{sc.where(what, type_off)}: unknown tensor type id {tid}") from None
    if dims[0] % block:
        raise TensorShapeError(f"{sc.where(what, dims_off)}: {dims[0]} columns is not a multiple of "
                               f"the {gtype.name} block size {block}")
    off_field = sc.pos
    data_off = sc.fixed(_U64, what + " data offset")
    return TensorEntry(name, start, dims, dims_off, gtype, type_off, data_off, off_field,
                       n_el // block * size, sc.pos)


def scan(buf, size: int, name: str = "GGUF file") -> Header:
    """Validate a GGUF header in `buf` (bytes, mmap, memoryview) of `size` bytes.

    Returns the Header; raises a ModelFileError subclass (or UnsupportedModelError for a valid
    but unsupported encoding) on the first problem."""
    sc = _Scan(buf, size, name)
    magic = bytes(buf[:4])
    if magic != MAGIC:
        raise NotGGUFError(f"{name}: not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
    sc.pos = 4
    version = sc.fixed(_U32, "GGUF version")
    if version not in VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version & 0xFFFF == 0 and swapped in (1, 2, 3):
            raise UnsupportedModelError(f"{name}: a big-endian GGUF file; g4rt reads little-endian "
                                        f"GGUF versions 2 and 3")
        if version == 1:
            raise UnsupportedModelError(f"{name}: GGUF version 1 is obsolete; g4rt reads versions 2 "
                                        f"and 3 (reconvert the model with a current llama.cpp)")
        raise BadVersionError(f"{sc.where('GGUF version', 4)}: unknown version {version} "
                              f"(g4rt reads {VERSIONS[0]} and {VERSIONS[1]})")
    n_tensors = sc.length("tensor count", MAX_TENSORS, _MIN_TENSOR_BYTES, "tensors")
    n_kv = sc.length("metadata key count", MAX_KV, _MIN_KV_BYTES, "keys")
    if n_tensors * _MIN_TENSOR_BYTES + n_kv * _MIN_KV_BYTES > sc.left():
        raise OversizeLengthError(f"{name}: {n_tensors} tensors and {n_kv} metadata keys cannot fit "
                                  f"the {sc.left()} bytes after the header (truncated or corrupt)")
    hdr = Header(version=version, file_size=size, alignment=DEFAULT_ALIGNMENT)
    for i in range(n_kv):
        e = _scan_kv(sc, hdr, i)
        hdr.kv[e.key] = e
    names: dict[str, int] = {}
    for i in range(n_tensors):
        hdr.tensors.append(_scan_tensor(sc, i, names))
    hdr.header_end = sc.pos

    al = hdr.kv.get("general.alignment")
    if al is not None:
        if al.vtype != GGUFValueType.UINT32:
            raise BadAlignmentError(f"{sc.where('general.alignment', al.offset)}: type "
                                    f"{TYPE_NAMES[al.vtype]}, expected UINT32")
        (a,) = _U32.unpack_from(buf, al.value_offset)
        if a == 0 or a & (a - 1):
            raise BadAlignmentError(f"{sc.where('general.alignment', al.offset)}: {a} is not a "
                                    f"power of two")
        hdr.alignment = a
    hdr.data_start = -(-hdr.header_end // hdr.alignment) * hdr.alignment
    if hdr.tensors and hdr.data_start > size:
        raise TruncatedFileError(f"{name}: the tensor data would start at byte offset "
                                 f"{hdr.data_start}, past the end of the file ({size} bytes; truncated)")
    _check_tensor_data(hdr, sc)
    return hdr


def _check_tensor_data(hdr: Header, sc: _Scan) -> None:
    for t in hdr.tensors:
        what = f"tensor {t.name!r} data offset"
        if t.data_offset % hdr.alignment:
            raise TensorAlignmentError(f"{sc.where(what, t.data_offset_field)}: {t.data_offset} is "
                                       f"not a multiple of the alignment {hdr.alignment}")
        end = hdr.data_start + t.data_offset + t.nbytes
        if end > hdr.file_size:
            raise TensorOutOfBoundsError(
                f"{sc.where(what, t.data_offset_field)}: its {t.nbytes} bytes at file offset "
                f"{hdr.data_start + t.data_offset} run past the end of the file ({hdr.file_size} "
                f"bytes; truncated or corrupt)")
    prev: Optional[TensorEntry] = None
    for t in sorted(hdr.tensors, key=lambda t: t.data_offset):
        if prev is not None and t.data_offset < prev.data_offset + prev.nbytes:
            raise TensorOverlapError(
                f"{sc.where(f'tensor {t.name!r} data offset', t.data_offset_field)}: data at "
                f"[{t.data_offset}, {t.data_offset + t.nbytes}) overlaps tensor {prev.name!r} at "
                f"[{prev.data_offset}, {prev.data_offset + prev.nbytes})")
        if prev is None or t.data_offset + t.nbytes > prev.data_offset + prev.nbytes:
            prev = t


def read_scalar(buf, e: KvEntry):
    """The value of a scalar or string entry of a scanned header."""
    if e.vtype == STRING:
        (n,) = _U64.unpack_from(buf, e.count_offset)
        return bytes(buf[e.value_offset:e.value_offset + n]).decode("utf-8", errors="replace")
    code, _ = SCALAR_TYPES[e.vtype]
    (v,) = struct.unpack_from("<" + code, buf, e.value_offset)
    return v


def read_array(buf, e: KvEntry) -> list:
    """The elements of an array entry of a scanned header, as Python values."""
    if e.subtype == STRING:
        out, pos, unpack = [], e.value_offset, _U64.unpack_from
        for _ in range(e.count):
            (n,) = unpack(buf, pos)
            out.append(bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace"))
            pos += 8 + n
        return out
    code, _ = SCALAR_TYPES[e.subtype]
    return np.frombuffer(buf, dtype=np.dtype("<" + code), count=e.count, offset=e.value_offset).tolist()


__all__ = ["scan", "Header", "KvEntry", "TensorEntry", "read_scalar", "read_array", "ModelFileError"]
