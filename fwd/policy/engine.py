"""The enforced policy and the map contents it needs, changed one operation at a time (pure).

``Engine`` is the Datapath's state without the I/O: the policy, its revision,
counter slots, rule priorities, prefix-set ids and the incremental
``Classifier``. Each operation (apply a whole policy, add or delete a rule,
add or remove set elements, interfaces changed) returns a ``Pending``: the
``Commit`` the Dataplane must make live, and ``finish()`` / ``abort()`` to
keep or roll back the state once the commit succeeded or failed. Nothing is
changed for good before ``finish()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fwd.core import abi
from fwd.errors import CapacityError, PolicyError
from fwd.policy.adopt import (
    KernelView,
    kernel_prios,
    kernel_tuple_ids,
    reconcile,
    set_changes,
)
from fwd.policy.compiler import (
    DEFAULT_MAX_ENTRIES,
    Change,
    Classifier,
    Context,
    assign_prios,
    assign_slots,
    between,
    build,
    diff,
    fresh_slots,
)
from fwd.policy.model import (
    EMPTY_POLICY,
    Action,
    NamedSet,
    Policy,
    Rule,
    SetType,
    check_rule_sets,
    rule_to_dict,
)
from fwd.policy.setkeys import assign_set_ids, set_keys


@dataclass(frozen=True)
class Commit:
    """One atomic change of the data plane: what differs from the live generation.

    ``changes`` are rule-map entries with their verdict before and after;
    ``tuples`` and the policy settings describe the new generation whole (they
    are small); ``set_add`` / ``set_remove`` are packed generation-0 fwd_sets
    keys (see fwd.policy.setkeys).
    """

    revision: int
    changes: Sequence[Change] = ()
    tuples: Sequence[abi.Tuple] = ()
    default_action: int = abi.ACT_ALLOW
    flags: int = 0
    set_refs: Sequence[tuple[int, int]] = ()
    set_add: bytes = b""
    set_remove: bytes = b""
    fresh_slots: Iterable[int] = ()


@dataclass
class Pending:
    """A prepared operation: make ``commit`` live, then ``finish()``; on failure ``abort()``."""

    commit: Commit
    policy: Policy
    finish: Callable[[], None]
    abort: Callable[[], None] = lambda: None
    slots: Mapping[str, int] | None = None  # whole-policy operations: every slot after
    change: dict[str, Any] | None = None  # incremental ones: the journal record


@dataclass
class _State:
    policy: Policy = EMPTY_POLICY
    revision: int = 0
    slots: dict[str, int] = field(default_factory=dict)
    prios: list[int] = field(default_factory=list)  # parallel to policy.rules
    ids: list[str] = field(default_factory=list)  # parallel to policy.rules
    set_ids: dict[str, int] = field(default_factory=dict)  # prefix set name -> bit
    ifindexes: dict[str, int] = field(default_factory=dict)


def _context(policy: Policy, set_ids: Mapping[str, int], ifindexes: Mapping[str, int]) -> Context:
    ports = {s.name: s.ports for s in policy.sets if s.type is SetType.PORT}
    return Context(ifindexes=ifindexes, set_ids=set_ids, port_sets=ports)


def _prefix_sets(policy: Policy) -> dict[str, NamedSet]:
    return {s.name: s for s in policy.sets if s.type is SetType.PREFIX}


def _set_diff(
    old: Mapping[str, NamedSet],
    old_ids: Mapping[str, int],
    new: Mapping[str, NamedSet],
    new_ids: Mapping[str, int],
) -> tuple[bytes, bytes]:
    """Keys to add and remove so every set id holds its new set's elements."""
    old_by_id = {old_ids[n]: s.prefixes for n, s in old.items()}
    new_by_id = {new_ids[n]: s.prefixes for n, s in new.items()}
    adds, removes = [], []
    for sid in sorted(set(old_by_id) | set(new_by_id)):
        before = old_by_id.get(sid, frozenset())
        after = new_by_id.get(sid, frozenset())
        if before is after:
            continue
        adds.append(set_keys(sid, after - before)[0])
        removes.append(set_keys(sid, before - after)[0])
    return b"".join(adds), b"".join(removes)


