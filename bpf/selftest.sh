#!/usr/bin/env bash
# selftest.sh - smoke test of the XDP data plane with BPF_PROG_TEST_RUN.
#
# Loads bpf/build/fwd.bpf.o (building it if needed) into a private bpffs pin
# directory, runs hand-made packets through it with `bpftool prog run`, and
# checks each verdict and the counter slot it landed in against the contract
# in bpf/README.md. Then times empty / 1-tuple / 256-tuple policies.
#
# Needs root, bash, python3 and bpftool. Exits non-zero on any wrong verdict.
# Usage: bpf/selftest.sh   (BENCH_REPEAT=N sets the timing runs' repeat count,
#                           BENCH=0 skips them, OBJ=path tests another object)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PIN=/sys/fs/bpf/fwd-selftest-$$
TMP=$(mktemp -d)
BENCH=${BENCH:-1}
BENCH_REPEAT=${BENCH_REPEAT:-1000000}
failures=0

cleanup() {
	rm -rf "$PIN" "$TMP"
}
trap cleanup EXIT

if [[ -z ${OBJ:-} ]]; then
	make -s -C "$HERE" >/dev/null
	OBJ=$HERE/build/fwd.bpf.o
fi
# Never assume a bpffs at /sys/fs/bpf (a fresh machine has none): the agent's own
# check-and-mount helper (standard library only, so the system python3 runs it).
PYTHONPATH="$HERE/.." python3 -m fwd.kernel.bpffs /sys/fs/bpf >/dev/null
bpftool prog loadall "$OBJ" "$PIN" type xdp pinmaps "$PIN/maps"
export PIN

# ---- python helper: packets, map values, counters -------------------------
cat >"$TMP/h.py" <<'EOF'
import ipaddress, json, os, struct, subprocess, sys

PIN = os.environ["PIN"]

def hx(b): return " ".join(f"{x:02x}" for x in b)

def addr(s):
    a = ipaddress.ip_address(s)
    return (b"\0" * 10 + b"\xff\xff" + a.packed) if a.version == 4 else a.packed

def mask(n):
    return (((1 << 128) - 1) ^ ((1 << (128 - n)) - 1)).to_bytes(16, "big")

# -- packets
def eth(etype, payload, vlans=()):
    h = bytes.fromhex("020000000002020000000001")
    for tpid in vlans:
        h += struct.pack("!HH", tpid, 1)
    return h + struct.pack("!H", etype) + payload

def ipv4(proto, payload, src="198.18.0.1", dst="198.18.0.2", frag=0, ihl=5):
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(payload), 1, frag, 64,
                    proto, 0, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return h + payload

def ipv6(nh, payload, src="2001:2::1", dst="2001:2::2"):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64,
                       addr(src), addr(dst)) + payload

def udp(sp, dp): return struct.pack("!HHHH", sp, dp, 8, 0) + b"x" * 16
def tcp(sp, dp, flags=0x02, doff=5):
    return struct.pack("!HHIIBBHHH", sp, dp, 0, 0, doff << 4, flags, 65535, 0, 0)
def opt6(nh): return bytes([nh, 0]) + b"\0" * 6          # 8-byte dest-options
def frag6(nh, off): return struct.pack("!BBHI", nh, 0, off << 3, 7)

