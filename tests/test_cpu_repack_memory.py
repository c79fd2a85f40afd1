"""The CPU backend's repacked weights replace their memory-mapped rows in RAM (as llama.cpp's
repack buffer does) instead of doubling the model: once a matrix is copied into the 8-row layout,
the file's mapped pages of it are dropped (madvise), and anything that reads the rows again gets
them back unchanged from the file."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES

pytestmark = [pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")]
MODEL = FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf"
PROMPT = [2, 818, 1279, 529, 1701, 563]


@pytest.fixture
def needs_repack():
    from g4rt.backends.cpu import native
    if not native.load().repacks(2):
        pytest.skip("this CPU's kernel build has no repacked kernels")


def mapped_rss(path) -> int:
    """Resident bytes of this process's mappings of `path` (/proc/self/smaps)."""
    real, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:     # a mapping's first line
                inside = len(head) >= 6 and os.path.realpath(head[5]) == real
            elif inside and head and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


def load(precision, monkeypatch, repack="1"):
    import g4rt
    monkeypatch.setenv("G4RT_CPU_REPACK", repack)
    return g4rt.load(MODEL, backend="cpu", precision=precision, ctx=64)


def greedy(model, n=6):
    """greedy ids from an empty cache (the default sampler is greedy)"""
    model.engine.reset()
    return list(model.generate_ids(PROMPT, max_tokens=n))


def logits(model):
    model.engine.reset()
    return model.engine.forward(PROMPT).copy()


@pytest.mark.usefixtures("needs_repack")
@pytest.mark.parametrize("precision", ["i16", "q8"])
def test_repacked_matrices_leave_ram(precision, monkeypatch):
    from g4rt.backends.cpu.backend import repacked_size
    m = load(precision, monkeypatch)
    try:
        be = m.engine.backend
        before = mapped_rss(MODEL)
        assert before >= 0.9 * os.path.getsize(MODEL)       # loading brings every page in
        first = greedy(m)
        copies = sum(repacked_size(s.qtype, s.rows, s.cols) for n, s in be.specs.items() if n in be._repacked)
        assert copies > 0.5 * os.path.getsize(MODEL)          # most of the file is repacked
        assert be.released_bytes > 0.9 * copies - 4096 * len(be._repacked)
        after = mapped_rss(MODEL)
        # the tied head's embedding rows of the prompt and the output are read again: a few pages
        assert after <= before - be.released_bytes + 64 * 4096, (before, after, be.released_bytes)
        assert greedy(m) == first                              # the rows fault back in unchanged
    finally:
        m.close()


@pytest.mark.usefixtures("needs_repack")
def test_released_pages_change_nothing(monkeypatch):
    """Greedy tokens and logits with the pages released = the same repacked run whose rows stay
    mapped, bit for bit."""
    from g4rt.engine import Engine
    m = load("i16", monkeypatch)
    try:
        ids, want = greedy(m), logits(m)
        assert m.engine.backend.released_bytes > 0
    finally:
        m.close()
    monkeypatch.setattr(Engine, "release_weight", lambda self, name: 0)
    m = load("i16", monkeypatch)
    try:
        assert m.engine.backend.released_bytes == 0
        assert greedy(m) == ids
        np.testing.assert_array_equal(logits(m), want)
    finally:
        m.close()


def test_released_pages_read_back_unchanged():
    """A released tensor's bytes are the file's when read again (a shared read-only map)."""
    from g4rt.gguf.reader import GGUFFile
    f = GGUFFile(MODEL)
    name = max(f.tensors, key=lambda n: f.tensors[n].raw.nbytes)
    t = f.tensor(name)
    want = bytes(t.raw.reshape(-1)[:4096 * 3])
    assert f.release_pages(name) > 0
    assert bytes(t.raw.reshape(-1)[:4096 * 3]) == want


def test_a_derived_weight_is_never_released():
    """Weights the engine made in memory (the MoE router's norm) are not the file's to release."""
    import glob
    import g4rt
    moe = sorted(glob.glob(str(FIXTURES.parent / "fixtures-moe" / "models" / "*Q4_0*.gguf")))
    if not moe:
        pytest.skip("../shared/fixtures-moe is absent")
    m = g4rt.load(moe[0], backend="cpu", ctx=64)
    try:
        name = next(iter(m.engine.derived))
        before = m.engine.weight_bytes(name).copy()
        assert m.engine.release_weight(name) == 0
        np.testing.assert_array_equal(m.engine.weight_bytes(name), before)
    finally:
        m.close()


@pytest.mark.usefixtures("needs_repack")
def test_info_plan_states_the_copies_and_what_they_replace():
    import re
    from click.testing import CliRunner
    from g4rt.backends.cpu.backend import repacked_size
    from g4rt.cli import main
    from g4rt.gguf.quant_types import row_bytes
    from g4rt.gguf.reader import GGUFFile
    r = CliRunner().invoke(main, ["info", str(MODEL), "--plan", "--backend", "cpu", "--precision", "i16"])
    assert r.exit_code == 0, r.output
    got = re.search(r"Repacked weights .*: ([\d.]+) MiB, made in place of ([\d.]+) MiB of memory-mapped rows "
                    r".*: \+([\d.]+) MiB of RAM beyond the weights above", r.output)
    assert got, r.output
    f = GGUFFile(MODEL)
    mats = [t for t in f.tensors.values() if len(t.shape) == 2 and repacked_size(int(t.qtype), t.n_rows, t.n_cols)]
    copies = sum(repacked_size(int(t.qtype), t.n_rows, t.n_cols) for t in mats)
    mapped = sum(t.n_rows * row_bytes(int(t.qtype), t.n_cols) for t in mats)
    assert float(got[1]) == pytest.approx(copies / 2**20, abs=0.06)
    assert float(got[2]) == pytest.approx(mapped / 2**20, abs=0.06)
    assert float(got[3]) == pytest.approx((copies - mapped) / 2**20, abs=0.06)
