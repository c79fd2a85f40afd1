"""Fuzzing the projector loader as the text GGUF loader is (tests/test_fuzz_gguf.py): mutated
copies of the fixtures' mmproj files - the 12B's gemma4uv + gemma4ua (../shared/fixtures-mm), the
gemma4v ViT (tests/data/gemma4v) and the gemma4a conformer + gemma4v (tests/data/gemma4a), all
three converted by llama.cpp's converter - either load (and then encode an image and a clip) or
fail with a G4rtError - never another exception, never a hang. Derandomized cases in CI;
G4RT_FUZZ_EXAMPLES draws that many fresh ones."""

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
DATA = REPO / "tests" / "data"
#: each fuzzed projector and the width of the text model it belongs to
PROJECTORS = {"gemma4uv+ua": (MMPROJ, 256), "gemma4v": (DATA / "gemma4v" / "mmproj-g4v-F32.gguf", 64),
              "gemma4a+v": (DATA / "gemma4a" / "mmproj-g4a-F32.gguf", 64)}
KINDS = [pytest.param(k, marks=pytest.mark.skipif(not f.is_file(), reason=f"{f} is absent"))
         for k, (f, _) in PROJECTORS.items()]

_TOTAL = int(os.environ.get("G4RT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_TOTAL // 2 or 40, deadline=None, derandomize=not _TOTAL, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TIME_LIMIT_S = 2.0


@lru_cache(maxsize=None)
def base(kind: str) -> tuple[bytes, int, list[int]]:
    raw = PROJECTORS[kind][0].read_bytes()
    h = scan(raw, len(raw))
    # the u32 / u64 values of integer keys: where a hostile file lies about sizes
    ints = [e.value_offset for e in h.kv.values() if e.vtype in (4, 5)]    # UINT32, INT32
    return raw, h.data_start, ints


def _try(data: bytes, tmp_path: Path, kind: str = "gemma4uv+ua") -> str:
    from g4rt.mmproj.encoder import MediaEncoder
    from g4rt.mmproj.reader import load_projector
    path = tmp_path / "mmproj-fuzz.gguf"
    path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        p = load_projector(path, PROJECTORS[kind][1])
        enc = MediaEncoder(p, "numpy")
        if p.vision:
            n = 4
            pos = np.stack([np.arange(n) % 2, np.arange(n) // 2], axis=1)
            enc.encode_image(np.full((n, p.vision.patch_values), 0.5, np.float32), pos)
        if p.audio:         # 2 frames of 640 samples (gemma4ua), or their log-mel features (gemma4a)
            clip, _ = enc.audio_input(0.01 * np.sin(np.arange(2 * p.audio.frame, dtype=np.float32)))
            enc.encode_audio(clip)
        outcome = "loaded"
    except G4rtError:
        outcome = "refused"
    assert time.perf_counter() - t0 < TIME_LIMIT_S
    return outcome


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6))
def test_header_byte_mutations(tmp_path_factory, kind, edits):
    raw, header_end, _ = base(kind)
    data = bytearray(raw)
    for off, byte in edits:
        data[off % header_end] = byte
    _try(bytes(data), tmp_path_factory.mktemp("fz"), kind)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_integer_keys_set_to_hostile_values(tmp_path_factory, kind, data):
    raw, _, ints = base(kind)
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        off = data.draw(st.sampled_from(ints))
        value = data.draw(st.sampled_from([0, 1, 2, 3, 7, 255, 1 << 16, (1 << 31) - 1, (1 << 32) - 1]))
        struct.pack_into("<I", buf, off, value)
    _try(bytes(buf), tmp_path_factory.mktemp("fz"), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_the_unmutated_file_loads(tmp_path, kind):
    assert _try(PROJECTORS[kind][0].read_bytes(), tmp_path, kind) == "loaded"


@pytest.mark.parametrize("kind,key", [("gemma4v", "clip.vision.block_count"), ("gemma4a+v", "clip.audio.block_count")])
def test_a_block_count_below_the_files_blocks_is_refused(tmp_path, kind, key):
    """A hostile block_count of 1 on a 2-block encoder: refused (the blocks the metadata does not
    count are not silently dropped), not run as a shorter encoder."""
    from g4rt.mmproj.reader import load_projector
    path, n_embd = PROJECTORS[kind]
    raw = bytearray(path.read_bytes())
    h = scan(bytes(raw), len(raw))
    assert h.kv[key].vtype == 4 and struct.unpack_from("<I", raw, h.kv[key].value_offset)[0] == 2
    struct.pack_into("<I", raw, h.kv[key].value_offset, 1)
    bad = tmp_path / "mmproj-fewer-blocks.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(G4rtError, match="more (ViT|conformer) blocks than clip"):
        load_projector(bad, n_embd)
