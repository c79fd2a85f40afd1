"""`--precision auto|exact|q8`: every command that runs a model takes it, a choice a backend lacks
is a one-line error naming the backend, and what ran is reported (summary lines, bench --json,
info --plan, the server's /v1/models). The q8 numbers themselves are the CPU kernels' tests' job:
nothing here checks what a q8 run computes."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from conftest import FIXTURES, HAVE_FIXTURES, SKIP_NO_FIXTURES
from g4rt.cli import main, run
from g4rt.errors import G4rtError, PrecisionUnavailableError

pytestmark = pytest.mark.skipif(not HAVE_FIXTURES, reason=SKIP_NO_FIXTURES)
MODEL = FIXTURES / "models" / "g4-dense-Q4_0-pure.gguf"
COMMANDS = ["run", "chat", "serve", "bench", "parity", "conformance", "perplexity", "info"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_model_command_lists_precision(command):
    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0, r.output
    assert "--precision [auto|exact|i16|q8]" in r.output


@pytest.mark.parametrize("args", [["run", "-p", "Hi"], ["chat"], ["serve"], ["bench"], ["parity", "--ref", str(MODEL)],
                                  ["conformance"], ["perplexity", "-f", str(MODEL)], ["info", "--plan"]],
                         ids=lambda a: a[0])
def test_unknown_precision_is_a_usage_error(args, capsys):
    assert run([args[0], str(MODEL), *args[1:], "--precision", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for '--precision'" in err and "Traceback" not in err


def test_q8_on_numpy_is_one_line_naming_the_backend(capsys):
    assert run(["run", str(MODEL), "-p", "Hi", "-n", "1", "--backend", "numpy", "--precision", "q8", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "g4rt: error: --precision q8 is not available on the numpy backend (choices: auto, exact)"


def test_load_exact_and_q8_on_cpu():
    import g4rt
    m = g4rt.load(MODEL, backend="cpu", precision="exact")
    try:
        assert m.precision == m.engine.backend.precision == "exact"
        assert m.precision_summary() == "exact (Q4_0)"
    finally:
        m.close()
    m = g4rt.load(MODEL, backend="cpu", precision="q8")
    try:
        assert m.precision == "q8"
        assert m.precision_summary().startswith("q8") and "Q4_0" in m.precision_summary()
    finally:
        m.close()


def test_draft_model_gets_the_same_precision():
    import g4rt
    m = g4rt.load(MODEL, backend="cpu", precision="exact", draft=MODEL, draft_max=2)
    try:
        assert m.speculator.drafter.engine.backend.precision == "exact"
    finally:
        m.close()
    with pytest.raises(PrecisionUnavailableError, match="numpy backend"):
        g4rt.load(MODEL, backend="cpu", precision="q8", draft=MODEL, draft_backend="numpy")


def test_run_summary_names_the_precision(capsys):
    assert run(["run", str(MODEL), "-p", "Hi", "-n", "2", "--backend", "cpu", "--precision", "exact"]) == 0
    err = capsys.readouterr().err
    start, summary = [ln for ln in err.splitlines() if "precision" in ln]
    assert "precision exact (Q4_0)" in start and start.startswith("g4rt: ")
    assert summary.startswith("[") and "precision exact (Q4_0)]" in summary


def test_bench_json_has_the_precision_keys():
    r = CliRunner().invoke(main, ["bench", str(MODEL), "--prompt", "4", "--gen", "2", "--json", "--llama-bench",
                                  "off", "--precision", "exact"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["precision"] == "exact" and res["precision_summary"] == "exact (Q4_0)"
    text = CliRunner().invoke(main, ["bench", str(MODEL), "--prompt", "4", "--gen", "2", "--llama-bench", "off",
                                     "--precision", "exact"])
    assert text.exit_code == 0 and "precision exact: exact (Q4_0)" in text.output


def test_bench_int8_is_cuda_q8_only():
    for args, why in ((["--int8"], "CUDA option"), (["--int8", "--backend", "cuda", "--precision", "exact"],
                                                     "contradicts --precision exact")):
        r = CliRunner().invoke(main, ["bench", str(MODEL), "--json", *args])
        assert r.exit_code == 2 and why in r.output


def test_info_plan_prints_the_precision_per_weight_type(capsys):
    assert run(["info", str(MODEL), "--plan", "--precision", "exact"]) == 0
    out = capsys.readouterr().out
    assert "## Activation precision: --precision exact" in out
    assert "| cpu | Q4_0 |" in out and out.rstrip().endswith("| exact |")
    assert run(["info", str(MODEL), "--plan", "--backend", "vulkan", "--budget", "1GiB", "--precision", "q8"]) == 1
    assert "not available on the vulkan backend" in capsys.readouterr().err
    assert run(["info", str(MODEL), "--precision", "exact"]) == 1
    assert "--precision only apply with --plan" in capsys.readouterr().err


# ---- hybrids and the other backends -----------------------------------------------------------
def test_hybrid_rule_each_half_offering_q8_takes_it():
    from g4rt.backends.registry import hybrid_precision
    assert [hybrid_precision(b, "q8") for b in ("cpu", "cuda", "vulkan")] == ["q8", "q8", "exact"]
    # every backend offers auto (vulkan's is exact); i16 is the native CPU's only
    assert [hybrid_precision(b, "auto") for b in ("cpu", "cuda", "vulkan")] == ["auto", "auto", "auto"]
    assert [hybrid_precision(b, "i16") for b in ("cpu", "cuda", "vulkan")] == ["i16", "exact", "exact"]
    with pytest.raises(G4rtError, match="bogus"):
        hybrid_precision("vulkan", "bogus")


def test_hybrid_summary_combines_both_halves():
    from g4rt.backends.cpu import CpuBackend
    from g4rt.backends.graph_split import layers_split
    from g4rt.backends.hybrid import HybridBackend
    from g4rt.backends.numpy_ref import NumpyBackend
    from g4rt.engine import Engine
    hb = HybridBackend(NumpyBackend(precision="exact"), CpuBackend(precision="q8"), layers_split(1), precision="q8")
    assert hb.precision_summary() == "numpy: exact (no q8 path); cpu: q8"     # before the first compile
    eng = Engine(MODEL, backend=hb, ctx=16)
    try:
        eng.forward([2, 3])
        assert hb.precision_summary() == "numpy: exact (no q8 path); cpu: q8 (Q4_0)"
    finally:
        eng.close()


def test_cuda_precision_is_its_int8_path():
    from g4rt.backends.cuda.backend import CudaBackend
    from g4rt.testing.cuda.emulated_driver import EmulatedDriver
    for precision, int8, summary in (("auto", False, "exact"), ("exact", False, "exact"),
                                     ("q8", True, "q8 (dp4a decode matvecs of Q4_0/Q4_K/Q6_K/Q8_0)")):
        be = CudaBackend(driver=EmulatedDriver(), precision=precision)
        try:
            assert (be.int8_matvec, be.precision_summary()) == (int8, summary)
        finally:
            be.close()
    be = CudaBackend(driver=EmulatedDriver(), int8_matvec=True)     # the old keyword still works
    assert be.precision_summary().startswith("q8")
    be.close()
    with pytest.raises(G4rtError, match="contradicts"):
        CudaBackend(driver=EmulatedDriver(), precision="exact", int8_matvec=True)


def test_emulated_cuda_hybrid_gets_q8_on_both_halves(monkeypatch):
    from g4rt.backends import create_backend
    monkeypatch.setenv("G4RT_CUDA_EMULATE", "1")
    hb = create_backend("cuda", gpu_layers=1, precision="q8")
    try:
        assert (hb.front.int8_matvec, hb.back.precision, hb.precision) == (True, "q8", "q8")
        assert hb.precision_summary() == "cuda: q8 (dp4a decode matvecs of Q4_0/Q4_K/Q6_K/Q8_0); cpu: q8"
    finally:
        hb.close()


@pytest.mark.parametrize("backend", ["numpy", "vulkan"])
def test_exact_only_backends_refuse_q8(backend):
    from g4rt.backends import create_backend
    with pytest.raises(PrecisionUnavailableError, match=f"not available on the {backend} backend "
                                                        r"\(choices: auto, exact\)"):
        create_backend(backend, precision="q8")


def test_server_reports_the_precision(tmp_path):
    from server_util import ServerProcess
    server = ServerProcess(MODEL, "--backend", "cpu", "--precision", "exact", log_dir=tmp_path).wait_ready()
    try:
        meta = httpx.get(server.url + "/v1/models", timeout=5).json()["data"][0]["meta"]
        assert (meta["precision"], meta["precision_summary"]) == ("exact", "exact (Q4_0)")
    finally:
        assert server.stop() == 0


def test_repacked_size_mirrors_the_library():
    """info --plan's repacked-RAM figure (a Python mirror) against repack.c's own count."""
    from g4rt.backends.cpu import native
    from g4rt.backends.cpu.backend import repacked_size
    from g4rt.gguf.quant_types import row_bytes
    lib = native.load()
    for qtype in (2, 12, 14, 8, 13):
        for rows, cols in ((8, 256), (77, 512), (3, 256), (262, 2816)):
            want = int(lib.lib.g4_repack8_bytes(qtype, rows, row_bytes(qtype, cols))) if rows >= 8 else 0
            assert repacked_size(qtype, rows, cols) == want, (qtype, rows, cols)


def test_auto_keeps_narrow_models_and_q8_0_exact():
    from g4rt.backends.cpu import native as N
    from g4rt.backends.cpu.backend import activation_path, is_wide
    from g4rt.ops import WeightSpec
    assert activation_path("auto", "avx512", 2, wide=True) == N.ACT_I16      # Q4_0 in a 12B-wide model
    assert activation_path("auto", "avx512", 2, wide=False) == N.ACT_EXACT   # the 270M
    assert activation_path("auto", "avx512", 8) == N.ACT_EXACT               # Q8_0: exact streams as fast
    assert activation_path("auto", "scalar", 2) == N.ACT_EXACT               # portable: no integer dots
    assert activation_path("auto", "avx2", 0) == N.ACT_EXACT                 # float weights
    assert activation_path("q8", "scalar", 8, wide=False) == N.ACT_Q8        # asked for: always
    assert activation_path("i16", "avx2", 14, wide=False) == N.ACT_I16
    assert is_wide([WeightSpec("a", 2, 4096, 3840)]) and not is_wide([WeightSpec("a", 2, 2048, 640)])
    assert not is_wide([WeightSpec("a", 0, 4096, 4096)])                     # float weights do not count
