#!/usr/bin/env bash
# Regenerate the committed Python code for proto/fwd/v1/fwd.proto.
#
#   contrib/gen-proto.sh            # writes fwd/api/gen (commit the result)
#   contrib/gen-proto.sh OUTDIR     # writes OUTDIR instead (tests/unit/test_proto_gen.py)
#
# PYTHON selects the interpreter (default: python on PATH). The betterproto2
# plugin (protoc-gen-python_betterproto2) and ruff, which the plugin runs to
# format its output, must be found on PATH: we put the interpreter's bin
# directory first so the venv's copies are used whatever the caller's PATH.
#
# Options: client_generation=async,server_generation=async gives grpclib async
# stubs and servicer bases (the default is a grpcio sync client and no server);
# google_protobuf_descriptors registers the file descriptor in a protobuf
# DescriptorPool so gRPC reflection can describe our services.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"
bindir="$(dirname "$("$python" -c 'import sys; print(sys.executable)')")"
export PATH="$bindir:$PATH"

out="${1:-$repo/fwd/api/gen}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# Run protoc from an empty scratch directory: the plugin decides which
# __init__.py files to emit by looking for them relative to the working
# directory (from the repo root it would skip fwd/api/gen/fwd/__init__.py
# because fwd/__init__.py exists), and ruff reads its configuration from the
# working directory. An empty directory makes the output depend on the
# .proto file and the tool versions only.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"

"$python" -m grpc_tools.protoc -I "$repo/proto" \
    --python_betterproto2_out="$out" \
    --python_betterproto2_opt=client_generation=async,server_generation=async,google_protobuf_descriptors \
    "$repo/proto/fwd/v1/fwd.proto"
