"""The GGUF tensor types g4rt runs, their block geometry, and exact dequantization.

Block layouts and the reference dequantization come from the `gguf` package (llama.cpp's own
Python library), so the numpy reference decodes bits exactly as llama.cpp writes them.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as _gguf_quants

from ..errors import UnsupportedModelError

QT = GGMLQuantizationType

#: Types every backend must run (matvec/matmul kernels and CPU dequantization).
SUPPORTED_TYPES: tuple[QT, ...] = (
    QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q4_K, QT.Q5_K, QT.Q6_K,
)
SUPPORTED_NAMES = ", ".join(t.name for t in SUPPORTED_TYPES)


def block_geometry(qtype: QT) -> tuple[int, int]:
    """(values per block, bytes per block) of a GGUF tensor type."""
    return GGML_QUANT_SIZES[qtype]


def row_bytes(qtype: QT, n_cols: int) -> int:
    block, size = block_geometry(qtype)
    return (n_cols // block) * size


def check_supported(qtype: QT, what: str) -> None:
    if qtype not in SUPPORTED_TYPES:
        raise UnsupportedModelError(
            f"{what} has tensor type {qtype.name}, which g4rt has no kernel for "
            f"(supported: {SUPPORTED_NAMES})")


def dequantize_rows(raw: np.ndarray, qtype: QT, n_cols: int) -> np.ndarray:
    """Exactly dequantize rows of raw GGUF bytes (uint8 [rows, row_bytes]) to float32 [rows, n_cols]."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    rows = raw.shape[0]
    if qtype == QT.F32:
        out = raw.view(np.float32)
    elif qtype == QT.F16:
        out = raw.view(np.float16).astype(np.float32)
    else:
        out = _gguf_quants.dequantize(raw, qtype)
    return np.asarray(out, dtype=np.float32).reshape(rows, n_cols)


def quantize_rows(values: np.ndarray, qtype: QT) -> np.ndarray:
    """Quantize float rows to raw GGUF bytes (for tests and synthetic models)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if qtype == QT.F32:
        return values.view(np.uint8).reshape(values.shape[0], -1)
    if qtype == QT.F16:
        return values.astype(np.float16).view(np.uint8).reshape(values.shape[0], -1)
    return _gguf_quants.quantize(values, qtype)
