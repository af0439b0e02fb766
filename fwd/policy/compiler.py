"""Tuple-space contents of a policy, kept incrementally (pure: no kernel, no I/O).

A ``Classifier`` holds what the data plane's maps hold for one policy: the
entries ``key -> owning priority`` (keys carry a stable tuple id), the
verdict of each priority, and per tuple how many entries each priority owns.
Rules are added and removed one at a time (AddRule / DeleteRule touch only
that rule's entries) or a whole policy is built into a ``successor`` and
``diff``-ed against the live one. Either way the result is a list of changed
keys with their old and new verdicts: the Dataplane writes exactly those.

Priorities are sparse (``PRIO_SPACING`` apart) so a rule inserted between two
others takes the midpoint and nothing else changes; ``assign_prios`` says when
a renumbering (a whole-policy diff) is needed. When two rules produce the same
key, the lower priority owns the entry and the other is remembered in a small
shadow list, so deleting the owner hands the entry to the next rule.

Output is packed bytes ready for ``bpf_map_update_batch``.
"""

from __future__ import annotations

import bisect
import ctypes
import struct
from collections import Counter
from collections.abc import Mapping, Sequence

from fwd.core import abi
from fwd.errors import CapacityError
from fwd.policy.expand import (
    ABSENT,
    ADDR_MASKS,
    VERDICT,
    Context,
    Sig,
    Val,
    expand,
    port_blocks,
    set_refs,
    verdict,
)
from fwd.policy.model import Policy, Rule

__all__ = [
    "ABSENT", "ADDR_MASKS", "Change", "Classifier", "Context", "KEY", "PRIO_SPACING", "TUPLE",
    "VERDICT", "assign_prios", "assign_slots", "between", "build", "diff", "fresh_slots",
    "port_blocks",
]  # fmt: skip

# Native byte order, no implicit padding: the field order of struct fwd_key / fwd_tuple.
KEY = struct.Struct("=II16s16sHHHHBBBB")
TUPLE = struct.Struct("=I16s16sHHHHBBBBII")
for _packer, _ctype in ((KEY, abi.Key), (TUPLE, abi.Tuple), (VERDICT, abi.Verdict)):
    if _packer.size != ctypes.sizeof(_ctype):  # pragma: no cover - caught by test_compiler
        raise RuntimeError(f"{_ctype.__name__}: struct size {_packer.size} != ctypes size")

PRIO_SPACING = 4096
MAX_PRIO = abi.PRIO_ABSENT - 1
DEFAULT_MAX_ENTRIES = abi.DEFAULT_RULE_ENTRIES // 2
"""Entries of one policy: the hash holds the union of two while an apply is in flight."""

Change = tuple[bytes, bytes | None, bytes | None]
"""(key, verdict before, verdict after); None = absent."""


def _pack_key(tid: int, v: Val) -> bytes:
    ifindex, src, dst, sp, dp, ss, ds, proto, tf, l4 = v
    return KEY.pack(tid, ifindex, src, dst, sp, dp, ss, ds, proto, tf, l4, 0)


