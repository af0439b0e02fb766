"""A pure-Python reference classifier: what the XDP program must decide, written plainly.

It follows bpf/README.md "Packet semantics" byte for byte and evaluates the
rules in order, directly (no compiler, no tuples), so the BPF tests can compare
the kernel's verdict with it and the compiler tests can compare the compiled
tuple space with it.

Two consequences of the contract that a reader might not expect, mirrored on
purpose: addresses compare as IPv4-mapped IPv6, so an IPv6 prefix covering
``::ffff:0:0/96`` (``::/0`` for one) also matches IPv4 packets and an IPv6
packet whose address is IPv4-mapped matches IPv4 prefixes; and ICMP type/code
are parsed for protocol 1 and 58 whatever the IP version.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace

from fwd.core import abi
from fwd.policy.model import Action, IPNetwork, NamedSet, Policy, PortRange, Rule

XDP_DROP = 1
XDP_PASS = 2

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = frozenset({0x8100, 0x88A8})
IPV6_EXT_BY_8 = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
IPV6_EXT_AH = 51
IPV6_EXT_FRAG = 44
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP = 1, 6, 17, 58, 132

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PacketKind(enum.Enum):
    """How the data plane sees a frame before any rule."""

    MALFORMED = "malformed"
    NON_IP = "non-ip"
    IP = "ip"


@dataclass(frozen=True)
class ParsedPacket:
    """The fields the data plane extracts from a frame.

    ``sport``/``dport`` are real ports (only when ``has_ports``); ICMP type and
    code are in ``icmp_type``/``icmp_code`` (only when ``is_icmp``).
    ``reason`` says why a frame is malformed or not IP, for test messages.
    """

    kind: PacketKind
    ifindex: int = 0
    family: int = 0
    src: IPAddress | None = None
    dst: IPAddress | None = None
    proto: int = 0
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    has_ports: bool = False
    is_icmp: bool = False
    icmp_type: int = 0
    icmp_code: int = 0
    fragment: bool = False
    later_fragment: bool = False
    reason: str = ""

    @property
    def l4(self) -> int:
        """The ``FWD_L4_*`` bits of the packet's key."""
        return (
            (abi.L4_PORTS if self.has_ports else 0)
            | (abi.L4_ICMP if self.is_icmp else 0)
            | (abi.L4_FRAG if self.fragment else 0)
            | (abi.L4_LATER_FRAG if self.later_fragment else 0)
            | (abi.L4_IPV6 if self.family == 6 else 0)
        )


@dataclass(frozen=True)
class Decision:
    """What the data plane does with a frame and which counter slot it lands in.

    ``would_drop`` is true exactly when a drop was turned into a pass by dry
    run or an audit rule, i.e. when the kernel adds the frame to
    ``would_drop_packets``.
    """

    xdp_action: int
    slot: int
    rule_id: str | None = None
    would_drop: bool = False
    log: bool = False


def _u16(frame: bytes, off: int) -> int:
    return (frame[off] << 8) | frame[off + 1]


def _malformed(ifindex: int, reason: str) -> ParsedPacket:
    return ParsedPacket(PacketKind.MALFORMED, ifindex=ifindex, reason=reason)


def parse_packet(frame: bytes, ifindex: int) -> ParsedPacket:
    """Parse a frame exactly as bpf/README.md "Packet semantics" says the program does."""
    end = len(frame)
    # 1. Ethernet, then up to FWD_MAX_VLAN tags.
    if end < 14:
        return _malformed(ifindex, "ethernet header truncated")
    ethertype = _u16(frame, 12)
    off = 14
    for _ in range(abi.MAX_VLAN):
        if ethertype not in VLAN_TPIDS:
            break
        if off + 4 > end:
            return _malformed(ifindex, "vlan tag truncated")
        ethertype = _u16(frame, off + 2)
        off += 4
    if ethertype == ETH_P_IP:
        return _parse_ipv4(frame, off, ifindex)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(frame, off, ifindex)
    return ParsedPacket(PacketKind.NON_IP, ifindex=ifindex, reason=f"ethertype {ethertype:#06x}")


