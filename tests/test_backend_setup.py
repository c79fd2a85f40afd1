"""Choosing and opening a backend, apart from what its ops compute (tests/test_backend_ops.py):
the native CPU's code path, thread count, compiler and build cache; Vulkan's device selection;
CUDA's graph capture."""

from __future__ import annotations

import shutil

import pytest

from conftest import vulkan_skip_reason
from g4rt.errors import BackendUnavailableError, G4rtError

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc/gcc/clang): the native CPU backend cannot be built")
needs_vulkan = pytest.mark.skipif(vulkan_skip_reason() is not None, reason=vulkan_skip_reason() or "")


# ---- native CPU: code path, threads, compiler ------------------------------------------------------
@needs_cc
def test_scalar_path_forced_by_environment(monkeypatch):
    from g4rt.backends.cpu import CpuBackend
    monkeypatch.setenv("G4RT_CPU_ISA", "scalar")
    be = CpuBackend(threads=1)
    assert be.lib.isa == "scalar" and "scalar" in be.device_name
    be.close()


@needs_cc
def test_bad_isa_and_thread_counts_are_clear_errors(monkeypatch):
    from g4rt.backends.cpu import CpuBackend
    monkeypatch.setenv("G4RT_CPU_ISA", "sse9")
    with pytest.raises(G4rtError, match="G4RT_CPU_ISA"):
        CpuBackend()
    monkeypatch.delenv("G4RT_CPU_ISA")
    with pytest.raises(G4rtError, match="threads"):
        CpuBackend(threads=0)


@needs_cc
def test_no_compiler_is_a_clear_error_and_auto_falls_back(monkeypatch, tmp_path, capsys):
    from g4rt.backends import pick_backend
    from g4rt.backends.cpu import CpuBackend, compiler, native
    monkeypatch.setenv("G4RT_CC", "no-such-cc")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("G4RT_CPU_CACHE", str(tmp_path / "cache"))     # nothing cached either
    native._load.cache_clear()
    try:
        with pytest.raises(compiler.CCompilerMissingError, match="apt-get install gcc"):
            CpuBackend()
        name, why = pick_backend()
        assert name == "numpy" and "native CPU backend" in why
        assert "using the slow numpy reference" in capsys.readouterr().err
    finally:
        native._load.cache_clear()


@needs_cc
def test_compile_is_cached_by_cpu_and_flags(tmp_path, monkeypatch):
    from g4rt.backends.cpu import compiler
    monkeypatch.setenv("G4RT_CPU_CACHE", str(tmp_path))
    p1 = compiler.build("scalar")
    t1 = p1.stat().st_mtime_ns
    assert compiler.build("scalar") == p1 and p1.stat().st_mtime_ns == t1     # cached
    monkeypatch.setenv("G4RT_CPU_CFLAGS", "-DG4_TEST_FLAG=1")
    assert compiler.build("scalar") != p1                                      # flags are in the key


# ---- Vulkan: device selection --------------------------------------------------------------------
@needs_vulkan
def test_unknown_vulkan_device_index_and_name_are_clear_errors():
    from g4rt.backends.vulkan import VulkanBackend
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        VulkanBackend(device=99)
    with pytest.raises(BackendUnavailableError, match="no Vulkan device name contains"):
        VulkanBackend(device="no-such-gpu-xyz")


@needs_vulkan
def test_vulkan_device_by_name_substring():
    from g4rt.backends.vulkan import VulkanBackend
    from g4rt.backends.vulkan.device import probe_devices
    name = probe_devices()[0][0]
    be = VulkanBackend(device=name[:6].upper())
    assert be.info.index == 0 and name in be.device_name
    be.close()


# ---- CUDA: graphs are captured on a device --------------------------------------------------------
def test_cuda_graph_capture_is_used():
    from g4rt.backends.cuda.driver import cuda_available
    ok, reason = cuda_available()
    if not ok:
        pytest.skip(f"no CUDA device: {reason}")
    from g4rt.backends.cuda.backend import CudaBackend
    be = CudaBackend()
    try:
        assert be.use_graphs or be.debug
    finally:
        be.close()