class Classifier:
    """The tuple-space contents of one policy, changed rule by rule."""

    def __init__(
        self,
        *,
        max_tuples: int = abi.MAX_TUPLES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        previous: Classifier | None = None,
    ) -> None:
        if not 0 < max_tuples <= abi.MAX_TUPLES:
            raise ValueError(f"max_tuples must be 1-{abi.MAX_TUPLES}, not {max_tuples!r}")
        self.max_tuples = max_tuples
        self.max_entries = max_entries
        self.entries: dict[bytes, int] = {}  # key -> owning prio
        self.verdicts: dict[int, bytes] = {}  # prio -> packed verdict
        self._shadow: dict[bytes, list[int]] = {}  # key -> other prios with it (sorted)
        self._ids: dict[Sig, int] = {}  # tuple signature -> stable id
        self._owned: dict[Sig, Counter[int]] = {}  # sig -> prio -> entries owned
        self._min: dict[Sig, int] = {}  # cached min prio per sig
        self._refs: Counter[tuple[int, int]] = Counter()  # (set id, dir) -> rules
        self._before: dict[bytes, bytes | None] = {}  # verdicts before the pending changes
        self._track = True  # off while ``build`` fills a fresh classifier
        # Ids of the predecessor (still in the kernel until the commit): reused for
        # the same signature, never handed to another one.
        self._reuse: dict[Sig, int] = dict(previous._ids) if previous else {}
        self._blocked: set[int] = set(previous._ids.values()) if previous else set()

    # --- reading ---------------------------------------------------------------

    def verdict_of(self, key: bytes) -> bytes | None:
        prio = self.entries.get(key)
        return None if prio is None else self.verdicts[prio]

    def tuple_count(self) -> int:
        return len(self._owned)

    def set_refs(self) -> list[tuple[int, int]]:
        """(set id, direction) pairs some rule needs, sorted."""
        return sorted(ref for ref, n in self._refs.items() if n > 0)

    def tuples(self) -> list[abi.Tuple]:
        """The tuples, sorted by the lowest priority they hold (the kernel's order)."""
        order = sorted(self._owned, key=self._min_prio)
        out = []
        for sig in order:
            if_mask, s_plen, d_plen, sp, dp, ss, ds, proto, tf, l4 = sig
            out.append(
                abi.Tuple.from_buffer_copy(
                    TUPLE.pack(if_mask, ADDR_MASKS[s_plen], ADDR_MASKS[d_plen], sp, dp, ss, ds,
                               proto, tf, l4, 0, self._ids[sig], self._min_prio(sig))
                )
            )  # fmt: skip
        return out

    def _min_prio(self, sig: Sig) -> int:
        cached = self._min.get(sig)
        if cached is None:
            cached = self._min[sig] = min(self._owned[sig])
        return cached

    # --- changing ----------------------------------------------------------------

    def add_rule(self, rule: Rule, prio: int, slot: int, ctx: Context) -> None:
        """Add ``rule``'s entries at ``prio`` (unused); CapacityError leaves nothing behind."""
        if prio in self.verdicts:
            raise ValueError(f"priority {prio} is taken")
        pairs = expand(rule, ctx, self.max_entries)
        self.verdicts[prio] = verdict(rule, prio, slot)
        self._refs.update(set_refs(rule, ctx))
        for sig, val in pairs:
            self._add(sig, val, prio)
        if len(self._owned) > self.max_tuples or len(self.entries) > self.max_entries:
            self.remove_rule(rule, prio, ctx)
            raise CapacityError(
                f"rule {rule.id!r}: the policy would need {len(self._owned) + 0} distinct masks "
                f"(limit {self.max_tuples}) and {len(self.entries)} entries "
                f"(limit {self.max_entries})"
            )

    def remove_rule(self, rule: Rule, prio: int, ctx: Context) -> None:
        """Remove the entries ``add_rule(rule, prio, ..., ctx)`` made."""
        for sig, val in expand(rule, ctx, 1 << 62):
            self._remove(sig, val, prio)
        self._refs.subtract(set_refs(rule, ctx))
        del self.verdicts[prio]

    def _tid(self, sig: Sig) -> int:
        tid = self._ids.get(sig)
        if tid is not None:
            return tid
        tid = self._reuse.get(sig)
        used = set(self._ids.values())
        if tid is None or tid in used:
            taken = used | self._blocked
            tid = next((i for i in range(abi.MAX_TUPLE_IDS) if i not in taken), None)
            if tid is None:  # pragma: no cover - 2 x MAX_TUPLES < MAX_TUPLE_IDS
                raise CapacityError("no free tuple id")
        self._ids[sig] = tid
        return tid

    def _touch(self, key: bytes) -> None:
        if self._track and key not in self._before:
            self._before[key] = self.verdict_of(key)

    def _add(self, sig: Sig, val: Val, prio: int) -> None:
        key = _pack_key(self._tid(sig), val)
        cur = self.entries.get(key)
        if cur is not None and cur < prio:
            bisect.insort(self._shadow.setdefault(key, []), prio)
            return
        self._touch(key)
        self.entries[key] = prio
        owned = self._owned.get(sig)
        if owned is None:
            owned = self._owned[sig] = Counter()
        owned[prio] += 1
        if cur is not None:  # prio takes the entry over from a later rule
            bisect.insort(self._shadow.setdefault(key, []), cur)
            self._disown(sig, cur)
        if sig in self._min and prio < self._min[sig]:
            self._min[sig] = prio

    def _remove(self, sig: Sig, val: Val, prio: int) -> None:
        key = _pack_key(self._ids[sig], val)
        if self.entries.get(key) != prio:
            shadow = self._shadow[key]
            shadow.remove(prio)
            if not shadow:
                del self._shadow[key]
            return
        self._touch(key)
        self._disown(sig, prio)
        rest = self._shadow.get(key)
        if rest:  # the next rule with the same key takes over
            nxt = rest.pop(0)
            if not rest:
                del self._shadow[key]
            self.entries[key] = nxt
            self._owned.setdefault(sig, Counter())[nxt] += 1
            self._min.pop(sig, None)
        else:
            del self.entries[key]
            if sig not in self._owned:
                # The id stays blocked until the commit: the live generation still uses it.
                self._blocked.add(self._ids.pop(sig))

    def _disown(self, sig: Sig, prio: int) -> None:
        owned = self._owned[sig]
        owned[prio] -= 1
        if owned[prio] == 0:
            del owned[prio]
            if self._min.get(sig) == prio:
                del self._min[sig]
            if not owned:
                del self._owned[sig]
                self._min.pop(sig, None)

    def take_changes(self) -> list[Change]:
        """The entries whose verdict differs from before the last ``take_changes``."""
        out = []
        for key, before in self._before.items():
            after = self.verdict_of(key)
            if after != before:
                out.append((key, before, after))
        self._before = {}
        return out

    def save_tuple_ids(self) -> tuple[dict[Sig, int], set[int]]:
        """A copy of the tuple-id bookkeeping (at most MAX_TUPLE_IDS entries)."""
        return dict(self._ids), set(self._blocked)

    def restore_tuple_ids(self, saved: tuple[dict[Sig, int], set[int]]) -> None:
        """Undo the id changes since ``save_tuple_ids``, before re-adding what was removed.

        Removing a tuple's last entry retires and blocks its id; re-adding the rule
        would then take a *new* id, while the kernel (never told about the removal,
        because the change was aborted) still holds the entries under the old one.
        """
        self._ids, self._blocked = dict(saved[0]), set(saved[1])

    def settle(self) -> None:
        """The kernel holds exactly this classifier now: retired ids may be reused."""
        self._reuse = {}
        self._blocked = set()


