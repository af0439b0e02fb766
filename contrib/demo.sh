#!/usr/bin/env bash
# The quick start: set up, then run the agent in a throwaway namespace and show it drop.
#
#   namespace fwd-demo-a (198.18.1.2, 2001:2:0:1::2) --veth-- fwd-demo-b: the agent
#   namespace fwd-demo-c (198.18.2.2, 2001:2:0:2::2) --veth-- (198.18.1.1 / 198.18.2.1)
#
# The agent runs in fwd-demo-b only; the host's own interfaces are never touched.
# It applies contrib/examples/demo-policy.yaml over gRPC, sends UDP from A and C,
# shows what arrived and the per-rule counters, then keeps the agent running until
# Ctrl-C (or exits at once with --once). Everything it made is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ONCE=0
[ "${1:-}" = "--once" ] && ONCE=1
[ "${FWD_DEMO_SKIP_SETUP:-0}" = 1 ] || bash contrib/setup.sh

A=fwd-demo-a; B=fwd-demo-b; C=fwd-demo-c
RUN=/run/fwd-demo
SOCK=$RUN/fwd.sock
PIN=/sys/fs/bpf/fwd-demo
FWD="${FWD_BIN:-$ROOT/.venv/bin/fwd}"   # FWD_BIN: another fwd (tests/e2e/test_wheel.py: an installed wheel)
PY="$ROOT/.venv/bin/python"
AGENT_PID=""

cleanup() {
    set +e
    if [ -n "$AGENT_PID" ]; then kill -TERM "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null; fi
    for ns in $A $B $C; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$RUN" "$PIN"
}
trap cleanup EXIT
cleanup; set -e

for ns in $A $B $C; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n $B link add veth-a type veth peer name eth0 netns $A
ip -n $B link add veth-c type veth peer name eth0 netns $C
ip -n $B addr add 198.18.1.1/24 dev veth-a; ip -n $B addr add 2001:2:0:1::1/64 dev veth-a nodad
ip -n $B addr add 198.18.2.1/24 dev veth-c; ip -n $B addr add 2001:2:0:2::1/64 dev veth-c nodad
ip -n $A addr add 198.18.1.2/24 dev eth0;   ip -n $A addr add 2001:2:0:1::2/64 dev eth0 nodad
ip -n $C addr add 198.18.2.2/24 dev eth0;   ip -n $C addr add 2001:2:0:2::2/64 dev eth0 nodad
for ns in $A $B $C; do for l in $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do ip -n "$ns" link set "$l" up; done; done

mkdir -p "$RUN"
echo "== starting the agent in namespace $B"
nsenter --net=/run/netns/$B "$FWD" agent --socket "$SOCK" --state-dir "$RUN/state" \
    --bpffs "$PIN" --log-level info 2> >(sed 's/^/   agent: /' >&2) &
AGENT_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "agent did not start" >&2; exit 1; }

# The agent pinned its program, maps and links (mounting a bpffs at /sys/fs/bpf if there
# was none): enforcement outlives it. A missing pin is a failure, not a footnote.
IFX=$(ip -n $B -o link show veth-a | cut -d: -f1)
for _ in $(seq 50); do [ -e "$PIN/links/$IFX" ] && break; sleep 0.1; done
for p in "$PIN/prog" "$PIN/maps/fwd_rules" "$PIN/links/$IFX"; do
    [ -e "$p" ] || { echo "FAIL: the agent did not pin $p" >&2; exit 1; }
done
echo "== pinned under $PIN: $(ls "$PIN" | tr '\n' ' ')"

echo "== applying contrib/examples/demo-policy.yaml"
"$FWD" policy apply --socket "$SOCK" contrib/examples/demo-policy.yaml
"$FWD" interfaces --socket "$SOCK"

send() { # ns dst port
    ip netns exec "$1" "$PY" contrib/udp.py send --to "$2" --port "$3" --count 10 >/dev/null
}
echo "== UDP: 10 datagrams each from A and C to B's ports 9998 and 9999"
ip netns exec $B "$PY" contrib/udp.py recv --bind 0.0.0.0 --ports 9998,9999 --seconds 2 > "$RUN/a.json" 2>/dev/null &
RECV=$!; sleep 0.3
send $A 198.18.1.1 9999; send $A 198.18.1.1 9998
wait $RECV
echo "   from A: $(cat "$RUN/a.json")   (9999 is dropped by rule drop-a-udp-9999)"
ip netns exec $B "$PY" contrib/udp.py recv --bind 0.0.0.0 --ports 9998,9999 --seconds 2 > "$RUN/c.json" 2>/dev/null &
RECV=$!; sleep 0.3
send $C 198.18.2.1 9999; send $C 198.18.2.1 9998
wait $RECV
echo "   from C: $(cat "$RUN/c.json")   (C is not in the dropped prefix)"
# The demonstration checks itself: anything else than this is a failure.
[ "$(cat "$RUN/a.json")" = '{"9998": 10, "9999": 0}' ] || { echo "FAIL: unexpected result from A" >&2; exit 1; }
[ "$(cat "$RUN/c.json")" = '{"9998": 10, "9999": 10}' ] || { echo "FAIL: unexpected result from C" >&2; exit 1; }
echo "== ping A -> B"
ip netns exec $A ping -c 2 -i 0.2 -W 1 198.18.1.1 | tail -2
echo "== per-rule counters"
"$FWD" stats --socket "$SOCK"

if [ "$ONCE" = 1 ]; then exit 0; fi
echo "== the agent keeps running in $B; try: $FWD policy get --socket $SOCK    (Ctrl-C stops and cleans up)"
wait "$AGENT_PID"