PACKETS = {
    "udp4": eth(0x0800, ipv4(17, udp(1234, 53))),
    "udp4_other": eth(0x0800, ipv4(17, udp(1234, 53), src="198.19.0.1")),
    "tcp4_22": eth(0x0800, ipv4(6, tcp(40000, 22))),
    "tcp4_80": eth(0x0800, ipv4(6, tcp(40000, 80))),
    "arp": eth(0x0806, b"\0\x01\x08\x00\x06\x04\0\x01" + b"\0" * 20),
    # BPF_PROG_TEST_RUN (6.18) refuses frames under 14 bytes, even behind a
    # metadata area, so the shortest testable malformed frame is a bare
    # Ethernet header announcing IPv4.
    "eth_only_ip4": eth(0x0800, b""),
    "trunc_ip4": eth(0x0800, b"\x45" + b"\0" * 9),
    "ihl4": eth(0x0800, ipv4(17, udp(1, 2), ihl=4)),
    "udp4_trunc": eth(0x0800, ipv4(17, b"\0" * 4)),
    "tcp_doff4": eth(0x0800, ipv4(6, tcp(1, 2, doff=4))),
    "vlan2_udp4": eth(0x0800, ipv4(17, udp(1234, 53)), vlans=(0x88a8, 0x8100)),
    "vlan3_udp4": eth(0x0800, ipv4(17, udp(1234, 53)), vlans=(0x88a8, 0x8100, 0x8100)),
    "vlan_trunc": bytes.fromhex("020000000002020000000001") + b"\x81\x00\0\x01",
    "udp6_hbh": eth(0x86dd, ipv6(0, bytes([17, 0]) + b"\0" * 6 + udp(1234, 53))),
    "udp6_6ext": eth(0x86dd, ipv6(60, opt6(60) * 5 + opt6(17) + udp(1234, 53))),
    "udp6_7ext": eth(0x86dd, ipv6(60, opt6(60) * 6 + opt6(17) + udp(1234, 53))),
    "udp4_later": eth(0x0800, ipv4(17, b"", frag=100)),
    "udp6_later": eth(0x86dd, ipv6(44, frag6(17, 100))),
    "udp6_first": eth(0x86dd, ipv6(44, frag6(17, 0) + udp(1234, 53))),
    "udp6_ah": eth(0x86dd, ipv6(51, bytes([17, 1]) + b"\0" * 10 + udp(1234, 53))),
    "udp6_ah_trunc": eth(0x86dd, ipv6(51, bytes([17, 4]) + b"\0" * 10)),
    "icmp4_echo": eth(0x0800, ipv4(1, bytes([8, 0, 0, 0]) + b"\0" * 4)),
    "icmp6_trunc": eth(0x86dd, ipv6(58, bytes([128, 0]))),
    "tcp4_synack": eth(0x0800, ipv4(6, tcp(40000, 22, flags=0x12))),
}

def cmd_pkts(out):
    for name, data in PACKETS.items():
        open(f"{out}/{name}.bin", "wb").write(data)

# -- map updates, printed as `bpftool batch` lines
def kv(args):
    return dict(a.split("=", 1) for a in args)

def num(d, k): return int(d.get(k, "0"), 0)

def upd(m, key, val): print(f"map update pinned {PIN}/maps/{m} key hex {hx(key)} value hex {hx(val)}")

def rule_key(d):
    return struct.pack("<II16s16sHHBBBB", num(d, "tuple"), num(d, "ifindex"),
                       addr(d.get("src", "::")), addr(d.get("dst", "::")),
                       num(d, "sport"), num(d, "dport"), num(d, "proto"),
                       num(d, "tcp_flags"), num(d, "l4"), 0)

def cmd_live(gen): upd("fwd_live", struct.pack("<I", 0), struct.pack("<IIQ", int(gen), 0, 0))
def cmd_gen(gen, nt, dflt, flags):
    upd("fwd_gen", struct.pack("<I", int(gen)), struct.pack("<IBBHQ", int(nt), int(dflt), int(flags), 0, 0))
def cmd_tuple(idx, *args):
    d = kv(args)
    val = struct.pack("<I16s16sHHBBBBI", num(d, "ifindex_mask"), mask(num(d, "src_len")),
                      mask(num(d, "dst_len")), num(d, "sport_mask"), num(d, "dport_mask"),
                      num(d, "proto_mask"), num(d, "tcp_flags_mask"), num(d, "l4_mask"), 0,
                      num(d, "min_prio"))
    upd("fwd_tuples", struct.pack("<I", int(idx)), val)
def cmd_rule(*args):
    d = kv(args)
    upd("fwd_rules", rule_key(d), struct.pack("<IIBBH", num(d, "prio"), num(d, "slot"),
                                             num(d, "action"), num(d, "flags"), 0))
def cmd_tuples(first, n):
    # n tuples from index first, all distinct masks, none with entries.
    for i in range(int(n)):
        cmd_tuple(str(int(first) + i), "proto_mask=0xff", f"sport_mask={i + 1}", f"min_prio={i}")

def cmd_unrule(*args):
    print(f"map delete pinned {PIN}/maps/fwd_rules key hex {hx(rule_key(kv(args)))}")

def cmd_ctr(slot):
    out = subprocess.run(["bpftool", "-j", "map", "lookup", "pinned", f"{PIN}/maps/fwd_counters",
                          "key", "hex", *hx(struct.pack("<I", int(slot))).split()],
                         check=True, capture_output=True, text=True).stdout
    vals = [v["value"] for v in json.loads(out)["formatted"]["values"]]
    print(sum(v["packets"] for v in vals), sum(v["would_drop_packets"] for v in vals))

globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
EOF

py() { python3 "$TMP/h.py" "$@"; }

