"""`g4rt bench --mmproj ... --llama-mtmd PATH`: reading llama.cpp's llama-mtmd-cli log (a sample
recorded from the vendored 0.3.36 build on the 12B-shaped synthetic files, docs/benchmarks/multimodal.md),
the command it is given, the comparison lines, and the CLI path with a stand-in executable (llama.cpp
is not installed on CI machines: nothing here needs the real binary)."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from g4rt.cli import main
from g4rt.tools.llama_compare import (LlamaOutputError, find_llama_mtmd, llama_mtmd_command, mtmd_summary_lines,
                                      parse_llama_mtmd_output)

# stderr of `llama-mtmd-cli -m d12-q4_0.gguf --mmproj mmproj-12b.gguf --image photo.png --audio speech.wav
# -p Describe. -n 4 -t 2 --temp 0 --jinja --perf -v --image-max-tokens 280` (its first 3 lines and the
# tail from the prompt's tokenization on; the model and projector loading lines in between cut)
RECORDED = """0.00.002.498 I cmn  common_init_: fitting params to device memory ...
0.00.002.498 I cmn  common_init_: (for bugs during this step try to reproduce them with -fit off, or provide --verbose logs if the bug only occurs with -fit on)
0.00.002.521 I common_params_fit_impl: getting device memory data for initial parameters:
0.08.699.215 D add_text: <|image>
0.08.714.474 D add_media: preproc_out has 1 entries, grid_x = 0, grid_y = 0, has_overview = 0
0.08.714.507 D image_tokens->nx = 266
0.08.714.507 D image_tokens->ny = 1
0.08.714.508 D batch_f32 size = 1
0.08.714.510 D add_text: <image|>
0.08.714.520 D add_text: 
0.08.714.521 D add_text: <|audio>
0.08.714.765 D audio_tokens->n_tokens = 250
0.08.714.777 D add_text: <audio|>
0.08.714.778 D add_text: Describe.<turn|>
<|turn>model

0.08.899.125 I encoding mtmd batch, n_chunks = 1 (done = 1, total = 5)
0.08.902.555 D mtmd_batch_encode_impl: encoding batch with 1 entries and total 266 tokens
0.08.906.416 D clip_encode: copying image 1/1 to input buffer (nx=912, ny=672)
0.09.061.476 D clip_encode: output embedding shape [3840, 266, 1]
0.09.061.840 I mtmd batch encoding done in 163 ms
0.09.061.870 D set_causal_attn: value = 0
0.09.061.881 I decoding image batch 1/1, n_tokens_batch = 266
0.12.447.636 I image decoded (batch 1/1) in 3386 ms
0.12.447.665 D set_causal_attn: value = 1
0.12.530.263 D media chunk 3 not found in existing batch, creating new batch
0.12.530.306 I encoding mtmd batch, n_chunks = 1 (done = 3, total = 5)
0.12.530.409 D mtmd_batch_encode_impl: encoding batch with 1 entries and total 250 tokens
0.12.546.298 D clip_encode: output embedding shape [3840, 250, 1]
0.12.546.664 I mtmd batch encoding done in 16 ms
0.12.546.698 I decoding audio batch 1/1, n_tokens_batch = 250
0.15.909.550 I audio decoded (batch 1/1) in 3363 ms
0.16.373.033 I llama_perf_context_print:        load time =    6357.36 ms
0.16.373.035 I llama_perf_context_print: prompt eval time =    7377.30 ms /   537 tokens (   13.74 ms per token,    72.79 tokens per second)
0.16.373.036 I llama_perf_context_print:        eval time =     215.14 ms /     3 runs   (   71.71 ms per token,    13.94 tokens per second)
0.16.373.037 I llama_perf_context_print:       total time =    8026.07 ms /   540 tokens
0.16.373.038 I llama_perf_context_print:    graphs reused =          3
0.16.373.139 D ~llama_context:        CPU compute buffer size is 639.5020 MiB, matches expectation of 639.5020 MiB
"""

REPO = Path(__file__).resolve().parents[1]
MM = Path(os.environ.get("G4RT_FIXTURES_MM", REPO.parent / "shared" / "fixtures-mm"))
HAVE_MM = (MM / "MANIFEST.json").is_file()


def _no_timestamps(text: str) -> str:
    return re.sub(r"^\d+\.\d{2}\.\d{3}\.\d{3} ", "", text, flags=re.M)


def test_recorded_output_gives_each_items_encode_and_decode_and_the_prefill():
    r = parse_llama_mtmd_output(RECORDED)
    image, audio = r["media"]
    assert (image["kind"], image["tokens"], audio["kind"], audio["tokens"]) == ("image", 266, "audio", 250)
    # from the timestamps of "encoding mtmd batch" and "... done in 163 ms": 09.061.840 - 08.899.125
    assert image["encode_ms"] == pytest.approx(162.715) and audio["encode_ms"] == pytest.approx(16.358)
    assert image["decode_ms"] == pytest.approx(3385.755) and audio["decode_ms"] == pytest.approx(3362.852)
    assert image["decode_tok_s"] == pytest.approx(266 / 3.385755, rel=1e-3)
    assert image["encode_shared"] == audio["encode_shared"] == 1
    assert (r["prompt_tokens"], r["prompt_ms"], r["prefill_tok_s"]) == (537, 7377.30, 72.79)
    assert (r["eval_runs"], r["eval_ms"]) == (3, 215.14)


def test_without_timestamps_the_printed_whole_milliseconds_are_used():
    r = parse_llama_mtmd_output(_no_timestamps(RECORDED))
    assert [(x["encode_ms"], x["decode_ms"]) for x in r["media"]] == [(163.0, 3386.0), (16.0, 3363.0)]
    bare = re.sub(r"^[A-Z] ", "", _no_timestamps(RECORDED), flags=re.M)         # no level letter either
    assert parse_llama_mtmd_output(bare)["media"] == r["media"]
    coloured = "\n".join(f"\x1b[32m{line}\x1b[0m" for line in RECORDED.splitlines())
    assert parse_llama_mtmd_output(coloured)["media"][0]["encode_ms"] == pytest.approx(162.715)


def test_batched_encodes_split_decodes_and_slice_lines():
    log = """I encoding mtmd batch, n_chunks = 2 (done = 1, total = 5)
