"""`g4rt perplexity`: llama-perplexity's chunking and scoring (BOS first in every chunk, the second
half scored), its error bar, and the KL divergence from a saved base run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
from g4rt.cli import main, run
from g4rt.engine import Engine
from g4rt.text.tokenizer import load_tokenizer

pytestmark = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)
F32 = FIXTURES / "models" / "g4-dense-F32.gguf"
Q4_0 = FIXTURES / "models" / "g4-dense-Q4_0.gguf"
CTX = 32


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    gpl = Path("/usr/share/common-licenses/GPL-3")
    text = gpl.read_text() if gpl.is_file() else " ".join(f"word{i % 97} and more{i % 13}." for i in range(3000))
    p = tmp_path_factory.mktemp("ppl") / "text.txt"
    p.write_text(text[:6000])
    return p


def ppl(*args):
    r = CliRunner().invoke(main, ["perplexity", *map(str, args)])
    return r, (json.loads(r.output) if r.exit_code == 0 and "--json" in args else None)


def fails(capsys, *args) -> str:
    """Run the command as the console script does; its one-line error (stderr)."""
    assert run(["perplexity", *map(str, args)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 5, err     # one line (a usage error: click's four)
    return err


def test_perplexity_scores_the_second_half_of_each_bos_led_chunk(text_file):
    """Against a plain loop over the chunks (the same model's logits, float64 log-softmax)."""
    r, got = ppl(F32, "-f", text_file, "--ctx", CTX, "--chunks", 3, "--json")
    assert r.exit_code == 0, r.output
    eng = Engine(F32, backend="cpu", ctx=CTX)
    try:
        tok = load_tokenizer(eng.file)
        ids = tok.encode(text_file.read_text(), add_bos=True, parse_special=False)
        nlls = []
        for c in range(3):
            chunk = np.array(ids[c * CTX:(c + 1) * CTX], np.int32)
            chunk[0] = tok.bos_id
            eng.reset()
            logits = eng.forward(chunk, all_logits=True).astype(np.float64)
            for j in range(CTX // 2, CTX - 1):
                row = logits[j] - logits[j].max()
                nlls.append(math.log(np.exp(row).sum()) - row[chunk[j + 1]])
    finally:
        eng.close()
    nlls = np.array(nlls)
    assert got["scored_tokens"] == len(nlls) == 3 * (CTX - CTX // 2 - 1)
    assert got["tokens"] == len(ids) and got["chunks"] == 3
    assert got["ppl"] == pytest.approx(math.exp(nlls.mean()), rel=1e-9)
    assert got["ppl_error"] == pytest.approx(math.exp(nlls.mean()) * nlls.std() / math.sqrt(len(nlls) - 1), rel=1e-6)
    per_chunk = CTX - CTX // 2 - 1
    assert len(got["running"]) == 3
    for c in range(3):      # the running estimate after each chunk: the chunks so far
        assert got["running"][c] == pytest.approx(math.exp(nlls[:(c + 1) * per_chunk].mean()), rel=1e-9)
    text, _ = ppl(F32, "-f", text_file, "--ctx", CTX, "--chunks", 3)
    assert f"Final estimate: PPL = {got['ppl']:.4f} +/- " in text.output, text.output


def test_kl_divergence_from_a_base_run(text_file, tmp_path, capsys):
    base = tmp_path / "base.kl"            # any name: the file is written under exactly this one
    r, _ = ppl(F32, "-f", text_file, "--ctx", CTX, "--chunks", 2, "--kl-base", base)
    assert r.exit_code == 0 and base.is_file(), r.output
    _, same = ppl(F32, "-f", text_file, "--ctx", CTX, "--chunks", 2, "--kl-base", base, "--kl", "--json")
    assert same["kl"]["mean_kl"] == pytest.approx(0.0, abs=1e-9) and same["kl"]["same_top_p"] == 1.0
    assert same["kl"]["mean_delta_p"] == pytest.approx(0.0, abs=1e-9)
    _, quant = ppl(Q4_0, "-f", text_file, "--ctx", CTX, "--chunks", 2, "--kl-base", base, "--kl", "--json")
    k = quant["kl"]
    assert k["mean_kl"] > 1e-4 and k["max_kl"] >= k["mean_kl"], k        # Q4_0 rounding moves the distribution
    assert 0.0 < k["same_top_p"] < 1.0 and k["rms_delta_p"] > 0, k
    assert "KL base was made with another" in fails(capsys, F32, "-f", text_file, "--ctx", CTX * 2, "--chunks", 1,
                                                    "--kl-base", base, "--kl")


def test_bad_input_is_one_clear_error(text_file, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert f"needs at least {2 * CTX}" in fails(capsys, F32, "-f", short, "--ctx", CTX)
    assert "--kl needs --kl-base" in fails(capsys, F32, "-f", text_file, "--kl")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a base")
    assert "cannot read the KL base" in fails(capsys, F32, "-f", text_file, "--ctx", CTX, "--kl-base", junk, "--kl")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00 not text" * 20)
    assert "is not UTF-8 text" in fails(capsys, F32, "-f", binary, "--ctx", CTX)
