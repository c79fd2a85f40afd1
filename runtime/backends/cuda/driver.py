"""NVIDIA cuda-python plumbing for the CUDA backend: loading the bindings, checking every CUresult,
and compiling the kernels in shaders/cuda with NVRTC (cached in memory and on disk).

Nothing here needs a GPU except `open_driver()`; NVRTC compiles run anywhere the
`nvidia-cuda-nvrtc` wheel (or a CUDA toolkit's libnvrtc) is installed, which is how CI checks
that every kernel compiles.

Library loading (made automatic):
- cuda-python 12.6+ / 13.x: `from cuda.bindings import driver, nvrtc`; older 12.x: `from cuda import
  cuda as driver, nvrtc`.
- libnvrtc: cuda-bindings 13 finds the `nvidia-cuda-nvrtc` wheel's library itself (through
  cuda.pathfinder); older bindings dlopen "libnvrtc.so.12" by name, which only works when the
  wheel's lib folder is on the loader path. So before the first NVRTC call we preload, by full
  path, the libnvrtc of any installed `nvidia-cuda-nvrtc*` wheel (RTLD_GLOBAL): a later dlopen of
  the same soname then finds it.
- libcuda.so.1 comes with the NVIDIA driver; without it `cuInit` fails and the backend reports
  "CUDA driver not found (libcuda.so.1): ...".
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional

from ...errors import BackendUnavailableError, G4rtError
from ..kernel_sources import kernel_folder

_lock = threading.Lock()
_bindings = None          # (driver, nvrtc) once imported
_nvrtc_preloaded = False


class NvrtcError(G4rtError):
    """A CUDA kernel failed to compile; the message holds NVRTC's log."""


class CudaError(G4rtError):
    """A CUDA driver call failed; the message names the call and the CUresult."""


# ---- bindings -------------------------------------------------------------------------------
def _nvrtc_lib_candidates() -> list[Path]:
    """libnvrtc.so.* files shipped by installed nvidia-cuda-nvrtc wheels (cu12 and cu13 layouts)."""
    import importlib.util
    out: list[Path] = []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        root = Path(root)
        for pattern in ("cu13/lib/libnvrtc.so*", "cuda_nvrtc/lib/libnvrtc.so*", "cu12/lib/libnvrtc.so*"):
            for p in sorted(root.glob(pattern)):
                if "builtins" not in p.name and p.is_file():
                    out.append(p)
    return out


def _preload_nvrtc() -> None:
    global _nvrtc_preloaded
    if _nvrtc_preloaded:
        return
    _nvrtc_preloaded = True
    for p in _nvrtc_lib_candidates():
        try:
            ctypes.CDLL(str(p), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue


def bindings():
    """(driver, nvrtc) modules of cuda-python; BackendUnavailableError when not installed."""
    global _bindings
    if _bindings is not None:
        return _bindings
    with _lock:
        if _bindings is not None:
            return _bindings
        _preload_nvrtc()
        try:
            from cuda.bindings import driver, nvrtc          # cuda-python >= 12.6, 13.x
        except ImportError:
            try:
                from cuda import cuda as driver, nvrtc       # older cuda-python 12.x
            except ImportError as e:
                raise BackendUnavailableError(
                    f"the CUDA backend needs NVIDIA's cuda-python (pip install cuda-python "
                    f"nvidia-cuda-nvrtc): {e}") from None
        _bindings = (driver, nvrtc)
        return _bindings


def _result_name(res) -> str:
    name = getattr(res, "name", None)
    return name if name else str(res)


def _split(result):
    """A cuda-python / NVRTC return, (err, *values) or a bare err, as (err, values)."""
    if isinstance(result, tuple):
        return result[0], result[1:]
    return result, ()


def _values(vals: tuple):
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else vals


def check(result, what: str):
    """Unpack a cuda-python return tuple (err, *values); raise CudaError naming `what` on failure."""
    err, vals = _split(result)
    if int(err) != 0:
        driver, _ = bindings()
        msg = ""
        try:
            e2, s = driver.cuGetErrorString(err)
            if int(e2) == 0 and s:
                msg = s.decode() if isinstance(s, bytes) else str(s)
        except Exception:            # noqa: BLE001 - the name alone is still useful
            pass
        raise CudaError(f"{what} failed: {_result_name(err)}" + (f" ({msg})" if msg else ""))
    return _values(vals)


def open_driver(device: int = 0, driver=None):
    """cuInit + pick the device; BackendUnavailableError with the reason when that is impossible.
    Returns (driver module, CUdevice, device count). `driver` replaces cuda-python's driver
    module (tests pass a g4rt.testing.cuda stand-in)."""
    if driver is None:
        driver, _ = bindings()
    try:
        res = driver.cuInit(0)
    except Exception as e:           # noqa: BLE001 - a missing libcuda raises from the loader
        raise BackendUnavailableError(f"CUDA driver not found (libcuda.so.1): {e}") from None
    err = res[0] if isinstance(res, tuple) else res
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA driver could not be initialised: cuInit returned "
                                      f"{_result_name(err)}")
    try:
        count = check(driver.cuDeviceGetCount(), "cuDeviceGetCount")
    except CudaError as e:
        raise BackendUnavailableError(str(e)) from None
    if count < 1:
        raise BackendUnavailableError("no CUDA device found (cuDeviceGetCount = 0)")
    if not 0 <= int(device) < count:
        raise BackendUnavailableError(f"CUDA device {device} does not exist ({count} device(s))")
    dev = check(driver.cuDeviceGet(int(device)), "cuDeviceGet")
    return driver, dev, count


