"""Property-based fuzzing of GGUF loading: mutated copies of the fixtures must either load (and then
build a config and graph) or fail with a G4rtError — never another exception, never a hang, never
a large allocation.

CI runs a few hundred derandomized (reproducible) cases. `scripts/fuzz.sh` sets
G4RT_FUZZ_EXAMPLES (total cases over all properties, e.g. 10000) and draws fresh random cases.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import struct
import time
import tracemalloc
from collections import Counter
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
from g4rt.errors import G4rtError
from g4rt.gguf.reader import GGUFFile
from g4rt.gguf.validate import ARRAY, SCALAR_TYPES, STRING, Header, scan
from g4rt.model.config import load_config
from g4rt.model.graph import build_graph, weight_specs

pytestmark = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)

MOE = FIXTURES.parent / "fixtures-moe" / "models" / "g4-moe-Q4_K_M.gguf"
# the mixture-of-experts file too when its folder is there (expert keys and 3-D tensors)
MODELS = ("g4-dense-Q4_0-pure.gguf", "g4-edge-Q4_K_M.gguf", "g4-dense-keqv-Q4_0-pure.gguf") + \
    ((str(MOE),) if MOE.is_file() else ())
N_PROPERTIES = 6
_TOTAL = int(os.environ.get("G4RT_FUZZ_EXAMPLES", "0"))
PER_PROPERTY = math.ceil(_TOTAL / N_PROPERTIES) if _TOTAL else 45
TIME_LIMIT_S = 2.0
MEM_LIMIT = 64 << 20          # tracemalloc peak per case (fixtures are 2.5-5 MB, memory-mapped)

FUZZ = settings(max_examples=PER_PROPERTY, deadline=None, derandomize=not _TOTAL, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much], print_blob=True)

OUTCOMES: Counter = Counter()
_case_ids = itertools.count()


@lru_cache(maxsize=None)
def base(name: str) -> tuple[bytes, Header]:
    raw = (FIXTURES / "models" / name).read_bytes()     # an absolute name replaces the folder
    return raw, scan(raw, len(raw))


@lru_cache(maxsize=None)
def fields(name: str) -> dict[str, list[int]]:
    """Offsets of the structural fields of a fixture, by kind (what a mutation should aim at)."""
    raw, hdr = base(name)
    out: dict[str, list[int]] = {"u64_len": [8, 16], "type_id": [], "tensor_u32": [], "dims": [], "data_off": []}
    for e in hdr.kv.values():
        out["u64_len"].append(e.offset)                       # key length
        out["type_id"].append(e.type_offset)
        if e.vtype == ARRAY:
            out["type_id"].append(e.type_offset + 4)          # element type
        if e.count_offset >= 0:
            out["u64_len"].append(e.count_offset)             # string length or array count
        if e.subtype == STRING:                               # first element lengths
            pos = e.value_offset
            for _ in range(min(e.count, 4)):
                out["u64_len"].append(pos)
                pos += 8 + struct.unpack_from("<Q", raw, pos)[0]
    for t in hdr.tensors:
        out["u64_len"].append(t.offset)                       # name length
        out["tensor_u32"] += [t.dims_offset - 4, t.type_offset]
        out["dims"] += [t.dims_offset + 8 * j for j in range(len(t.dims))]
        out["data_off"].append(t.data_offset_field)
    return out


def boundaries(hdr: Header) -> list[int]:
    cuts = {0, 2, 4, 8, 16, 24, hdr.header_end, hdr.data_start, hdr.file_size - 1}
    for e in hdr.kv.values():
        cuts |= {e.offset, e.offset + 8, e.type_offset, e.type_offset + 4, e.value_offset, e.end}
    for t in hdr.tensors:
        cuts |= {t.offset, t.dims_offset, t.type_offset, t.data_offset_field, t.end,
                 hdr.data_start + t.data_offset + t.nbytes - 1}
    return sorted(c for c in cuts if 0 <= c < hdr.file_size)


def _alarm(signum, frame):
    raise TimeoutError("GGUF loading hung")


def check(data: bytes, workdir) -> str:
    """Load `data` as a model file; only G4rtError may escape, within time and memory bounds."""
    path = workdir / f"case{next(_case_ids)}.gguf"
    path.write_bytes(data)
    outcome = "loaded"
    old = signal.signal(signal.SIGALRM, _alarm) if hasattr(signal, "SIGALRM") else None
    if old is not None:
        signal.setitimer(signal.ITIMER_REAL, 5 * TIME_LIMIT_S)   # a hang fails instead of stalling CI
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        f = GGUFFile(path)
        for k in f.keys:              # decode every value and type, as `g4rt info` does
            f.get(k)
            f.value_type(k)
        cfg = load_config(f)
        build_graph(cfg, weight_specs(f), 3, 40)
        del f
    except G4rtError as e:
        outcome = type(e).__name__
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if old is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        path.unlink()
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.2f} s"
    assert peak < MEM_LIMIT, f"tracemalloc peak {peak / 2**20:.1f} MiB"
    OUTCOMES[outcome] += 1
    return outcome


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    yield d
    total = sum(OUTCOMES.values())
    line = f"fuzz: {total} cases; outcomes: " + ", ".join(f"{k} {v}" for k, v in OUTCOMES.most_common())
    print("\n" + line)
    if os.environ.get("G4RT_FUZZ_REPORT"):
        with open(os.environ["G4RT_FUZZ_REPORT"], "a") as fh:
            fh.write(line + "\n")


models = st.sampled_from(MODELS)


def test_truncation_at_every_structural_boundary(workdir):
    # After magic, version, counts, inside and after each key and tensor info, at the data start
    # and one byte short of each tensor's end.
    raw, hdr = base(MODELS[0])
    seen = Counter(check(raw[:cut], workdir) for cut in boundaries(hdr))
    assert "loaded" not in seen, seen


@FUZZ
@given(data=st.data())
def test_truncation_at_random_points(workdir, data):
    raw, hdr = base(data.draw(models))
    cut = data.draw(st.one_of(st.integers(0, hdr.data_start + 64), st.integers(0, len(raw) - 1)))
    assert check(raw[:cut], workdir) != "loaded"


@FUZZ
@given(data=st.data())
def test_bit_flips_in_header_and_tensor_table(workdir, data):
    name = data.draw(models)
    raw, hdr = base(name)
    structural = [o for offs in fields(name).values() for o in offs]
    # Half the flips aim at structural fields (lengths, types, dims, offsets), half anywhere.
    where = st.one_of(st.sampled_from(structural).flatmap(lambda o: st.integers(o, o + 7)),
                      st.integers(0, hdr.data_start - 1))
    flips = data.draw(st.lists(st.tuples(where, st.integers(0, 7)), min_size=1, max_size=6))
    buf = bytearray(raw)
    for off, bit in flips:
        buf[off] ^= 1 << bit
    check(bytes(buf), workdir)


HUGE = st.one_of(st.sampled_from([1 << 60, 1 << 63, 2**64 - 1, 1 << 32, 1 << 31, (1 << 31) - 1, 1 << 24,
                                  (1 << 24) + 1, 1 << 40, 0]),
                 st.integers(0, 2**64 - 1))


@FUZZ
@given(data=st.data())
def test_huge_counts_and_lengths(workdir, data):
    name = data.draw(models)
    raw, hdr = base(name)
    fs = fields(name)
    off = data.draw(st.sampled_from(fs["u64_len"] + fs["dims"]))
    # absolute sizes, or just past what is left in the file
    value = data.draw(st.one_of(HUGE, st.integers(-64, 64).map(lambda d: max(0, len(raw) - off + d))))
    buf = bytearray(raw)
    struct.pack_into("<Q", buf, off, value % 2**64)
    check(bytes(buf), workdir)


@FUZZ
@given(data=st.data())
def test_misaligned_and_overlapping_offsets(workdir, data):
    name = data.draw(models)
    raw, hdr = base(name)
    t = data.draw(st.sampled_from(hdr.tensors))
    other = data.draw(st.sampled_from(hdr.tensors))
    value = data.draw(st.one_of(
        st.just(other.data_offset),                                                # exact overlap
        st.integers(1, max(1, other.nbytes)).map(lambda d: other.data_offset + d),  # partial overlap
        st.integers(1, hdr.alignment - 1).map(lambda d: t.data_offset + d),       # misaligned
        st.integers(-8, 8).map(lambda k: len(raw) - hdr.data_start - t.nbytes + 32 * k),  # at the end
        HUGE))
    buf = bytearray(raw)
    struct.pack_into("<Q", buf, t.data_offset_field, value % 2**64)
    outcome = check(bytes(buf), workdir)
    if value != t.data_offset and outcome == "loaded":
        # a moved tensor may only load if it still lies aligned, inside the file, alone
        end = value + t.nbytes
        assert value % hdr.alignment == 0 and hdr.data_start + end <= len(raw)
        assert all(o is t or end <= o.data_offset or o.data_offset + o.nbytes <= value for o in hdr.tensors)


@FUZZ
@given(data=st.data())
def test_wrong_type_ids(workdir, data):
    name = data.draw(models)
    raw, hdr = base(name)
    fs = fields(name)
    off = data.draw(st.sampled_from(fs["type_id"] + fs["tensor_u32"]))
    value = data.draw(st.one_of(st.integers(0, 45), st.integers(0, 2**32 - 1)))
    buf = bytearray(raw)
    struct.pack_into("<I", buf, off, value)
    check(bytes(buf), workdir)


def _enc(vtype: int, value, sub=None) -> bytes:
    if vtype == STRING:
        b = value.encode()
        return struct.pack("<Q", len(b)) + b
    if vtype == ARRAY:
        return struct.pack("<IQ", sub, len(value)) + b"".join(_enc(sub, v) for v in value)
    return struct.pack("<" + SCALAR_TYPES[vtype][0], value)


_INT_RANGES = {0: (0, 255), 1: (-128, 127), 2: (0, 65535), 3: (-32768, 32767), 4: (0, 2**32 - 1),
               5: (-2**31, 2**31 - 1), 10: (0, 2**64 - 1), 11: (-2**63, 2**63 - 1)}


def scalar_values(vtype: int):
    if vtype in _INT_RANGES:
        lo, hi = _INT_RANGES[vtype]
        return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, max(lo, 0), min(hi, 1), min(hi, 6)]))
    if vtype == 6:
        return st.floats(width=32)
    if vtype == 12:
        return st.floats()
    if vtype == 7:
        return st.booleans()
    return st.text(max_size=12)


typed_values = st.one_of(
    st.sampled_from(sorted(SCALAR_TYPES) + [STRING]).flatmap(lambda t: st.tuples(st.just(t), scalar_values(t), st.none())),
    st.sampled_from(sorted(SCALAR_TYPES) + [STRING]).flatmap(
        lambda t: st.tuples(st.just(ARRAY), st.lists(scalar_values(t), max_size=10), st.just(t))))


@FUZZ
@given(data=st.data())
def test_wrong_value_types(workdir, data):
    # Structurally valid files whose model keys hold values of another type or shape.
    name = data.draw(models)
    raw, hdr = base(name)
    key = data.draw(st.sampled_from(sorted(k for k in hdr.kv if not k.startswith("tokenizer."))))
    vtype, value, sub = data.draw(typed_values)
    e = hdr.kv[key]
    head = raw[:e.type_offset] + struct.pack("<I", vtype) + _enc(vtype, value, sub) + raw[e.end:hdr.header_end]
    check(head + b"\0" * (-len(head) % hdr.alignment) + raw[hdr.data_start:], workdir)
