"""A pure-Python model of the XDP program's search over an Engine's map contents.

It reads the Engine's classifier the way the kernel reads the maps: set
lookups into the key's set bits, then one key masked per tuple, one hash lookup
per tuple in min_prio order, stopping once no later tuple can beat the best
match. Used to check the compiler against the reference classifier without a
kernel.
"""

from __future__ import annotations

import ipaddress

from fwd.core import abi
from fwd.policy.compiler import KEY, VERDICT
from fwd.policy.engine import Engine
from fwd.policy.reference import XDP_DROP, XDP_PASS, Decision, PacketKind, ParsedPacket
from fwd.policy.model import Action, SetType


def _addr16(a: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bytes:
    assert a is not None
    return (bytes(10) + b"\xff\xff" + a.packed) if a.version == 4 else a.packed


def _member(engine: Engine, set_id: int, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    for s in engine.policy.sets:
        if s.type is SetType.PREFIX and engine.set_ids.get(s.name) == set_id:
            return any(n.version == addr.version and addr in n for n in s.networks())
    return False


def simulate(engine: Engine, p: ParsedPacket) -> Decision:
    """What the XDP program does with these maps: one hash lookup per tuple, best prio wins."""
    policy = engine.policy
    c = engine.classifier
    if p.kind is PacketKind.NON_IP:
        return Decision(XDP_PASS, abi.SLOT_NON_IP)
    dry = policy.dry_run
    if p.kind is PacketKind.MALFORMED:
        slot = abi.SLOT_MALFORMED
        return Decision(XDP_PASS, slot, would_drop=True) if dry else Decision(XDP_DROP, slot)
    assert p.src is not None and p.dst is not None
    src_sets = dst_sets = 0
    for set_id, direction in c.set_refs():
        addr = p.src if direction == abi.DIR_SRC else p.dst
        if _member(engine, set_id, addr):
            if direction == abi.DIR_SRC:
                src_sets |= 1 << set_id
            else:
                dst_sets |= 1 << set_id
    sport = p.icmp_type if p.is_icmp else p.sport
    dport = p.icmp_code if p.is_icmp else p.dport
    best: tuple[int, int, int, int] | None = None  # prio, slot, action, flags
    for t in c.tuples():
        if best is not None and t.min_prio >= best[0]:
            break  # no later tuple can beat it
        key = KEY.pack(t.tuple_id, p.ifindex, _addr16(p.src), _addr16(p.dst), sport, dport,
                       src_sets, dst_sets, p.proto, p.tcp_flags, p.l4, 0)  # fmt: skip
        mask = KEY.pack(0xFFFFFFFF, t.ifindex_mask, bytes(t.src_mask), bytes(t.dst_mask),
                        t.sport_mask, t.dport_mask, t.src_sets_mask, t.dst_sets_mask,
                        t.proto_mask, t.tcp_flags_mask, t.l4_mask, 0)  # fmt: skip
        masked = bytes(a & b for a, b in zip(key, mask))
        hit = c.verdict_of(masked)
        if hit is not None:
            prio, slot, action, flags, _ = VERDICT.unpack(hit)
            if best is None or prio < best[0]:
                best = (prio, slot, action, flags)
    if best is None:
        drop, slot = policy.default_action is Action.DROP, abi.SLOT_DEFAULT
        rule_id, log, audit = None, drop and policy.log_default, False
    else:
        drop, slot = best[2] == abi.ACT_DROP, best[1]
        rule_id = next(r for r, s in engine.slots.items() if s == slot)
        log, audit = bool(best[3] & abi.RULE_LOG), bool(best[3] & abi.RULE_AUDIT)
    if drop and (dry or audit):
        return Decision(XDP_PASS, slot, rule_id, would_drop=True, log=log)
    return Decision(XDP_DROP if drop else XDP_PASS, slot, rule_id, log=log)
