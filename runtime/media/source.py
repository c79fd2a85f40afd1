"""Where a medium's bytes come from: a path or the bytes themselves, read once, with a size limit."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MediaError

Source = bytes | bytearray | memoryview | str | os.PathLike


def read_source(source: Source, *, name: str | None, kind: str, max_bytes: int) -> tuple[bytes, str]:
    """(the bytes, the name to use in messages). `kind` is "image" or "audio"."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or kind
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or f"{kind} {str(path)!r}"
        try:
            size = path.stat().st_size
            if size > max_bytes:  # refuse before reading it into memory
                raise MediaError("too_large", label, f"{size} bytes is more than the limit of {max_bytes} bytes")
            data = path.read_bytes()
        except OSError as e:
            raise MediaError("unreadable", label, f"cannot read the file: {e.strerror or e}") from e
    else:
        raise TypeError(f"{kind} source must be bytes or a path, not {type(source).__name__}")
    if not data:
        raise MediaError("empty", label, "the data is empty (0 bytes)")
    if len(data) > max_bytes:
        raise MediaError("too_large", label, f"{len(data)} bytes is more than the limit of {max_bytes} bytes")
    return data, label
