"""One rule into tuple-space entries (pure): the cross product of its field values.

The layout is bpf/README.md "Classification": every rule is the cross product of
its source and destination prefixes (mixed families skipped), its port ranges
split into aligned prefix blocks (port sets expanded into them) and its
interfaces (globs resolved to ifindexes); prefix sets, TCP flags, ICMP type and
code and the fragment bit are one value each. Each combination is one
``(signature, value)`` pair: the signature is the tuple's mask, the value the
masked key without its tuple id.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fwd.core import abi
from fwd.errors import CapacityError
from fwd.policy.model import Action, IPNetwork, PortRange, Rule

# Native byte order, no implicit padding: the field order of struct fwd_verdict / fwd_entry.
VERDICT = struct.Struct("=IIBBH")
ABSENT = VERDICT.pack(abi.PRIO_ABSENT, 0, 0, 0, 0)

_ZERO16 = bytes(16)
_V4_MAPPED = bytes(10) + b"\xff\xff"
_ALL128 = (1 << 128) - 1
# Address mask bytes by prefix length (0-128) over the 16-byte IPv4-mapped address.
ADDR_MASKS: tuple[bytes, ...] = tuple(
    (_ALL128 ^ ((1 << (128 - n)) - 1)).to_bytes(16, "big") for n in range(129)
)

# A tuple's mask: (ifindex, src plen, dst plen, sport, dport, src sets, dst sets, proto,
# tcp flags, l4).
Sig = tuple[int, int, int, int, int, int, int, int, int, int]
# A masked key without its tuple id, same field order.
Val = tuple[int, bytes, bytes, int, int, int, int, int, int, int]
# (prefix length over 128 bits, 16-byte value, IP version or 0 for "any")
_Addr = tuple[int, bytes, int]
_ANY_ADDR: list[_Addr] = [(0, _ZERO16, 0)]
_ANY_FIELD: list[tuple[int, int]] = [(0, 0)]  # (mask, value)


@dataclass(frozen=True)
class Context:
    """What a rule's expansion depends on besides the rule."""

    ifindexes: Mapping[str, int] = field(default_factory=dict)
    set_ids: Mapping[str, int] = field(default_factory=dict)  # prefix set name -> bit
    port_sets: Mapping[str, tuple[PortRange, ...]] = field(default_factory=dict)


def port_blocks(first: int, last: int) -> list[tuple[int, int]]:
    """Split the inclusive range first-last into the fewest aligned (value, mask) blocks."""
    blocks = []
    lo = first
    while lo <= last:
        size = lo & -lo if lo else 0x10000  # largest block aligned at lo
        while lo + size - 1 > last:
            size >>= 1
        blocks.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return blocks


def _merge_ranges(ranges: Sequence[PortRange]) -> list[tuple[int, int]]:
    """Overlapping or adjacent ranges merged: fewer blocks, same set of ports."""
    merged: list[list[int]] = []
    for r in sorted(ranges):
        if merged and r.first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], r.last)
        else:
            merged.append([r.first, r.last])
    return [(lo, hi) for lo, hi in merged]


@functools.lru_cache(maxsize=1024)
def _range_blocks(first: int, last: int) -> tuple[tuple[int, int], ...]:
    """(mask, value) blocks of one range; cached: policies repeat their ranges, and
    splitting one was half the cost of expanding a rule with a port range. Small:
    an entry is up to ~2 KB (a range splits into up to 30 blocks)."""
    return tuple((mask, value) for value, mask in port_blocks(first, last))


def _ports(ranges: Sequence[PortRange]) -> list[tuple[int, int]]:
    if len(ranges) == 1:
        r = ranges[0]
        if r.first == r.last:
            return [(0xFFFF, r.first)]
        return list(_range_blocks(r.first, r.last))
    return [block for lo, hi in _merge_ranges(ranges) for block in _range_blocks(lo, hi)]


def _port_field(
    ranges: tuple[PortRange, ...], set_name: str | None, ctx: Context
) -> list[tuple[int, int]]:
    if set_name is not None:
        # An empty port set matches nothing: no entries at all.
        return _ports(ctx.port_sets.get(set_name, ()))
    return _ports(ranges) if ranges else _ANY_FIELD


def _addr(net: IPNetwork) -> _Addr:
    if net.version == 4:
        return (96 + net.prefixlen, _V4_MAPPED + net.network_address.packed, 4)
    return (net.prefixlen, net.network_address.packed, 6)


def _addrs(nets: Sequence[IPNetwork]) -> list[_Addr]:
    if not nets:
        return _ANY_ADDR
    if len(nets) == 1:
        return [_addr(nets[0])]
    # Collapsing per family drops covered prefixes; the matched set is unchanged.
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    out = [_addr(n) for n in ipaddress.collapse_addresses(v4)]
    out += [_addr(n) for n in ipaddress.collapse_addresses(v6)]
    return out


