"""A pure-Python model of the XDP program's tuple-space search over compiled map contents.

It reads a CompiledPolicy the way the kernel reads the maps: one key built from
the packet, masked per tuple, one hash lookup per tuple in min_prio order,
stopping once no later tuple can beat the best match. Used to check the
compiler against the reference classifier without a kernel.
"""

from __future__ import annotations

import ipaddress
import struct

from fwd.bpf import abi
from fwd.policy.compiler import CompiledPolicy
from fwd.policy.model import Policy
from fwd.policy.reference import XDP_DROP, XDP_PASS, Decision, PacketKind, ParsedPacket

# struct fwd_key, field by field (the compiler checks the size against ctypes).
_KEY = struct.Struct("=II16s16sHHBBBB")


def _addr16(a: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bytes:
    assert a is not None
    return (bytes(10) + b"\xff\xff" + a.packed) if a.version == 4 else a.packed


def simulate(c: CompiledPolicy, policy: Policy, p: ParsedPacket) -> Decision:
    """What the XDP program does with these maps: one hash lookup per tuple, best prio wins."""
    if p.kind is PacketKind.NON_IP:
        return Decision(XDP_PASS, abi.SLOT_NON_IP)
    dry = bool(c.config.flags & abi.GEN_DRY_RUN)
    if p.kind is PacketKind.MALFORMED:
        slot = abi.SLOT_MALFORMED
        return Decision(XDP_PASS, slot, would_drop=True) if dry else Decision(XDP_DROP, slot)
    size = _KEY.size
    table = {c.keys[i * size : (i + 1) * size]: v for i, (_, v) in enumerate(c.entries())}
    sport = p.icmp_type if p.is_icmp else p.sport
    dport = p.icmp_code if p.is_icmp else p.dport
    best: abi.Verdict | None = None
    for index, t in enumerate(c.tuples):
        if best is not None and t.min_prio > best.prio:
            break  # no later tuple can beat it
        tid = c.gen * abi.MAX_TUPLES + index
        key = _KEY.pack(
            tid,
            p.ifindex,
            _addr16(p.src),
            _addr16(p.dst),
            sport,
            dport,
            p.proto,
            p.tcp_flags,
            p.l4,
            0,
        )
        mask = _KEY.pack(
            0xFFFFFFFF,  # the tuple index is always compared whole
            t.ifindex_mask,
            bytes(t.src_mask),
            bytes(t.dst_mask),
            t.sport_mask,
            t.dport_mask,
            t.proto_mask,
            t.tcp_flags_mask,
            t.l4_mask,
            0,
        )
        masked = bytes(a & b for a, b in zip(key, mask))
        hit = table.get(masked)
        if hit is not None and (best is None or hit.prio < best.prio):
            best = hit
    if best is None:
        drop, slot = c.config.default_action == abi.ACT_DROP, abi.SLOT_DEFAULT
        rule_id, log = None, False
    else:
        drop, slot = best.action == abi.ACT_DROP, best.slot
        rule_id, log = policy.rules[best.prio].id, bool(best.flags & abi.RULE_LOG)
    if drop and dry:
        return Decision(XDP_PASS, slot, rule_id, would_drop=True, log=log)
    return Decision(XDP_DROP if drop else XDP_PASS, slot, rule_id, log=log)
