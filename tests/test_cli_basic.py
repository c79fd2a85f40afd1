"""`g4rt info` and `g4rt parity` end to end, and the CLI's error contract (one line, exit != 0)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
from g4rt.cli import run

pytestmark = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)


def test_info_describes_edge_model(capsys):
    assert run(["info", str(FIXTURES / "models" / "g4-edge-Q4_K_M.gguf")]) == 0
    out = capsys.readouterr().out
    assert "| `gemma4.attention.shared_kv_layers` | UINT32 | 3 |" in out
    assert "per-layer embeddings (PLE): present, 32 per layer" in out
    assert "| 5 | sliding | 8 | 64 | 4 | 2 | 10000 | 64 | 1024 | - | 3 |" in out
    assert "- mixture of experts: absent" in out
    assert "| 7 | global | - | 128 | 4 | 2 | 1e+06 ×freqs | 128 | 1024 | - | 4 |" in out
    assert "rope_freqs: 64 entries" in out and "tied to token_embd" in out
    assert "multimodal tensors: absent" in out
    assert "| Q4_K |" in out and "| Q5_0 |" in out


def test_info_untied_and_vocab_only(capsys):
    assert run(["info", str(FIXTURES / "models" / "g4-dense-untied-F32.gguf")]) == 0
    assert "separate output.weight" in capsys.readouterr().out
    assert run(["info", str(FIXTURES / "tokenizer" / "ggml-vocab-gemma-4.gguf")]) == 0
    out = capsys.readouterr().out
    assert "not runnable as a model" in out and "262144 tokens" in out


@pytest.mark.parametrize("precision", ["exact", "auto"])
def test_parity_writes_reference_format_and_meets_bar(tmp_path, capsys, precision):
    out = tmp_path / "out.npz"
    ref = FIXTURES / "ref" / "g4-dense-untied-Q4_0-pure.exact.npz"
    assert run(["parity", str(FIXTURES / "models" / "g4-dense-untied-Q4_0-pure.gguf"), "--ref", str(ref),
                "--out", str(out), "--precision", precision]) == 0
    text = capsys.readouterr().out
    assert "bar: met" in text
    if precision == "exact":        # the float32 path lands on the float64 reference's top-1 everywhere
        assert "worst: top1 1.000" in text
    got, r = np.load(out), np.load(ref)
    for i in range(6):
        assert np.array_equal(got[f"ids_{i}"], r[f"ids_{i}"])
        assert np.array_equal(got[f"tf_{i}"], r[f"greedy_{i}"])
        assert got[f"topk_ids_{i}"].shape == r[f"topk_ids_{i}"].shape
        assert got[f"greedy_{i}"].shape == (32,)


def test_parity_fails_when_bar_missed(tmp_path, capsys):
    # A different model's weights cannot meet this reference's bar: exit code 3, one line.
    ref = FIXTURES / "ref" / "g4-dense-F32.exact.npz"
    wrong = tmp_path / "g4-dense-F32.gguf"
    wrong.write_bytes((FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf").read_bytes())
    assert run(["parity", str(wrong), "--ref", str(ref)]) == 3
    assert "bar missed" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "not_gguf", "truncated"])
def test_bad_files_give_one_line_errors(tmp_path, make):
    p = tmp_path / "bad.gguf"
    if make == "not_gguf":
        p.write_bytes(b"PK\x03\x04 this is a zip")
    elif make == "truncated":
        p.write_bytes((FIXTURES / "models" / "g4-dense-F32.gguf").read_bytes()[:5000])
    proc = subprocess.run([sys.executable, "-m", "g4rt", "info", str(p)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("g4rt: error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_tokenize_vocab_only_file(capsys, tmp_path):
    vocab = str(FIXTURES / "tokenizer" / "ggml-vocab-gemma-4.gguf")
    assert run(["tokenize", vocab, "Hello <|turn>world"]) == 0
    assert capsys.readouterr().out.strip() == "[9259, 236743, 105, 12392]"
    strings = tmp_path / "s.json"
    strings.write_text('["Hello <|turn>world", "a b"]')
    assert run(["tokenize", vocab, "--json", str(strings), "--no-special", "--bos"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0] == "[2, 9259, 655, 236909, 887, 236813, 12392]"


def test_parity_from_prompt_strings_matches_reference_ids(tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert run(["parity", str(FIXTURES / "models" / "g4-dense-w1024-F32.gguf"), "--prompts",
                str(FIXTURES / "prompts.json"), "--out", str(out)]) == 0
    got, ref = np.load(out), np.load(FIXTURES / "ref" / "g4-dense-w1024-F32.llama.npz")
    for i in range(6):
        assert np.array_equal(got[f"ids_{i}"], ref[f"ids_{i}"])
        assert np.array_equal(got[f"greedy_{i}"], ref[f"greedy_{i}"])
