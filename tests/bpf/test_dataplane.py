"""BPF tier: the compiled XDP program against the reference classifier.

Each policy is compiled and installed through the real Dataplane (generation
flip, RCU barrier, retirement of the old generation) into the real object, then
every frame of a crafted corpus runs through BPF_PROG_TEST_RUN. The kernel's
verdict and the counter slot it bumped must equal ``fwd.policy.reference``.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwd.core import abi
from fwd.kernel.objects import BpfObject, Program
from fwd.kernel.rcu import RcuBarrier
from fwd.core import transaction
from fwd.kernel.dataplane import Dataplane
from fwd.policy import reference
from fwd.policy.engine import Engine, Pending
from fwd.policy.model import Policy, policy_from_dict
from tests import packets as P

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
LO = 1  # test runs without an xdp_md context see ingress_ifindex 1 (lo)
IFNAMES = {LO: "lo"}


class Plane:
    """A loaded fwd object with an Engine and a Dataplane, as the Datapath actor builds them."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.prog: Program = obj.program("fwd_xdp")
        maps = obj.maps()
        self.counters = maps["fwd_counters"]
        self.barrier = RcuBarrier()
        self.dp = Dataplane(maps, self.counters.ncpus, self.barrier)
        self.engine = Engine()

    @property
    def slots(self) -> dict[str, int]:
        return self.engine.slots

    def run(self, pending: Pending) -> None:
        """Make a prepared operation live: the Datapath's own sequence (no store here)."""
        transaction.run(pending, self.dp)

    def install(self, policy: Policy) -> None:
        self.run(self.engine.apply(policy, ifindexes={"lo": LO}))

    def packets(self, slot: int) -> tuple[int, int]:
        c = self.dp.read_counters([slot])[slot]
        return c.packets, c.would_drop_packets


@pytest.fixture(scope="module")
def plane() -> Iterator[Plane]:
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    with BpfObject.open(ROOT / "bpf/build/fwd.bpf.o") as obj:
        obj.load()
        p = Plane(obj)
        try:
            yield p
        finally:
            p.barrier.close()


# --- the corpus ----------------------------------------------------------------

SRC4 = ["198.18.1.2", "198.18.1.200", "198.18.2.7", "198.19.255.1", "203.0.113.9"]
DST4 = ["198.18.0.1", "198.18.0.2"]
SRC6 = ["2001:2:0:1::2", "2001:2:0:1::ffff", "2001:2:0:2::7", "2001:2:ff::1", "::ffff:198.18.1.2"]
DST6 = ["2001:2::1", "2001:2::2"]


def _l4(proto: int, sport: int, dport: int, flags: int = P.SYN) -> bytes:
    if proto == P.TCP:
        return P.tcp(sport, dport, flags)
    if proto == P.UDP:
        return P.udp(sport, dport, b"payload!")
    if proto == P.SCTP:
        return P.sctp(sport, dport)
    if proto == P.ICMP:
        return P.icmp(8, 0)
    return P.icmpv6(128, 0)


