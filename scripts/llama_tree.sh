# Sourced by the scripts that build extra tools against the llama.cpp tree that
# scripts/build_llama_bench.sh unpacks and configures (build_llama_mtp.sh, build_llama_mtmd.sh):
# runs that script (a no-op once llama-bench is built) and sets REPO_ROOT, VERSION, CACHE_DIR,
# TAG, BUILD_DIR and SRC as it does, plus log / die with the caller's LOG_TAG. The caller has
# already cd'ed to the repository root.
REPO_ROOT=$(pwd)
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE_DIR=${LLAMA_BENCH_CACHE:-.cache/llama-bench}
case "$CACHE_DIR" in /*) ;; *) CACHE_DIR="$REPO_ROOT/$CACHE_DIR" ;; esac
export LLAMA_BENCH_JOBS=${LLAMA_BENCH_JOBS:-2}

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

scripts/build_llama_bench.sh >/dev/null

TAG="$VERSION"
grep -qw amx_tile /proc/cpuinfo 2>/dev/null && [[ "${LLAMA_BENCH_AMX:-0}" != 1 ]] && TAG="$VERSION-noamx"
BUILD_DIR="$CACHE_DIR/build/$TAG"
SRC="$CACHE_DIR/src/$VERSION/vendor/llama.cpp"
[[ -f "$BUILD_DIR/CMakeCache.txt" ]] || die "no configured build tree at $BUILD_DIR"
