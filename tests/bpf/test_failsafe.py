"""BPF tier: the failsafe keeps what the policy would drop, and nothing else."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator

import pytest

from fwd.policy import failsafe
from fwd.core import abi
from fwd.kernel.objects import BpfObject
from fwd.policy import reference
from fwd.policy.model import policy_from_dict
from tests import packets as P
from tests.bpf.test_dataplane import ROOT, Plane

pytestmark = pytest.mark.root

KEPT = failsafe.parse("tcp/22,udp/53,tcp/sport:2379@198.18.5.5,tcp/sport:2379@2001:2::5")


@pytest.fixture(scope="module")
def plane() -> Iterator[Plane]:
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    with BpfObject.open(ROOT / "bpf/build/fwd.bpf.o") as obj:
        failsafe.configure(obj, KEPT)
        obj.load()
        p = Plane(obj)
        try:
            yield p
        finally:
            p.barrier.close()


def v4(src: str, proto: int, sport: int, dport: int) -> bytes:
    l4 = P.tcp(sport, dport, P.SYN) if proto == P.TCP else P.udp(sport, dport, b"x")
    return P.eth_ipv4(src, "198.18.0.1", proto, l4)


def v6(src: str, sport: int, dport: int) -> bytes:
    return P.eth_ipv6(src, "2001:2::1", P.TCP, P.tcp(sport, dport, P.SYN))


CASES = [
    # (what, frame, kept by the failsafe)
    ("ssh", v4("198.18.1.2", P.TCP, 40000, 22), True),
    ("ssh v6", v6("2001:2:0:1::2", 40000, 22), True),
    ("dns over udp", v4("198.18.1.2", P.UDP, 40000, 53), True),
    ("udp to 22", v4("198.18.1.2", P.UDP, 40000, 22), False),
    ("tcp from 22", v4("198.18.1.2", P.TCP, 22, 40000), False),
    ("tcp to 2222", v4("198.18.1.2", P.TCP, 40000, 2222), False),
    ("etcd reply", v4("198.18.5.5", P.TCP, 2379, 40000), True),
    ("etcd reply v6", v6("2001:2::5", 2379, 40000), True),
    ("from 2379 elsewhere", v4("198.18.5.6", P.TCP, 2379, 40000), False),
    ("v4-mapped v6 is not v4", v6("::ffff:198.18.5.5", 2379, 40000), False),
    ("to 2379", v4("198.18.5.5", P.TCP, 40000, 2379), False),
    ("ping", P.eth_ipv4("198.18.1.2", "198.18.0.1", P.ICMP, P.icmp(8, 0)), False),
]


def test_failsafe_keeps_its_traffic_from_a_default_drop(plane: Plane) -> None:
    plane.install(policy_from_dict({"default_action": "drop"}))
    for what, frame, kept in CASES:
        before = plane.packets(abi.SLOT_FAILSAFE)[0]
        got = plane.prog.test_run(frame).retval
        assert got == (reference.XDP_PASS if kept else reference.XDP_DROP), what
        assert plane.packets(abi.SLOT_FAILSAFE)[0] == before + kept, what


def test_failsafe_overrules_drop_rules_audit_and_dry_run_but_not_allows(plane: Plane) -> None:
    raw = {
        "rules": [
            {"id": "allow-ssh", "action": "allow", "protocol": "tcp", "dst_ports": [22],
             "src": ["198.18.1.0/24"]},
            {"id": "no-tcp", "action": "drop", "protocol": "tcp"},
            {"id": "audit-udp", "action": "drop", "protocol": "udp", "audit": True},
        ]
    }
    plane.install(policy_from_dict(raw))
    slots = plane.slots

    def counted(frame: bytes) -> tuple[int, tuple[int, int], tuple[int, int], tuple[int, int]]:
        before = {s: plane.packets(s) for s in (slots["allow-ssh"], slots["no-tcp"],
                                                slots["audit-udp"], abi.SLOT_FAILSAFE)}
        ret = plane.prog.test_run(frame).retval
        after = {s: plane.packets(s) for s in before}
        d = {s: (after[s][0] - before[s][0], after[s][1] - before[s][1]) for s in before}
        return ret, d[slots["allow-ssh"]], d[slots["no-tcp"]], d[abi.SLOT_FAILSAFE]

    # Allowed by a rule: that rule counts it, not the failsafe.
    assert counted(v4("198.18.1.2", P.TCP, 40000, 22)) == (reference.XDP_PASS, (1, 0), (0, 0),
                                                            (0, 0))
    # Dropped by a rule: the failsafe keeps it and counts it.
    assert counted(v4("198.18.2.2", P.TCP, 40000, 22)) == (reference.XDP_PASS, (0, 0), (0, 0),
                                                            (1, 0))
    assert counted(v4("198.18.2.2", P.TCP, 40000, 23)) == (reference.XDP_DROP, (0, 0), (1, 0),
                                                            (0, 0))
    # An audit drop of failsafe traffic is no "would drop": it would pass.
    before = plane.packets(slots["audit-udp"])
    assert plane.prog.test_run(v4("198.18.2.2", P.UDP, 40000, 53)).retval == reference.XDP_PASS
    assert plane.packets(slots["audit-udp"]) == before


def test_config_layout() -> None:
    cfg = failsafe.config(KEPT)
    assert cfg.count == 4
    e = cfg.entries[2]
    assert (e.proto, e.port, e.flags, e.v6) == (6, 2379, abi.FAILSAFE_SPORT | abi.FAILSAFE_ADDR, 0)
    assert bytes(e.addr) == ipaddress.IPv6Address("::ffff:198.18.5.5").packed
    assert cfg.entries[3].v6 == 1
