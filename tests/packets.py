"""Builders for crafted frames (no scapy): Ethernet, VLAN, IPv4, IPv6 and its extension
headers, TCP, UDP, SCTP, ICMP, ICMPv6, ARP.

Each L4 builder returns header + payload bytes; ``ipv4``/``ipv6`` wrap them and
fill in the TCP/UDP/ICMPv6 checksum (pseudo header) when the packet is not a
fragment, so the same frames can be sent through real sockets. XDP itself never
checks checksums. ``truncations`` cuts a frame at every header boundary.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)

TCP, UDP, SCTP, ICMP, ICMPV6 = 6, 17, 132, 1, 58
HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS, NONEXT = 0, 43, 44, 51, 60, 59
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")

# Checksum offsets within the L4 header, for the protocols with a pseudo-header checksum.
_CSUM_OFFSET = {TCP: 16, UDP: 6, ICMPV6: 2}


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def eth(
    payload: bytes,
    ethertype: int,
    vlans: Sequence[int | tuple[int, int]] = (),
    src: bytes = SRC_MAC,
    dst: bytes = DST_MAC,
) -> bytes:
    """An Ethernet frame; ``vlans`` are VLAN ids (TPID 0x8100) or (tpid, vid), outer first."""
    tags = b""
    for tag in vlans:
        tpid, vid = (ETH_P_8021Q, tag) if isinstance(tag, int) else tag
        tags += struct.pack("!HH", tpid, vid & 0x0FFF)
    return dst + src + tags + struct.pack("!H", ethertype) + payload


def _fill_l4_checksum(proto: int, pseudo: bytes, payload: bytes) -> bytes:
    off = _CSUM_OFFSET.get(proto)
    if off is None or len(payload) < off + 2 or payload[off : off + 2] != b"\0\0":
        return payload
    csum = checksum(pseudo + payload)
    if proto == UDP and csum == 0:
        csum = 0xFFFF  # zero means "no checksum" in UDP
    return payload[:off] + struct.pack("!H", csum) + payload[off + 2 :]


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    ihl: int = 5,
    frag_offset: int = 0,
    mf: bool = False,
    version: int = 4,
    ttl: int = 64,
) -> bytes:
    """An IPv4 packet. ``frag_offset`` is the raw field (8-byte units).

    ``ihl`` > 5 adds NOP options; ``ihl`` < 5 only lies in the field (the
    header stays 20 bytes), as a malformed packet would.
    """
    options = b"\x01" * (max(ihl, 5) * 4 - 20)
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    if not mf and frag_offset == 0:
        pseudo = s + d + struct.pack("!BBH", 0, proto, len(payload))
        payload = _fill_l4_checksum(proto, pseudo, payload)
    frag = (0x2000 if mf else 0) | (frag_offset & 0x1FFF)
    total = 20 + len(options) + len(payload)
    header = (
        struct.pack(
            "!BBHHHBBH4s4s",
            (version << 4) | (ihl & 0x0F),
            0,
            total & 0xFFFF,
            0x1234,
            frag,
            ttl,
            proto,
            0,
            s,
            d,
        )
        + options
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


@dataclass(frozen=True)
class Ext:
    """An IPv6 extension header waiting for its next-header value."""

    code: int
    body: bytes  # everything after the next-header byte

    def build(self, nexthdr: int) -> bytes:
        return bytes([nexthdr]) + self.body


def _padded_options(code: int, hdrlen: int, prefix: bytes = b"") -> Ext:
    """An extension of (hdrlen + 1) * 8 bytes; the space after ``prefix`` is one PadN option."""
    room = (hdrlen + 1) * 8 - 2 - len(prefix)
    pad = b"" if room == 0 else (b"\x00" if room == 1 else bytes([1, room - 2]) + bytes(room - 2))
    return Ext(code, bytes([hdrlen]) + prefix + pad)


def hop_by_hop(hdrlen: int = 0) -> Ext:
    """A hop-by-hop options header of (hdrlen + 1) * 8 bytes."""
    return _padded_options(HOPOPTS, hdrlen)


def dstopts(hdrlen: int = 0) -> Ext:
    """A destination options header of (hdrlen + 1) * 8 bytes."""
    return _padded_options(DSTOPTS, hdrlen)


def routing(hdrlen: int = 0, routing_type: int = 4, segments_left: int = 0) -> Ext:
    """A routing header of (hdrlen + 1) * 8 bytes (segments_left 0: nothing to route)."""
    body = bytes([hdrlen, routing_type, segments_left]) + bytes((hdrlen + 1) * 8 - 4)
    return Ext(ROUTING, body)


def fragment(offset: int = 0, m: bool = False, ident: int = 0x01020304) -> Ext:
    """A fragment header; ``offset`` in 8-byte units, ``m`` = more fragments."""
    return Ext(FRAGMENT, struct.pack("!BHI", 0, (offset << 3) | int(m), ident))


def ah(hdrlen: int = 4, spi: int = 0x100, seq: int = 1) -> Ext:
    """An authentication header of (hdrlen + 2) * 4 bytes (hdrlen >= 1)."""
    return Ext(AH, struct.pack("!BHII", hdrlen, 0, spi, seq) + bytes((hdrlen + 2) * 4 - 12))


def ipv6(
    src: str,
    dst: str,
    nexthdr: int,
    payload: bytes,
    ext: Sequence[Ext] = (),
    version: int = 6,
    hop_limit: int = 64,
) -> bytes:
    """An IPv6 packet carrying ``ext`` headers in order, then ``nexthdr`` / ``payload``."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    if not any(e.code in (FRAGMENT, ROUTING) for e in ext):
        pseudo = s + d + struct.pack("!IxxxB", len(payload), nexthdr)
        payload = _fill_l4_checksum(nexthdr, pseudo, payload)
    codes = [e.code for e in ext] + [nexthdr]
    chain = b"".join(e.build(codes[i + 1]) for i, e in enumerate(ext))
    body = chain + payload
    first = struct.pack("!IHBB", version << 28, len(body) & 0xFFFF, codes[0], hop_limit)
    return first + s + d + body


