"""The policy compiler: slot assignment, port blocks, priorities, the incremental classifier,
and equivalence with the reference classifier through a pure-Python simulation of the
kernel's search (tests/tss.py)."""

from __future__ import annotations

import ctypes
import ipaddress
from typing import Any

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from fwd.core import abi
from fwd.errors import CapacityError, PolicyError
from fwd.policy.compiler import (
    KEY,
    PRIO_SPACING,
    TUPLE,
    VERDICT,
    Classifier,
    Context,
    assign_prios,
    assign_slots,
    between,
    build,
    diff,
    port_blocks,
)
from fwd.policy.engine import Engine
from fwd.policy.model import Action, Policy, PortRange, Rule, policy_from_dict
from fwd.policy.reference import classify, parse_packet
from tests import strategies as S
from tests.tss import simulate

# --- port blocks ---------------------------------------------------------------------


def check_blocks(lo: int, hi: int) -> None:
    blocks = port_blocks(lo, hi)
    start = lo
    for i, (value, mask) in enumerate(blocks):
        size = 0x10000 - mask  # mask is 0xffff << k within 16 bits
        assert size & (size - 1) == 0 and size > 0, "power-of-two block"
        assert (mask | (size - 1)) == 0xFFFF, "mask is a prefix"
        assert value == start and value & (size - 1) == 0, "aligned and contiguous"
        start += size
        # Minimal: two equal neighbours forming an aligned pair would have been one block.
        if i + 1 < len(blocks) and blocks[i + 1][1] == mask:
            assert value & ((size << 1) - 1) != 0, f"{blocks} is not minimal"
    assert start == hi + 1, "covers exactly lo-hi"


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_blocks_cover_ranges_exactly(a: int, b: int) -> None:
    check_blocks(min(a, b), max(a, b))


def test_port_blocks_exhaustive_on_small_ranges() -> None:
    for lo in range(64):
        for hi in range(lo, 64):
            blocks = port_blocks(lo, hi)
            covered = [p for p in range(70) if any(p & m == v for v, m in blocks)]
            assert covered == list(range(lo, hi + 1)), (lo, hi, blocks)


def test_port_blocks_known_values() -> None:
    assert port_blocks(0, 65535) == [(0, 0)]
    assert port_blocks(22, 22) == [(22, 0xFFFF)]
    assert port_blocks(1024, 65535) == [
        (1024, 0xFC00),
        (2048, 0xF800),
        (4096, 0xF000),
        (8192, 0xE000),
        (16384, 0xC000),
        (32768, 0x8000),
    ]
    assert len(port_blocks(1, 65534)) == 30  # the worst case: 2 * 16 - 2


# --- slots ----------------------------------------------------------------------------


def test_slots_are_stable_and_reuse_the_lowest_free() -> None:
    first = assign_slots({}, ["a", "b", "c"])
    assert first == {"a": 16, "b": 17, "c": 18}
    second = assign_slots(first, ["c", "x", "a", "y"])
    assert second == {"c": 18, "x": 17, "a": 16, "y": 19}
    assert list(second) == ["c", "x", "a", "y"]  # rule order kept
    assert assign_slots(second, ["y"]) == {"y": 19}


def test_slots_ignore_corrupt_previous_state() -> None:
    slots = assign_slots({"a": 3, "b": 20, "c": 20, "d": 99}, ["a", "b", "c", "d"], max_slots=40)
    assert slots["b"] == 20 and len(set(slots.values())) == 4
    assert all(abi.SLOT_FIRST_RULE <= s < 40 for s in slots.values())


def test_slots_capacity() -> None:
    ids = [f"r{i}" for i in range(4)]
    assert sorted(assign_slots({}, ids, max_slots=20).values()) == [16, 17, 18, 19]
    with pytest.raises(CapacityError, match="5 rules"):
        assign_slots({}, ids + ["r4"], max_slots=20)


@given(
    st.lists(st.sampled_from("abcdefghij"), unique=True),
    st.lists(st.sampled_from("abcdefghij"), unique=True),
)
def test_slots_property(before: list[str], after: list[str]) -> None:
    old = assign_slots({}, before)
    new = assign_slots(old, after)
    assert list(new) == after and len(set(new.values())) == len(after)
    for rule_id in after:
        if rule_id in old:
            assert new[rule_id] == old[rule_id]
    fresh = sorted(new[r] for r in after if r not in old)
    free = sorted(
        set(range(16, 16 + len(before) + len(after))) - {new[r] for r in after if r in old}
    )
    assert fresh == free[: len(fresh)], "new ids take the lowest free slots"


