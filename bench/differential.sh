#!/bin/sh
# The differential suite (kernel and simulated search vs the reference classifier) with a
# big example count: FWD_HYPOTHESIS_EXAMPLES scales every test's count (1000 = CI's).
# Usage (root, repository root): bench/differential.sh [examples, default 50000]
set -eu
cd "$(dirname "$0")/.."
FWD_HYPOTHESIS_EXAMPLES="${1:-50000}" exec .venv/bin/pytest -q -p no:cacheprovider \
    tests/bpf/test_differential.py tests/unit/test_compiler.py -k "reference or incremental"
