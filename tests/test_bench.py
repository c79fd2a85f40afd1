"""`g4rt bench`: the figures it reports, and the same-run comparison with llama.cpp's
llama-bench (a stand-in executable here: llama.cpp is not installed on CI machines)."""

from __future__ import annotations

import json
import stat
import sys

import pytest
from click.testing import CliRunner

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
from g4rt.cli import main

pytestmark = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)
MODEL = FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf"


def fake_llama_bench(tmp_path, body: str):
    """An executable that records its argv and then runs `body` (Python)."""
    exe = tmp_path / "llama-bench"
    exe.write_text(f"#!{sys.executable}\nimport json, sys\n"
                   f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


REPORT = '''
args = sys.argv[1:]
p, n = int(args[args.index("-p") + 1]), int(args[args.index("-n") + 1])
print(json.dumps([
    {"build_commit": "abc123", "backends": "CPU", "n_prompt": p, "n_gen": 0, "avg_ts": 400.0, "stddev_ts": 3.0},
    {"build_commit": "abc123", "backends": "CPU", "n_prompt": 0, "n_gen": n, "avg_ts": 50.0, "stddev_ts": 0.5},
]))
'''


def bench(*args):
    return CliRunner().invoke(main, ["bench", str(MODEL), "--prompt", "8", "--gen", "2", *args])


def test_bench_reports_prefill_decode_and_weight_traffic():
    r = bench("--json", "--llama-bench", "off")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["prefill_tok_s"] > 0 and res["decode_tok_s"] > 0
    assert res["decode_weight_bytes"] > 1_000_000           # every decode weight, counted in GGUF bytes
    assert res["decode_weight_gb_s"] > 0 and "llama_cpp" not in res


def test_bench_compares_with_llama_bench_in_the_same_run(tmp_path):
    exe = fake_llama_bench(tmp_path, REPORT)
    r = bench("--llama-bench", str(exe))
    assert r.exit_code == 0, r.output
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("-m") + 1] == str(MODEL)
    assert (argv[argv.index("-p") + 1], argv[argv.index("-n") + 1], argv[argv.index("-ngl") + 1]) == ("8", "2", "0")
    assert "llama.cpp (CPU, abc123)" in r.output
    assert "prefill: llama.cpp 400 tokens/s" in r.output and "decode: llama.cpp 50 tokens/s" in r.output
    j = bench("--json", "--llama-bench", str(exe))
    res = json.loads(j.output)
    assert res["llama_cpp"]["prefill_tok_s"] == 400.0 and res["llama_cpp"]["decode_tok_s"] == 50.0


def test_a_failing_llama_bench_is_reported_not_fatal(tmp_path, monkeypatch):
    exe = fake_llama_bench(tmp_path, "sys.stderr.write('error: unknown model architecture gemma4\\n')\nsys.exit(1)\n")
    monkeypatch.setenv("G4RT_LLAMA_BENCH", str(exe))        # found through the environment (auto)
    r = bench()
    assert r.exit_code == 0, r.output
    assert "llama.cpp: llama-bench exited with 1: error: unknown model architecture gemma4" in r.output
    garbage = fake_llama_bench(tmp_path, "print('not json')\n")
    r = bench("--llama-bench", str(garbage))
    assert r.exit_code == 0 and "could not read llama-bench's JSON" in r.output


def test_bench_int8_is_a_cuda_option():
    r = bench("--int8")
    assert r.exit_code != 0 and "--int8 is a CUDA option" in r.output