def _parse_ipv4(frame: bytes, off: int, ifindex: int) -> ParsedPacket:
    # 2. IPv4: 20 bytes, version 4, ihl >= 5 and ihl * 4 bytes present.
    if off + 20 > len(frame):
        return _malformed(ifindex, "ipv4 header truncated")
    if frame[off] >> 4 != 4:
        return _malformed(ifindex, "ipv4 version is not 4")
    ihl = frame[off] & 0x0F
    if ihl < 5:
        return _malformed(ifindex, f"ipv4 ihl {ihl} < 5")
    if off + ihl * 4 > len(frame):
        return _malformed(ifindex, "ipv4 options truncated")
    frag = _u16(frame, off + 6)
    more_fragments, frag_offset = bool(frag & 0x2000), frag & 0x1FFF
    proto = frame[off + 9]
    src = ipaddress.IPv4Address(frame[off + 12 : off + 16])
    dst = ipaddress.IPv4Address(frame[off + 16 : off + 20])
    return _parse_l4(
        frame,
        off + ihl * 4,
        ifindex,
        4,
        src,
        dst,
        proto,
        fragment=more_fragments or frag_offset != 0,
        later=frag_offset != 0,
    )


def _parse_ipv6(frame: bytes, off: int, ifindex: int) -> ParsedPacket:
    # 3. IPv6: 40 bytes and version 6, then at most FWD_MAX_IPV6_EXT extension headers.
    end = len(frame)
    if off + 40 > end:
        return _malformed(ifindex, "ipv6 header truncated")
    if frame[off] >> 4 != 6:
        return _malformed(ifindex, "ipv6 version is not 6")
    nexthdr = frame[off + 6]
    src = ipaddress.IPv6Address(frame[off + 8 : off + 24])
    dst = ipaddress.IPv6Address(frame[off + 24 : off + 40])
    off += 40
    fragment = later = False
    walked = 0
    while nexthdr in IPV6_EXT_BY_8 or nexthdr in (IPV6_EXT_AH, IPV6_EXT_FRAG):
        if walked == abi.MAX_IPV6_EXT:
            return _malformed(ifindex, f"more than {abi.MAX_IPV6_EXT} ipv6 extension headers")
        walked += 1
        if off + 2 > end:  # next header and length bytes
            return _malformed(ifindex, f"ipv6 extension header {nexthdr} truncated")
        if nexthdr == IPV6_EXT_FRAG:
            length = 8
        elif nexthdr == IPV6_EXT_AH:
            length = (frame[off + 1] + 2) * 4
        else:
            length = (frame[off + 1] + 1) * 8
        if off + length > end:  # the whole header must be present
            return _malformed(ifindex, f"ipv6 extension header {nexthdr} truncated")
        current, nexthdr = nexthdr, frame[off]
        if current == IPV6_EXT_FRAG:
            fragment = True
            if _u16(frame, off + 2) >> 3:  # fragment offset, in 8-byte units
                later = True
                break  # no further headers in a later fragment: nexthdr is the protocol
        off += length
    return _parse_l4(frame, off, ifindex, 6, src, dst, nexthdr, fragment=fragment, later=later)


def _parse_l4(
    frame: bytes,
    off: int,
    ifindex: int,
    family: int,
    src: IPAddress,
    dst: IPAddress,
    proto: int,
    *,
    fragment: bool,
    later: bool,
) -> ParsedPacket:
    # 4. L4 fields, unless a later fragment (it has no L4 header).
    base = ParsedPacket(
        PacketKind.IP,
        ifindex=ifindex,
        family=family,
        src=src,
        dst=dst,
        proto=proto,
        fragment=fragment,
        later_fragment=later,
    )
    if later:
        return base
    end = len(frame)
    need = {PROTO_TCP: 20, PROTO_UDP: 8, PROTO_SCTP: 12, PROTO_ICMP: 4, PROTO_ICMPV6: 4}.get(proto)
    if need is None:
        return base  # other protocols carry no L4 fields
    if off + need > end:
        return _malformed(ifindex, f"protocol {proto} header truncated")
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        return replace(base, is_icmp=True, icmp_type=frame[off], icmp_code=frame[off + 1])
    flags = 0
    if proto == PROTO_TCP:
        doff = frame[off + 12] >> 4
        if doff < 5:
            return _malformed(ifindex, f"tcp doff {doff} < 5")
        if off + doff * 4 > end:
            return _malformed(ifindex, "tcp options truncated")
        flags = frame[off + 13]
    return replace(
        base, has_ports=True, sport=_u16(frame, off), dport=_u16(frame, off + 2), tcp_flags=flags
    )


# --- classification ------------------------------------------------------------


def _mapped(addr: IPAddress) -> int:
    """The 128-bit value the data plane compares: IPv4 as ::ffff:a.b.c.d."""
    return (0xFFFF << 32) | int(addr) if addr.version == 4 else int(addr)


def _in_prefix(addr: IPAddress, net: IPNetwork | None) -> bool:
    if net is None:
        return True
    if net.version != addr.version:
        return False  # families never cross (an IPv4-mapped IPv6 source is IPv6)
    if net.version == 4:
        value, plen = (0xFFFF << 32) | int(net.network_address), 96 + net.prefixlen
    else:
        value, plen = int(net.network_address), net.prefixlen
    shift = 128 - plen
    return (_mapped(addr) >> shift) == (value >> shift)