def corpus() -> list[tuple[str, bytes]]:
    frames: list[tuple[str, bytes]] = []
    ports = [(40000, 22), (1023, 9999), (53, 9998), (8080, 8000), (65535, 0)]
    for i, src in enumerate(SRC4):
        dst = DST4[i % 2]
        for proto in (P.TCP, P.UDP, P.SCTP, P.ICMP, 47):
            for sp, dp in ports if proto in (P.TCP, P.UDP, P.SCTP) else [(0, 0)]:
                frames.append((f"v4 {src}>{dst} p{proto} {sp}>{dp}", P.eth_ipv4(src, dst, proto, _l4(proto, sp, dp))))
        for flags in (P.FIN, P.RST, P.ACK, P.SYN | P.ACK):
            frames.append((f"v4 {src} tcp flags {flags:#x}", P.eth_ipv4(src, dst, P.TCP, P.tcp(5555, 22, flags))))
    for i, src in enumerate(SRC6):
        dst = DST6[i % 2]
        for proto in (P.TCP, P.UDP, P.SCTP, P.ICMPV6):
            for sp, dp in ports if proto != P.ICMPV6 else [(0, 0)]:
                frames.append((f"v6 {src}>{dst} p{proto} {sp}>{dp}", P.eth_ipv6(src, dst, proto, _l4(proto, sp, dp))))
    # VLAN-tagged (one and two tags, 802.1Q and 802.1ad) and a third tag (non-IP).
    inner = P.ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1000, 9999))
    frames.append(("vlan1", P.eth(inner, P.ETH_P_IP, vlans=[10])))
    frames.append(("vlan2", P.eth(inner, P.ETH_P_IP, vlans=[(P.ETH_P_8021AD, 20), 30])))
    frames.append(("vlan3", P.eth(inner, P.ETH_P_IP, vlans=[1, 2, 3])))
    inner6 = P.ipv6("2001:2:0:1::2", "2001:2::1", P.TCP, P.tcp(1000, 22, P.SYN))
    frames.append(("vlan1 v6", P.eth(inner6, P.ETH_P_IPV6, vlans=[7])))
    # IPv6 extension headers, fragments, AH.
    ext_cases = {
        "hbh": [P.hop_by_hop()],
        "hbh+dst+rt": [P.hop_by_hop(), P.dstopts(1), P.routing()],
        "ah": [P.ah()],
        "frag0": [P.fragment(0, m=True)],
        "frag-later": [P.fragment(100)],
        "six-ext": [P.hop_by_hop(), P.dstopts(), P.routing(), P.dstopts(), P.ah(), P.dstopts()],
        "seven-ext": [P.hop_by_hop(), P.dstopts(), P.routing(), P.dstopts(), P.ah(), P.dstopts(), P.dstopts()],
    }
    for name, ext in ext_cases.items():
        frames.append((f"v6 {name}", P.eth_ipv6("2001:2:0:1::2", "2001:2::1", P.UDP, P.udp(1000, 9999), ext)))
    # IPv4 options and fragments.
    frames.append(("v4 ihl6", P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1, 9999), ihl=6)))
    frames.append(("v4 first-frag", P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1, 9999), mf=True)))
    frames.append(("v4 later-frag", P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, b"\0" * 16, frag_offset=64)))
    # Malformed: ihl < 5, bad versions.
    for ihl in (0, 4):
        bad = bytearray(P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1, 9999)))
        bad[14] = 0x40 | ihl
        frames.append((f"v4 ihl{ihl}", bytes(bad)))
    bad = bytearray(P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1, 9999)))
    bad[14] = 0x65
    frames.append(("v4 version6", bytes(bad)))
    frames.append(("tcp doff4", P.eth_ipv4("198.18.1.2", "198.18.0.1", P.TCP, P.tcp(1, 22, P.SYN, doff=4))))
    frames.append(("arp", P.eth(P.arp(), P.ETH_P_ARP)))
    # Every frame cut at every header boundary (frames under 14 bytes cannot be test-run).
    for name, whole in [
        ("tcp4", P.eth_ipv4("198.18.1.2", "198.18.0.1", P.TCP, P.tcp(1, 22, P.SYN | P.ACK))),
        ("udp4", P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1, 9999))),
        ("icmp4", P.eth_ipv4("198.18.1.2", "198.18.0.1", P.ICMP, P.icmp())),
        ("sctp6", P.eth_ipv6("2001:2:0:1::2", "2001:2::1", P.SCTP, P.sctp(1, 9999))),
        ("icmp6-ext", P.eth_ipv6("2001:2:0:1::2", "2001:2::1", P.ICMPV6, P.icmpv6(), [P.hop_by_hop(), P.fragment(0, m=True)])),
        ("udp-vlan2", P.eth(inner, P.ETH_P_IP, vlans=[5, 6])),
    ]:
        for cut in P.truncations(whole):
            if len(cut) >= 14:
                frames.append((f"{name} cut {len(cut)}", cut))
    return frames


CORPUS = corpus()


