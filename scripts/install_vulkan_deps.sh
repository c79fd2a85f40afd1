#!/usr/bin/env bash
# Install the Vulkan toolchain for g4rt's Vulkan backend, offline-safe.
#
#   sudo scripts/install_vulkan_deps.sh [VENV_DIR]      (default: <repo>/.venv)
#
# 1. Debian packages: mesa-vulkan-drivers (lavapipe CPU driver), glslang-tools
#    (glslangValidator), libvulkan-dev, libfmt-dev, vulkan-tools (vulkaninfo),
#    plus the compilers/cmake/patch needed to build kp.  Skipped when all
#    present.
# 2. A Python venv (created if missing) with numpy<2 and pybind11.
# 3. Kompute's Python bindings, `kp` 0.9.0, built from the PyPI sdist with
#    scripts/kp-dispatch-barrier.patch applied (pipeline barriers between
#    dependent dispatches/copies; see docs/kompute-notes.md, "Barriers") and
#    scripts/kp-offline-toolchain.cmake so that CMake never clones anything
#    (system Vulkan headers + Debian fmt + pip pybind11).  The wheel is built
#    first and then swapped in with one `pip install --force-reinstall`, so an
#    existing kp stays usable during the build.  On success the marker
#    $VENV/.kp-0.9.0-barrier-patched records the patch's and the installed
#    .so's sha256 (plus the patched source lines); kp is rebuilt whenever
#    `import kp` fails, the marker is missing, or either hash differs (a kp
#    reinstalled from PyPI, or an edited patch).  rm the marker to force a
#    rebuild.  Takes ~2 min on 2 cores.
# 4. scripts/vulkan_smoke.py: kp.Manager() on lavapipe + a vector-add shader.
#
# The project's other Python deps are installed by the project's own install
# script, not here:
#   pip install 'numpy<2' gguf click jinja2 pytest hypothesis tqdm tokenizers \
#       cuda-python nvidia-cuda-nvrtc
#
# Idempotent: a rerun with everything in place takes a few seconds.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="${1:-$REPO_ROOT/.venv}"
# Absolute: kp's CMake runs in a temporary build folder, where a relative interpreter path fails.
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
KP_VERSION="0.9.0"
# sha256 of PyPI's kp-0.9.0.tar.gz: the patch only applies to that exact tree.
KP_SDIST_SHA256="98e583dc6e9731ff6d7a3e3317817e4d93f7b2945929619e29a56325db279949"
TOOLCHAIN="$SCRIPT_DIR/kp-offline-toolchain.cmake"
KP_PATCH="$SCRIPT_DIR/kp-dispatch-barrier.patch"
KP_MARKER="$VENV/.kp-$KP_VERSION-barrier-patched"
KP_BUILD_LOG="$VENV/.kp-$KP_VERSION-build.log"

