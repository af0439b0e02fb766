#!/bin/sh
# The differential suite (kernel and simulated search vs the reference classifier) with a
# big example count. FWD_HYPOTHESIS_EXAMPLES scales every test's count: 1000 is CI's
# (~2,075 examples in all), the default 24200 runs ~50,000. Hypothesis prints how many
# examples each test ran (--hypothesis-show-statistics).
# Usage (root, repository root): bench/differential.sh [scale, default 24200]
set -eu
cd "$(dirname "$0")/.."
FWD_HYPOTHESIS_EXAMPLES="${1:-24200}" exec .venv/bin/pytest -q -p no:cacheprovider \
    --hypothesis-show-statistics \
    tests/bpf/test_differential.py tests/unit/test_compiler.py -k "reference or incremental"