I mtmd batch encoding done in 100 ms
I decoding image batch 1/2, n_tokens_batch = 512
I image decoded (batch 1/2) in 4000 ms
I decoding image batch 2/2, n_tokens_batch = 88
I image decoded (batch 2/2) in 700 ms
I decoding image batch 1/1, n_tokens_batch = 300
I image decoded (batch 1/1) in 2500 ms
I encoding audio slice...
I audio slice encoded in 12 ms
I decoding audio batch 1/1, n_tokens_batch = 250
I audio decoded (batch 1/1) in 2000 ms
llama_perf_context_print: prompt eval time =    9300.00 ms /  1160 tokens (    8.02 ms per token,   124.73 tokens per second)
"""
    r = parse_llama_mtmd_output(log)
    assert [(x["kind"], x["tokens"], x["encode_ms"], x["encode_shared"], x["decode_ms"]) for x in r["media"]] == [
        ("image", 600, 50.0, 2, 4700.0), ("image", 300, 50.0, 2, 2500.0), ("audio", 250, 12.0, 1, 2000.0)]
    assert r["prefill_tok_s"] == pytest.approx(1160 / 9.3, abs=0.01) and "eval_ms" not in r


def test_missing_timing_lines_are_a_clear_error():
    no_perf = "\n".join(x for x in RECORDED.splitlines() if "llama_perf_context_print" not in x)
    with pytest.raises(LlamaOutputError, match="prompt eval time.*--perf"):
        parse_llama_mtmd_output(no_perf)
    not_verbose = "\n".join(x for x in RECORDED.splitlines() if "prompt eval" in x)
    with pytest.raises(LlamaOutputError, match="no media timing lines.*-lv 4"):
        parse_llama_mtmd_output(not_verbose)
    with pytest.raises(LlamaOutputError):
        parse_llama_mtmd_output("")
    no_encode = "\n".join(x for x in RECORDED.splitlines() if "encod" not in x)
    with pytest.raises(LlamaOutputError, match="no encode time for image 1, audio 1"):
        parse_llama_mtmd_output(no_encode)


def test_command_puts_images_before_audio_with_the_budget_and_threads():
    cmd = llama_mtmd_command("/x/llama-mtmd-cli", "m.gguf", "mm.gguf", ["a.png", "b.png"], ["c.wav"],
                             threads=2, image_max_tokens=280)
    assert cmd[:5] == ["/x/llama-mtmd-cli", "-m", "m.gguf", "--mmproj", "mm.gguf"]
    media = [(cmd[i], cmd[i + 1]) for i, a in enumerate(cmd) if a in ("--image", "--audio")]
    assert media == [("--image", "a.png"), ("--image", "b.png"), ("--audio", "c.wav")]
    for flag in ("--perf", "--jinja", "--log-timestamps"):
        assert flag in cmd
    assert cmd[cmd.index("-lv") + 1] == "4"
    assert cmd[cmd.index("-t") + 1] == "2" and cmd[cmd.index("--image-max-tokens") + 1] == "280"
    assert cmd[cmd.index("-ngl") + 1] == "0"
    audio_only = llama_mtmd_command("l", "m", "mm", [], ["c.wav"], image_max_tokens=280)
    assert "--image-max-tokens" not in audio_only and "-t" not in audio_only


def test_summary_lines_give_g4rt_over_llama_speed_ratios():
    ours = {"images": [{"file": "/tmp/photo.png", "tokens": 266, "encode_s": 0.127}],
            "audio": [{"file": "/tmp/speech.wav", "tokens": 250, "encode_s": 0.0069}],
            "prefill": {"tokens": 521, "tokens_per_s": 73.1}}
    lines = mtmd_summary_lines(ours, parse_llama_mtmd_output(RECORDED))
    text = "\n".join(lines)
    assert "image 1 (photo.png) encode: llama.cpp 162.7 ms (266 tokens), g4rt 127.0 ms (266 tokens) = 1.28x" in text
    assert "audio 1 (speech.wav) encode: llama.cpp 16.4 ms (250 tokens), g4rt 6.9 ms (250 tokens) = 2.37x" in text
    assert "prefill (encoders excluded): llama.cpp 72.79 tok/s (537 tokens), g4rt 73.1 tok/s (521 tokens) = 1.00x" \
        in text
    ours["images"][0]["tokens"] = 256
    assert "(different soft-token counts)" in "\n".join(mtmd_summary_lines(ours, parse_llama_mtmd_output(RECORDED)))
    assert mtmd_summary_lines(ours, {"error": "boom"}) == ["  llama.cpp: boom"]


def test_find_llama_mtmd(monkeypatch):
    assert find_llama_mtmd("off") is None
    assert find_llama_mtmd("/some/llama-mtmd-cli") == "/some/llama-mtmd-cli"
    monkeypatch.setenv("G4RT_LLAMA_MTMD", "/env/llama-mtmd-cli")
    assert find_llama_mtmd("auto") == "/env/llama-mtmd-cli"


def _fake_mtmd(tmp_path, body: str) -> Path:
    exe = tmp_path / "llama-mtmd-cli"
    exe.write_text(f"#!{sys.executable}\nimport json, sys\n"
                   f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


@pytest.mark.skipif(not HAVE_MM, reason="fixtures folder ../shared/fixtures-mm is absent (set G4RT_FIXTURES_MM)")
def test_bench_llama_mtmd_runs_it_on_the_same_files_and_reports_failures(tmp_path):
    model, mmproj = MM / "models" / "g4u-mm-F32.gguf", MM / "models" / "mmproj-g4u-mm-F32.gguf"
    image, audio = MM / "media" / "img_b.png", MM / "media" / "aud_a.wav"
    exe = _fake_mtmd(tmp_path, f"sys.stderr.write({RECORDED!r})\n")
    args = ["bench", str(model), "--mmproj", str(mmproj), "--image", str(image), "--audio", str(audio),
            "--reps", "1", "-t", "1", "--llama-bench", "off", "--llama-mtmd", str(exe)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("-m") + 1] == str(model) and argv[argv.index("--mmproj") + 1] == str(mmproj)
    assert argv[argv.index("--image") + 1] == str(image) and argv[argv.index("--audio") + 1] == str(audio)
    assert argv[argv.index("-t") + 1] == "1" and argv[argv.index("--image-max-tokens") + 1] == "280"
    assert "llama.cpp (llama-mtmd-cli, one run)" in r.output
    assert "image 1 (img_b.png) encode: llama.cpp 162.7 ms (266 tokens)" in r.output
    assert "prefill (encoders excluded): llama.cpp 72.79 tok/s (537 tokens)" in r.output
    res = json.loads(CliRunner().invoke(main, args + ["--json"]).output)
    assert res["llama_cpp"]["prefill_tok_s"] == 72.79 and len(res["llama_cpp"]["media"]) == 2

    crash = _fake_mtmd(tmp_path, "sys.stderr.write('ops.cpp:5363: GGML_ASSERT(i01 >= 0 && i01 < ne01) failed\\n')\n"
                                 "sys.exit(134)\n")
    r = CliRunner().invoke(main, args[:-1] + [str(crash)])
    assert r.exit_code == 0, r.output
    assert "llama.cpp: llama-mtmd-cli exited with 134: ops.cpp:5363: GGML_ASSERT(i01 >= 0 && i01 < ne01) failed" \
        in r.output
    quiet = _fake_mtmd(tmp_path, "print('hello')\n")
    r = CliRunner().invoke(main, args[:-1] + [str(quiet)])
    assert r.exit_code == 0 and "llama.cpp: no 'prompt eval time' line" in r.output
