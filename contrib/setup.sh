#!/usr/bin/env bash
# Set up everything fwd needs on a fresh Debian 12 machine, idempotently:
# Debian packages (clang, libbpf, bpftool, iproute2, ...), a venv in .venv with
# fwd and its dev dependencies, and the XDP object (make -C bpf).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages; the agent needs CAP_BPF/CAP_NET_ADMIN)" >&2
    exit 1
fi

PKGS=(clang llvm libbpf-dev libbpf1 bpftool xdp-tools iproute2 nftables iputils-ping
      python3-venv python3-dev gcc make linux-libc-dev openssl prometheus
      etcd-server etcd-client curl)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev,etcd]'

make -s -C bpf
echo "setup.sh: ready (.venv, bpf/build/fwd.bpf.o)"
