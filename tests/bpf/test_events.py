"""BPF tier: per-interface counters, event records, the event budget and the ring reader.

The fwd object runs on crafted frames with BPF_PROG_TEST_RUN (ingress ifindex 1,
lo). The ring buffer is read with fwd.kernel.ringbuf's direct mmap reader.
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwd.core import abi
from fwd.kernel.objects import BpfObject
from fwd.kernel.ringbuf import RingBuffer, configure_events, kernel_event_stats, record_size
from fwd.kernel.rcu import RcuBarrier
from fwd.core import transaction
from fwd.kernel.dataplane import Dataplane
from fwd.core.records import DropEvent, decode
from fwd.policy.engine import Engine
from fwd.policy.model import Action, policy_from_dict
from tests import packets as P

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
LO = 1

UDP_A = P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1000, 53, b"q"))
TCP_SSH = P.eth_ipv4("198.18.1.2", "198.18.0.1", P.TCP, P.tcp(40000, 22, P.SYN))
UDP6 = P.eth_ipv6("2001:2:0:1::2", "2001:2::1", P.UDP, P.udp(1000, 53, b"q"))
ARP = P.eth(P.arp(), P.ETH_P_ARP)
TRUNCATED = TCP_SSH[:40]  # IPv4 header cut short: malformed


@pytest.fixture(scope="module", autouse=True)
def build() -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)


class Plane:
    """A freshly loaded fwd object (own maps and ring) with a Dataplane."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.prog = obj.program("fwd_xdp")
        self.maps = obj.maps()
        self.barrier = RcuBarrier()
        self.dp = Dataplane(self.maps, self.maps["fwd_counters"].ncpus, self.barrier)
        self.ring = RingBuffer(self.maps["fwd_events"].fd)
        self.engine = Engine()

    @property
    def slots(self) -> dict[str, int]:
        return dict(self.engine.slots)

    def install(self, doc: dict[str, object], *, audit: tuple[str, ...] = (), log_default: bool = False) -> None:
        rules = [
            {**r, "audit": True} if r["id"] in audit else r
            for r in doc.get("rules", [])  # type: ignore[attr-defined]
        ]
        policy = policy_from_dict({**doc, "rules": rules, "log_default": log_default})
        pending = self.engine.apply(policy, ifindexes={"lo": LO})
        transaction.run(pending, self.dp)

    def run(self, frame: bytes, repeat: int = 1) -> int:
        return self.prog.test_run(frame, repeat=repeat, data_out_size=0).retval

    def events(self) -> list[DropEvent]:
        names = {s: r for r, s in self.slots.items()}
        return [decode(r, names) for r in self.ring.consume(1 << 20)]

    def if_stats(self, ifindex: int = LO) -> tuple[list[int], list[int]]:
        raw = self.maps["fwd_if_stats"].lookup(struct.pack("=I", ifindex))
        packets, octets = [0, 0, 0], [0, 0, 0]
        if raw is not None:
            size = ctypes.sizeof(abi.IfStats)
            for cpu in range(self.maps["fwd_counters"].ncpus):
                s = abi.IfStats.from_buffer_copy(raw, cpu * size)
                for v in range(3):
                    packets[v] += s.packets[v]
                    octets[v] += s.bytes[v]
        return packets, octets

    def close(self) -> None:
        self.ring.close()
        self.barrier.close()
        self.obj.close()


def make_plane(rate: int = abi.EVENT_RATE, burst: int = abi.EVENT_BURST, size: int = 1 << 16) -> Plane:
    obj = BpfObject.open(ROOT / "bpf/build/fwd.bpf.o")
    configure_events(obj, rate=rate, burst=burst, size=size)
    obj.load()
    return Plane(obj)


