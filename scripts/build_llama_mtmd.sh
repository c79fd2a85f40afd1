#!/usr/bin/env bash
# Build llama.cpp's multimodal CLI `llama-mtmd-cli` (image/audio encode + prefill + decode with a
# GGUF text model and an mmproj) offline, in the llama.cpp tree that scripts/build_llama_bench.sh
# unpacks from the llama-cpp-python sdist and configures (FetchContent disconnected, proxies
# pointing nowhere). It is the comparison for `g4rt bench --mmproj ... --llama-mtmd PATH`
# (docs/benchmarks/multimodal.md).
#
# Usage: scripts/build_llama_mtmd.sh
#   LLAMA_CPP_PYTHON_VERSION, LLAMA_BENCH_CACHE, LLAMA_BENCH_AMX  as for build_llama_bench.sh
#   LLAMA_BENCH_JOBS          parallel compile jobs (default 2)
#   LLAMA_MTMD_FORCE=1        re-run the (incremental) build even when the binary is up to date
# Runs build_llama_bench.sh first (a no-op when llama-bench is already built, and the step that
# configures the tree otherwise), then builds only the llama-mtmd-cli target (libmtmd and the
# libraries it links; whatever is already compiled is reused) and copies the binary into
# <cache>/bin. Logs go to stderr; the last line on stdout is the binary's absolute path:
#   .venv/bin/g4rt bench MODEL --mmproj MMPROJ --image IMG --llama-mtmd "$(scripts/build_llama_mtmd.sh)"
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=build_llama_mtmd
. scripts/llama_tree.sh      # REPO_ROOT, VERSION, CACHE_DIR, TAG, BUILD_DIR, SRC, log, die
BIN_DIR="$CACHE_DIR/bin"
BIN="$BIN_DIR/llama-mtmd-cli"
[[ -f "$SRC/tools/mtmd/mtmd-cli.cpp" ]] || die "this llama.cpp ($SRC) has no tools/mtmd/mtmd-cli.cpp"
if ! cmake --build "$BUILD_DIR" --target help 2>/dev/null | grep -Eq '(^|[ :.])llama-mtmd-cli([ :]|$)'; then
    die "the build tree $BUILD_DIR has no llama-mtmd-cli target (configured with LLAMA_BUILD_TOOLS=OFF?)"
fi
grep -q '"gemma4uv"' "$SRC/tools/mtmd/clip-impl.h" \
    || log "warning: this llama.cpp's mtmd knows no gemma4uv projector; g4rt's mmproj files will not load"

# The build is incremental (ninja/make decide what is stale); run it unless the installed copy
# is newer than every mtmd source and the libraries it links.
stale=1
if [[ -x "$BIN" && "${LLAMA_MTMD_FORCE:-0}" != 1 ]]; then
    stale=0
    newer=$(find "$SRC/tools/mtmd" "$SRC/src" "$SRC/common" "$SRC/ggml/src" -type f -newer "$BIN" -print -quit)
    [[ -z "$newer" ]] || stale=1
fi
if ((stale)); then
    start=$SECONDS
    log "building llama-mtmd-cli (incremental, $LLAMA_BENCH_JOBS jobs) in $BUILD_DIR"
    cmake --build "$BUILD_DIR" --config Release --target llama-mtmd-cli -j "$LLAMA_BENCH_JOBS" >&2
    log "built in $((SECONDS - start)) s"
    built=$(find "$BUILD_DIR" -type f -name llama-mtmd-cli -perm -u+x -print -quit)
    [[ -n "$built" ]] || die "llama-mtmd-cli was not produced under $BUILD_DIR"
    cp "$built" "$BIN_DIR/.llama-mtmd-cli.tmp"
    chmod 755 "$BIN_DIR/.llama-mtmd-cli.tmp"
    mv -f "$BIN_DIR/.llama-mtmd-cli.tmp" "$BIN"
else
    log "up to date"
fi

if command -v ldd >/dev/null 2>&1 && ldd "$BIN" 2>/dev/null | grep -Eq 'lib(llama|ggml|mtmd)'; then
    die "$BIN links shared libllama/libggml/libmtmd; expected a standalone binary"
fi
"$BIN" --help >/dev/null 2>&1 || die "$BIN --help failed"
log "llama-cpp-python $TAG -> $BIN"
echo "$BIN"
