"""Compile the GLSL compute shaders (shaders/glsl/*.comp) to SPIR-V with glslangValidator.

Every (shader, defines) variant is compiled once and cached under a git-ignored folder, keyed by
a hash of its source, the sources of everything it includes, the defines, the target environment
and the compiler's version. `build_shaders.py` at the repository root is a thin CLI over this
module; the Vulkan backend calls `spirv()` lazily.

Where things are:
- shaders: $G4RT_SHADER_DIR, else the package data `g4rt.shaders` (`glsl/`), else the
  repository's `shaders/glsl` next to the `runtime/` package folder;
- cache:   $G4RT_SHADER_CACHE, else `shaders/spv` in a source checkout (git-ignored), else
  ~/.cache/g4rt/spv.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ...errors import G4rtError
from ..kernel_sources import kernel_folder

TARGET_ENV = "vulkan1.1"
COMPILER = "glslangValidator"
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
# glslang: "ERROR: /path/file.comp:12: 'x' : undeclared identifier"
_ERROR_RE = re.compile(r"^ERROR:\s*(?P<file>[^:\n]+?):(?P<line>\d+):\s*(?P<msg>.*)$", re.M)

#: GGML type ids of the weight types the matmul / embedding kernels are built for.
QTYPE_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
             "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30}


class ShaderCompilerMissingError(G4rtError):
    """glslangValidator is not installed."""


class ShaderCompileError(G4rtError):
    """A shader failed to compile; names the file and line."""

    def __init__(self, message: str, file: str = "", line: int = 0, output: str = ""):
        super().__init__(message)
        self.file, self.line, self.output = file, line, output


@dataclass(frozen=True)
class Variant:
    """One compilation of one .comp file."""
    shader: str                                   # file stem, e.g. "matvec"
    defines: tuple[tuple[str, str], ...] = ()     # sorted (NAME, value) pairs

    @property
    def key(self) -> str:
        if not self.defines:
            return self.shader
        return self.shader + "." + ".".join(f"{k}={v}" if v != "" else k for k, v in self.defines)


def variant(shader: str, **defines) -> Variant:
    return Variant(shader, tuple(sorted((k, "" if v is True else str(v)) for k, v in defines.items())))


def all_variants() -> list[Variant]:
    """Every variant the Vulkan backend can ask for (what `build_shaders.py` prebuilds)."""
    out = []
    for name, qid in QTYPE_IDS.items():
        out.append(variant("embed", QTYPE=qid))
        out.append(variant("matvec", QTYPE=qid, NTOK=1))
        out.append(variant("matvec", QTYPE=qid, NTOK=8))
        out.append(variant("matmul", QTYPE=qid))
        out.append(variant("matmul_rows", QTYPE=qid, NTOK=1))
        out.append(variant("matmul_rows", QTYPE=qid, NTOK=8))
        out.append(variant("matmul_tokens", QTYPE=qid))
        out.append(variant("moe_matvec", QTYPE=qid))
    for kv in (True, False):
        out.append(variant("attention", KV_F16=True) if kv else variant("attention"))
        if kv:
            out.append(variant("attention", KV_F16=True, ROUND_BATCH=True))
        out.append(variant("attention_rows", KV_F16=True) if kv else variant("attention_rows"))
        out.append(variant("attention", KV_F16=True, AHEAD=True) if kv else variant("attention", AHEAD=True))
        out.append(variant("attention", KV_F16=True, PAST=True) if kv else variant("attention", PAST=True))
        out.append(variant("kv_store", KV_F16=True) if kv else variant("kv_store"))
    for name in ("rmsnorm", "rope", "gelu_mul", "gelu", "add", "mul", "scale", "softcap", "slice", "copy",
                 "moe_route", "moe_sum", "take_rows"):
        out.append(variant(name))
    # the encoders' kernels (media_lowering.py)
    out += [variant("media_elem", OP=i) for i in range(1, 8)] + [variant("conv", MODE=m) for m in (1, 2)]
    out += [variant(n) for n in ("layernorm", "rope2d", "full_attention", "chunked_attention")]
    out += [variant("full_attention", HEAD_DIM=d) for d in (32, 64, 128)]
    return out


# ---- locations --------------------------------------------------------------------------------
def shader_dir() -> Path:
    """$G4RT_SHADER_DIR, else shaders/glsl of the package data, else the repo's."""
    return kernel_folder("glsl", "common.glsl", "G4RT_SHADER_DIR")


def cache_dir() -> Path:
    env = os.environ.get("G4RT_SHADER_CACHE")
    if env:
        p = Path(env)
    else:
        # a source checkout keeps its SPIR-V next to the sources (shaders/spv, git-ignored);
        # an installed package uses the user's cache
        src = shader_dir()
        repo_spv = src.parent / "spv"
        in_checkout = (src.parent.parent / ".git").exists()
        p = repo_spv if in_checkout and _writable(repo_spv) else Path.home() / ".cache" / "g4rt" / "spv"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _writable(p: Path) -> bool:
    parent = p if p.exists() else p.parent
    return parent.is_dir() and os.access(parent, os.W_OK)


