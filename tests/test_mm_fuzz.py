"""Fuzzing the projector loader as the text GGUF loader is (tests/test_fuzz_gguf.py): mutated
copies of the fixtures' mmproj either load (and then encode an image and a clip) or fail with a
G4rtError - never another exception, never a hang. Derandomized cases in CI; G4RT_FUZZ_EXAMPLES
draws that many fresh ones."""

from __future__ import annotations

import os
import struct
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from g4rt.errors import G4rtError
from g4rt.gguf.validate import scan

REPO = Path(__file__).resolve().parents[1]
MM = Path(os.environ.get("G4RT_FIXTURES_MM", REPO.parent / "shared" / "fixtures-mm"))
MMPROJ = MM / "models" / "mmproj-g4u-mm-F32.gguf"
pytestmark = pytest.mark.skipif(not MMPROJ.is_file(), reason="fixtures folder ../shared/fixtures-mm is absent")

_TOTAL = int(os.environ.get("G4RT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_TOTAL // 2 or 40, deadline=None, derandomize=not _TOTAL, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TIME_LIMIT_S = 2.0


@lru_cache(maxsize=1)
def base() -> tuple[bytes, int, list[int]]:
    raw = MMPROJ.read_bytes()
    h = scan(raw, len(raw))
    # the u32 / u64 values of integer keys: where a hostile file lies about sizes
    ints = [e.value_offset for e in h.kv.values() if e.vtype in (4, 5)]    # UINT32, INT32
    return raw, h.data_start, ints


def _try(data: bytes, tmp_path: Path) -> str:
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.mmproj.reader import load_projector
    path = tmp_path / "mmproj-fuzz.gguf"
    path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        p = load_projector(path, 256)
        enc = MediaEncoder(p, "numpy")
        if p.vision:
            n = 4
            pos = np.stack([np.arange(n) % 2, np.arange(n) // 2], axis=1)
            enc.encode_image(np.full((n, p.vision.patch_values), 0.5, np.float32), pos)
        if p.audio:
            enc.encode_audio(np.zeros((2, p.audio.frame), np.float32))
        outcome = "loaded"
    except G4rtError:
        outcome = "refused"
    assert time.perf_counter() - t0 < TIME_LIMIT_S
    return outcome


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6))
def test_header_byte_mutations(tmp_path_factory, edits):
    raw, header_end, _ = base()
    data = bytearray(raw)
    for off, byte in edits:
        data[off % header_end] = byte
    _try(bytes(data), tmp_path_factory.mktemp("fz"))


@FUZZ
@given(st.data())
def test_integer_keys_set_to_hostile_values(tmp_path_factory, data):
    raw, _, ints = base()
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        off = data.draw(st.sampled_from(ints))
        value = data.draw(st.sampled_from([0, 1, 2, 3, 7, 255, 1 << 16, (1 << 31) - 1, (1 << 32) - 1]))
        struct.pack_into("<I", buf, off, value)
    _try(bytes(buf), tmp_path_factory.mktemp("fz"))


def test_the_unmutated_file_loads(tmp_path):
    assert _try(MMPROJ.read_bytes(), tmp_path) == "loaded"