def cuda_available(device: int = 0, driver=None) -> tuple[bool, str]:
    """(True, device name) when a CUDA device can be used, else (False, the reason). Never raises.
    `driver`: as for open_driver (a stand-in reports its own device)."""
    try:
        driver, dev, _ = open_driver(device, driver)
        name = check(driver.cuDeviceGetName(256, dev), "cuDeviceGetName")
        name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
        return True, name
    except G4rtError as e:
        return False, str(e)
    except Exception as e:           # noqa: BLE001
        return False, f"CUDA unavailable: {type(e).__name__}: {e}"


# ---- NVRTC ----------------------------------------------------------------------------------
def shader_dir() -> Path:
    """$G4RT_CUDA_SHADER_DIR, else shaders/cuda of the package data, else the repo's."""
    return kernel_folder("cuda", "quant_blocks.cuh", "G4RT_CUDA_SHADER_DIR")


def cache_dir() -> Optional[Path]:
    """Where compiled kernels are cached: $G4RT_CUDA_CACHE ('' or 'off' disables), else
    ~/.cache/g4rt/cuda. None when caching is off or the folder cannot be created."""
    env = os.environ.get("G4RT_CUDA_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "none"):
        return None
    p = Path(env) if env else Path.home() / ".cache" / "g4rt" / "cuda"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return p if os.access(p, os.W_OK) else None


_INCLUDE = re.compile(rb'^\s*#\s*include\s+"([^"]+)"', re.M)


def _sources(path: Path, seen: Optional[set] = None) -> list[tuple[str, bytes]]:
    """The file and every header it includes with "..." (recursively), for the cache key."""
    seen = set() if seen is None else seen
    if path.name in seen:
        return []
    seen.add(path.name)
    data = path.read_bytes()
    out = [(path.name, data)]
    for inc in _INCLUDE.findall(data):
        p = path.parent / inc.decode()
        if p.is_file():
            out += _sources(p, seen)
    return out


def nvrtc_version() -> tuple[int, int]:
    _, nvrtc = bindings()
    major, minor = _nvrtc_check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def _nvrtc_check(result, what: str):
    err, vals = _split(result)
    if int(err) != 0:
        raise NvrtcError(f"{what} failed: {_result_name(err)}")
    return _values(vals)


def _program_log(nvrtc, prog) -> str:
    try:
        n = _nvrtc_check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        # NVRTC writes into this buffer. Never let it be 1 byte long: CPython shares one cached
        # object per 1-byte bytes value, and an empty log (just the NUL) written into b" " turned
        # every b" " in the process into b"\0" (found by a clean-clone CI run).
        buf = b" " * max(int(n), 2)
        _nvrtc_check(nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        return buf.split(b"\0", 1)[0].decode(errors="replace").strip()
    except NvrtcError as e:
        return f"(no log: {e})"


_mem_cache: dict[tuple, bytes] = {}


def compile_file(name: str, arch: str, defines: Optional[dict[str, str]] = None,
                 src_dir: Optional[Path] = None, extra_options: Iterable[str] = (),
                 use_cache: bool = True) -> bytes:
    """Compile shaders/cuda/<name> with NVRTC for `arch` ("sm_90": a CUBIN; "compute_90": PTX).

    Returns the image bytes for cuModuleLoadData (PTX is NUL-terminated). Raises NvrtcError with
    the file name, the options and NVRTC's log when compilation fails."""
    _, nvrtc = bindings()
    src_dir = Path(src_dir) if src_dir else shader_dir()
    path = src_dir / name
    if not path.is_file():
        raise NvrtcError(f"CUDA kernel source {path} does not exist")
    options = [f"-arch={arch}", f"--include-path={src_dir}", "-std=c++17"]
    options += [f"-D{k}={v}" for k, v in sorted((defines or {}).items())]
    options += list(extra_options)
    srcs = _sources(path)
    h = hashlib.sha256()
    for fname, data in srcs:
        h.update(fname.encode() + b"\0" + data + b"\0")
    h.update("\0".join(options).encode())
    h.update(repr(nvrtc_version()).encode())
    key = h.hexdigest()[:32]
    mkey = (name, key)
    if use_cache and mkey in _mem_cache:
        return _mem_cache[mkey]
    cubin = arch.startswith("sm_")
    ext = "cubin" if cubin else "ptx"
    cdir = cache_dir() if use_cache else None
    cfile = cdir / f"{path.stem}.{key}.{ext}" if cdir else None
    if cfile is not None and cfile.is_file():
        try:
            data = cfile.read_bytes()
            if data:
                _mem_cache[mkey] = data
                return data
        except OSError:
            pass

    prog = _nvrtc_check(nvrtc.nvrtcCreateProgram(path.read_bytes(), name.encode(), 0, [], []),
                        "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        err = res[0] if isinstance(res, tuple) else res
        log = _program_log(nvrtc, prog)
        if int(err) != 0:
            raise NvrtcError(f"NVRTC could not compile {name} ({' '.join(options[:1] + options[3:])}): "
                             f"{_result_name(err)}\n{log}")
        if cubin:
            n = _nvrtc_check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            buf = b" " * int(n)
            _nvrtc_check(nvrtc.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN")
        else:
            n = _nvrtc_check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            buf = b" " * int(n)
            _nvrtc_check(nvrtc.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        data = bytes(buf)
    finally:
        try:
            nvrtc.nvrtcDestroyProgram(prog)
        except Exception:            # noqa: BLE001
            pass
    _mem_cache[mkey] = data
    if cfile is not None:
        try:
            tmp = cfile.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, cfile)
        except OSError:
            pass
    return data


def compile_many(jobs: list[tuple[str, str, Optional[dict]]], threads: Optional[int] = None,
                 src_dir: Optional[Path] = None) -> list[bytes]:
    """Compile several (file, arch, defines) jobs in parallel (NVRTC releases the GIL)."""
    if not jobs:
        return []
    threads = threads or min(len(jobs), max(1, (os.cpu_count() or 2)))
    if threads <= 1 or len(jobs) == 1:
        return [compile_file(f, a, d, src_dir) for f, a, d in jobs]
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(lambda j: compile_file(j[0], j[1], j[2], src_dir), jobs))


_ENTRY = re.compile(r"\.(?:visible\s+)?\.entry\s+(\w+)\s*\(([^)]*)\)", re.S)
_PARAM = re.compile(r"\.param\s+\.(\w+)(?:\s+\.ptr[^\s]*)*(?:\s+\.align\s+\d+)?\s+\w+")


def ptx_entry_signatures(ptx: bytes | str) -> dict[str, str]:
    """Kernel name -> parameter codes from PTX ('P' 64-bit, 'i' 32-bit int, 'f' f32, 'd' f64)."""
    text = ptx.decode(errors="replace") if isinstance(ptx, bytes) else ptx
    out = {}
    for name, params in _ENTRY.findall(text):
        codes = []
        for ty in _PARAM.findall(params):
            codes.append({"u64": "P", "b64": "P", "s64": "P", "u32": "i", "s32": "i", "b32": "i",
                          "f32": "f", "f64": "d"}.get(ty, "?" + ty))
        out[name] = "".join(codes)
    return out