# --- layout ----------------------------------------------------------------------------



# --- priorities ------------------------------------------------------------------------


def test_prios_first_apply_are_evenly_spaced() -> None:
    assert assign_prios({}, ["a", "b", "c"]) == [4095, 8191, 12287]


@given(
    st.lists(st.sampled_from("abcdefghij"), unique=True),
    st.lists(st.sampled_from("abcdefghijk"), unique=True),
)
def test_prios_increase_and_keep_what_the_order_allows(before: list[str], after: list[str]) -> None:
    previous = dict(zip(before, assign_prios({}, before)))
    prios = assign_prios(previous, after)
    assert len(prios) == len(after)
    assert all(a < b for a, b in zip(prios, prios[1:])), prios
    assert all(0 <= p < abi.PRIO_ABSENT for p in prios)
    if before and after == before:
        assert prios == [previous[x] for x in after]  # a re-apply changes nothing


def test_between_finds_gaps_and_reports_none_when_full() -> None:
    assert between(None, None) == PRIO_SPACING - 1
    assert between(10, 20) == 15
    assert between(10, 11) is None
    assert between(None, 0) is None
    assert between(100, None) == 100 + PRIO_SPACING


# --- the classifier ---------------------------------------------------------------------


def test_struct_packers_match_ctypes() -> None:
    assert KEY.size == ctypes.sizeof(abi.Key) == 52
    assert TUPLE.size == ctypes.sizeof(abi.Tuple)
    assert VERDICT.size == ctypes.sizeof(abi.Verdict) == 12
    assert ctypes.sizeof(abi.Entry) == 24


def rules(raw: list[dict[str, Any]]) -> Policy:
    return policy_from_dict({"rules": raw})


def test_identical_keys_first_rule_owns_and_deletion_hands_over() -> None:
    p = rules([
        {"id": "a", "action": "drop", "src": ["198.18.0.0/24"]},
        {"id": "b", "action": "allow", "src": ["198.18.0.0/24"]},
    ])  # fmt: skip
    ctx = Context()
    c = Classifier()
    c.add_rule(p.rules[0], 10, 16, ctx)
    c.add_rule(p.rules[1], 20, 17, ctx)
    (key,) = c.entries
    assert c.entries[key] == 10
    c.take_changes()
    c.remove_rule(p.rules[0], 10, ctx)
    (change,) = c.take_changes()
    assert change[0] == key and change[1] is not None and VERDICT.unpack(change[1])[1] == 16
    assert change[2] is not None and VERDICT.unpack(change[2])[1] == 17
    c.remove_rule(p.rules[1], 20, ctx)
    assert c.take_changes() == [(key, change[2], None)]
    assert c.tuple_count() == 0


def test_tuple_ids_are_stable_across_rebuilds_and_never_shared() -> None:
    one = rules([{"id": "a", "action": "drop", "src": ["198.18.0.0/24"]}])
    two = rules([
        {"id": "x", "action": "drop", "protocol": "udp"},
        {"id": "a", "action": "drop", "src": ["198.18.0.0/24"]},
    ])  # fmt: skip
    slots = {"a": 16, "x": 17}
    c1 = build(one, [100], slots, Context())
    c2 = build(two, [50, 100], slots, Context(), previous=c1)
    ids1 = {t.tuple_id for t in c1.tuples()}
    ids2 = {t.tuple_id for t in c2.tuples()}
    assert ids1 < ids2 and len(ids2) == 2
    assert diff(c1, c2) == [(k, None, c2.verdict_of(k)) for k in c2.entries if k not in c1.entries]
    # A new signature never takes an id the predecessor still uses.
    c3 = build(rules([{"id": "x", "action": "drop", "protocol": "udp"}]), [50], slots, Context(), c1)
    assert {t.tuple_id for t in c3.tuples()}.isdisjoint(ids1)


def test_tuple_capacity_rolls_back() -> None:
    c = Classifier(max_tuples=2)
    p = rules([{"id": f"r{i}", "action": "drop", "src": [f"198.18.0.0/{16 + i}"]} for i in range(3)])
    c.add_rule(p.rules[0], 1, 16, Context())
    c.add_rule(p.rules[1], 2, 17, Context())
    before = dict(c.entries)
    with pytest.raises(CapacityError):
        c.add_rule(p.rules[2], 3, 18, Context())
    assert c.entries == before and c.tuple_count() == 2