def _addresses_match(rule: Rule, src: IPAddress, dst: IPAddress) -> bool:
    # Some (source, destination) pair of the same family (or "any") must match both.
    for s in rule.src or (None,):
        if not _in_prefix(src, s):
            continue
        for d in rule.dst or (None,):
            if s is not None and d is not None and s.version != d.version:
                continue
            if _in_prefix(dst, d):
                return True
    return False


@functools.lru_cache(maxsize=256)
def _set_networks(named: NamedSet) -> tuple[IPNetwork, ...]:
    return tuple(named.networks())


def _in_set(addr: IPAddress, named: NamedSet | None) -> bool:
    # Families never cross: an IPv4 packet is looked up among the IPv4 elements only.
    return named is not None and any(_in_prefix(addr, n) for n in _set_networks(named))


def _port_ranges(
    policy: Policy, ranges: tuple[PortRange, ...], set_name: str | None
) -> tuple[PortRange, ...] | None:
    """The ranges a port field requires, or None for "any"."""
    if set_name is not None:
        named = policy.set_named(set_name)
        return named.ports if named is not None else ()
    return ranges or None


def rule_matches(
    rule: Rule, packet: ParsedPacket, ifname: str | None, policy: Policy | None = None
) -> bool:
    """Whether ``rule`` (of ``policy``, for its sets) matches an IP packet from ``ifname``."""
    if packet.kind is not PacketKind.IP or packet.src is None or packet.dst is None:
        return False
    policy = policy or Policy()
    if rule.interfaces and (ifname is None or not rule.matches_interface(ifname)):
        return False
    if rule.protocol is not None and packet.proto != rule.protocol:
        return False
    if rule.fragment is not None and packet.fragment != rule.fragment:
        return False
    sports = _port_ranges(policy, rule.src_ports, rule.src_port_set)
    dports = _port_ranges(policy, rule.dst_ports, rule.dst_port_set)
    if sports is not None or dports is not None or rule.tcp_flags is not None:
        if not packet.has_ports:  # later fragments and port-less protocols never match
            return False
        if sports is not None and not any(packet.sport in r for r in sports):
            return False
        if dports is not None and not any(packet.dport in r for r in dports):
            return False
        if rule.tcp_flags is not None and not rule.tcp_flags.matches(packet.tcp_flags):
            return False
    if rule.icmp_type is not None or rule.icmp_code is not None:
        if not packet.is_icmp:
            return False
        if rule.icmp_type is not None and packet.icmp_type != rule.icmp_type:
            return False
        if rule.icmp_code is not None and packet.icmp_code != rule.icmp_code:
            return False
    if rule.src_set is not None and not _in_set(packet.src, policy.set_named(rule.src_set)):
        return False
    if rule.dst_set is not None and not _in_set(packet.dst, policy.set_named(rule.dst_set)):
        return False
    return _addresses_match(rule, packet.src, packet.dst)


def _finish(policy: Policy, drop: bool, slot: int, rule: Rule | None) -> Decision:
    log = rule.log if rule is not None else (drop and policy.log_default)
    rule_id = rule.id if rule is not None else None
    if drop and (policy.dry_run or (rule is not None and rule.audit)):
        return Decision(XDP_PASS, slot, rule_id, would_drop=True, log=log)
    return Decision(XDP_DROP if drop else XDP_PASS, slot, rule_id, log=log)


def decide(
    policy: Policy,
    packet: ParsedPacket,
    *,
    ifnames: Mapping[int, str],
    slots: Mapping[str, int],
) -> Decision:
    """The verdict for an already parsed packet (README "Verdicts")."""
    if packet.kind is PacketKind.NON_IP:
        return Decision(XDP_PASS, abi.SLOT_NON_IP)
    if packet.kind is PacketKind.MALFORMED:
        return replace(_finish(policy, True, abi.SLOT_MALFORMED, None), log=False)
    ifname = ifnames.get(packet.ifindex)
    for rule in policy.rules:
        if rule_matches(rule, packet, ifname, policy):
            return _finish(policy, rule.action is Action.DROP, slots[rule.id], rule)
    return _finish(policy, policy.default_action is Action.DROP, abi.SLOT_DEFAULT, None)


def classify(
    policy: Policy,
    frame: bytes,
    *,
    ifindex: int = 1,
    ifnames: Mapping[int, str] = {},
    slots: Mapping[str, int],
) -> Decision:
    """Parse ``frame`` as received on ``ifindex`` and decide it under ``policy``."""
    return decide(policy, parse_packet(frame, ifindex), ifnames=ifnames, slots=slots)
