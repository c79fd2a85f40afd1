#!/usr/bin/env bash
# The CUDA backend's device check: one prepared run on a machine with one NVIDIA GPU (H100) and no
# network. Finishes in under 8 minutes (a global deadline caps every stage), continues past
# failures, and prints a short table last.
#
# What must travel with the repository (the device gets the working tree plus carried paths,
# 64 MiB in all; ../shared is NOT there):
#   .devdeps/wheels/    wheels for what the device's python3 lacks (at least gguf), and
#   .devdeps/fixtures/  a fixtures subset (MANIFEST.json, prompts, ~10 models, .exact refs).
# Make both here with:   bash scripts/prepare_device_wheels.sh        (checks the 64 MiB total)
# Then run it there with: run(command="bash scripts/device_check.sh", carry=[".devdeps"], timeout_s=540)
#
# Nothing is installed from the network: missing Python modules are installed only from
# .devdeps/wheels (pip --no-index) into /tmp/g4rt_site; cuda-python and NVRTC are expected on the
# device image (python3 there is PyTorch's venv with cuda-bindings and nvidia-cuda-nvrtc).
#
# Stages: info, kernel compile warm-up (all kernels, NVRTC, cached in /tmp for the later stages),
# per-op conformance (tests/test_backend_ops.py -k "cuda and not cuda-emulated and not cuda-sim"), fixture parity / hybrid / decode==prefill
# (tests/test_cuda_model.py), decode and prefill timing on fixtures, a 12B-shaped 6-layer
# synthetic model (runtime/tools/synth.py) timed the same way, and runtime/tools/bench.py's `g4rt bench`
# on it and `g4rt bench --ops` (each kernel alone at the 12B's shapes) when that file exists. Logs go to $OUT (else ./.device_out): device_check.log (everything),
# summary.tsv and results.jsonl (three files: the device tool returns at most eight).
#
# Knobs: PYTHON (interpreter), G4RT_CHECK_BUDGET (seconds, default 450), G4RT_FIXTURES.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
OUTDIR=${OUT:-$REPO/.device_out}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/device_check.log"
SUMMARY="$OUTDIR/summary.tsv"
RESULTS="$OUTDIR/results.jsonl"
STAGELOGS=/tmp/g4rt_stage_logs
mkdir -p "$STAGELOGS"
: > "$SUMMARY"
: > "$RESULTS"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
BUDGET=${G4RT_CHECK_BUDGET:-450}
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1
export G4RT_CUDA_CACHE=/tmp/g4rt_cuda_cache
mkdir -p "$G4RT_CUDA_CACHE"

echo "g4rt CUDA device check — $(date -u +%Y-%m-%dT%H:%M:%SZ) — budget ${BUDGET}s"

# ---- python and dependencies --------------------------------------------------------------
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
echo "python: $(command -v "$PY") ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))"

# g4rt from this tree, without installing it: a package folder named g4rt -> runtime/
mkdir -p /tmp/g4rt_pkg
ln -sfn "$REPO/runtime" /tmp/g4rt_pkg/g4rt
export PYTHONPATH="/tmp/g4rt_pkg${PYTHONPATH:+:$PYTHONPATH}"

