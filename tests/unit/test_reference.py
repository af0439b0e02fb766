"""The reference classifier: packet parsing per bpf/README.md and first-match classification."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwd.core import abi
from fwd.policy.files import load_policy_text
from fwd.policy.model import Policy
from fwd.policy.reference import (
    XDP_DROP,
    XDP_PASS,
    Decision,
    PacketKind,
    ParsedPacket,
    classify,
    parse_packet,
)
from tests import packets as P

A4, B4 = "198.18.0.1", "198.19.0.2"
A6, B6 = "2001:2::1", "2001:2::2"

TCP4 = P.eth_ipv4(A4, B4, P.TCP, P.tcp(40000, 22, P.SYN))
UDP6 = P.eth_ipv6(A6, B6, P.UDP, P.udp(5353, 53, b"q"))


def parse(frame: bytes) -> ParsedPacket:
    return parse_packet(frame, 3)


# --- parsing -----------------------------------------------------------------------


def test_tcp_ipv4() -> None:
    p = parse(TCP4)
    assert p.kind is PacketKind.IP and p.ifindex == 3 and p.family == 4
    assert (p.src, p.dst) == (ipaddress.ip_address(A4), ipaddress.ip_address(B4))
    assert (p.proto, p.sport, p.dport, p.tcp_flags) == (6, 40000, 22, P.SYN)
    assert p.has_ports and not p.is_icmp and not p.fragment
    assert p.l4 == abi.L4_PORTS


def test_udp_ipv6() -> None:
    p = parse(UDP6)
    assert p.kind is PacketKind.IP and p.family == 6
    assert (p.src, p.dst) == (ipaddress.ip_address(A6), ipaddress.ip_address(B6))
    assert (p.proto, p.sport, p.dport, p.tcp_flags) == (17, 5353, 53, 0)
    assert p.l4 == abi.L4_PORTS | abi.L4_IPV6


@pytest.mark.parametrize(
    ("frame", "proto", "icmp"),
    [
        (P.eth_ipv4(A4, B4, P.ICMP, P.icmp(8, 0)), 1, (8, 0)),
        (P.eth_ipv6(A6, B6, P.ICMPV6, P.icmpv6(135, 0)), 58, (135, 0)),
        (P.eth_ipv4(A4, B4, P.ICMP, P.icmp(3, 13)), 1, (3, 13)),
    ],
)
def test_icmp(frame: bytes, proto: int, icmp: tuple[int, int]) -> None:
    p = parse(frame)
    assert p.kind is PacketKind.IP and p.proto == proto
    assert p.is_icmp and not p.has_ports and (p.icmp_type, p.icmp_code) == icmp
    assert p.l4 == abi.L4_ICMP | (abi.L4_IPV6 if p.family == 6 else 0)


def test_sctp_has_ports() -> None:
    p = parse(P.eth_ipv4(A4, B4, P.SCTP, P.sctp(5000, 5001)))
    assert p.has_ports and (p.sport, p.dport) == (5000, 5001)


def test_other_protocol_has_no_l4_fields() -> None:
    p = parse(P.eth_ipv4(A4, B4, 47, b""))  # GRE, empty: nothing to truncate
    assert p.kind is PacketKind.IP and p.proto == 47 and p.l4 == 0


@pytest.mark.parametrize(
    "frame",
    [
        TCP4,
        P.eth_ipv6(A6, B6, P.UDP, P.udp(5353, 53)),
        P.eth_ipv4(A4, B4, P.TCP, P.tcp(1, 2, doff=8)),
        P.eth_ipv4(A4, B4, P.UDP, P.udp(1, 2), ihl=7),
        P.eth_ipv4(A4, B4, P.ICMP, P.icmp(8, 0, b"")),
        P.eth_ipv6(A6, B6, P.SCTP, P.sctp(1, 2), ext=[P.hop_by_hop(1), P.ah(), P.dstopts()]),
        P.eth_ipv6(A6, B6, P.TCP, P.tcp(1, 2), ext=[P.routing(2), P.fragment(0, m=True)]),
        P.eth(P.ipv4(A4, B4, P.UDP, P.udp(1, 2)), P.ETH_P_IP, vlans=[(P.ETH_P_8021AD, 5), 7]),
    ],
    ids=["tcp4", "udp6", "tcp-options", "ipv4-options", "icmp", "ipv6-ext", "ipv6-frag", "qinq"],
)
def test_every_truncation_is_malformed(frame: bytes) -> None:
    assert parse(frame).kind is PacketKind.IP
    cuts = list(P.truncations(frame))
    assert len(cuts) >= 5  # eth, ip, l4: each cut at and one byte before its start
    for cut in cuts:
        parsed = parse(cut)
        assert parsed.kind is PacketKind.MALFORMED, (len(cut), parsed)


def test_truncation_after_the_last_header_is_fine() -> None:
    frame = P.eth_ipv4(A4, B4, P.UDP, P.udp(1, 2, b"payload"))
    assert parse(frame[:-7]).kind is PacketKind.IP  # headers whole, payload gone
    assert parse(frame[:-8]).kind is PacketKind.MALFORMED


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ipv4_ihl_below_5_is_malformed(ihl: int) -> None:
    p = parse(P.eth_ipv4(A4, B4, P.UDP, P.udp(1, 2), ihl=ihl))
    assert p.kind is PacketKind.MALFORMED and "ihl" in p.reason


def test_ipv4_options_past_the_end_are_malformed() -> None:
    frame = P.eth(P.ipv4(A4, B4, 99, b"", ihl=15)[:40], P.ETH_P_IP)
    assert parse(frame).kind is PacketKind.MALFORMED


@pytest.mark.parametrize("doff", [0, 4])
def test_tcp_doff_below_5_is_malformed(doff: int) -> None:
    assert parse(P.eth_ipv4(A4, B4, P.TCP, P.tcp(1, 2, doff=doff))).kind is PacketKind.MALFORMED


def test_wrong_ip_versions_are_malformed() -> None:
    assert parse(P.eth(P.ipv4(A4, B4, 17, P.udp(1, 2), version=6), P.ETH_P_IP)).kind is (
        PacketKind.MALFORMED
    )
    assert parse(P.eth(P.ipv6(A6, B6, 17, P.udp(1, 2), version=4), P.ETH_P_IPV6)).kind is (
        PacketKind.MALFORMED
    )


def test_short_frames_and_vlan_tags() -> None:
    assert parse(b"").kind is PacketKind.MALFORMED
    assert parse(TCP4[:13]).kind is PacketKind.MALFORMED
    one = P.eth(P.ipv4(A4, B4, P.TCP, P.tcp(1, 22)), P.ETH_P_IP, vlans=[10])
    two = P.eth(P.ipv4(A4, B4, P.TCP, P.tcp(1, 22)), P.ETH_P_IP, vlans=[(P.ETH_P_8021AD, 1), 2])
    three = P.eth(P.ipv4(A4, B4, P.TCP, P.tcp(1, 22)), P.ETH_P_IP, vlans=[1, 2, 3])
    assert parse(one).dport == 22 and parse(two).dport == 22
    assert parse(three).kind is PacketKind.NON_IP
    assert parse(P.eth(b"", P.ETH_P_IP, vlans=[1])[:16]).kind is PacketKind.MALFORMED
    # A bare Ethernet header with a non-IP type is complete and not IP.
    assert parse(P.eth(b"", P.ETH_P_ARP)).kind is PacketKind.NON_IP
    assert parse(P.eth(P.arp(), P.ETH_P_ARP)).kind is PacketKind.NON_IP
    assert parse(P.eth(P.arp(), P.ETH_P_ARP, vlans=[4])).kind is PacketKind.NON_IP


def test_ipv4_fragments() -> None:
    first = parse(P.eth_ipv4(A4, B4, P.TCP, P.tcp(1, 22), mf=True))
    assert first.fragment and not first.later_fragment and first.has_ports
    assert first.l4 == abi.L4_PORTS | abi.L4_FRAG
    later = parse(P.eth_ipv4(A4, B4, P.TCP, b"\x00" * 3, frag_offset=185))
    assert later.kind is PacketKind.IP and later.proto == 6
    assert later.fragment and later.later_fragment and not later.has_ports
    assert later.l4 == abi.L4_FRAG | abi.L4_LATER_FRAG


def test_ipv6_extension_headers_are_walked() -> None:
    ext = [P.hop_by_hop(), P.routing(), P.dstopts(3), P.ah(), P.dstopts()]
    p = parse(P.eth_ipv6(A6, B6, P.TCP, P.tcp(1, 443), ext=ext))
    assert p.kind is PacketKind.IP and p.proto == 6 and p.dport == 443 and not p.fragment


def test_ipv6_six_extension_headers_pass_seven_do_not() -> None:
    six = [P.hop_by_hop()] + [P.dstopts()] * 5
    assert parse(P.eth_ipv6(A6, B6, P.UDP, P.udp(1, 53), ext=six)).dport == 53
    seven = six + [P.dstopts()]
    p = parse(P.eth_ipv6(A6, B6, P.UDP, P.udp(1, 53), ext=seven))
    assert p.kind is PacketKind.MALFORMED and "extension" in p.reason
    # A later fragment stops the walk, so what follows it is never counted.
    five_frag = [P.dstopts()] * 5 + [P.fragment(3)]
    p = parse(P.eth_ipv6(A6, B6, P.DSTOPTS, P.dstopts().build(60), ext=five_frag))
    assert p.kind is PacketKind.IP and p.later_fragment and p.proto == P.DSTOPTS


def test_ipv6_fragments() -> None:
    first = parse(P.eth_ipv6(A6, B6, P.UDP, P.udp(1, 53), ext=[P.fragment(0, m=True)]))
    assert first.fragment and not first.later_fragment and first.dport == 53
    atomic = parse(P.eth_ipv6(A6, B6, P.UDP, P.udp(1, 53), ext=[P.fragment(0, m=False)]))
    assert atomic.fragment and atomic.has_ports
    later = parse(P.eth_ipv6(A6, B6, P.UDP, b"", ext=[P.hop_by_hop(), P.fragment(100)]))
    assert later.kind is PacketKind.IP and later.proto == 17
    assert later.later_fragment and not later.has_ports


def test_ipv6_extension_longer_than_the_frame_is_malformed() -> None:
    frame = P.eth_ipv6(A6, B6, P.NONEXT, b"", ext=[P.dstopts(2)])
    assert parse(frame).kind is PacketKind.IP
    assert parse(frame[:-1]).kind is PacketKind.MALFORMED
    # Claimed length past the end (hdrlen byte patched from 2 to 3).
    patched = bytearray(frame)
    patched[14 + 40 + 1] = 3
    assert parse(bytes(patched)).kind is PacketKind.MALFORMED


def test_builders_fill_checksums() -> None:
    ip = P.ipv4(A4, B4, P.UDP, P.udp(1, 2, b"abc"))
    assert P.checksum(ip[:20]) == 0
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(ip) - 20)
    assert P.checksum(pseudo + ip[20:]) == 0
    assert P.checksum(P.icmp(8, 0)) == 0


# --- classification ------------------------------------------------------------------

POLICY = load_policy_text(
    """