log() { printf '[install_vulkan_deps] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- apt -------
APT_PKGS=(mesa-vulkan-drivers glslang-tools libvulkan-dev libfmt-dev vulkan-tools
          cmake make g++ patch)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing Debian packages (${missing[*]}) and not root; rerun as root"
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y --no-install-recommends "${APT_PKGS[@]}"
else
  log "Debian packages already installed"
fi

# ---------------------------------------------------------------- venv ------
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

# kp 0.9.0 requires numpy<2.  setuptools + wheel must be in the venv because
# the sdist is built with --no-build-isolation (its setup.py build runs with
# the venv's own packages, which is also how it finds pip's pybind11).
if ! "$PY" -c 'import numpy, pybind11, setuptools, wheel, sys; sys.exit(int(numpy.__version__.split(".")[0]) >= 2)' 2>/dev/null; then
  log "pip install numpy<2 pybind11 setuptools wheel"
  "$PY" -m pip install -q 'numpy<2' pybind11 setuptools wheel
fi

# ---------------------------------------------------------------- kp --------
sha256() { sha256sum "$1" | cut -d' ' -f1; }
patch_sha=$(sha256 "$KP_PATCH")

# Echo why kp must be (re)built, or nothing when the patched build is in place.
kp_stale_reason() {
  local so
  if ! so=$("$PY" -c 'import kp; print(kp.__file__)' 2>/dev/null); then
    echo "kp not importable"
  elif [[ ! -f "$KP_MARKER" ]]; then
    echo "kp importable but $KP_MARKER missing (unpatched build)"
  elif ! grep -qx "patch_sha256=$patch_sha" "$KP_MARKER"; then
    echo "$(basename "$KP_PATCH") changed since kp was built"
  elif ! grep -qx "so_sha256=$(sha256 "$so")" "$KP_MARKER"; then
    echo "installed $(basename "$so") is not the patched build recorded in the marker"
  fi
}

reason=$(kp_stale_reason)
if [[ -z "$reason" ]]; then
  log "patched kp $KP_VERSION already installed in $VENV"
else
  log "$reason"
  log "building patched kp==$KP_VERSION from sdist (offline CMake deps, ~2 min)"
  start=$SECONDS
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/kp-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # --no-build-isolation: pip runs the sdist's `setup.py egg_info` with the
  # venv's setuptools instead of fetching a fresh one.
  "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    "kp==$KP_VERSION" -d "$tmp"
  sdist="$tmp/kp-$KP_VERSION.tar.gz"
  got=$(sha256 "$sdist")
  if [[ "$got" != "$KP_SDIST_SHA256" ]]; then
    log "unexpected sdist sha256 $got (want $KP_SDIST_SHA256)"
    exit 1
  fi
  tar -xzf "$sdist" -C "$tmp"
  src="$tmp/kp-$KP_VERSION"
  # --fuzz=0 --forward --batch: any mismatch with the expected source is an
  # error instead of a guess.
  (cd "$src" && patch -p1 --forward --fuzz=0 --batch --no-backup-if-mismatch) \
    < "$KP_PATCH" >&2
  # CMAKE_TOOLCHAIN_FILE (env, CMake >= 3.21) is how the options reach kp's
  # CMake: its setup.py has no way to pass extra -D flags.
  # KOMPUTE_PYTHON_NUM_PARALLEL_THREADS: setup.py otherwise runs `make -j`
  # (unbounded), which MAKEFLAGS cannot override.
  if ! CMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" \
       KP_PYTHON_EXECUTABLE="$PY" \
       pybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
       KOMPUTE_PYTHON_NUM_PARALLEL_THREADS=2 \
       CMAKE_BUILD_PARALLEL_LEVEL=2 MAKEFLAGS=-j2 \
       "$PY" -m pip wheel -v --no-cache-dir --no-deps --no-build-isolation \
         -w "$tmp/wheel" "$src" \
       >"$tmp/build.log" 2>&1; then
    tail -n 40 "$tmp/build.log" >&2
    cp "$tmp/build.log" "$KP_BUILD_LOG"
    log "kp wheel build failed (full log: $KP_BUILD_LOG); installed kp left unchanged"
    exit 1
  fi
  wheel=("$tmp"/wheel/kp-"$KP_VERSION"-*.whl)
  # Swap the module in one step (the old kp stays importable until here).
  # --no-deps: numpy<2 is handled above.
  rm -f "$KP_MARKER"
  "$PY" -m pip install -q --force-reinstall --no-deps "${wheel[0]}"
  so=$("$PY" -c 'import kp; print(kp.__file__)')
  cp "$tmp/build.log" "$KP_BUILD_LOG"
  {
    echo "# kp $KP_VERSION built from the PyPI sdist with $(basename "$KP_PATCH")"
    echo "# by scripts/install_vulkan_deps.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); build log: $KP_BUILD_LOG"
    echo "sdist_sha256=$KP_SDIST_SHA256"
    echo "patch_sha256=$patch_sha"
    echo "so=$so"
    echo "so_sha256=$(sha256 "$so")"
    echo "# patched source lines (grep -n 'g4rt barrier patch' src/*.cpp):"
    (cd "$src" && grep -n 'g4rt barrier patch' src/*.cpp) | sed 's/^/#   /'
  } >"$KP_MARKER"
  rm -rf "$tmp"
  trap - EXIT
  log "patched kp built and installed in $((SECONDS - start)) s"
fi

# ---------------------------------------------------------------- smoke -----
"$PY" "$SCRIPT_DIR/vulkan_smoke.py"
