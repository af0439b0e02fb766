"""Compile a Policy into tuple-space-search map contents (pure: no kernel, no I/O).

The layout and its semantics are bpf/README.md "Classification": every rule is
the cross product of its source and destination prefixes (mixed families
skipped), its port ranges split into aligned prefix blocks and its interfaces;
each combination is one ``(mask, masked key) -> verdict`` entry; entries with
the same mask form a tuple. The rule at position p has priority p, so the
first matching rule wins.

The output is packed bytes ready for ``bpf_map_update_batch``: building a
ctypes object per entry costs ~10x more than ``struct.pack`` at 100,000 rules.
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from fwd.bpf import abi
from fwd.errors import CapacityError, PolicyError
from fwd.policy.model import Action, IPNetwork, Policy, PortRange, Rule

# Native byte order, no implicit padding: the field order of struct fwd_key / _tuple / _verdict.
_KEY = struct.Struct("=II16s16sHHBBBB")
_TUPLE = struct.Struct("=I16s16sHHBBBBI")
_VERDICT = struct.Struct("=IIBBH")
for _packer, _ctype in ((_KEY, abi.Key), (_TUPLE, abi.Tuple), (_VERDICT, abi.Verdict)):
    if _packer.size != ctypes.sizeof(_ctype):  # pragma: no cover - caught by test_compiler
        raise RuntimeError(f"{_ctype.__name__}: struct size {_packer.size} != ctypes size")

KEY_SIZE = _KEY.size
VERDICT_SIZE = _VERDICT.size
DEFAULT_MAX_ENTRIES = abi.DEFAULT_RULE_ENTRIES // 2
"""Entries of one generation: the hash holds both while an apply is in flight."""

_ZERO16 = bytes(16)
_V4_MAPPED = bytes(10) + b"\xff\xff"
_ALL128 = (1 << 128) - 1
# Address mask bytes by prefix length (0-128) over the 16-byte IPv4-mapped address.
ADDR_MASKS: tuple[bytes, ...] = tuple(
    (_ALL128 ^ ((1 << (128 - n)) - 1)).to_bytes(16, "big") for n in range(129)
)

# (prefix length over 128 bits, 16-byte value, IP version or 0 for "any")
_Addr = tuple[int, bytes, int]
_ANY_ADDR: list[_Addr] = [(0, _ZERO16, 0)]
_ANY_FIELD: list[tuple[int, int]] = [(0, 0)]  # (mask, value)


def assign_slots(
    previous: Mapping[str, int], rule_ids: Sequence[str], max_slots: int = abi.MAX_SLOTS
) -> dict[str, int]:
    """Counter slots for ``rule_ids``: kept ids keep their slot, new ids take the lowest free one.

    Slots of ids no longer present are freed. Raises CapacityError when the
    rules do not fit in ``[abi.SLOT_FIRST_RULE, max_slots)``.
    """
    wanted = dict.fromkeys(rule_ids)  # ordered, duplicates collapsed
    capacity = max_slots - abi.SLOT_FIRST_RULE
    if len(wanted) > capacity:
        raise CapacityError(f"{len(wanted)} rules exceed the {capacity} counter slots")
    if not previous:  # first apply: slots in rule order
        return dict(zip(wanted, range(abi.SLOT_FIRST_RULE, max_slots)))
    result: dict[str, int] = {}
    used: set[int] = set()
    for rule_id in wanted:
        slot = previous.get(rule_id)
        # A slot out of range or already taken (corrupt state) is reassigned, not trusted.
        if slot is not None and abi.SLOT_FIRST_RULE <= slot < max_slots and slot not in used:
            result[rule_id] = slot
            used.add(slot)
    candidate = abi.SLOT_FIRST_RULE
    for rule_id in wanted:
        if rule_id in result:
            continue
        while candidate in used:
            candidate += 1
        # The capacity check above guarantees candidate < max_slots here.
        result[rule_id] = candidate
        used.add(candidate)
    return {rule_id: result[rule_id] for rule_id in wanted}


def fresh_slots(previous: Mapping[str, int], current: Mapping[str, int]) -> set[int]:
    """Slots whose rule id is new to them: their counters must start from zero.

    Judged per (id, slot) pair, not per slot number: a slot freed by one id and
    taken by another in the same apply is fresh although the number stays in use.
    """
    return {slot for rule_id, slot in current.items() if previous.get(rule_id) != slot}


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


def _ports(ranges: Sequence[PortRange]) -> list[tuple[int, int]]:
    if not ranges:
        return _ANY_FIELD
    if len(ranges) == 1:
        r = ranges[0]
        if r.first == r.last:
            return [(0xFFFF, r.first)]
        return [(mask, value) for value, mask in port_blocks(r.first, r.last)]
    return [
        (mask, value) for lo, hi in _merge_ranges(ranges) for value, mask in port_blocks(lo, hi)
    ]


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


def _pairs(srcs: list[_Addr], dsts: list[_Addr]) -> int:
    """Source/destination combinations left once mixed-family pairs are skipped."""
    s4 = sum(1 for a in srcs if a[2] == 4)
    s6 = sum(1 for a in srcs if a[2] == 6)
    d4 = sum(1 for a in dsts if a[2] == 4)
    d6 = sum(1 for a in dsts if a[2] == 6)
    return len(srcs) * len(dsts) - s4 * d6 - s6 * d4


@dataclass(frozen=True)
class CompiledPolicy:
    """One generation's map contents.

    ``keys`` and ``values`` are ``count`` packed ``abi.Key`` / ``abi.Verdict``
    structs back to back; ``tuples`` are sorted by ``min_prio`` and the i-th
    one is map index ``gen * abi.MAX_TUPLES + i``.
    """

    gen: int
    config: abi.GenConfig
    tuples: list[abi.Tuple]
    keys: bytes
    values: bytes
    count: int

    def entries(self) -> Iterator[tuple[abi.Key, abi.Verdict]]:
        """Each entry as ctypes structs (for tests and tools, not the apply path)."""
        for i in range(self.count):
            yield (
                abi.Key.from_buffer_copy(self.keys, i * KEY_SIZE),
                abi.Verdict.from_buffer_copy(self.values, i * VERDICT_SIZE),
            )


# A tuple's mask: (ifindex, src plen, dst plen, sport, dport, proto, l4).
_Sig = tuple[int, int, int, int, int, int, int]
# A masked key without its tuple index: (ifindex, src, dst, sport, dport, proto, l4).
_Val = tuple[int, bytes, bytes, int, int, int, int]


def compile_policy(
    policy: Policy,
    *,
    gen: int,
    slots: Mapping[str, int],
    ifindexes: Mapping[str, int],
    revision: int = 0,
    max_tuples: int = abi.MAX_TUPLES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> CompiledPolicy:
    """Compile ``policy`` into the contents of generation ``gen`` (0 or 1).

    ``slots`` maps every rule id to its counter slot (see ``assign_slots``);
    ``ifindexes`` maps interface names to ifindexes for the rules' globs.
    Raises CapacityError when the policy needs more than ``max_tuples`` masks
    or ``max_entries`` entries.
    """
    if gen not in (0, 1):
        raise ValueError(f"gen must be 0 or 1, not {gen!r}")
    if not 0 < max_tuples <= abi.MAX_TUPLES:
        raise ValueError(f"max_tuples must be 1-{abi.MAX_TUPLES}, not {max_tuples!r}")
    tuples: dict[_Sig, dict[_Val, int]] = {}
    verdicts: list[bytes] = []
    count = 0
    for prio, rule in enumerate(policy.rules):
        slot = slots.get(rule.id)
        if slot is None:
            raise PolicyError(f"rules[{prio}].id", f"no counter slot assigned to {rule.id!r}")
        action = abi.ACT_DROP if rule.action is Action.DROP else abi.ACT_ALLOW
        verdicts.append(_VERDICT.pack(prio, slot, action, abi.RULE_LOG if rule.log else 0, 0))
        proto_mask, proto = (0, 0) if rule.protocol is None else (0xFF, rule.protocol)
        # Any port constraint also requires the packet to carry ports (README, step 5).
        l4 = abi.L4_PORTS if rule.src_ports or rule.dst_ports else 0
        sports, dports = _ports(rule.src_ports), _ports(rule.dst_ports)
        ifaces = _interfaces(rule, ifindexes)
        srcs, dsts = _addrs(rule.src), _addrs(rule.dst)
        # A rule's own entries are all distinct (prefixes collapsed, port ranges merged),
        # so its expansion alone past the limit is an error: refuse before enumerating it.
        expansion = len(srcs) * len(dsts) * len(sports) * len(dports) * len(ifaces)
        if (
            expansion > max_entries
            and (expansion := _pairs(srcs, dsts) * len(sports) * len(dports) * len(ifaces))
            > max_entries
        ):
            raise CapacityError(
                f"rules[{prio}] ({rule.id!r}) expands to {expansion} map entries; "
                f"the limit is {max_entries}"
            )
        for s_plen, s_val, s_ver in srcs:
            for d_plen, d_val, d_ver in dsts:
                if s_ver and d_ver and s_ver != d_ver:
                    continue  # an IPv4 source never pairs with an IPv6 destination
                for sp_mask, sp in sports:
                    for dp_mask, dp in dports:
                        for if_mask, ifindex in ifaces:
                            # A rule with addresses matches their family only.
                            ver = s_ver or d_ver
                            fam_mask = abi.L4_IPV6 if ver else 0
                            fam = abi.L4_IPV6 if ver == 6 else 0
                            sig = (
                                if_mask, s_plen, d_plen, sp_mask, dp_mask, proto_mask,
                                l4 | fam_mask,
                            )
                            val = (ifindex, s_val, d_val, sp, dp, proto, l4 | fam)
                            bucket = tuples.get(sig)
                            if bucket is None:
                                bucket = tuples[sig] = {}
                            if val not in bucket:  # an earlier rule's identical key wins
                                bucket[val] = prio
                                count += 1
        if count > max_entries:
            raise CapacityError(
                f"rules[{prio}] ({rule.id!r}): the policy needs more than {max_entries} map entries"
            )
    if len(tuples) > max_tuples:
        raise CapacityError(
            f"the policy needs {len(tuples)} distinct masks (tuples); the limit is {max_tuples}"
        )
    return _pack(policy, gen, revision, tuples, verdicts, count)


def _pack(
    policy: Policy,
    gen: int,
    revision: int,
    tuples: dict[_Sig, dict[_Val, int]],
    verdicts: list[bytes],
    count: int,
) -> CompiledPolicy:
    # Rules were visited in order, so a bucket's first value is its lowest priority.
    ordered = sorted(tuples.items(), key=lambda item: next(iter(item[1].values())))
    key_parts: list[bytes] = []
    value_parts: list[bytes] = []
    tuple_structs: list[abi.Tuple] = []
    pack_key = _KEY.pack
    for index, (sig, bucket) in enumerate(ordered):
        if_mask, s_plen, d_plen, sp_mask, dp_mask, proto_mask, l4_mask = sig
        min_prio = next(iter(bucket.values()))
        tuple_structs.append(
            abi.Tuple.from_buffer_copy(
                _TUPLE.pack(
                    if_mask,
                    ADDR_MASKS[s_plen],
                    ADDR_MASKS[d_plen],
                    sp_mask,
                    dp_mask,
                    proto_mask,
                    0,
                    l4_mask,
                    0,
                    min_prio,
                )
            )
        )
        tuple_id = gen * abi.MAX_TUPLES + index
        for (ifindex, src, dst, sp, dp, proto, l4), prio in bucket.items():
            key_parts.append(pack_key(tuple_id, ifindex, src, dst, sp, dp, proto, 0, l4, 0))
            value_parts.append(verdicts[prio])
    config = abi.GenConfig(
        ntuples=len(ordered),
        default_action=abi.ACT_DROP if policy.default_action is Action.DROP else abi.ACT_ALLOW,
        flags=abi.GEN_DRY_RUN if policy.dry_run else 0,
        revision=revision,
    )
    return CompiledPolicy(
        gen=gen,
        config=config,
        tuples=tuple_structs,
        keys=b"".join(key_parts),
        values=b"".join(value_parts),
        count=count,
    )