def test_q4_0_forms_benchmark_builds_and_its_forms_agree(tmp_path):
    """scripts/q4_0_forms.c (docs/benchmarks/batching.md) compiles against the shipped kernel and
    runs; its other forms compute the same products (float rounding apart; the int16 form within
    its rounding of x)."""
    import subprocess
    from pathlib import Path
    from g4rt.backends.cpu import compiler
    if "avx2" not in compiler.X86_NEEDS or not compiler.X86_NEEDS["avx2"] <= compiler.cpu_flags():
        pytest.skip("needs an AVX2 CPU")
    root = Path(__file__).resolve().parents[1]
    exe = tmp_path / "q4_0_forms"
    subprocess.run([compiler.compiler(), "-O2", *compiler.X86_FLAGS["avx2"], f"-I{root / 'shaders' / 'cpu'}",
                    str(root / "scripts" / "q4_0_forms.c"), "-o", str(exe), "-lm"], check=True)
    out = subprocess.run([str(exe), "64", "256"], check=True, capture_output=True, text=True).stdout
    import re
    errs = [float(v) for v in re.findall(r"maxrel (\S+)", out)]
    assert len(errs) == 5 and errs[0] == 0 and max(errs[:4]) < 1e-5 and errs[4] < 1e-4 and "FMA_OP" in out, out


def test_q8_matvec_benchmark_builds_and_its_two_modes_agree(tmp_path):
    """scripts/q8_matvec_bench.c (the kernel figures in docs/benchmarks/cpu-native.md) builds against
    the shipped kernels on the AVX2 path and runs every repacked type in both modes; the q8 and
    i16 products of the same weights and x agree to q8's rounding (a broken build or a mode mix-up
    gives unrelated numbers)."""
    import subprocess
    from pathlib import Path
    import numpy as np
    from g4rt.backends.cpu import compiler
    if not compiler.X86_NEEDS["avx2"] <= compiler.cpu_flags():
        pytest.skip("needs an AVX2 CPU")
    src = Path(__file__).resolve().parents[1] / "shaders" / "cpu"
    exe = tmp_path / "q8mb"
    subprocess.run([compiler.compiler(), "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", *compiler.X86_FLAGS["avx2"],
                    f"-I{src}", *(str(src / f) for f in ("quant.c", "f16_table.c", "repack.c")),
                    str(src / "arch" / "avx2" / "matvec.c"), str(src.parents[1] / "scripts" / "q8_matvec_bench.c"),
                    "-o", str(exe), "-lm", "-pthread"], check=True)
    for qtype in (2, 12, 14):
        ys = []
        for act in (1, 2):
            dump = tmp_path / f"y{qtype}_{act}.bin"
            out = subprocess.run([str(exe), str(qtype), str(act), "64", "512", "1", "1"], check=True,
                                 capture_output=True, text=True, env={"NIT": "1", "DUMP": str(dump)}).stdout
            assert "GB/s" in out, out
            ys.append(np.fromfile(dump, dtype=np.float32))
        q8, i16 = ys
        assert q8.shape == (64,) and np.all(np.isfinite(i16)) and np.abs(i16).max() > 0
        assert np.abs(q8 - i16).max() <= 0.05 * np.abs(i16).max(), (qtype, np.abs(q8 - i16).max())


def test_depth_times_prefill_and_decode_with_that_many_tokens_in_the_cache(tmp_path, monkeypatch):
    """--depth N (llama-bench's -d N): the timed prefill and the timed decode both start with N
    tokens already in the cache, and llama-bench gets -d N in the same run."""
    from g4rt.engine import Engine
    seen = []
    real = Engine.forward

    def spy(self, ids, *a, **k):
        seen.append((len(ids), self.pos))
        return real(self, ids, *a, **k)
    monkeypatch.setattr(Engine, "forward", spy)
    exe = fake_llama_bench(tmp_path, REPORT)
    r = bench("--json", "--depth", "24", "--no-warmup", "--llama-bench", str(exe))
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert res["depth"] == 24 and res["prompt_tokens"] == 8
    # fill 24, prefill 8 at 24; fill 24 again, then decode 1 + 2 tokens from position 24
    assert seen == [(24, 0), (8, 24), (24, 0), (1, 24), (1, 25), (1, 26)], seen
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("-d") + 1] == "24"
    plain = bench("--json", "--llama-bench", str(exe))
    assert json.loads(plain.output[plain.output.index("{"):])["depth"] == 0
    assert "-d" not in json.loads((tmp_path / "argv.json").read_text())
    assert bench("--ops", "--depth", "8").exit_code != 0
