#!/usr/bin/env bash
# Set up (contrib/setup.sh) and run the whole test suite: unit, BPF and end-to-end tiers.
# Extra arguments go to pytest, e.g. contrib/test.sh -k apply -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/setup.sh
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest -ra "$@"
