"""Adopting a kernel's contents (fwd.policy.adopt, Engine.adopt, fwd.kernel.pins.plan_reuse): pure."""

from __future__ import annotations

from fwd.kernel import pins
from fwd.policy.adopt import (
    KernelView,
    kernel_prios,
    kernel_tuple_ids,
    reconcile,
    set_changes,
)
from fwd.policy.compiler import ABSENT, VERDICT
from fwd.policy.engine import Engine
from fwd.policy.model import Policy, policy_from_dict
from fwd.policy.setkeys import set_key

V1 = VERDICT.pack(4096, 16, 1, 0, 0)
V2 = VERDICT.pack(8192, 17, 0, 0, 0)

POLICY = policy_from_dict({
    "sets": {"bad": {"type": "prefix", "elements": ["198.18.1.0/24", "2001:2::/48"]}},
    "rules": [
        {"id": "a", "action": "allow", "protocol": "tcp", "dst_ports": [22, "8000-8080"]},
        {"id": "b", "action": "drop", "src_set": "bad"},
        {"id": "c", "action": "drop", "protocol": "udp", "src": ["198.18.0.0/15"]},
    ],
})  # fmt: skip


def view_of(engine: Engine, revision: int) -> KernelView:
    """What the maps hold after ``engine``'s state was committed (both halves equal)."""
    c = engine.classifier
    entries = {k: (c.verdicts[p], c.verdicts[p]) for k, p in c.entries.items()}
    sets = frozenset(
        set_key(engine.set_ids[s.name], 0, str(p))
        for s in engine.policy.sets
        if s.name in engine.set_ids
        for p in s.prefixes
    )
    tuples = tuple(bytes(t) for t in c.tuples())
    return KernelView(0, revision, entries, sets, sets, b"", tuples)


def enforced(policy: Policy, revision: int) -> Engine:
    e = Engine()
    e.apply(policy, revision).finish()
    return e


def test_reconcile_writes_only_what_differs_and_repairs_halves() -> None:
    view = KernelView(entries={
        b"same": (V1, V1),
        b"changed": (V1, V1),
        b"torn": (V1, V2),  # an apply cut short: the other half disagrees
        b"half-new": (ABSENT, V2),  # written to the inactive half only
        b"stale": (V2, V2),
    })  # fmt: skip
    desired = {b"same": V1, b"changed": V2, b"torn": V1, b"new": V1}
    got = {key: (before, after) for key, before, after in reconcile(desired, view)}
    assert got == {
        b"changed": (V1, V2),
        b"torn": (V1, V1),
        b"half-new": (None, None),
        b"stale": (V2, None),
        b"new": (None, V1),
    }


def test_set_changes_against_the_live_generation() -> None:
    k1, k2, k3 = (set_key(0, 0, p) for p in ("198.18.1.0/24", "198.18.2.0/24", "2001:2::/48"))
    view = KernelView(sets=frozenset({k1, k2}), sets_other=frozenset({k3}))
    add, remove = set_changes(k2 + k3, view)
    assert add == k3 and remove == k1


def test_adopting_the_enforced_policy_changes_nothing() -> None:
    before = enforced(POLICY, 7)
    view = view_of(before, 7)
    assert kernel_tuple_ids(view) == before.classifier._ids
    assert kernel_prios(view, before.slots) == dict(zip(before._s.ids, before._s.prios))
    e = Engine()
    p = e.adopt(POLICY, 7, before.slots, view)
    assert p.commit.changes == [] and p.commit.set_add == b"" and p.commit.set_remove == b""
    assert list(p.commit.fresh_slots) == []
    p.finish()
    assert e.revision == 7 and e.slots == before.slots
    # The adopted engine diffs from the kernel's contents: a delete touches one rule's entries.
    d = e.delete_rule("c")
    assert d.commit.changes and all(after is None for _, _, after in d.commit.changes)


def test_adopting_after_incremental_history_keeps_kernel_priorities() -> None:
    before = enforced(POLICY, 1)
    mid = policy_from_dict({"rules": [{"id": "mid", "action": "drop", "protocol": 47}]}).rules[0]
    before.add_rule(mid, 1).finish()  # takes a midpoint priority a fresh compile would not
    view = view_of(before, before.revision)
    p = Engine().adopt(before.policy, before.revision, before.slots, view)
    assert p.commit.changes == []


def test_adopting_a_different_policy_is_a_diff() -> None:
    before = enforced(POLICY, 3)
    other = policy_from_dict({"rules": [{"id": "c", "action": "allow", "protocol": "udp",
                                         "src": ["198.18.0.0/15"]}]})  # fmt: skip
    p = Engine().adopt(other, 4, {"c": before.slots["c"]}, view_of(before, 3))
    plain = Engine().apply(other, 4, {"c": before.slots["c"]})
    kept = {k for k, _, after in p.commit.changes if after is not None}
    # The same entries as a plain compile, but under the tuple ids the kernel already uses.
    assert {k[4:] for k in kept} == {k[4:] for k, _, _ in plain.commit.changes}
    assert kept <= set(before.classifier.entries)
    dropped = {k for k, _, after in p.commit.changes if after is None}
    assert dropped == set(before.classifier.entries) - kept
    assert p.commit.set_remove and not p.commit.set_add  # the set is gone


def test_plan_reuse_is_all_or_nothing_for_policy_maps() -> None:
    shape = (1, 4, 8, 16, 0)
    wanted = {n: shape for n in (*pins.POLICY_MAPS, "fwd_counters")}
    reuse, notes = pins.plan_reuse(dict(wanted), wanted)
    assert reuse == set(wanted) and notes == []
    pinned: dict[str, pins.Shape | str] = {n: shape for n in wanted if n != "fwd_sets"}
    reuse, notes = pins.plan_reuse(pinned, wanted)
    assert reuse == {"fwd_counters"}
    pinned["fwd_sets"] = "cannot open the pin (EPERM)"
    reuse, notes = pins.plan_reuse(pinned, wanted)
    assert reuse == {"fwd_counters"} and notes[0].startswith("fwd_sets: cannot open")
    changed = (1, 4, 12, 16, 1)
    assert pins.mismatch(shape, changed) == "value_size 8 != 12, map_flags 0 != 1"
