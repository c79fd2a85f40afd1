"""Read a GGUF file: metadata and memory-mapped tensors, after a hardened header scan.

Nothing here copies weights: `TensorInfo.raw` is a view into the memory-mapped file.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from ..errors import (MetadataTypeError, MissingKeyError, MissingTensorError, ModelFileError, NotGGUFError,
                      TruncatedFileError)
from .validate import ARRAY, HEADER_BYTES, MAGIC, TYPE_NAMES, read_array, read_scalar, scan
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


class GGUFFile:
    """A GGUF file opened read-only and memory-mapped.

    The header is validated by `gguf_validate.scan` (bounded reads, every size checked against the
    file) before anything is built from it; metadata values are then decoded from the map on
    first use, so opening costs O(keys + tensors) memory whatever the file declares."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such file")
        try:
            with open(self.path, "rb") as fh:
                self.file_size = os.fstat(fh.fileno()).st_size
                if self.file_size < HEADER_BYTES:
                    head = fh.read(4)
                    if head != MAGIC:
                        raise NotGGUFError(f"{self.path}: not a GGUF file (magic {head!r}, expected {MAGIC!r})")
                    raise TruncatedFileError(f"{self.path}: {self.file_size} bytes, shorter than a GGUF "
                                             f"header ({HEADER_BYTES} bytes; truncated)")
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ModelFileError(f"{self.path}: cannot read ({e.strerror or e})") from None
        self.header = scan(self._map, self.file_size, self.path.name)
        self._values: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        data = np.frombuffer(self._map, dtype=np.uint8)
        for t in self.header.tensors:
            shape = t.dims
            block, size = block_geometry(t.ggml_type)
            n_rows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
            start = self.header.tensor_start(t)
            raw = data[start:start + t.nbytes].reshape(n_rows, (shape[0] // block) * size)
            self.tensors[t.name] = TensorInfo(t.name, t.ggml_type, shape, raw, start)

    # metadata ---------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return list(self.header.kv)

    def has(self, key: str) -> bool:
        return key in self.header.kv

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self._values:
            return self._values[key]
        e = self.header.kv.get(key)
        if e is None:
            if default is _MISSING:
                raise MissingKeyError(f"{self.path.name}: metadata key {key!r} is missing")
            return default
        value = read_array(self._map, e) if e.vtype == ARRAY else read_scalar(self._map, e)
        if e.vtype == GGUFValueType.BOOL or e.subtype == GGUFValueType.BOOL:
            value = [bool(v) for v in value] if isinstance(value, list) else bool(value)
        self._values[key] = value
        return value

    def value_type(self, key: str) -> str:
        e = self.header.kv[key]
        return f"[{TYPE_NAMES[e.subtype]}]" if e.vtype == ARRAY else TYPE_NAMES[e.vtype]

    @property
    def architecture(self) -> str:
        arch = self.get("general.architecture")
        if not isinstance(arch, str):
            raise MetadataTypeError(f"{self.path.name}: general.architecture is not a string")
        return arch

    # tensors ----------------------------------------------------------------------------
    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise MissingTensorError(f"{self.path.name}: tensor {name!r} is missing") from None

    def has_tensor(self, name: str) -> bool:
        return name in self.tensors

    def release_pages(self, name: str) -> int:
        """Drop this process's mapped pages of a tensor whose bytes a backend has copied (the CPU's
        repacked weights), so that the copy replaces them in RAM instead of doubling it; a later
        read faults them back in from the page cache or the file, unchanged (the map is a shared
        read-only file mapping, so MADV_DONTNEED never loses data). Only whole pages inside the
        tensor are dropped. Returns the bytes released (0 where madvise is unavailable)."""
        t = self.tensor(name)
        page = mmap.PAGESIZE
        start = -(-t.offset // page) * page
        end = (t.offset + t.raw.nbytes) // page * page
        if end <= start or not hasattr(mmap, "MADV_DONTNEED"):
            return 0
        try:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            return 0
        return end - start