def test_entry_capacity() -> None:
    p = rules([{"id": "r", "action": "drop", "protocol": "tcp", "dst_ports": ["1-1000"],
                "src": ["198.18.0.1", "198.18.0.3", "198.18.0.5"]}])  # fmt: skip
    with pytest.raises(CapacityError):
        build(p, [1], {"r": 16}, Context(), max_entries=10)


def test_large_blocklist_is_one_tuple_per_mask() -> None:
    # Not a timing assertion (shared VM); guards the shape of the large case.
    many = tuple(
        Rule(
            id=f"r{i}",
            action=Action.DROP,
            protocol=6,
            src=(ipaddress.ip_network((0xC6120000 + i * 256, 24 if i % 2 else 32)),),
            dst_ports=(PortRange(i % 1000, i % 1000),),
        )
        for i in range(20000)
    )
    policy = Policy(rules=many)
    ids = [r.id for r in many]
    c = build(policy, assign_prios({}, ids), assign_slots({}, ids), Context())
    assert len(c.entries) == 20000 and c.tuple_count() == 2


# --- equivalence with the reference --------------------------------------------------------


def engine_for(raw: dict[str, Any]) -> Engine | None:
    try:
        policy = policy_from_dict(raw)
    except PolicyError:
        return None
    e = Engine()
    try:
        e.apply(policy, ifindexes=S.IFINDEXES).finish()
    except CapacityError:
        return None
    return e


def agree(e: Engine, frames: list[tuple[int, bytes]]) -> None:
    for ifindex, frame in frames:
        want = classify(e.policy, frame, ifindex=ifindex, ifnames=S.IFNAMES, slots=e.slots)
        event("rule matched" if want.rule_id else "no rule matched")
        got = simulate(e, parse_packet(frame, ifindex))
        assert got == want, (frame.hex(), parse_packet(frame, ifindex))


@settings(max_examples=S.examples(500), deadline=None)
@given(S.policy_dict(), st.lists(S.frame(), min_size=1, max_size=10))
def test_simulated_search_agrees_with_reference(
    raw: dict[str, Any], frames: list[tuple[int, bytes]]
) -> None:
    e = engine_for(raw)
    assume(e is not None)
    assert e is not None
    agree(e, frames)


def by_mask(e: Engine) -> dict[tuple[bytes, bytes], int]:
    """Entries keyed by (tuple mask, key without tuple id) -> rule position."""
    masks = {t.tuple_id: bytes(t)[:-8] for t in e.classifier.tuples()}
    order = {p: i for i, p in enumerate(sorted(e.classifier.verdicts))}
    return {
        (masks[KEY.unpack_from(k)[0]], k[4:]): order[p] for k, p in e.classifier.entries.items()
    }


@settings(max_examples=S.examples(150), deadline=None)
@given(S.policy_dict(max_rules=12), st.data())
def test_incremental_changes_equal_a_fresh_build(raw: dict[str, Any], data: st.DataObject) -> None:
    e = engine_for(raw)
    assume(e is not None)
    assert e is not None
    for step in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["add", "delete", "set", "apply"]))
        try:
            if op == "add":
                rule = policy_from_dict({"sets": S.sets_dict(e.policy), "rules": [
                    data.draw(S.rule_dict(f"n{step}", S.sets_dict(e.policy)))]}).rules[0]
                pending = e.add_rule(rule, data.draw(st.integers(0, len(e.policy.rules))))
            elif op == "delete" and e.policy.rules:
                pending = e.delete_rule(data.draw(st.sampled_from(e.policy.rules)).id)
            elif op == "set" and e.policy.sets:
                named = data.draw(st.sampled_from(e.policy.sets))
                elems = data.draw(st.lists(S.cidr() if named.type.value == "prefix" else S.port_range(), max_size=3))
                pending = e.change_set(named.name, elems if data.draw(st.booleans()) else (),
                                       () if data.draw(st.booleans()) else named.elements()[:2])  # fmt: skip
            else:
                pending = e.apply(e.policy)
        except CapacityError:
            continue
        pending.finish()
        fresh = Engine()
        fresh.apply(e.policy, ifindexes=S.IFINDEXES).finish()
        # Same verdict for every key once priorities are compared by rule order.
        assert by_mask(e) == by_mask(fresh)
        agree(e, data.draw(st.lists(S.frame(), min_size=1, max_size=4)))