# Apply map updates: each argument is one helper command line ("gen 0 1 0 0").
apply() {
	local line
	: >"$TMP/batch"
	for line in "$@"; do
		# shellcheck disable=SC2086  # word splitting of the command line is intended
		py $line >>"$TMP/batch"
	done
	bpftool batch file "$TMP/batch" >/dev/null
}

run() { # run NAME REPEAT -> bpftool output
	bpftool prog run pinned "$PIN/fwd_xdp" data_in "$TMP/$1.bin" repeat "$2"
}

# check PACKET WANT_RETVAL WANT_SLOT [WANT_WOULD_DROP]: one run, verdict + counter delta.
check() {
	local name=$1 want=$2 slot=$3 wd=${4:-0} p0 w0 p1 w1 out rv
	read -r p0 w0 < <(py ctr "$slot")
	out=$(run "$name" 1)
	rv=$(sed -n 's/^Return value: \([0-9]*\).*/\1/p' <<<"$out")
	read -r p1 w1 < <(py ctr "$slot")
	if [[ $rv == "$want" && $((p1 - p0)) == 1 && $((w1 - w0)) == "$wd" ]]; then
		printf 'ok    %-12s %-11s -> %s slot %s would_drop %s\n' "$phase" "$name" "$rv" "$slot" "$wd"
	else
		printf 'FAIL  %-12s %-11s -> got %s (+%s pkts, +%s would_drop in slot %s), want %s slot %s would_drop %s\n' \
			"$phase" "$name" "$rv" $((p1 - p0)) $((w1 - w0)) "$slot" "$want" "$slot" "$wd"
		failures=$((failures + 1))
	fi
}

py pkts "$TMP"
PASS=2 DROP=1

# ---- empty policy: gen 0, no tuples, default allow -------------------------
phase=empty
apply "live 0" "gen 0 0 0 0"
check udp4 $PASS 0
check tcp4_22 $PASS 0
check arp $PASS 2
check vlan3_udp4 $PASS 2
check eth_only_ip4 $DROP 1
check trunc_ip4 $DROP 1
check ihl4 $DROP 1
check udp4_trunc $DROP 1
check tcp_doff4 $DROP 1
check vlan_trunc $DROP 1
check udp6_7ext $DROP 1
check vlan2_udp4 $PASS 0
check udp6_6ext $PASS 0
check udp4_later $PASS 0
check udp6_ah_trunc $DROP 1
check icmp6_trunc $DROP 1

# ---- default drop: IP dropped in slot 0, non-IP still passes ---------------
phase=default-drop
apply "gen 0 0 1 0"
check udp4 $DROP 0
check arp $PASS 2

# ---- one tuple (proto), one entry: UDP -> drop, slot 16 --------------------
phase=proto-rule
apply "gen 0 1 0 0" "tuple 0 proto_mask=0xff min_prio=0" \
	"rule tuple=0 proto=17 prio=0 slot=16 action=1"
check udp4 $DROP 16
check tcp4_22 $PASS 0
check vlan2_udp4 $DROP 16
check udp6_hbh $DROP 16
check udp6_6ext $DROP 16
check udp4_later $DROP 16
check udp6_later $DROP 16

# ---- audit rule and dry-run generation: drops become counted passes --------
phase=audit
apply "rule tuple=0 proto=17 prio=0 slot=16 action=1 flags=1"
check udp4 $PASS 16 1
phase=dry-run
apply "rule tuple=0 proto=17 prio=0 slot=16 action=1" "gen 0 1 0 1"
check udp4 $PASS 16 1
check eth_only_ip4 $PASS 1 1
check arp $PASS 2
apply "gen 0 1 0 0" "unrule tuple=0 proto=17"

# ---- ports, priorities across tuples, source CIDR, interface ---------------
# tuple 0 (min_prio 0): tcp any port -> prio 5 drop (slot 18)
# tuple 1 (min_prio 2): tcp dport 22 with ports -> prio 2 allow (slot 17)
# A later tuple may still hold a better priority than the best so far.
phase=prio
apply "gen 0 2 0 0" "tuple 0 proto_mask=0xff min_prio=0" \
	"tuple 1 proto_mask=0xff dport_mask=0xffff l4_mask=1 min_prio=2" \
	"rule tuple=0 proto=6 prio=5 slot=18 action=1" \
	"rule tuple=1 proto=6 dport=22 l4=1 prio=2 slot=17 action=0"
check tcp4_22 $PASS 17
check tcp4_80 $DROP 18
# Early stop: a prio-1 match in tuple 0 ends the search before tuple 1.
apply "rule tuple=0 proto=6 prio=1 slot=18 action=1"
check tcp4_22 $DROP 18
apply "unrule tuple=0 proto=6"