@pytest.fixture
def plane() -> Iterator[Plane]:
    p = make_plane()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """Pin this thread to one CPU: the budget is per CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --- per-interface counters ------------------------------------------------------------


def test_interface_counters_count_every_final_verdict(plane: Plane) -> None:
    plane.install(
        {
            "default_action": "allow",
            "rules": [
                {"id": "drop-udp", "action": "drop", "protocol": "udp"},
                {"id": "audit-ssh", "action": "drop", "protocol": "tcp", "dst_ports": [22]},
            ],
        },
        audit=("audit-ssh",),
    )
    assert plane.run(UDP_A, repeat=3) == 1  # XDP_DROP
    assert plane.run(TCP_SSH, repeat=2) == 2  # XDP_PASS: audit
    assert plane.run(ARP, repeat=4) == 2  # non-IP passes
    assert plane.run(TRUNCATED) == 1  # malformed drops
    packets, octets = plane.if_stats()
    assert packets == [4, 4, 2]  # pass, drop, would drop
    assert octets == [4 * len(ARP), 3 * len(UDP_A) + len(TRUNCATED), 2 * len(TCP_SSH)]
    assert plane.if_stats(ifindex=12345) == ([0, 0, 0], [0, 0, 0])


# --- which verdicts make events ---------------------------------------------------------


def test_events_for_log_rules_only_when_logged(plane: Plane) -> None:
    plane.install(
        {
            "default_action": "drop",  # without log-default: no events for it
            "rules": [
                {"id": "log-ssh", "action": "allow", "protocol": "tcp", "dst_ports": [22], "log": True},
                {"id": "drop-v6", "action": "drop", "src": ["2001:2:0:1::/64"], "log": True},
                {"id": "quiet", "action": "drop", "protocol": "udp"},
            ],
        }
    )
    plane.run(TCP_SSH, repeat=3)
    plane.run(UDP6, repeat=2)
    plane.run(UDP_A, repeat=5)  # quiet rule
    plane.run(P.eth_ipv4("198.18.1.2", "198.18.0.1", 47, b"gre!"), repeat=4)  # default drop
    plane.run(ARP)
    plane.run(TRUNCATED)
    events = plane.events()
    assert [(e.rule_id, e.action) for e in events] == [("log-ssh", Action.ALLOW)] * 3 + [
        ("drop-v6", Action.DROP)
    ] * 2
    ssh, v6 = events[0], events[3]
    assert (str(ssh.src), str(ssh.dst), ssh.sport, ssh.dport, ssh.proto) == ("198.18.1.2", "198.18.0.1", 40000, 22, 6)
    assert ssh.tcp_flags == P.SYN and ssh.length == len(TCP_SSH) and ssh.ifindex == LO
    assert not (ssh.dropped or ssh.would_drop or ssh.default or ssh.dry_run)
    assert str(v6.src) == "2001:2:0:1::2" and v6.dropped and v6.time_ns >= ssh.time_ns
    assert kernel_event_stats(plane.maps["fwd_event_stats"]).emitted == 5


def test_events_for_every_would_drop(plane: Plane) -> None:
    plane.install(
        {"default_action": "drop", "dry_run": True, "rules": [{"id": "drop-udp", "action": "drop", "protocol": "udp"}]}
    )
    assert plane.run(UDP_A, repeat=2) == 2  # passes: dry-run
    assert plane.run(TCP_SSH) == 2  # default drop, dry-run
    assert plane.run(TRUNCATED) == 2  # malformed, dry-run
    events = plane.events()
    assert [(e.rule_id, e.default, e.malformed) for e in events] == [
        ("drop-udp", False, False),
        ("drop-udp", False, False),
        ("", True, False),
        ("", False, True),
    ]
    assert all(e.would_drop and e.dry_run and not e.dropped for e in events)
    assert events[3].slot == abi.SLOT_MALFORMED


def test_events_for_audit_rules(plane: Plane) -> None:
    plane.install(
        {"rules": [{"id": "audit-udp", "action": "drop", "protocol": "udp"}]}, audit=("audit-udp",)
    )
    assert plane.run(UDP_A, repeat=3) == 2
    events = plane.events()
    assert len(events) == 3 and all(e.would_drop and not e.dry_run for e in events)


def test_events_for_default_drops_when_asked(plane: Plane) -> None:
    doc: dict[str, object] = {"default_action": "drop", "rules": [{"id": "allow-udp", "action": "allow", "protocol": "udp"}]}
    plane.install(doc, log_default=True)
    plane.run(TCP_SSH, repeat=4)  # default drop: logged
    plane.run(UDP_A, repeat=2)  # allowed by an unlogged rule
    events = plane.events()
    assert len(events) == 4 and all(e.default and e.dropped and e.slot == abi.SLOT_DEFAULT for e in events)
    plane.install({**doc, "default_action": "allow"}, log_default=True)
    plane.run(TCP_SSH, repeat=4)  # default allow: never logged
    assert plane.events() == []


# --- budget and accounting ---------------------------------------------------------------


@pytest.mark.usefixtures("one_cpu")
def test_budget_suppresses_and_counts() -> None:
    p = make_plane(rate=1, burst=5)
    try:
        p.install({"rules": [{"id": "log-udp", "action": "drop", "protocol": "udp", "log": True}]})
        p.run(UDP_A, repeat=100)
        stats = kernel_event_stats(p.maps["fwd_event_stats"])
        # The bucket starts with its burst of 5 and refills 1/s: the run takes microseconds.
        assert (stats.emitted, stats.suppressed, stats.ringbuf_full) == (5, 95, 0)
        assert len(p.events()) == 5
    finally:
        p.close()


def test_every_logged_verdict_is_accounted_for() -> None:
    p = make_plane(rate=1000, burst=3000, size=1 << 16)  # ~910 records fit; 3000 tokens
    try:
        p.install({"rules": [{"id": "log-udp", "action": "drop", "protocol": "udp", "log": True}]})
        n = 20_000
        p.run(UDP_A, repeat=n)
        stats = kernel_event_stats(p.maps["fwd_event_stats"])
        dropped = p.dp.read_counters([p.slots["log-udp"]])[p.slots["log-udp"]].packets
        assert dropped == n == stats.logged
        assert stats.ringbuf_full > 0 and stats.suppressed > 0  # both limits were hit
        assert len(p.events()) == stats.emitted
    finally:
        p.close()


# --- the ring reader ----------------------------------------------------------------------


def test_reader_reads_exactly_n_records(plane: Plane) -> None:
    plane.install({"rules": [{"id": "log-udp", "action": "drop", "protocol": "udp", "log": True}]})
    plane.run(UDP_A, repeat=700)
    assert plane.ring.pending() == 700 * record_size(64)
    first = plane.ring.consume(300)
    rest = plane.ring.consume(10_000)
    assert (len(first), len(rest)) == (300, 400)
    assert plane.ring.pending() == 0 and plane.ring.consume(10) == []


HELPER = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } rb SEC(".maps");
__u32 seq = 0;
/* 12-byte records (24 in the ring: rounding is exercised); odd ones discarded. */
SEC("xdp") int produce(struct xdp_md *ctx)
{
	__u32 *e = bpf_ringbuf_reserve(&rb, 12, 0);
	__u32 i = seq++;
	if (!e)
		return XDP_ABORTED;
	e[0] = i; e[1] = ~i; e[2] = 0xabcdef01;
	if (i & 1)
		bpf_ringbuf_discard(e, 0);
	else
		bpf_ringbuf_submit(e, 0);
	return XDP_PASS;
}
"""


