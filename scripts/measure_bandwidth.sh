#!/usr/bin/env bash
# This machine's memory READ bandwidth as a decode kernel sees it (streaming vector loads over a
# buffer far larger than the last-level cache), with 1 thread and with all CPUs.
#
# Usage: scripts/measure_bandwidth.sh [--size-mib N] [--threads 1,2,...] [--passes N] [--thp] [--json]
# Output: one line per thread count, e.g. `threads=2 read_GBps_best=23.4 median=22.9`
#         (GB/s = 1e9 bytes/s; best and median of the timed passes), or one JSON object (--json).
# Compiles scripts/membw.c into .cache/membw/ (with $CC, default cc) when the source is newer.
# Threads are pinned (OMP_PROC_BIND=close, OMP_PLACES=cores) unless those are already set.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SRC=scripts/membw.c
OUT_DIR=.cache/membw
EXE="$OUT_DIR/membw"
CC=${CC:-cc}

if [[ ! -x "$EXE" || "$SRC" -nt "$EXE" || "$0" -nt "$EXE" ]]; then
    mkdir -p "$OUT_DIR"
    "$CC" -O3 -march=native -fopenmp -Wall -Wextra -o "$EXE.tmp" "$SRC"
    mv -f "$EXE.tmp" "$EXE"
fi

export OMP_PROC_BIND=${OMP_PROC_BIND:-close}
export OMP_PLACES=${OMP_PLACES:-cores}
exec "$EXE" "$@"
