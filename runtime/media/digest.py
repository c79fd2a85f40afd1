"""Content keys for the server's prompt cache: the same key means the same encoder input."""

from __future__ import annotations

import hashlib

import numpy as np


def media_digest(kind: str, array: np.ndarray, *geometry: int) -> str:
    """sha256 hex over a tag, the geometry that shapes the encoder input, and the array's bytes."""
    h = hashlib.sha256()
    h.update(f"g4rt-{kind}-v1:{array.dtype.str}:{','.join(map(str, (*array.shape, *geometry)))}:".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()