WHEELS="$REPO/.devdeps/wheels"
missing=()
for mod in numpy gguf click jinja2 tqdm yaml pytest cuda.bindings; do
    "$PY" -c "import $mod" >/dev/null 2>&1 || missing+=("$mod")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing python modules: ${missing[*]}"
    if [ -d "$WHEELS" ]; then
        files=()
        for mod in "${missing[@]}"; do
            case "$mod" in
                cuda.bindings) pats="cuda_bindings-* cuda_pathfinder-* cuda_python-*" ;;
                yaml) pats="PyYAML-* pyyaml-*" ;;
                jinja2) pats="Jinja2-* jinja2-* MarkupSafe-* markupsafe-*" ;;
                pytest) pats="pytest-* pluggy-* iniconfig-* packaging-*" ;;
                gguf) pats="gguf-*" ;;
                *) pats="$mod-*" ;;
            esac
            for p in $pats; do
                for f in "$WHEELS"/$p.whl; do [ -f "$f" ] && files+=("$f"); done
            done
        done
        if [ ${#files[@]} -gt 0 ]; then
            echo "installing from .devdeps/wheels (no network): ${files[*]##*/}"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/g4rt_site "${files[@]}" || echo "WARNING: pip install from .devdeps failed"
            export PYTHONPATH="/tmp/g4rt_site:$PYTHONPATH"
        fi
    else
        echo "no .devdeps/wheels folder: run scripts/prepare_device_wheels.sh here and carry .devdeps"
    fi
    for mod in "${missing[@]}"; do
        "$PY" -c "import $mod" >/dev/null 2>&1 || echo "STILL MISSING: $mod (stages that need it will fail)"
    done
fi

if [ -z "${G4RT_FIXTURES:-}" ]; then
    for cand in "$REPO/.devdeps/fixtures" "$REPO/shared/fixtures" "$REPO/../shared/fixtures"; do
        if [ -f "$cand/MANIFEST.json" ]; then export G4RT_FIXTURES="$cand"; break; fi
    done
fi
echo "fixtures: ${G4RT_FIXTURES:-none (fixture stages will skip)}"

# ---- stage runner ---------------------------------------------------------------------------
# stage NAME LIMIT_SECONDS command...   (never aborts the script; records rc and time)
stage() {
    local name=$1 limit=$2
    shift 2
    local now left t0 rc dt
    now=$(date +%s)
    left=$((DEADLINE - now))
    if [ "$left" -lt 15 ]; then
        echo "=== [$name] skipped: out of time"
        printf '%s\tskipped\t0\t-\n' "$name" >> "$SUMMARY"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "=== [$name] (limit ${limit}s) $*"
    t0=$(date +%s)
    # bash -c so that stages can be shell functions (exported with export -f below)
    timeout -k 5 "$limit" bash -c '"$@"' _ "$@" 2>&1 | tee "$STAGELOGS/$name.log"
    rc=${PIPESTATUS[0]}
    dt=$(( $(date +%s) - t0 ))
    local note="-"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then note="TIMEOUT"; fi
    # pytest counts, when the stage ran pytest
    local counts
    counts=$(grep -Eo '[0-9]+ (passed|failed|skipped|error|errors)' "$STAGELOGS/$name.log" | tail -4 | tr '\n' ' ')
    if [ -z "$counts" ] && grep -qE ' (PASSED|FAILED)' "$STAGELOGS/$name.log"; then
        counts="$(grep -c ' PASSED' "$STAGELOGS/$name.log") passed $(grep -c ' FAILED' "$STAGELOGS/$name.log") failed (partial)"
    fi
    [ -n "$counts" ] && note="$note $counts"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$note" >> "$SUMMARY"
    return 0
}

# ---- stages ---------------------------------------------------------------------------------
info() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv 2>&1 | head -5
    "$PY" - <<'EOF'
import json, os
from g4rt.backends.cuda.driver import cuda_available, nvrtc_version
ok, why = cuda_available()
print("cuda_available:", ok, why)
info = {"stage": "info", "cuda_available": ok, "device": why}
try:
    info["nvrtc"] = "%d.%d" % nvrtc_version()
except Exception as e:
    info["nvrtc"] = f"unavailable: {e}"
for mod in ("cuda.bindings", "numpy", "gguf"):
    try:
        m = __import__(mod, fromlist=["x"])
        info[mod] = getattr(m, "__version__", "?")
    except Exception as e:
        info[mod] = f"missing: {e}"
if ok:
    from g4rt.backends.cuda.backend import CudaBackend
    be = CudaBackend()
    info.update(arch=be.arch, sm_count=be.sm_count, name=be.device_name, graphs=be.use_graphs)
    be.close()
print(json.dumps(info))
with open(os.environ["RESULTS"], "a") as f:
    f.write(json.dumps(info) + "\n")
EOF
}

warmup() {
    "$PY" - <<'EOF'
import json, os, time
from g4rt.backends.cuda import kernels as K
from g4rt.backends.cuda.backend import CudaBackend
be = CudaBackend()
t = time.time()
be.ensure_kernels(sorted(K.all_kernels()))
dt = time.time() - t
print(f"compiled and loaded {len(K.all_kernels())} kernels for {be.arch} in {dt:.1f}s")
with open(os.environ["RESULTS"], "a") as f:
    f.write(json.dumps({"stage": "warmup", "arch": be.arch, "kernels": len(K.all_kernels()), "seconds": round(dt, 1)}) + "\n")
be.close()
EOF
}

cat > /tmp/g4rt_bench.py <<'EOF'
"""Time prefill and decode of a model on the CUDA backend; append a JSON line to $RESULTS."""
import json, os, sys, time
import numpy as np
from g4rt.engine import Engine

path, label = sys.argv[1], sys.argv[2]
n_prefill, n_decode = int(sys.argv[3]), int(sys.argv[4])
ctx = int(sys.argv[5]) if len(sys.argv) > 5 else 2048
res = {"stage": "bench", "model": label}
try:
    t = time.time()
    e = Engine(path, backend="cuda", ctx=ctx)
    res["load_s"] = round(time.time() - t, 2)
    wbytes = sum(int(e.file.tensor(n).raw.nbytes) for n in e.specs)
    res["weight_GB"] = round(wbytes / 1e9, 3)
    rng = np.random.default_rng(0)
    ids = rng.integers(10, min(e.config.n_vocab, 200000), n_prefill).astype(np.int32)
    t = time.time(); e.forward(ids); res["first_prefill_s"] = round(time.time() - t, 2)   # compile + capture
    e.reset()
    t = time.time(); logits = e.forward(ids); dt = time.time() - t
    res["prefill_tok_s"] = round(n_prefill / dt, 1)
    tok = int(np.argmax(logits[-1]))
    for _ in range(2):                       # warm the one-token graph
        tok = int(np.argmax(e.forward([tok])[-1]))
    times = []
    for _ in range(n_decode):
        t = time.perf_counter()
        out = e.forward([tok])
        times.append(time.perf_counter() - t)
        tok = int(np.argmax(out[-1]))
    ms = 1000 * float(np.median(times))
    res.update(decode_ms=round(ms, 3), decode_tok_s=round(1000 / ms, 1),
               decode_GB_s=round(wbytes / 1e9 / (ms / 1000), 1), finite=bool(np.isfinite(out).all()),
               pos=e.pos)
    e.close()
except Exception as ex:
    res["error"] = f"{type(ex).__name__}: {ex}"
print(json.dumps(res))
with open(os.environ["RESULTS"], "a") as f:
    f.write(json.dumps(res) + "\n")
sys.exit(1 if "error" in res else 0)
EOF

bench_fixtures() {
    local rc=0 m
    for m in g4-dense-Q4_0-pure g4-dense-Q4_K_M; do
        if [ -f "${G4RT_FIXTURES:-/nonexistent}/models/$m.gguf" ]; then
            "$PY" /tmp/g4rt_bench.py "$G4RT_FIXTURES/models/$m.gguf" "$m" 64 64 1024 || rc=1
        fi
    done
    return $rc
}

synth() {
    "$PY" - <<'EOF'
import sys, time
from pathlib import Path
from gguf import GGMLQuantizationType as QT
try:
    from g4rt.tools.synth import write_synthetic
except ImportError as e:
    print("runtime/tools/synth.py is not there:", e); sys.exit(3)
for qt, name in ((QT.Q4_0, "Q4_0"), (QT.Q4_K, "Q4_K")):
    out = Path(f"/tmp/g4rt_synth12b_6l_{name}.gguf")
    t = time.time()
    total = write_synthetic(out, 6, qt, None, echo=None)
    print(f"{out}: {total / 2**30:.2f} GiB in {time.time() - t:.1f}s")
EOF
}

bench_synth() {
    local rc=0 q
    for q in Q4_0 Q4_K; do
        local f=/tmp/g4rt_synth12b_6l_$q.gguf
        [ -f "$f" ] || continue
        "$PY" /tmp/g4rt_bench.py "$f" "synth-12B-6L-$q" 512 32 4096 || rc=1
    done
    # the opt-in int8 decode path (matvec8.cu: 8-bit activations + dp4a), after the default path
    for q in Q4_0 Q4_K; do
        local f=/tmp/g4rt_synth12b_6l_$q.gguf
        [ -f "$f" ] || continue
        G4RT_CUDA_INT8=1 "$PY" /tmp/g4rt_bench.py "$f" "synth-12B-6L-$q-int8" 512 32 4096 || rc=1
    done
    # the team's bench command (runtime/tools/bench.py), when it exists
    if "$PY" -c "import g4rt.tools.bench" >/dev/null 2>&1 && [ -f /tmp/g4rt_synth12b_6l_Q4_0.gguf ]; then
        g4rt_bench /tmp/g4rt_synth12b_6l_Q4_0.gguf --backend cuda --json --prompt 512 --gen 32 || rc=1
    fi
    return $rc
}

# `g4rt bench ARGS`: through the CLI when it is wired, else the click command directly
g4rt_bench() {
    if "$PY" -m g4rt bench --help >/dev/null 2>&1; then
        "$PY" -m g4rt bench "$@"
    else
        "$PY" -c 'import sys; from g4rt.cli.bench import bench; bench(sys.argv[1:], prog_name="g4rt bench")' "$@"
    fi
}

bench_ops() {
    "$PY" -c "import g4rt.tools.bench" >/dev/null 2>&1 || { echo "runtime/tools/bench.py is not there"; return 3; }
    g4rt_bench --ops --backend cuda --json --reps 3
}

export RESULTS PY
export -f info warmup bench_fixtures synth bench_synth g4rt_bench bench_ops
stage info 40 info
stage warmup 90 warmup
stage ops 120 "$PY" -m pytest tests/test_backend_ops.py -k "cuda and not cuda-emulated and not cuda-sim" -v -p no:cacheprovider -o addopts="" --tb=short --maxfail=30
stage media 60 "$PY" -m pytest tests/test_cuda_media_ops.py tests/test_vit_ops.py tests/test_mmproj_gemma4a.py -k "cuda and not cuda-emulated and not cuda-sim and not simulator" -v -p no:cacheprovider -o addopts="" --tb=short --maxfail=30
stage model 170 "$PY" -m pytest tests/test_cuda_model.py -v -p no:cacheprovider -o addopts="" --tb=short
stage bench_fixtures 40 bench_fixtures
stage synth 60 synth
stage bench_synth 120 bench_synth
stage bench_ops 45 bench_ops

# ---- the table ------------------------------------------------------------------------------
echo
echo "================ g4rt CUDA device check: summary ($(( $(date +%s) - START ))s) ================"
printf '%-16s %-8s %-6s %s\n' stage rc secs notes
while IFS=$'\t' read -r n rc dt note; do
    printf '%-16s %-8s %-6s %s\n' "$n" "$rc" "$dt" "$note"
done < "$SUMMARY"
"$PY" - <<'EOF' 2>/dev/null || true
import json, os
rows = [json.loads(l) for l in open(os.environ["RESULTS"]) if l.strip()]
for r in rows:
    if r.get("stage") == "info":
        print(f"device: {r.get('name', r.get('device'))}  arch {r.get('arch')}  nvrtc {r.get('nvrtc')}  cuda-bindings {r.get('cuda.bindings')}")
    if r.get("stage") == "warmup":
        print(f"kernels: {r['kernels']} compiled for {r['arch']} in {r['seconds']}s")
print(f"{'model':<24} {'weights GB':>10} {'prefill tok/s':>14} {'decode ms':>10} {'decode tok/s':>12} {'GB/s':>8}")
for r in rows:
    if r.get("stage") != "bench":
        continue
    if "error" in r:
        print(f"{r['model']:<24} ERROR {r['error'][:90]}")
        continue
    print(f"{r['model']:<24} {r['weight_GB']:>10} {r['prefill_tok_s']:>14} {r['decode_ms']:>10} {r['decode_tok_s']:>12} {r['decode_GB_s']:>8}")
EOF