def _interfaces(rule: Rule, ifindexes: Mapping[str, int]) -> list[tuple[int, int]]:
    if not rule.interfaces:
        return _ANY_FIELD
    found = sorted({ifindex for name, ifindex in ifindexes.items() if rule.matches_interface(name)})
    return [(0xFFFFFFFF, ifindex) for ifindex in found]


def _set_bit(name: str | None, ctx: Context) -> tuple[int, int]:
    if name is None:
        return (0, 0)
    bit = 1 << ctx.set_ids[name]
    return (bit, bit)


def set_refs(rule: Rule, ctx: Context) -> list[tuple[int, int]]:
    """The (set id, direction) lookups the rule needs the program to make."""
    refs = []
    if rule.src_set is not None:
        refs.append((ctx.set_ids[rule.src_set], abi.DIR_SRC))
    if rule.dst_set is not None:
        refs.append((ctx.set_ids[rule.dst_set], abi.DIR_DST))
    return refs


def verdict(rule: Rule, prio: int, slot: int) -> bytes:
    """The packed struct fwd_verdict of ``rule`` at priority ``prio``."""
    action = abi.ACT_DROP if rule.action is Action.DROP else abi.ACT_ALLOW
    flags = (abi.RULE_LOG if rule.log else 0) | (abi.RULE_AUDIT if rule.audit else 0)
    return VERDICT.pack(prio, slot, action, flags, 0)


def expand(rule: Rule, ctx: Context, limit: int) -> list[tuple[Sig, Val]]:
    """Every (signature, value) pair of ``rule``; all distinct.

    Raises CapacityError before enumerating when the expansion exceeds ``limit``.
    """
    proto_mask, proto = (0, 0) if rule.protocol is None else (0xFF, rule.protocol)
    l4_mask = l4 = 0
    sports = _port_field(rule.src_ports, rule.src_port_set, ctx)
    dports = _port_field(rule.dst_ports, rule.dst_port_set, ctx)
    if sports is not _ANY_FIELD or dports is not _ANY_FIELD or rule.tcp_flags is not None:
        # Ports and TCP flags need the packet to carry an L4 header (README, step 5).
        l4_mask |= abi.L4_PORTS
        l4 |= abi.L4_PORTS
    tf_mask, tf = (0, 0) if rule.tcp_flags is None else (rule.tcp_flags.mask, rule.tcp_flags.value)
    if rule.icmp_type is not None or rule.icmp_code is not None:
        # ICMP type and code travel in sport / dport with FWD_L4_ICMP set.
        l4_mask |= abi.L4_ICMP
        l4 |= abi.L4_ICMP
        sports = _ANY_FIELD if rule.icmp_type is None else [(0xFFFF, rule.icmp_type)]
        dports = _ANY_FIELD if rule.icmp_code is None else [(0xFFFF, rule.icmp_code)]
    if rule.fragment is not None:
        l4_mask |= abi.L4_FRAG
        l4 |= abi.L4_FRAG if rule.fragment else 0
    ss_mask, ss = _set_bit(rule.src_set, ctx)
    ds_mask, ds = _set_bit(rule.dst_set, ctx)
    ifaces = _interfaces(rule, ctx.ifindexes)
    srcs, dsts = _addrs(rule.src), _addrs(rule.dst)
    size = len(srcs) * len(dsts) * len(sports) * len(dports) * len(ifaces)
    if size > limit:
        raise CapacityError(
            f"rule {rule.id!r} expands to up to {size} map entries; the limit is {limit}"
        )
    out: list[tuple[Sig, Val]] = []
    for s_plen, s_val, s_ver in srcs:
        for d_plen, d_val, d_ver in dsts:
            if s_ver and d_ver and s_ver != d_ver:
                continue  # an IPv4 source never pairs with an IPv6 destination
            # A rule with addresses matches their family only.
            ver = s_ver or d_ver
            fam_mask = abi.L4_IPV6 if ver else 0
            fam = abi.L4_IPV6 if ver == 6 else 0
            for sp_mask, sp in sports:
                for dp_mask, dp in dports:
                    for if_mask, ifindex in ifaces:
                        out.append(
                            (
                                (if_mask, s_plen, d_plen, sp_mask, dp_mask, ss_mask, ds_mask,
                                 proto_mask, tf_mask, l4_mask | fam_mask),
                                (ifindex, s_val, d_val, sp, dp, ss, ds, proto, tf, l4 | fam),
                            )
                        )  # fmt: skip
    return out
