#!/bin/sh
# Link churn at scale: the e2e churn test (tests/e2e/test_churn.py) with many more veth pairs
# (default 1,000 pairs = 2,000 veths, CI runs 160 pairs). Bursts of creates, flaps, renames and
# deletes while policies are applied; afterwards bpftool's attachments must equal the desired
# set exactly and no pin may be left. Prints the link count and the time to settle.
# Usage (root, repository root): bench/churn.sh [pairs, default 1000]
set -eu
cd "$(dirname "$0")/.."
FWD_CHURN_PAIRS="${1:-1000}" exec .venv/bin/pytest -q -s -p no:cacheprovider \
    tests/e2e/test_churn.py
