#!/usr/bin/env bash
# bench/dataplane: fwd's per-packet cost and veth drop rate against a bare XDP_DROP,
# xdp-filter and nftables (issue 3). Needs root and a machine set up by contrib/setup.sh.
#   bench/dataplane/run.sh            full run (~10 minutes)
#   bench/dataplane/run.sh --quick    ~1 minute
# Everything the run creates is removed on exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/dataplane: run as root" >&2
    exit 2
fi
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "bench/dataplane: no $PY (run contrib/setup.sh, or set PYTHON=/path/to/venv/python)" >&2
    exit 2
fi
make -s -C bpf
exec "$PY" -m bench.dataplane "$@"