def policies() -> list[tuple[str, Policy]]:
    raw: list[tuple[str, dict[str, object]]] = [
        ("empty allow", {}),
        ("empty drop", {"default_action": "drop"}),
        ("dry-run drop", {"default_action": "drop", "dry_run": True}),
        ("udp 9999 from A", {"rules": [{"id": "r", "action": "drop", "protocol": "udp", "src": ["198.18.1.0/24", "2001:2:0:1::/64"], "dst_ports": [9999]}]}),
        ("proto only", {"rules": [{"id": "tcp", "action": "drop", "protocol": "tcp"}, {"id": "icmp", "action": "drop", "protocol": "icmp"}]}),
        ("src /32 and /15", {"rules": [{"id": "host", "action": "allow", "src": ["198.18.1.2"]}, {"id": "net", "action": "drop", "src": ["198.18.0.0/15"]}]}),
        ("nested v6", {"default_action": "drop", "rules": [{"id": "narrow", "action": "drop", "src": ["2001:2:0:1::2/128"]}, {"id": "wide", "action": "allow", "src": ["2001:2::/48"]}]}),
        ("dst only", {"rules": [{"id": "d", "action": "drop", "dst": ["198.18.0.2", "2001:2::2"]}]}),
        ("port ranges", {"rules": [{"id": "hi", "action": "drop", "protocol": "tcp", "src_ports": ["1024-65535"], "dst_ports": ["8000-8080", 22]}]}),
        ("sctp ports", {"rules": [{"id": "s", "action": "drop", "protocol": "sctp", "dst_ports": ["9990-9999"]}]}),
        ("udp any port range", {"rules": [{"id": "u", "action": "drop", "protocol": "udp", "dst_ports": ["0-65535"]}]}),
        ("allow then drop", {"default_action": "drop", "rules": [{"id": "ssh", "action": "allow", "protocol": "tcp", "dst_ports": [22]}, {"id": "icmp", "action": "allow", "protocol": "icmp"}, {"id": "icmp6", "action": "allow", "protocol": "icmpv6"}]}),
        ("first match wins", {"rules": [{"id": "a", "action": "allow", "protocol": "udp", "dst_ports": [9999]}, {"id": "b", "action": "drop", "protocol": "udp"}, {"id": "c", "action": "drop"}]}),
        ("shadowed duplicate", {"rules": [{"id": "a", "action": "drop", "src": ["198.18.1.0/24"]}, {"id": "b", "action": "allow", "src": ["198.18.1.0/24"]}]}),
        ("interfaces lo", {"rules": [{"id": "lo", "action": "drop", "protocol": "udp", "interfaces": ["lo"]}]}),
        ("interfaces none", {"rules": [{"id": "eth", "action": "drop", "interfaces": ["eth*"]}]}),
        ("v4 only src + any dst", {"rules": [{"id": "v4", "action": "drop", "src": ["0.0.0.0/0"]}]}),
        ("v6 only", {"rules": [{"id": "v6", "action": "drop", "src": ["::/0"]}]}),
        ("protocol number", {"rules": [{"id": "gre", "action": "drop", "protocol": 47}, {"id": "udp", "action": "drop", "protocol": "17", "dst_ports": [9998]}]}),
        ("src ports only", {"rules": [{"id": "sp", "action": "drop", "protocol": "udp", "src_ports": ["0-1023"]}]}),
        ("dry-run rules", {"dry_run": True, "rules": [{"id": "x", "action": "drop", "protocol": "tcp"}, {"id": "y", "action": "allow", "protocol": "udp"}]}),
        ("many rules", {"default_action": "drop", "rules": [
            {"id": f"r{i}", "action": "allow" if i % 3 else "drop", "protocol": "tcp" if i % 2 else "udp", "src": [str(ipaddress.ip_network(f"198.18.{i % 4}.0/{22 + i % 9}", strict=False))], "dst_ports": [str(i * 97 % 65536), "9998-9999"]}
            for i in range(60)
        ]}),
        ("mixed family rule", {"rules": [{"id": "m", "action": "drop", "src": ["198.18.1.0/24", "2001:2:0:1::/64"], "dst": ["198.18.0.1"]}]}),
    ]
    return [(name, policy_from_dict(d)) for name, d in raw]