@pytest.fixture(scope="module")
def helper_obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ring")
    src, out = d / "ring.bpf.c", d / "ring.bpf.o"
    src.write_text(HELPER)
    inc = f"-I/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run(["clang", "-O2", "-g", "-Wall", "-target", "bpf", inc, "-c", str(src), "-o", str(out)], check=True)
    return out


def test_discarded_records_are_skipped_and_wrap_around_is_contiguous(helper_obj: Path) -> None:
    with BpfObject.open(helper_obj) as obj:
        obj.load()
        prog = obj.program("produce")
        with RingBuffer(obj.map("rb").fd) as ring:
            assert ring.size == 4096  # 170 records of 24 bytes
            seen: list[int] = []
            for _ in range(5):  # 5 x 120 records: wraps around the 4 KiB ring several times
                assert prog.test_run(b"\0" * 64, repeat=120).retval == 2
                for rec in ring.consume(1000):
                    i, inv, tag = struct.unpack("=III", rec)
                    assert inv == ~i & 0xFFFFFFFF and tag == 0xABCDEF01
                    seen.append(i)
            assert seen == list(range(0, 600, 2))  # discarded (odd) ones skipped


def test_closed_reader_fails_loudly(plane: Plane) -> None:
    ring = RingBuffer(plane.maps["fwd_events"].fd)
    ring.close()
    ring.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        ring.consume(1)


def test_reader_refuses_other_map_types(plane: Plane) -> None:
    with pytest.raises(Exception, match="not a ring buffer"):
        RingBuffer(plane.maps["fwd_counters"].fd)