phase=cidr
apply "gen 0 1 0 0" "tuple 0 src_len=120 min_prio=0" \
	"rule tuple=0 src=198.18.0.0 prio=0 slot=20 action=1"
check udp4 $DROP 20
check udp4_other $PASS 0
apply "unrule tuple=0 src=198.18.0.0"

# BPF_PROG_TEST_RUN runs on the loopback device (ifindex 1) by default.
phase=ifindex
apply "tuple 0 ifindex_mask=0xffffffff min_prio=0" \
	"rule tuple=0 ifindex=1 prio=0 slot=21 action=1"
check udp4 $DROP 21
apply "rule tuple=0 ifindex=1 prio=0 slot=21 action=0" "rule tuple=0 ifindex=2 prio=0 slot=22 action=1"
check udp4 $PASS 21
apply "unrule tuple=0 ifindex=1" "unrule tuple=0 ifindex=2"

# ---- L4 fields: fragment bit, ports, ICMP type/code, TCP flags ------------
phase=l4
apply "tuple 0 l4_mask=4 min_prio=0" "rule tuple=0 l4=4 prio=0 slot=23 action=1"
check udp4_later $DROP 23
check udp6_first $DROP 23
check udp4 $PASS 0
apply "unrule tuple=0 l4=4" "tuple 0 proto_mask=0xff dport_mask=0xffff l4_mask=1 min_prio=0" \
	"rule tuple=0 proto=17 dport=53 l4=1 prio=0 slot=24 action=1"
check udp4 $DROP 24
check udp6_ah $DROP 24
check udp6_first $DROP 24
check udp4_later $PASS 0 # a later fragment carries no ports
apply "unrule tuple=0 proto=17 dport=53 l4=1" \
	"tuple 0 proto_mask=0xff sport_mask=0xffff dport_mask=0xffff l4_mask=2 min_prio=0" \
	"rule tuple=0 proto=1 sport=8 dport=0 l4=2 prio=0 slot=25 action=1"
check icmp4_echo $DROP 25
apply "unrule tuple=0 proto=1 sport=8 dport=0 l4=2" \
	"tuple 0 proto_mask=0xff tcp_flags_mask=0x12 min_prio=0" \
	"rule tuple=0 proto=6 tcp_flags=2 prio=0 slot=26 action=1"
check tcp4_22 $DROP 26
check tcp4_synack $PASS 0
apply "unrule tuple=0 proto=6 tcp_flags=2"

# ---- generation flip: gen 1 has its own tuples and entries -----------------
phase=gen-flip
apply "gen 0 1 0 0" "tuple 0 proto_mask=0xff min_prio=0" \
	"rule tuple=0 proto=17 prio=0 slot=16 action=1" "gen 1 0 0 0" "live 1"
check udp4 $PASS 0
apply "gen 1 1 0 0" "tuple 256 proto_mask=0xff min_prio=0" \
	"rule tuple=256 proto=17 prio=0 slot=19 action=1"
check udp4 $DROP 19
apply "live 0"
check udp4 $DROP 16
apply "unrule tuple=256 proto=17" "unrule tuple=0 proto=17"

# ---- timing: gen 1, tuples with no matching entries ------------------------
bench() { # bench LABEL PACKET
	local out ns
	out=$(run "$2" "$BENCH_REPEAT")
	ns=$(sed -n 's/.*duration[^:]*: \([0-9]*\)ns.*/\1/p' <<<"$out")
	printf 'bench %-34s %6s ns/packet (repeat %s)\n' "$1" "$ns" "$BENCH_REPEAT"
}
if [[ $BENCH == 1 ]]; then
	apply "live 1" "tuples 256 256" "gen 1 0 0 0"
	bench "empty policy (0 tuples), udp4" udp4
	bench "non-IP (arp)" arp
	apply "gen 1 1 0 0"
	bench "1 tuple, no match, udp4" udp4
	apply "gen 1 16 0 0"
	bench "16 tuples, no match, udp4" udp4
	# ~10 us a packet: a tenth of the repeats keeps this step near 1 s.
	BENCH_REPEAT=$((BENCH_REPEAT / 10))
	apply "gen 1 256 0 0"
	bench "256 tuples, no match, udp4" udp4
	bench "256 tuples, no match, udp6_hbh" udp6_hbh
	apply "live 0"
fi

if ((failures)); then
	echo "selftest: $failures check(s) FAILED"
	exit 1
fi
echo "selftest: all checks passed"
