#!/usr/bin/env bash
# Build llama.cpp's `llama-bench` (and, where the target exists, `llama-batched-bench`) offline,
# from the llama.cpp source vendored in the llama-cpp-python sdist on PyPI. PyPI (through pip)
# and, when run as root with build tools missing, apt are the only network sources used; the
# CMake configure runs with FetchContent disconnected and proxies pointing nowhere, and fails if
# it tries to fetch anything.
#
# Usage: scripts/build_llama_bench.sh
#   LLAMA_CPP_PYTHON_VERSION  sdist version to build (default below)
#   LLAMA_BENCH_CACHE         cache directory (default .cache/llama-bench, relative to the repo root)
#   LLAMA_BENCH_FORCE=1       rebuild even when the binary is already there
#   LLAMA_BENCH_JOBS          parallel compile jobs (default: nproc)
#   PYTHON                    interpreter whose pip downloads the sdist (default python3)
#   LLAMA_BENCH_SPEC=1        also build the speculative-decoding examples llama-lookup (prompt
#                             lookup) and llama-speculative-simple (a draft model), for
#                             docs/benchmarks/speculative.md
#
# Logs go to stderr; the last line on stdout is the absolute path of the binary, so
#   G4RT_LLAMA_BENCH=$(scripts/build_llama_bench.sh) g4rt bench --llama-bench auto ...
# works. The binary is linked statically against libllama/libggml (system libstdc++/libgomp
# stay dynamic) and, built with GGML_NATIVE=ON, targets this machine's CPU.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE_DIR=${LLAMA_BENCH_CACHE:-.cache/llama-bench}
case "$CACHE_DIR" in /*) ;; *) CACHE_DIR="$REPO_ROOT/$CACHE_DIR" ;; esac
BIN_DIR="$CACHE_DIR/bin"
BIN="$BIN_DIR/llama-bench"
STAMP="$BIN_DIR/llama-bench.version"
JOBS=${LLAMA_BENCH_JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}

log() { printf '[build_llama_bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- AMX --------------------------------------------------------------------------------------
# -march=native turns on ggml's AMX kernels when the CPU lists amx_tile. On this project's
# Sapphire Rapids VMs they die with SIGILL (tilezero in an OpenMP worker) at the first matmul,
# although a single-threaded probe after arch_prctl(ARCH_REQ_XCOMP_PERM) runs: so on AMX CPUs
# build without AMX (LLAMA_BENCH_AMX=1 keeps it), appending -mno-amx-* to every compile through
# a compiler launcher (flags after ggml's own -march=native win). ggml then uses AVX-512.
LAUNCH=()
TAG="$VERSION"
mkdir -p "$CACHE_DIR"
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null && [[ "${LLAMA_BENCH_AMX:-0}" != 1 ]]; then
    log "this CPU lists AMX: building without ggml's AMX kernels (LLAMA_BENCH_AMX=1 keeps them)"
    printf '#!/bin/sh\nexec "$@" -mno-amx-tile -mno-amx-int8 -mno-amx-bf16\n' >"$CACHE_DIR/no-amx-launcher"
    chmod +x "$CACHE_DIR/no-amx-launcher"
    LAUNCH=(-DCMAKE_C_COMPILER_LAUNCHER="$CACHE_DIR/no-amx-launcher"
            -DCMAKE_CXX_COMPILER_LAUNCHER="$CACHE_DIR/no-amx-launcher")
    TAG="$VERSION-noamx"
fi

# --- fast path: already built for this version -----------------------------------------------
if [[ -x "$BIN" && "${LLAMA_BENCH_FORCE:-0}" != 1 && -f "$STAMP" \
      && "$(cat "$STAMP")" == "$TAG" ]]; then
    log "already built (llama-cpp-python $TAG)"
    echo "$BIN"
    exit 0
fi

# --- build dependencies ------------------------------------------------------------------------
have_cxx() { command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1; }
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
have_cxx || missing+=(build-essential)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
if ! command -v ninja >/dev/null 2>&1 && ! command -v make >/dev/null 2>&1; then
    missing+=(make)
fi
if ((${#missing[@]})); then
    # shellcheck disable=SC2207  # deduplicate the package list
    missing=($(printf '%s\n' "${missing[@]}" | sort -u))
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing build dependencies: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    else
        die "missing build tools (${missing[*]}); install them (e.g. apt-get install ${missing[*]})"
    fi
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip"

# --- sdist from PyPI -----------------------------------------------------------------------------
SDIST_DIR="$CACHE_DIR/sdist"
SRC_ROOT="$CACHE_DIR/src"
mkdir -p "$SDIST_DIR" "$SRC_ROOT" "$BIN_DIR"

find_sdist() {
    # the file name is normalised (llama_cpp_python-X.tar.gz) on new uploads, dashed on old ones
    local f
    for f in "$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz" "$SDIST_DIR/llama-cpp-python-$VERSION.tar.gz"; do
        if [[ -f "$f" ]]; then echo "$f"; return 0; fi
    done
    return 1
}

if ! SDIST=$(find_sdist); then
    log "downloading llama-cpp-python==$VERSION sdist from PyPI"
    "$PYTHON" -m pip download --no-deps --no-binary :all: --disable-pip-version-check \
        -d "$SDIST_DIR" "llama-cpp-python==$VERSION" >&2
    SDIST=$(find_sdist) || die "pip did not produce a llama-cpp-python $VERSION sdist in $SDIST_DIR"
fi
log "sdist: $SDIST"

SRC_DIR="$SRC_ROOT/$VERSION"
LLAMA_SRC="$SRC_DIR/vendor/llama.cpp"
if [[ ! -f "$LLAMA_SRC/CMakeLists.txt" ]]; then
    log "extracting"
    rm -rf "$SRC_DIR" "$SRC_DIR.tmp"
    mkdir -p "$SRC_DIR.tmp"
    tar -xzf "$SDIST" -C "$SRC_DIR.tmp" --strip-components=1
    mv "$SRC_DIR.tmp" "$SRC_DIR"
fi
[[ -f "$LLAMA_SRC/CMakeLists.txt" ]] || die "no vendor/llama.cpp/CMakeLists.txt in $SDIST"
[[ -d "$LLAMA_SRC/tools/llama-bench" || -d "$LLAMA_SRC/examples/llama-bench" ]] \
    || die "this llama.cpp has no llama-bench sources"

# --- configure (offline) ---------------------------------------------------------------------
BUILD_DIR="$CACHE_DIR/build/$TAG"
GEN=()
if command -v ninja >/dev/null 2>&1 && [[ ! -f "$BUILD_DIR/Makefile" ]]; then GEN=(-G Ninja); fi
CONFIG_LOG="$BUILD_DIR.configure.log"
mkdir -p "$BUILD_DIR"

# Anything that would reach the network: FetchContent (BoringSSL/LibreSSL for cpp-httplib,
# KleidiAI), the LLVM OpenMP fetch, the prebuilt web UI, llguidance, OpenSSL/curl for model
# downloads. llama-bench needs none of it. Proxies that point nowhere make any download that
# still slips through fail fast instead of succeeding.
log "configuring (log: $CONFIG_LOG)"
if ! env http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 \
        HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
        ALL_PROXY=http://127.0.0.1:9 all_proxy=http://127.0.0.1:9 no_proxy= NO_PROXY= \
        GIT_ALLOW_PROTOCOL=file \
    cmake -S "$LLAMA_SRC" -B "$BUILD_DIR" "${GEN[@]}" "${LAUNCH[@]}" \
        -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_BORINGSSL=OFF \
        -DLLAMA_BUILD_LIBRESSL=OFF \
        -DLLAMA_LLGUIDANCE=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_COMMON=ON \
        -DGGML_OPENMP_FETCH=OFF \
        -DGGML_CPU_KLEIDIAI=OFF \
        -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
        -DFETCHCONTENT_UPDATES_DISCONNECTED=ON \
        --no-warn-unused-cli \
        >"$CONFIG_LOG" 2>&1; then
    tail -n 40 "$CONFIG_LOG" >&2
    die "cmake configure failed (full log: $CONFIG_LOG)"
fi
if grep -Eiq '^-- (Fetching|Downloading|Populating)|file DOWNLOAD|FetchContent' "$CONFIG_LOG"; then
    grep -Ei 'Fetching|Downloading|Populating|DOWNLOAD|FetchContent' "$CONFIG_LOG" >&2
    die "the CMake configure tried to fetch something from the network (see $CONFIG_LOG)"
fi

# --- build -----------------------------------------------------------------------------------
start=$SECONDS
log "building llama-bench with $JOBS jobs"
cmake --build "$BUILD_DIR" --config Release --target llama-bench -j "$JOBS" >&2

if cmake --build "$BUILD_DIR" --target help 2>/dev/null | grep -Eq '(^|[ :.])llama-batched-bench([ :]|$)'; then
    log "building llama-batched-bench"
    cmake --build "$BUILD_DIR" --config Release --target llama-batched-bench -j "$JOBS" >&2 \
        || log "warning: llama-batched-bench did not build (optional; continuing)"
else
    log "no llama-batched-bench target in this llama.cpp (optional; skipped)"
fi
if cmake --build "$BUILD_DIR" --target help 2>/dev/null | grep -Eq '(^|[ :.])llama-perplexity([ :]|$)'; then
    log "building llama-perplexity (g4rt perplexity's comparison)"
    cmake --build "$BUILD_DIR" --config Release --target llama-perplexity -j "$JOBS" >&2 \
        || log "warning: llama-perplexity did not build (optional; continuing)"
fi
if [[ "${LLAMA_BENCH_SPEC:-0}" == 1 ]]; then
    log "building llama-lookup and llama-speculative-simple (examples on)"
    cmake -DLLAMA_BUILD_EXAMPLES=ON "$BUILD_DIR" >>"$CONFIG_LOG" 2>&1 || die "reconfigure with examples failed"
    cmake --build "$BUILD_DIR" --config Release --target llama-lookup llama-speculative-simple -j "$JOBS" >&2 \
        || log "warning: a speculative example did not build (optional; continuing)"
fi
log "compiled in $((SECONDS - start)) s"

# --- install into the cache ------------------------------------------------------------------
install_bin() {  # name -> copies $BUILD_DIR/bin/<name> to $BIN_DIR/<name> atomically
    local name=$1 built
    built=$(find "$BUILD_DIR" -type f -name "$name" -perm -u+x -print -quit)
    [[ -n "$built" ]] || return 1
    cp "$built" "$BIN_DIR/.$name.tmp"
    chmod 755 "$BIN_DIR/.$name.tmp"
    mv -f "$BIN_DIR/.$name.tmp" "$BIN_DIR/$name"
}
install_bin llama-bench || die "llama-bench was not produced under $BUILD_DIR"
install_bin llama-batched-bench || true
install_bin llama-perplexity || true
install_bin llama-lookup || true
install_bin llama-speculative-simple || true

if command -v ldd >/dev/null 2>&1 && ldd "$BIN" 2>/dev/null | grep -Eq 'lib(llama|ggml)'; then
    die "$BIN links shared libllama/libggml; expected a standalone binary"
fi
"$BIN" --help >/dev/null 2>&1 || die "$BIN --help failed"
echo "$TAG" >"$STAMP"

log "llama-cpp-python $VERSION -> $BIN"
echo "$BIN"