POLICIES = policies()


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 200
    assert len(POLICIES) >= 20


@pytest.mark.parametrize("name,policy", POLICIES, ids=[n for n, _ in POLICIES])
def test_kernel_matches_reference(plane: Plane, name: str, policy: Policy) -> None:
    plane.install(policy)
    slots = {plane.slots[r.id]: r.id for r in policy.rules}
    mismatches = []
    for label, frame in CORPUS:
        want = reference.classify(policy, frame, ifindex=LO, ifnames=IFNAMES, slots=plane.slots)
        before = plane.packets(want.slot)
        got = plane.prog.test_run(frame)
        after = plane.packets(want.slot)
        counted = (after[0] - before[0], after[1] - before[1])
        expect_counted = (1, 1 if want.would_drop else 0)
        if got.retval != want.xdp_action or counted != expect_counted:
            mismatches.append(
                f"{label}: kernel {got.retval} counted {counted} in slot {want.slot} "
                f"({slots.get(want.slot, 'reserved')}); reference {want}"
            )
    assert not mismatches, "\n".join(mismatches[:20])


def test_counters_follow_rule_ids_across_updates(plane: Plane) -> None:
    keep = {"id": "keep", "action": "drop", "protocol": "udp", "dst_ports": [9999]}
    plane.install(policy_from_dict({"rules": [keep]}))
    frame = P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1, 9999))
    base = plane.packets(plane.slots["keep"])[0]
    for _ in range(5):
        assert plane.prog.test_run(frame).retval == reference.XDP_DROP
    # A new policy that keeps the id (at another position) keeps its counter.
    plane.install(policy_from_dict({"rules": [{"id": "other", "action": "allow", "protocol": "tcp"}, keep]}))
    assert plane.packets(plane.slots["keep"])[0] == base + 5
    # A removed id's slot goes to a new rule with a zeroed counter.
    old_slot = plane.slots["keep"]
    plane.install(policy_from_dict({"rules": [{"id": "other", "action": "allow", "protocol": "tcp"}]}))
    plane.install(policy_from_dict({"rules": [{"id": "other", "action": "allow", "protocol": "tcp"}, {"id": "new", "action": "drop", "protocol": "udp"}]}))
    assert plane.slots["new"] == old_slot
    assert plane.packets(old_slot)[0] == 0


def test_slot_handed_to_another_id_in_one_apply_is_zeroed(plane: Plane) -> None:
    """Slot numbers stay in use while ids swap them: freshness is per (id, slot)."""
    frame = P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1, 9999))
    plane.install(policy_from_dict({"rules": [{"id": "a", "action": "drop", "protocol": "udp"}]}))
    for _ in range(3):
        plane.prog.test_run(frame)
    slot_a = plane.slots["a"]
    assert plane.packets(slot_a)[0] >= 3
    plane.install(policy_from_dict({"rules": [{"id": "b", "action": "drop", "protocol": "tcp"}]}))
    assert plane.slots["b"] == slot_a
    assert plane.packets(slot_a)[0] == 0


def test_retired_entries_are_deleted_and_halves_agree(plane: Plane) -> None:
    """After an apply fwd_rules holds exactly the live entries, with v[0] == v[1]."""
    big = policy_from_dict({"rules": [{"id": f"r{i}", "action": "drop", "src": [f"198.19.{i // 256}.{i % 256}"]} for i in range(500)]})
    plane.install(big)
    plane.install(policy_from_dict({"rules": [{"id": "one", "action": "drop", "protocol": "udp"}]}))
    entries = list(plane.obj.map("fwd_rules").lookup_batch())
    assert len(entries) == 1
    entry = abi.Entry.from_buffer_copy(entries[0][1])
    assert bytes(entry.v[0]) == bytes(entry.v[1])
    assert entry.v[0].slot == plane.slots["one"]