class Engine:
    """The Datapath's state and the pure half of every operation on it."""

    def __init__(
        self, *, max_tuples: int = abi.MAX_TUPLES, max_entries: int | None = None
    ) -> None:
        self._max_tuples = max_tuples
        self._max_entries = DEFAULT_MAX_ENTRIES if max_entries is None else max_entries
        self._s = _State()
        self.classifier = Classifier(max_tuples=max_tuples, max_entries=self._max_entries)

    # --- reading ---------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self._s.policy

    @property
    def revision(self) -> int:
        return self._s.revision

    @property
    def slots(self) -> dict[str, int]:
        return self._s.slots

    @property
    def set_ids(self) -> dict[str, int]:
        return self._s.set_ids

    @property
    def ifindexes(self) -> dict[str, int]:
        return self._s.ifindexes

    def index_of(self, rule_id: str) -> int | None:
        try:
            return self._s.ids.index(rule_id)
        except ValueError:
            return None

    def _commit(self, revision: int, policy: Policy, c: Classifier, **kw: object) -> Commit:
        flags = (abi.GEN_DRY_RUN if policy.dry_run else 0) | (
            abi.GEN_LOG_DEFAULT if policy.log_default else 0
        )
        refs = c.set_refs()
        if len(refs) > abi.MAX_SET_REFS:
            raise CapacityError(
                f"the policy looks up {len(refs)} (set, direction) pairs; "
                f"the limit is {abi.MAX_SET_REFS}"
            )
        return Commit(
            revision=revision,
            tuples=c.tuples(),
            default_action=abi.ACT_DROP if policy.default_action is Action.DROP else abi.ACT_ALLOW,
            flags=flags,
            set_refs=refs,
            **kw,  # type: ignore[arg-type]
        )

    # --- whole policies ------------------------------------------------------------

    def apply(
        self,
        policy: Policy,
        revision: int | None = None,
        slots: Mapping[str, int] | None = None,
        ifindexes: Mapping[str, int] | None = None,
    ) -> Pending:
        """Enforce ``policy`` whole (also: restore a stored one with its slots, relink)."""
        s = self._s
        revision = s.revision + 1 if revision is None else revision
        ids = [r.id for r in policy.rules]
        new_slots = assign_slots(slots if slots is not None else s.slots, ids)
        links = dict(s.ifindexes if ifindexes is None else ifindexes)
        new_sets = _prefix_sets(policy)
        set_ids = assign_set_ids(s.set_ids, list(new_sets))
        prios = assign_prios(dict(zip(s.ids, s.prios)), ids)
        ctx = _context(policy, set_ids, links)
        c = build(
            policy, prios, new_slots, ctx, self.classifier,
            max_tuples=self._max_tuples, max_entries=self._max_entries,
        )  # fmt: skip
        add, remove = _set_diff(_prefix_sets(s.policy), s.set_ids, new_sets, set_ids)
        commit = self._commit(
            revision, policy, c,
            changes=diff(self.classifier, c),
            set_add=add,
            set_remove=remove,
            fresh_slots=fresh_slots(s.slots, new_slots),
        )  # fmt: skip

        def finish() -> None:
            c.settle()
            self.classifier = c
            self._s = _State(policy, revision, new_slots, prios, ids, set_ids, links)

        return Pending(commit, policy, finish, slots=new_slots)

    def adopt(
        self,
        policy: Policy,
        revision: int,
        slots: Mapping[str, int],
        view: KernelView,
        fresh: Iterable[int] = (),
        ifindexes: Mapping[str, int] | None = None,
    ) -> Pending:
        """Enforce ``policy`` (a restore at start) over maps that may already hold a policy.

        The commit carries only what differs from ``view``; priorities and tuple
        ids the kernel uses are kept where they fit, so the policy an agent left
        behind adopts without a change. Only ``fresh`` counter slots are zeroed.
        ``ifindexes`` are the interfaces present now: rules naming interfaces
        must keep their entries. Call on a new Engine (before any other operation).
        """
        hints = kernel_prios(view, slots)
        seed = Classifier(max_tuples=self._max_tuples, max_entries=self._max_entries)
        seed._ids = kernel_tuple_ids(view)  # build() reuses a predecessor's tuple ids
        self._s = _State(
            ids=list(hints), prios=list(hints.values()), ifindexes=dict(ifindexes or {})
        )
        self.classifier = seed
        try:
            # From an empty predecessor every entry and set element is an addition,
            # so the commit's changes and set_add are the desired contents whole.
            p = self.apply(policy, revision, slots)
        finally:
            self._s, self.classifier = _State(), Classifier(
                max_tuples=self._max_tuples, max_entries=self._max_entries
            )
        desired = {key: after for key, _, after in p.commit.changes if after is not None}
        add, remove = set_changes(p.commit.set_add, view)
        p.commit = replace(
            p.commit, changes=reconcile(desired, view), set_add=add, set_remove=remove,
            fresh_slots=tuple(fresh),
        )  # fmt: skip
        return p

    def relink(self, ifindexes: Mapping[str, int]) -> Pending | None:
        """Interfaces changed: recompile rules with interface globs (None: nothing to do)."""
        if dict(ifindexes) == self._s.ifindexes:
            return None
        if not any(r.interfaces for r in self._s.policy.rules):
            self._s.ifindexes = dict(ifindexes)
            return None
        return self.apply(self._s.policy, self._s.revision, self._s.slots, ifindexes)

    # --- rules -------------------------------------------------------------------

    def add_rule(self, rule: Rule, index: int) -> Pending:
        """Insert ``rule`` at ``index`` (0 = first); only its entries change."""
        s = self._s
        if not 0 <= index <= len(s.ids):
            raise PolicyError("position", f"{index} is outside 0-{len(s.ids)}")
        if rule.id in s.slots:
            raise PolicyError("rule.id", f"a rule with id {rule.id!r} exists")
        check_rule_sets(rule, {n.name: n for n in s.policy.sets}, "rule")
        rules = s.policy.rules[:index] + (rule,) + s.policy.rules[index:]
        policy = replace(s.policy, rules=rules)
        lo = s.prios[index - 1] if index > 0 else None
        hi = s.prios[index] if index < len(s.prios) else None
        prio = between(lo, hi)
        if prio is None:  # no gap left: renumber everything (rare)
            return self.apply(policy)
        slot = self._free_slot()
        ctx = _context(s.policy, s.set_ids, s.ifindexes)
        c = self.classifier
        c.add_rule(rule, prio, slot, ctx)
        commit = self._commit(
            s.revision + 1, policy, c, changes=c.take_changes(), fresh_slots=(slot,)
        )

        def finish() -> None:
            s.policy, s.revision = policy, s.revision + 1
            s.slots[rule.id] = slot
            s.prios.insert(index, prio)
            s.ids.insert(index, rule.id)
            c.settle()

        def abort() -> None:
            c.remove_rule(rule, prio, ctx)
            c.take_changes()

        change = {"op": "add_rule", "index": index, "slot": slot, "rule": rule_to_dict(rule)}
        return Pending(commit, policy, finish, abort, change=change)

    def _free_slot(self) -> int:
        used = set(self._s.slots.values())
        for slot in range(abi.SLOT_FIRST_RULE, abi.MAX_SLOTS):
            if slot not in used:
                return slot
        raise CapacityError(f"all {abi.MAX_SLOTS - abi.SLOT_FIRST_RULE} counter slots are in use")

    def delete_rule(self, rule_id: str) -> Pending:
        s = self._s
        index = self.index_of(rule_id)
        if index is None:
            raise PolicyError("rule_id", f"no rule with id {rule_id!r}")
        rule, prio, slot = s.policy.rules[index], s.prios[index], s.slots[rule_id]
        policy = replace(s.policy, rules=s.policy.rules[:index] + s.policy.rules[index + 1 :])
        ctx = _context(s.policy, s.set_ids, s.ifindexes)
        c = self.classifier
        ids = c.save_tuple_ids()
        c.remove_rule(rule, prio, ctx)
        commit = self._commit(s.revision + 1, policy, c, changes=c.take_changes())

        def finish() -> None:
            s.policy, s.revision = policy, s.revision + 1
            del s.slots[rule_id]
            del s.prios[index]
            del s.ids[index]
            c.settle()

        def abort() -> None:
            c.restore_tuple_ids(ids)  # the kernel still has the entries under these ids
            c.add_rule(rule, prio, slot, ctx)
            c.take_changes()

        return Pending(commit, policy, finish, abort, change={"op": "delete_rule", "id": rule_id})

    # --- sets --------------------------------------------------------------------

    def change_set(
        self, name: str, add: Iterable[str | int] = (), remove: Iterable[str | int] = ()
    ) -> Pending:
        """Add and remove elements of one set atomically.

        A prefix set changes only fwd_sets (no rule is recompiled); a port set
        is expanded into its rules' port ranges, so it recompiles (a diff).
        """
        s = self._s
        add, remove = list(add), list(remove)
        named = s.policy.set_named(name)
        if named is None:
            raise PolicyError("set", f"no set named {name!r}")
        changed = named.with_elements(add, remove)
        sets = tuple(changed if x.name == name else x for x in s.policy.sets)
        policy = replace(s.policy, sets=sets)
        if named.type is SetType.PORT:
            return self.apply(policy)
        sid = s.set_ids[name]
        plus, _ = set_keys(sid, changed.prefixes - named.prefixes)
        minus, _ = set_keys(sid, named.prefixes - changed.prefixes)
        commit = self._commit(s.revision + 1, policy, self.classifier, set_add=plus, set_remove=minus)

        def finish() -> None:
            s.policy, s.revision = policy, s.revision + 1

        change = {"op": "set", "name": name, "add": [str(x) for x in add],
                  "remove": [str(x) for x in remove]}  # fmt: skip
        return Pending(commit, policy, finish, change=change)
