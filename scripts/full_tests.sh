#!/usr/bin/env bash
# The whole test suite, the `slow` tests included (long lavapipe and CUDA-simulator runs, the
# sanitizer build): about twice the default run. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec .venv/bin/python -m pytest -q -m "" "$@"
