"""Read a GGUF file: metadata and memory-mapped tensors, through the `gguf` package.

Nothing here copies weights: `TensorInfo.raw` is a view into the memory-mapped file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from .errors import MetadataError, ModelFileError, TensorError
from .quant_types import block_geometry

#: Architectures g4rt accepts, mapped to the graph family that runs them.
ARCH_ALIASES = {"gemma4": "gemma4", "gemma4_unified": "gemma4", "gemma3": "gemma3"}

_MISSING = object()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]   # GGUF order: shape[0] is the contiguous (column) dimension
    raw: np.ndarray          # uint8 view [rows, row_bytes] into the mapped file
    offset: int              # absolute byte offset in the file

    @property
    def n_cols(self) -> int:
        return self.shape[0]

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.raw[start:stop]


def _field_value(field) -> Any:
    """A metadata field as a plain Python value (str, int, float, bool, or list of those)."""
    types = field.types
    if not types:
        raise MetadataError(f"metadata key {field.name!r} has no type")
    if types[0] == GGUFValueType.ARRAY:
        if len(types) < 2:
            raise MetadataError(f"metadata array {field.name!r} has no element type")
        sub = types[1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        if sub == GGUFValueType.ARRAY:
            raise MetadataError(f"metadata key {field.name!r} is a nested array, which Gemma never uses")
        vals = [field.parts[i][0] for i in field.data]
        if sub == GGUFValueType.BOOL:
            return [bool(v) for v in vals]
        if sub in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
            return [float(v) for v in vals]
        return [int(v) for v in vals]
    if types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    v = field.parts[field.data[0]][0]
    if types[0] == GGUFValueType.BOOL:
        return bool(v)
    if types[0] in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return float(v)
    return int(v)


class GGUFFile:
    """A GGUF file opened read-only and memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such file")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ModelFileError(f"{self.path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        try:
            self._reader = GGUFReader(self.path, "r")
        except (ValueError, IndexError, KeyError, OverflowError, MemoryError, TypeError, UnicodeDecodeError) as e:
            raise ModelFileError(f"{self.path}: malformed GGUF ({type(e).__name__}: {e})") from None
        self.file_size = self.path.stat().st_size
        self._values: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        for t in self._reader.tensors:
            try:
                qtype = GGMLQuantizationType(int(t.tensor_type))
            except ValueError:
                raise TensorError(f"tensor {t.name!r} has unknown type id {int(t.tensor_type)}") from None
            shape = tuple(int(d) for d in t.shape)
            block, size = block_geometry(qtype)
            if shape[0] % block:
                raise TensorError(f"tensor {t.name!r}: {shape[0]} columns is not a multiple of the "
                                  f"{qtype.name} block size {block}")
            n_rows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
            raw = np.asarray(t.data).view(np.uint8).reshape(n_rows, (shape[0] // block) * size)
            self.tensors[t.name] = TensorInfo(t.name, qtype, shape, raw, int(t.data_offset))

    # metadata ---------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return [k for k in self._reader.fields if not k.startswith("GGUF.")]

    def has(self, key: str) -> bool:
        return key in self._reader.fields

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self._values:
            return self._values[key]
        field = self._reader.fields.get(key)
        if field is None:
            if default is _MISSING:
                raise MetadataError(f"{self.path.name}: metadata key {key!r} is missing")
            return default
        try:
            value = _field_value(field)
        except (IndexError, ValueError) as e:
            raise MetadataError(f"{self.path.name}: metadata key {key!r} is unreadable ({e})") from None
        self._values[key] = value
        return value

    def value_type(self, key: str) -> str:
        field = self._reader.fields[key]
        names = [t.name for t in field.types]
        return "[" + names[1] + "]" if names[0] == "ARRAY" and len(names) > 1 else names[0]

    @property
    def architecture(self) -> str:
        arch = self.get("general.architecture")
        if not isinstance(arch, str):
            raise MetadataError("general.architecture is not a string")
        return arch

    # tensors ----------------------------------------------------------------------------
    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise TensorError(f"{self.path.name}: tensor {name!r} is missing") from None

    def has_tensor(self, name: str) -> bool:
        return name in self.tensors