def tcp(
    sport: int,
    dport: int,
    flags: int = SYN,
    doff: int = 5,
    payload: bytes = b"",
    seq: int = 1,
    ack: int = 0,
) -> bytes:
    """A TCP segment; ``doff`` > 5 adds NOP options, ``doff`` < 5 only lies in the field."""
    options = b"\x01" * (max(doff, 5) * 4 - 20)
    header = struct.pack(
        "!HHIIBBHHH", sport, dport, seq, ack, (doff & 0x0F) << 4, flags, 65535, 0, 0
    )
    return header + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP datagram (checksum filled in by ipv4/ipv6)."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int, vtag: int = 0, chunks: bytes = b"") -> bytes:
    """An SCTP packet: the 12-byte common header (CRC32c left zero) and ``chunks``."""
    return struct.pack("!HHII", sport, dport, vtag, 0) + chunks


def icmp(icmp_type: int = 8, code: int = 0, payload: bytes = b"\0\1\0\1") -> bytes:
    """An ICMP message with its checksum (payload: identifier and sequence for echo)."""
    msg = struct.pack("!BBH", icmp_type, code, 0) + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def icmpv6(icmp_type: int = 128, code: int = 0, payload: bytes = b"\0\1\0\1") -> bytes:
    """An ICMPv6 message (checksum filled in by ipv6)."""
    return struct.pack("!BBH", icmp_type, code, 0) + payload


def arp(sender: str = "198.18.0.1", target: str = "198.18.0.2", op: int = 1) -> bytes:
    """An ARP payload (request by default); wrap it with ``eth(arp(), ETH_P_ARP)``."""
    return (
        struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op)
        + SRC_MAC
        + ipaddress.IPv4Address(sender).packed
        + bytes(6)
        + ipaddress.IPv4Address(target).packed
    )


def eth_ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    ihl: int = 5,
    frag_offset: int = 0,
    mf: bool = False,
) -> bytes:
    """Shortcut: an Ethernet frame around ``ipv4(...)``."""
    return eth(ipv4(src, dst, proto, payload, ihl=ihl, frag_offset=frag_offset, mf=mf), ETH_P_IP)


def eth_ipv6(src: str, dst: str, nexthdr: int, payload: bytes, ext: Sequence[Ext] = ()) -> bytes:
    """Shortcut: an Ethernet frame around ``ipv6(...)``."""
    return eth(ipv6(src, dst, nexthdr, payload, ext), ETH_P_IPV6)


# --- truncation ---------------------------------------------------------------

_L4_LEN = {UDP: 8, SCTP: 12, ICMP: 4, ICMPV6: 4}


def header_boundaries(frame: bytes) -> list[int]:
    """Offsets where a header of ``frame`` ends, walking it without judging it."""
    out = [14]
    if len(frame) < 14:
        return out
    off, ethertype = 14, struct.unpack_from("!H", frame, 12)[0]
    while ethertype in VLAN_TPIDS and off + 4 <= len(frame):
        ethertype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
        out.append(off)
    proto = -1
    if ethertype == ETH_P_IP and off + 20 <= len(frame):
        out.append(off + 20)
        ihl, frag = frame[off] & 0x0F, struct.unpack_from("!H", frame, off + 6)[0]
        off += max(ihl, 5) * 4
        out.append(off)
        proto = frame[off - max(ihl, 5) * 4 + 9] if not frag & 0x1FFF else -1
    elif ethertype == ETH_P_IPV6 and off + 40 <= len(frame):
        proto = frame[off + 6]
        off += 40
        out.append(off)
        while proto in (HOPOPTS, ROUTING, DSTOPTS, AH, FRAGMENT) and off + 8 <= len(frame):
            if proto == FRAGMENT:
                length = 8
            elif proto == AH:
                length = (frame[off + 1] + 2) * 4
            else:
                length = (frame[off + 1] + 1) * 8
            later = proto == FRAGMENT and struct.unpack_from("!H", frame, off + 2)[0] >> 3
            proto = frame[off] if not later else -1
            off += length
            out.append(off)
    if proto == TCP:
        out.append(off + 20)
        if off + 13 <= len(frame):
            out.append(off + max(frame[off + 12] >> 4, 5) * 4)
    elif proto in _L4_LEN:
        out.append(off + _L4_LEN[proto])
    return sorted(set(out))


def truncations(frame: bytes) -> Iterator[bytes]:
    """``frame`` cut at every header boundary and one byte short of each (shorter than whole)."""
    cuts = {n for b in header_boundaries(frame) for n in (b - 1, b) if 0 <= n < len(frame)}
    for n in sorted(cuts):
        yield frame[:n]
