#!/usr/bin/env bash
# Long fuzzing run of the GGUF loader (tests/test_fuzz_gguf.py) with fresh random cases.
#   scripts/fuzz.sh [TOTAL_CASES]   (default 10000, spread over the six hypothesis properties,
#                                    plus the truncation-at-every-boundary sweep)
# Exit status is pytest's; the last line is the case count and the outcome histogram.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export G4RT_FUZZ_EXAMPLES="${1:-${G4RT_FUZZ_EXAMPLES:-10000}}"
export G4RT_FUZZ_REPORT="${G4RT_FUZZ_REPORT:-$(mktemp)}"
: > "$G4RT_FUZZ_REPORT"
start=$(date +%s)
status=0
"$PY" -m pytest tests/test_fuzz_gguf.py -q -s -p no:cacheprovider || status=$?
echo "fuzz: $(( $(date +%s) - start )) s, pytest exit $status"
cat "$G4RT_FUZZ_REPORT"
exit $status
