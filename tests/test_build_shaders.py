"""Shader compilation: every variant compiles; failures name the file and line; a missing
compiler is a clear error; the cache is keyed by content."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from g4rt.backends.vulkan import shader_build

REPO = Path(__file__).resolve().parents[1]
HAVE_GLSLANG = shutil.which(shader_build.COMPILER) is not None
needs_glslang = pytest.mark.skipif(not HAVE_GLSLANG, reason="glslangValidator not installed (apt-get install glslang-tools)")


@needs_glslang
def test_every_variant_compiles():
    # into the shared cache (a variant already there was compiled from the same content)
    paths = shader_build.build_all()
    assert len(paths) == len(shader_build.all_variants()) >= 50
    for p in paths:
        data = p.read_bytes()
        assert data[:4] == b"\x03\x02\x23\x07", p      # SPIR-V magic
    shaders = {p.stem for p in shader_build.shader_dir().glob("*.comp")}
    assert shaders == {v.shader for v in shader_build.all_variants()}, "a .comp file no variant builds"


@needs_glslang
def test_cache_is_keyed_by_content(tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(shader_build.shader_dir(), src)
    out = tmp_path / "out"
    v = shader_build.variant("add")
    p1 = shader_build.compile_variant(v, src, out)
    assert shader_build.compile_variant(v, src, out) == p1                       # cached
    # an edit to an included file changes the key
    inc = src / "common.glsl"
    inc.write_text(inc.read_text() + "\n// touched\n")
    p2 = shader_build.compile_variant(v, src, out)
    assert p2 != p1 and p2.is_file()
    # defines are part of the key
    a = shader_build.compile_variant(shader_build.variant("matvec", QTYPE=2, NTOK=1), src, out)
    b = shader_build.compile_variant(shader_build.variant("matvec", QTYPE=12, NTOK=1), src, out)
    assert a != b and a.read_bytes() != b.read_bytes()


@needs_glslang
def test_broken_shader_names_file_and_line(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(shader_build.shader_dir(), src)
    lines = (src / "add.comp").read_text().splitlines()
    idx = next(i for i, l in enumerate(lines) if "float a =" in l)
    lines[idx] = lines[idx].replace("float a =", "float a = undefined_thing +")
    (src / "add.comp").write_text("\n".join(lines) + "\n")
    with pytest.raises(shader_build.ShaderCompileError) as ei:
        shader_build.compile_variant(shader_build.variant("add"), src, tmp_path / "out")
    e = ei.value
    assert Path(e.file).name == "add.comp" and e.line == idx + 1
    assert f"add.comp line {idx + 1}" in str(e) and "undefined_thing" in str(e)


@needs_glslang
def test_error_in_an_include_names_the_include(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(shader_build.shader_dir(), src)
    qb = src / "quant_blocks.glsl"
    text = qb.read_text().replace("uint qb_u8(uint b) {", "uint qb_u8(uint b) { nonsense;", 1)
    qb.write_text(text)
    line = text[: text.index("nonsense;")].count("\n") + 1
    with pytest.raises(shader_build.ShaderCompileError) as ei:
        shader_build.compile_variant(shader_build.variant("matvec", QTYPE=2, NTOK=1), src, tmp_path / "out")
    assert Path(ei.value.file).name == "quant_blocks.glsl" and ei.value.line == line


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("G4RT_GLSLANG", raising=False)
    with pytest.raises(shader_build.ShaderCompilerMissingError, match="glslangValidator not found.*glslang-tools"):
        shader_build.compile_variant(shader_build.variant("add"), out_dir=tmp_path / "out")


def test_missing_source_is_a_clear_error(tmp_path):
    if not HAVE_GLSLANG:
        pytest.skip("glslangValidator not installed")
    with pytest.raises(shader_build.ShaderCompileError, match="does not exist"):
        shader_build.compile_variant(shader_build.variant("no_such_kernel"), out_dir=tmp_path / "out")


@needs_glslang
def test_cli_builds_and_reports_errors(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "build_shaders.py"), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(shader_build.all_variants())} shader variants" in r.stdout
    src = tmp_path / "src"
    shutil.copytree(shader_build.shader_dir(), src)
    # embed.comp is the first variant built: the CLI stops there
    (src / "embed.comp").write_text((src / "embed.comp").read_text().replace("void main() {", "void main() { x y z;"))
    r = subprocess.run([sys.executable, str(REPO / "build_shaders.py"), "--out", str(tmp_path / "o2"), "-q"],
                       capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                          "G4RT_SHADER_DIR": str(src)})
    assert r.returncode == 1 and "embed.comp line" in r.stdout, r.stdout
