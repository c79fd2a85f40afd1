#!/usr/bin/env bash
# Build scripts/llama_mtp_proposals.cpp (llama.cpp's draft-mtp proposals for the Gemma 4 MTP
# assistant, issue 26) against libllama + libllama-common of the llama.cpp tree that
# scripts/build_llama_bench.sh unpacks and configures (offline; the llama-cpp-python sdist).
#
# Usage: scripts/build_llama_mtp.sh
#   LLAMA_CPP_PYTHON_VERSION, LLAMA_BENCH_CACHE  as for build_llama_bench.sh
#   LLAMA_BENCH_JOBS          parallel compile jobs (default 2)
#   LLAMA_MTP_EXACT_GELU=1    also build a second harness, llama_mtp_proposals-exact-gelu, whose
#                             ggml CPU backend computes GELU exactly: stock ggml-cpu defines
#                             GGML_GELU_FP16 (vec.h), a GELU looked up in an fp16 table (input and
#                             output rounded to fp16), which is what moves llama.cpp's F32 drafts
#                             away from the float64 reference (tests/test_assistant_llama.py). The
#                             ggml-cpu sources are copied, vec.h patched, and compiled with the
#                             tree's own flags (compile_commands.json); the tree is not touched.
# Runs build_llama_bench.sh first (a no-op when llama-bench is built), then builds only the
# static libraries the harness needs (incrementally) and compiles the harness with the flags of
# that tree. The last line on stdout is the harness binary's absolute path.
#
# Regenerating the recorded proposals (tests/data/assistant/*-assistant.llama.json):
#   LLAMA_MTP_EXACT_GELU=1 scripts/build_llama_mtp.sh && .venv/bin/python scripts/make_assistant_llama_ref.py
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_TAG=build_llama_mtp
. scripts/llama_tree.sh      # REPO_ROOT, VERSION, CACHE_DIR, TAG, BUILD_DIR, SRC, log, die
grep -q 'gemma4-assistant' "$SRC/src/llama-arch.cpp" || die "this llama.cpp ($SRC) has no gemma4-assistant"

log "building llama-common and llama (incremental, $LLAMA_BENCH_JOBS jobs)"
cmake --build "$BUILD_DIR" --config Release --target llama-common llama ggml ggml-cpu ggml-base cpp-httplib \
    -j "$LLAMA_BENCH_JOBS" >&2

OUT="$CACHE_DIR/bin/llama_mtp_proposals"
HARNESS="$REPO_ROOT/scripts/llama_mtp_proposals.cpp"
GOMP=$(grep -o '[^ ]*libgomp[^ ]*' "$BUILD_DIR/build.ninja" | head -n 1 || true)
[[ -n "$GOMP" ]] || GOMP=-fopenmp
if [[ ! -x "$OUT" || "$HARNESS" -nt "$OUT" || "$BUILD_DIR/common/libllama-common.a" -nt "$OUT" \
      || "$BUILD_DIR/src/libllama.a" -nt "$OUT" ]]; then
    log "compiling $HARNESS"
    c++ -std=c++17 -O2 -DNDEBUG -DGGML_USE_CPU \
        -I"$SRC/common" -I"$SRC/include" -I"$SRC/ggml/include" -I"$SRC/src" -I"$SRC/vendor" \
        "$HARNESS" -o "$OUT.tmp" \
        "$BUILD_DIR/common/libllama-common.a" "$BUILD_DIR/common/libllama-common-base.a" \
        "$BUILD_DIR/vendor/cpp-httplib/libcpp-httplib.a" "$BUILD_DIR/src/libllama.a" \
        "$BUILD_DIR/ggml/src/libggml.a" -ldl "$BUILD_DIR/ggml/src/libggml-cpu.a" \
        "$BUILD_DIR/ggml/src/libggml-base.a" -lm "$GOMP" -lpthread
    mv -f "$OUT.tmp" "$OUT"
else
    log "up to date"
fi
if [[ "${LLAMA_MTP_EXACT_GELU:-0}" == 1 ]]; then
    NG="$CACHE_DIR/nogelu"
    if [[ ! -f "$NG/libggml-cpu.a" || "$BUILD_DIR/ggml/src/libggml-cpu.a" -nt "$NG/libggml-cpu.a" ]]; then
        log "building ggml-cpu with an exact GELU in $NG"
        rm -rf "$NG/ggml-cpu" "$NG/obj"
        mkdir -p "$NG/obj"
        cp -r "$SRC/ggml/src/ggml-cpu" "$NG/ggml-cpu"
        sed -i 's|^#define GGML_GELU_FP16|// #define GGML_GELU_FP16 (off: exact GELU)|' "$NG/ggml-cpu/vec.h"
        grep -q '^// #define GGML_GELU_FP16' "$NG/ggml-cpu/vec.h" || die "vec.h has no GGML_GELU_FP16 to turn off"
        python3 - "$BUILD_DIR/compile_commands.json" "$SRC/ggml/src/ggml-cpu" "$NG" >"$NG/build.cmds" <<'PY'
import json, shlex, sys
cc, src, ng = sys.argv[1], sys.argv[2], sys.argv[3]
for e in json.load(open(cc)):
    if e["file"].startswith(src + "/"):
        parts = shlex.split(e["command"].replace(src, ng + "/ggml-cpu"))
        i = parts.index("-o")
        parts[i + 1] = f"{ng}/obj/" + e["file"][len(src) + 1:].replace("/", "_") + ".o"
        print(f"cd {shlex.quote(e['directory'])} && {shlex.join(parts)}")
PY
        xargs -P "$LLAMA_BENCH_JOBS" -I CMD sh -c CMD <"$NG/build.cmds" >&2
        rm -f "$NG/libggml-cpu.a"
        ar rcs "$NG/libggml-cpu.a" "$NG"/obj/*.o
    fi
    EXACT="$CACHE_DIR/bin/llama_mtp_proposals-exact-gelu"
    if [[ ! -x "$EXACT" || "$HARNESS" -nt "$EXACT" || "$NG/libggml-cpu.a" -nt "$EXACT" ]]; then
        log "linking $EXACT"
        c++ -std=c++17 -O2 -DNDEBUG -DGGML_USE_CPU \
            -I"$SRC/common" -I"$SRC/include" -I"$SRC/ggml/include" -I"$SRC/src" -I"$SRC/vendor" \
            "$HARNESS" -o "$EXACT.tmp" \
            "$BUILD_DIR/common/libllama-common.a" "$BUILD_DIR/common/libllama-common-base.a" \
            "$BUILD_DIR/vendor/cpp-httplib/libcpp-httplib.a" "$BUILD_DIR/src/libllama.a" \
            "$BUILD_DIR/ggml/src/libggml.a" -ldl "$NG/libggml-cpu.a" \
            "$BUILD_DIR/ggml/src/libggml-base.a" -lm "$GOMP" -lpthread
        mv -f "$EXACT.tmp" "$EXACT"
    fi
fi
echo "$OUT"
