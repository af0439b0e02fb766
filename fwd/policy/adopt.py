"""Taking over a kernel that already enforces a policy (pure: no kernel, no I/O).

A restarted agent finds the previous agent's maps (fwd.kernel.pins). Their
contents, read once (:class:`KernelView`), are the "before" of the first
commit instead of an empty map: the commit changes only the entries, set
elements, tuples and settings that differ from the desired policy, and when
nothing differs there is no commit at all.

Priorities and tuple ids are history-dependent (an inserted rule takes a
midpoint priority; a tuple keeps its id across updates), so a fresh compile of
the same policy could differ from the kernel byte for byte. The kernel's own
priorities and tuple ids are therefore read back (:func:`kernel_prios`,
:func:`kernel_tuple_ids`) and kept where they still fit, so adopting the
policy an agent left behind normally changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fwd.core import abi
from fwd.policy.compiler import ADDR_MASKS, TUPLE, VERDICT, Change
from fwd.policy.expand import Sig
from fwd.policy.setkeys import SET_KEY_SIZE


@dataclass(frozen=True)
class KernelView:
    """The policy maps as read at start (all empty for freshly created maps).

    ``entries`` maps a fwd_rules key to its (live, other) generation halves;
    ``sets`` and ``sets_other`` hold the fwd_sets keys of the live and the
    other generation, re-tagged as generation 0.
    """

    live: int = 0
    revision: int = 0
    entries: Mapping[bytes, tuple[bytes, bytes]] = field(default_factory=dict)
    sets: frozenset[bytes] = frozenset()
    sets_other: frozenset[bytes] = frozenset()
    config: bytes = b""  # fwd_gen[live]
    tuples: tuple[bytes, ...] = ()  # fwd_tuples of the live generation, in order

    @property
    def empty(self) -> bool:
        return not self.entries and not self.sets and self.revision == 0


def _absent(verdict: bytes) -> bool:
    return int(VERDICT.unpack(verdict)[0]) == abi.PRIO_ABSENT


def reconcile(desired: Mapping[bytes, bytes], view: KernelView) -> list[Change]:
    """Changes that turn the kernel's entries into ``desired`` (key -> verdict).

    "Before" is the live half. An entry whose other half disagrees with the
    live one (an apply was cut short) is rewritten even if its live half is
    right, so afterwards both halves agree, as outside an apply they must.
    """
    out: list[Change] = []
    entries = view.entries
    for key, after in desired.items():
        halves = entries.get(key)
        if halves is None:
            out.append((key, None, after))
            continue
        live, other = halves
        before = None if _absent(live) else live
        if before != after or other != live:
            out.append((key, before, after))
    for key, (live, _) in entries.items():
        if key not in desired:
            out.append((key, None if _absent(live) else live, None))
    return out


def set_changes(desired: bytes, view: KernelView) -> tuple[bytes, bytes]:
    """(add, remove): generation-0 set keys that turn the live generation into ``desired``."""
    want = {desired[i : i + SET_KEY_SIZE] for i in range(0, len(desired), SET_KEY_SIZE)}
    add = b"".join(sorted(want - view.sets))
    remove = b"".join(sorted(view.sets - want))
    return add, remove


def kernel_prios(view: KernelView, slots: Mapping[str, int]) -> dict[str, int]:
    """The priority each rule id has in the live generation, found through its counter slot.

    Only rules of ``slots`` are looked for; a slot the kernel uses for another
    priority than expected just yields a different hint (the diff stays right).
    """
    by_slot = {slot: rule_id for rule_id, slot in slots.items()}
    out: dict[str, int] = {}
    for live, _ in view.entries.values():
        prio, slot = VERDICT.unpack(live)[:2]
        rule_id = by_slot.get(slot)
        if rule_id is not None and prio != abi.PRIO_ABSENT:
            out.setdefault(rule_id, int(prio))
    return out


def kernel_tuple_ids(view: KernelView) -> dict[Sig, int]:
    """The tuple id of every mask signature the live generation uses."""
    masks = {m: plen for plen, m in enumerate(ADDR_MASKS)}
    out: dict[Sig, int] = {}
    for raw in view.tuples:
        if_mask, s_mask, d_mask, sp, dp, ss, ds, proto, tf, l4, _, tid, _ = TUPLE.unpack(raw)
        s_plen, d_plen = masks.get(s_mask), masks.get(d_mask)
        if s_plen is None or d_plen is None or tid >= abi.MAX_TUPLE_IDS:
            continue  # not something we wrote: no hint
        out[(if_mask, s_plen, d_plen, sp, dp, ss, ds, proto, tf, l4)] = int(tid)
    return out