def diff(old: Classifier, new: Classifier) -> list[Change]:
    """Every key whose verdict differs between two classifiers (a whole-policy apply)."""
    out: list[Change] = []
    old_entries, old_v = old.entries, old.verdicts
    new_v = new.verdicts
    for key, prio in new.entries.items():
        before_prio = old_entries.get(key)
        after = new_v[prio]
        before = None if before_prio is None else old_v[before_prio]
        if before != after:
            out.append((key, before, after))
    new_entries = new.entries
    for key, prio in old_entries.items():
        if key not in new_entries:
            out.append((key, old_v[prio], None))
    return out


def assign_prios(previous: Mapping[str, int], rule_ids: Sequence[str]) -> list[int]:
    """Priorities for ``rule_ids`` in order, keeping previous ones where the order allows.

    An id keeps its previous priority while those still increase in the new
    order; the other ids are spread evenly between their neighbours. When a
    gap is too small every rule is renumbered ``PRIO_SPACING`` apart.
    """
    n = len(rule_ids)
    fixed: list[int | None] = [None] * n
    last = -1
    for i, rule_id in enumerate(rule_ids):
        p = previous.get(rule_id)
        if p is not None and p > last:
            fixed[i] = last = p
    out: list[int] = []
    lo, i = -1, 0
    while i < n:
        p = fixed[i]
        if p is not None:
            out.append(p)
            lo, i = p, i + 1
            continue
        j = i
        while j < n and fixed[j] is None:
            j += 1
        k = j - i
        nxt = fixed[j] if j < n else None
        hi = nxt if nxt is not None else lo + (k + 1) * PRIO_SPACING
        step = (hi - lo) // (k + 1)
        if step < 1 or hi > MAX_PRIO:
            return [(m + 1) * PRIO_SPACING for m in range(n)]
        out.extend(lo + step * (m + 1) for m in range(k))
        lo, i = out[-1], j
    return out


def between(lo: int | None, hi: int | None) -> int | None:
    """A priority strictly between two neighbours (None: no neighbour), or None if no gap."""
    low = -1 if lo is None else lo
    if hi is None:
        p = low + PRIO_SPACING
        return p if p <= MAX_PRIO else None
    p = (low + hi) // 2
    return p if low < p < hi else None


def build(
    policy: Policy,
    prios: Sequence[int],
    slots: Mapping[str, int],
    ctx: Context,
    previous: Classifier | None = None,
    *,
    max_tuples: int = abi.MAX_TUPLES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> Classifier:
    """A classifier holding every rule of ``policy`` (a successor of ``previous``)."""
    c = Classifier(max_tuples=max_tuples, max_entries=max_entries, previous=previous)
    c._track = False
    # The same result as ``c._add`` for every pair, faster: priorities only grow
    # here, so an existing key is always owned by an earlier rule (this one is
    # shadowed) and nothing is ever taken over.
    entries, shadow, owned, verdicts = c.entries, c._shadow, c._owned, c.verdicts
    tids: dict[Sig, int] = {}
    pack = KEY.pack
    last = -1
    for rule, prio in zip(policy.rules, prios, strict=True):
        if prio <= last:
            raise ValueError(f"priorities must increase: {prio} after {last}")
        last = prio
        pairs = expand(rule, ctx, max_entries)
        verdicts[prio] = verdict(rule, prio, slots[rule.id])
        refs = set_refs(rule, ctx)
        if refs:
            c._refs.update(refs)
        for sig, val in pairs:
            tid = tids.get(sig)
            if tid is None:
                tid = tids[sig] = c._tid(sig)
            key = pack(tid, *val, 0)  # _pack_key, inlined
            if key in entries:
                shadow.setdefault(key, []).append(prio)  # sorted: prios grow
                continue
            entries[key] = prio
            counts = owned.get(sig)
            if counts is None:
                counts = owned[sig] = Counter()
            counts[prio] = counts.get(prio, 0) + 1  # no Counter.__missing__ call
        if len(entries) > max_entries:
            raise CapacityError(
                f"rule {rule.id!r}: the policy needs more than {max_entries} map entries"
            )
    if len(c._owned) > max_tuples:
        raise CapacityError(
            f"the policy needs {len(c._owned)} distinct masks (tuples); the limit is {max_tuples}"
        )
    c._track = True
    return c
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