default_action: drop
rules:
  - {id: ssh, action: allow, protocol: tcp, dst_ports: [22], src: [198.18.0.0/16]}
  - {id: web, action: allow, protocol: tcp, dst_ports: ["80", "443"], interfaces: ["eth*"]}
  - {id: no-frag-dns, action: drop, protocol: udp, dst_ports: [53]}
  - {id: udp, action: allow, protocol: udp}
  - {id: v6, action: allow, src: ["2001:2::/48"], dst: ["2001:2::2"]}
  - {id: ping, action: allow, protocol: icmp, log: true}
"""
)
SLOTS = {"ssh": 16, "web": 17, "no-frag-dns": 18, "udp": 19, "v6": 20, "ping": 21}
IFNAMES = {1: "eth0", 2: "lo"}


def decide(frame: bytes, ifindex: int = 1, policy: Policy = POLICY) -> Decision:
    return classify(policy, frame, ifindex=ifindex, ifnames=IFNAMES, slots=SLOTS)


@pytest.mark.parametrize(
    ("frame", "ifindex", "expected"),
    [
        pytest.param(TCP4, 1, Decision(XDP_PASS, 16, "ssh"), id="ssh"),
        pytest.param(
            P.eth_ipv4("198.20.0.1", B4, P.TCP, P.tcp(1, 22)),
            1,
            Decision(XDP_DROP, 0),
            id="ssh-wrong-src",
        ),
        pytest.param(
            P.eth_ipv4(A4, B4, P.TCP, P.tcp(1, 443)), 1, Decision(XDP_PASS, 17, "web"), id="web"
        ),
        pytest.param(
            P.eth_ipv4(A4, B4, P.TCP, P.tcp(1, 443)), 2, Decision(XDP_DROP, 0), id="web-on-lo"
        ),
        pytest.param(
            P.eth_ipv4(A4, B4, P.TCP, P.tcp(1, 443)),
            9,
            Decision(XDP_DROP, 0),
            id="web-unknown-ifindex",
        ),
        pytest.param(
            P.eth_ipv4(A4, B4, P.UDP, P.udp(1, 53)),
            1,
            Decision(XDP_DROP, 18, "no-frag-dns"),
            id="dns-dropped",
        ),
        # A later fragment carries no ports: the port rule cannot match, the next rule does.
        pytest.param(
            P.eth_ipv4(A4, B4, P.UDP, b"\0" * 8, frag_offset=2),
            1,
            Decision(XDP_PASS, 19, "udp"),
            id="later-fragment-skips-port-rule",
        ),
        pytest.param(
            P.eth_ipv4(A4, B4, P.UDP, P.udp(1, 54)), 1, Decision(XDP_PASS, 19, "udp"), id="udp"
        ),
        pytest.param(UDP6, 1, Decision(XDP_DROP, 18, "no-frag-dns"), id="dns6-dropped"),
        pytest.param(
            P.eth_ipv6(A6, B6, P.TCP, P.tcp(1, 1)), 1, Decision(XDP_PASS, 20, "v6"), id="v6"
        ),
        pytest.param(
            P.eth_ipv6(A6, A6, P.TCP, P.tcp(1, 1)), 1, Decision(XDP_DROP, 0), id="v6-wrong-dst"
        ),
        pytest.param(
            P.eth_ipv4(A4, B4, P.ICMP, P.icmp()),
            1,
            Decision(XDP_PASS, 21, "ping", log=True),
            id="ping-logged",
        ),
        pytest.param(P.eth(P.arp(), P.ETH_P_ARP), 1, Decision(XDP_PASS, abi.SLOT_NON_IP), id="arp"),
        pytest.param(TCP4[:40], 1, Decision(XDP_DROP, abi.SLOT_MALFORMED), id="truncated"),
    ],
)
def test_classification(frame: bytes, ifindex: int, expected: Decision) -> None:
    assert decide(frame, ifindex) == expected


def test_dry_run_turns_drops_into_would_drops() -> None:
    dry = Policy(default_action=POLICY.default_action, dry_run=True, rules=POLICY.rules)
    assert decide(P.eth_ipv4(A4, B4, P.UDP, P.udp(1, 53)), policy=dry) == Decision(
        XDP_PASS, 18, "no-frag-dns", would_drop=True
    )
    assert decide(TCP4[:40], policy=dry) == Decision(XDP_PASS, abi.SLOT_MALFORMED, would_drop=True)
    assert decide(TCP4, policy=dry) == Decision(XDP_PASS, 16, "ssh")
    assert decide(P.eth_ipv4(A4, B4, 99, b""), policy=dry) == Decision(
        XDP_PASS, abi.SLOT_DEFAULT, would_drop=True
    )


def test_address_families_never_cross() -> None:
    """An IPv6 packet from ::ffff:a.b.c.d is IPv6 (it must not pass an IPv4 allow rule),
    and ::/0 covers every IPv6 address but no IPv4 one."""
    policy = load_policy_text("rules: [{id: v4, action: drop, src: [198.18.0.0/15]}]")
    mapped = P.eth_ipv6("::ffff:198.18.0.9", B6, P.UDP, P.udp(1, 2))
    assert classify(policy, mapped, slots={"v4": 16}).rule_id is None
    any6 = load_policy_text("rules: [{id: all6, action: drop, src: ['::/0']}]")
    assert classify(any6, TCP4, slots={"all6": 16}).rule_id is None
    assert classify(any6, mapped, slots={"all6": 16}).rule_id == "all6"
    any4 = load_policy_text("rules: [{id: all4, action: drop, dst: ['0.0.0.0/0']}]")
    assert classify(any4, TCP4, slots={"all4": 16}).rule_id == "all4"
    assert classify(any4, mapped, slots={"all4": 16}).rule_id is None


def test_mixed_family_pairs_never_match() -> None:
    policy = load_policy_text(
        "rules: [{id: r, action: drop, src: [198.18.0.0/15, '::/0'], dst: [198.19.0.2]}]"
    )
    v6 = P.eth_ipv6(A6, "::ffff:198.19.0.2", P.UDP, P.udp(1, 2))
    assert classify(policy, v6, slots={"r": 16}).rule_id is None  # ::/0 x IPv4 dst skipped
    assert classify(policy, TCP4, slots={"r": 16}).rule_id == "r"


# --- robustness ---------------------------------------------------------------------

FRAMES = [
    TCP4,
    UDP6,
    P.eth_ipv6(A6, B6, P.TCP, P.tcp(1, 2), ext=[P.hop_by_hop(), P.fragment(0, m=True), P.ah()]),
    P.eth(P.ipv4(A4, B4, P.ICMP, P.icmp()), P.ETH_P_IP, vlans=[1, 2]),
]


@given(st.binary(max_size=120))
def test_any_bytes_parse_to_a_defined_kind(frame: bytes) -> None:
    p = parse_packet(frame, 1)
    assert p.kind in PacketKind
    if p.kind is PacketKind.IP:
        assert p.family in (4, 6) and p.src is not None and p.src.version == p.family
        assert not (p.has_ports and p.is_icmp)
        assert not p.later_fragment or (p.fragment and not p.has_ports and not p.is_icmp)


@given(st.sampled_from(FRAMES), st.data())
def test_mutated_frames_never_crash_and_decide(frame: bytes, data: st.DataObject) -> None:
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(buf[: data.draw(st.integers(0, len(buf)))])
    d = decide(cut)
    assert d.xdp_action in (XDP_DROP, XDP_PASS)
    assert (d.rule_id is None) == (d.slot < abi.SLOT_FIRST_RULE)
