"""The Python API (g4rt.load / generate / logits), `g4rt run` and `g4rt chat` on the fixture models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
import g4rt
from g4rt.cli import main
from g4rt.generation import ChatSession, GenerationStats  # noqa: F401
from g4rt.sampling import Sampler

pytestmark = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)

_models = {}


def model(name="g4-dense-w1024-F32"):
    if name not in _models:
        _models[name] = g4rt.load(FIXTURES / "models" / f"{name}.gguf", backend="cpu", ctx=512)
    return _models[name]


def test_greedy_generation_reproduces_llama_cpp_from_prompt_strings():
    # On this file llama.cpp's greedy agrees with the exact model for all 32 tokens of every prompt.
    m = model()
    ref = np.load(FIXTURES / "ref" / "g4-dense-w1024-F32.llama.npz")
    prompts = json.loads((FIXTURES / "prompts.json").read_text())
    for i, text in enumerate(prompts):
        ids = m.encode_prompt(text)
        assert ids == ref[f"ids_{i}"].tolist()
        out = list(m.generate_ids(ids, max_tokens=32, sampler=Sampler()))
        assert out == ref[f"greedy_{i}"].tolist(), i


def test_logits_match_teacher_forced_reference():
    m = model()
    ref = np.load(FIXTURES / "ref" / "g4-dense-w1024-F32.exact.npz")
    seq = np.concatenate([ref["ids_0"], ref["greedy_0"]])
    logits = m.logits(seq)
    top = ref["topk_ids_0"][:, 0]
    assert (logits.argmax(-1) == top).all()


def test_generate_streams_text_and_reports_stats():
    m = model()
    pieces = list(m.generate("The capital of France is", max_tokens=12))
    s = m.last_stats
    assert s.generated_tokens == 12 and s.stop_reason == "max_tokens"
    assert s.prompt_tokens == 12 and s.decode_tps > 0 and s.prefill_tps > 0
    # The streamed pieces are exactly the detokenized generated ids.
    ids = list(m.generate_ids(m.encode_prompt("The capital of France is"), max_tokens=12))
    assert "".join(pieces) == m.tokenizer.decode(ids)


def test_same_seed_same_output_and_temperature_changes_it():
    m = model()
    kw = dict(max_tokens=16, temperature=1.5, top_k=50, seed=7)
    a = "".join(m.generate("Hello", **kw))
    b = "".join(m.generate("Hello", **kw))
    c = "".join(m.generate("Hello", **{**kw, "seed": 8}))
    assert a == b
    assert a != c


def test_generation_stops_at_context_end():
    m = g4rt.load(FIXTURES / "models" / "g4-dense-F32.gguf", backend="cpu", ctx=16)
    list(m.generate("The capital of France is", max_tokens=100))
    assert m.last_stats.stop_reason == "context_full"
    assert m.engine.pos == 16


def test_prompt_longer_than_context_is_refused():
    m = g4rt.load(FIXTURES / "models" / "g4-dense-F32.gguf", backend="cpu", ctx=8)
    with pytest.raises(g4rt.G4rtError, match="context"):
        list(m.generate("The capital of France is the biggest city of the country", max_tokens=4))


def test_chat_session_reuses_cache_and_keeps_history():
    m = model()
    chat = ChatSession(m, system="You are terse.")
    first = "".join(chat.send("What is the capital of France?", max_tokens=6))
    assert m.last_stats.reused_tokens == 0
    "".join(chat.send("And Germany?", max_tokens=6))
    assert len(chat.messages) == 4 and chat.messages[1]["content"] == first.strip()
    # The second turn's prompt extends the first turn's tokens when the template renders the
    # history the same way; then only the new part is prefilled.
    assert m.last_stats.prompt_tokens > m.last_stats.reused_tokens
    chat.reset()
    assert chat.messages == []


def test_chat_prompt_renders_template_without_double_bos():
    m = model()
    ids = m.encode_prompt([{"role": "user", "content": "Hi"}], chat=True)
    assert ids[0] == m.tokenizer.bos_id and ids[1] != m.tokenizer.bos_id


def test_cli_run_streams_and_summarises():
    r = CliRunner().invoke(main, ["run", str(FIXTURES / "models" / "g4-dense-F32.gguf"), "-p",
                                  "The capital of France is", "-n", "5", "--backend", "cpu"])
    assert r.exit_code == 0, r.output
    assert "decode" in r.output and "backend cpu" in r.output


def test_cli_run_needs_a_prompt():
    r = CliRunner().invoke(main, ["run", str(FIXTURES / "models" / "g4-dense-F32.gguf")])
    assert r.exit_code != 0 and "-p TEXT" in r.output


def test_cli_chat_commands():
    r = CliRunner().invoke(main, ["chat", str(FIXTURES / "models" / "g4-dense-F32.gguf"), "-n", "3",
                                  "--backend", "cpu", "-q"], input="hello\n/reset\nhi\n/exit\n")
    assert r.exit_code == 0, r.output
    assert r.output.count("> ") >= 3


def test_cli_subprocess_errors_and_streaming(tmp_path):
    cmd = [sys.executable, "-m", "g4rt", "run", str(FIXTURES / "models" / "g4-dense-F32.gguf"),
           "-p", "Hello", "-n", "4", "--backend", "cpu", "-q"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip() and not ok.stderr
    bad = subprocess.run(cmd[:4] + [str(tmp_path / "nope.gguf")] + cmd[5:], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("g4rt: error:") and "Traceback" not in bad.stderr
    long_prompt = cmd[:6] + ["The capital of France is Paris"] + cmd[7:]
    small = subprocess.run(long_prompt + ["--ctx", "4"], capture_output=True, text=True)
    assert small.returncode != 0 and "context" in small.stderr and "Traceback" not in small.stderr


def test_next_chat_turn_keeps_the_history_past_a_wrapped_window():
    """Gemma 4's template re-renders the previous answer without its empty thinking block, so the
    next turn's prompt leaves the cached sequence a few tokens before its end. With sliding rings
    longer than the window (g4rt chat's ring slack) the engine moves back there exactly even
    after the 16-position window wrapped; without, the whole history is prefilled again."""
    from g4rt.engine import CHAT_RING_SLACK
    path = FIXTURES / "models" / "g4-dense-Q4_0.gguf"          # sliding window 16
    answers = []
    for slack in (CHAT_RING_SLACK, 0):
        m = g4rt.load(path, backend="cpu", ctx=512, ring_slack=slack)
        chat = ChatSession(m, system="You are a careful assistant who answers in full sentences.")
        "".join(chat.send("Describe the water cycle in a few words, please.", max_tokens=12, temperature=0))
        first_total = m.last_stats.prompt_tokens + m.last_stats.generated_tokens
        answers.append("".join(chat.send("And then what happens?", max_tokens=12, temperature=0)))
        stats = m.last_stats
        if slack:
            assert first_total > 16 and stats.reused_tokens >= first_total - 20, (first_total, stats.reused_tokens)
        else:
            assert stats.reused_tokens == 0
        m.engine.close()
    assert answers[0] == answers[1]          # the kept prefix gives the answer a fresh prefill gives