def compiler_path() -> str:
    exe = os.environ.get("G4RT_GLSLANG") or shutil.which(COMPILER)
    if not exe or not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise ShaderCompilerMissingError(
            f"{COMPILER} not found (needed to build the Vulkan shaders): install it with "
            f"`apt-get install glslang-tools` (Debian/Ubuntu) or point G4RT_GLSLANG at it")
    return exe


_version_cache: dict[str, str] = {}


def compiler_version(exe: str) -> str:
    v = _version_cache.get(exe)
    if v is None:
        try:
            r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
            v = r.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            raise ShaderCompilerMissingError(f"{exe} cannot be run: {e}") from None
        _version_cache[exe] = v
    return v


# ---- hashing ----------------------------------------------------------------------------------
def _sources(path: Path, seen: Optional[set] = None) -> list[tuple[str, bytes]]:
    """The file and, recursively, every file it #includes (relative to its folder)."""
    seen = set() if seen is None else seen
    if path in seen:
        return []
    seen.add(path)
    if not path.is_file():
        raise ShaderCompileError(f"shader source {path} does not exist", str(path))
    data = path.read_bytes()
    out = [(path.name, data)]
    for inc in _INCLUDE_RE.findall(data.decode("utf-8", errors="replace")):
        out += _sources(path.parent / inc, seen)
    return out


def variant_hash(v: Variant, src_dir: Path, compiler_id: str) -> str:
    h = hashlib.sha256()
    for name, data in _sources(src_dir / f"{v.shader}.comp"):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    h.update(repr(v.defines).encode())
    h.update(TARGET_ENV.encode())
    h.update(compiler_id.encode())
    return h.hexdigest()[:24]


# ---- compiling --------------------------------------------------------------------------------
def _parse_error(output: str, fallback_file: str) -> tuple[str, int, str]:
    m = _ERROR_RE.search(output)
    if not m:
        return fallback_file, 0, output.strip().splitlines()[0] if output.strip() else "unknown error"
    return m.group("file").strip(), int(m.group("line")), m.group("msg").strip()


def compile_variant(v: Variant, src_dir: Optional[Path] = None, out_dir: Optional[Path] = None,
                    force: bool = False) -> Path:
    """Compile one variant (or find it in the cache); return the .spv path."""
    src_dir = Path(src_dir) if src_dir else shader_dir()
    out_dir = Path(out_dir) if out_dir else cache_dir()
    exe = compiler_path()
    digest = variant_hash(v, src_dir, compiler_version(exe))
    spv = out_dir / f"{v.key}.{digest}.spv"
    if spv.is_file() and not force:
        return spv
    src = src_dir / f"{v.shader}.comp"
    args = [exe, "-V", "--target-env", TARGET_ENV, f"-I{src_dir}"]
    args += [f"-D{k}={val}" if val != "" else f"-D{k}" for k, val in v.defines]
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".spv", dir=out_dir)
    os.close(fd)
    try:
        try:
            r = subprocess.run(args + ["-o", tmp, str(src)], capture_output=True, text=True, timeout=300)
        except OSError as e:
            raise ShaderCompilerMissingError(f"{exe} cannot be run: {e}") from None
        if r.returncode != 0 or os.path.getsize(tmp) == 0:
            output = (r.stdout + r.stderr).strip()
            file, line, msg = _parse_error(output, str(src))
            defs = " ".join(f"-D{k}={val}" if val else f"-D{k}" for k, val in v.defines)
            raise ShaderCompileError(
                f"shader {Path(file).name} line {line}: {msg} (compiling {src.name}"
                f"{' with ' + defs if defs else ''})\n{output}", file, line, output)
        os.replace(tmp, spv)   # atomic: concurrent builders never see half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return spv


_spv_cache: dict[Variant, bytes] = {}


def spirv(v: Variant) -> bytes:
    """The SPIR-V bytes of a variant, compiled on first use."""
    data = _spv_cache.get(v)
    if data is None:
        data = compile_variant(v).read_bytes()
        _spv_cache[v] = data
    return data


def build_all(variants: Optional[Iterable[Variant]] = None, force: bool = False,
              out_dir: Optional[Path] = None, log=None) -> list[Path]:
    out = []
    for v in (all_variants() if variants is None else variants):
        p = compile_variant(v, out_dir=out_dir, force=force)
        if log:
            log(f"{v.key:<40} {p.name}")
        out.append(p)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Compile g4rt's Vulkan compute shaders to SPIR-V.")
    ap.add_argument("--force", action="store_true", help="recompile even when cached")
    ap.add_argument("--out", type=Path, help="output folder (default: the shader cache)")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.list:
        for v in all_variants():
            print(v.key)
        return 0
    try:
        paths = build_all(force=a.force, out_dir=a.out, log=None if a.quiet else print)
    except G4rtError as e:
        print(f"error: {e}")
        return 1
    print(f"{len(paths)} shader variants in {paths[0].parent if paths else cache_dir()}")
    return 0
