#!/usr/bin/env bash
# Fill .devdeps/ (git-ignored; never commit it) with what scripts/device_check.sh needs on a GPU
# machine that has no network:
#
#   .devdeps/wheels/    wheels for CPython 3.12 / manylinux x86_64 (the device image's python3):
#                       gguf always (the image lacks it); with --full also cuda-python,
#                       cuda-bindings, cuda-pathfinder, numpy, click, jinja2, markupsafe, tqdm,
#                       pyyaml, requests' stack, pytest + its deps (the image has all of these;
#                       --full is for another image); with --with-nvrtc the nvidia-cuda-nvrtc
#                       wheel too (58 MB: only fits with --no-fixtures).
#   .devdeps/fixtures/  a ~40 MB subset of ../shared/fixtures (MANIFEST.json, prompts, 10 models
#                       covering F32/F16/Q8_0/Q4_0/Q4_K/Q5_0/Q6_K, dense/untied/K=V/edge/w1024,
#                       and their .exact references); device_check.sh points G4RT_FIXTURES at it.
#
# Usage (here, in the repository root):  bash scripts/prepare_device_wheels.sh [--full] [--with-nvrtc] [--no-fixtures]
# then on the device:  run(command="bash scripts/device_check.sh", carry=[".devdeps"], timeout_s=540)
# Everything that travels (working tree + .devdeps) must stay under 64 MiB; this script checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
FULL=0; NVRTC=0; FIXT=1
for a in "$@"; do
    case "$a" in
        --full) FULL=1 ;;
        --with-nvrtc) NVRTC=1 ;;
        --no-fixtures) FIXT=0 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown option $a" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
PYVER=${DEVICE_PYTHON_VERSION:-3.12}
SRC_FIXTURES=${G4RT_FIXTURES:-$REPO/../shared/fixtures}

rm -rf .devdeps/wheels .devdeps/fixtures
mkdir -p .devdeps/wheels
grep -qxF '/.devdeps/' .git/info/exclude 2>/dev/null || echo '/.devdeps/' >> .git/info/exclude

download() {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d .devdeps/wheels "$@"
}

echo "== wheels (CPython $PYVER, manylinux x86_64)"
download "gguf==$("$PY" -c 'import importlib.metadata as m; print(m.version("gguf"))' 2>/dev/null || echo 0.19.0)"
if [ "$FULL" = 1 ]; then
    download cuda-python cuda-bindings cuda-pathfinder "numpy<3" click jinja2 markupsafe tqdm pyyaml \
        requests urllib3 idna certifi charset-normalizer pytest pluggy iniconfig packaging
fi
if [ "$NVRTC" = 1 ]; then
    download nvidia-cuda-nvrtc
fi

if [ "$FIXT" = 1 ]; then
    echo "== fixtures subset from $SRC_FIXTURES"
    if [ ! -f "$SRC_FIXTURES/MANIFEST.json" ]; then
        echo "no fixtures at $SRC_FIXTURES (set G4RT_FIXTURES)" >&2; exit 1
    fi
    D=.devdeps/fixtures
    mkdir -p "$D/models" "$D/ref"
    cp "$SRC_FIXTURES/MANIFEST.json" "$SRC_FIXTURES/README.md" "$SRC_FIXTURES/compare.py" "$D/"
    cp "$SRC_FIXTURES"/prompts*.json "$D/"
    for m in g4-dense-Q4_0-pure g4-dense-Q4_0 g4-dense-Q4_K_M g4-dense-Q6_K g4-dense-Q8_0 g4-dense-F16 \
             g4-dense-keqv-Q4_K_M g4-dense-untied-Q8_0 g4-edge-Q4_K_M g4-dense-w1024-Q4_0-pure; do
        cp "$SRC_FIXTURES/models/$m.gguf" "$D/models/"
        cp "$SRC_FIXTURES/ref/$m".*exact.npz "$D/ref/"
    done
fi

echo "== sizes"
du -sh .devdeps/* | sed 's/^/  /'
TREE=$( (git ls-files; git ls-files --others --exclude-standard) | while read -r f; do [ -f "$f" ] && stat -c %s "$f"; done | awk '{s+=$1} END {print s+0}')
DEV=$(du -sb .devdeps | cut -f1)
TOTAL=$((TREE + DEV))
awk -v t="$TREE" -v d="$DEV" 'BEGIN { printf "  working tree %.1f MiB + .devdeps %.1f MiB = %.1f MiB (limit 64 MiB)\n", t/1048576, d/1048576, (t+d)/1048576 }'
if [ "$TOTAL" -gt $((60 * 1048576)) ]; then
    echo "too large to travel (keep it under ~60 MiB): drop --with-nvrtc or use --no-fixtures" >&2
    exit 1
fi
echo "ready: run scripts/device_check.sh on the device with carry=[\".devdeps\"]"
