"""Merging the policies that select a node: order, renaming, dry-run, validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwd.cluster.layout import PolicyRecord, decode_policy_record, encode_policy_record
from fwd.cluster.merge import merge, merged_for, policy_hash, select
from fwd.cluster.selector import parse_selector
from fwd.errors import PolicyError
from fwd.policy.model import EMPTY_POLICY, Action, policy_from_dict


def record(name: str, selector: str, priority: int, policy: dict[str, Any], rev: int = 1) -> PolicyRecord:
    return PolicyRecord(name, parse_selector(selector), priority, policy_from_dict(policy), rev, selector)


BASE = record(
    "base",
    "",
    10,
    {
        "default_action": "drop",
        "log_default": True,
        "sets": {"mgmt": {"type": "prefix", "elements": ["198.18.0.0/24"]}},
        "rules": [{"id": "ssh", "action": "allow", "protocol": "tcp", "dst_ports": [22], "src_set": "mgmt"}],
    },
)
EDGE = record(
    "edge",
    "role=edge",
    20,
    {
        "default_action": "allow",
        "sets": {"mgmt": {"type": "port", "elements": [80]}},
        "rules": [
            {"id": "ssh", "action": "drop", "src": ["198.19.0.0/16"]},
            {"id": "web", "action": "allow", "protocol": "tcp", "dst_port_set": "mgmt"},
        ],
    },
)
AUDIT = record(
    "audit",
    "role=edge",
    5,
    {"default_action": "drop", "dry_run": True, "rules": [
        {"id": "a", "action": "drop", "src": ["198.18.5.0/24"]},
        {"id": "b", "action": "allow", "src": ["198.18.6.0/24"]},
    ]},
)  # fmt: skip


def test_nothing_selected_is_the_empty_policy() -> None:
    policy, used = merged_for([EDGE], {"role": "core"})
    assert policy == EMPTY_POLICY and used == ()


def test_order_prefixes_and_first_policy_defaults() -> None:
    policy, used = merged_for([EDGE, BASE], {"role": "edge"})
    assert used == (("base", 1), ("edge", 1))
    assert [r.id for r in policy.rules] == ["base:ssh", "edge:ssh", "edge:web"]
    assert policy.default_action is Action.DROP and policy.log_default  # from base
    assert {s.name for s in policy.sets} == {"base.mgmt", "edge.mgmt"}
    assert policy.rules[0].src_set == "base.mgmt"
    assert policy.rules[2].dst_port_set == "edge.mgmt"
    assert not policy.dry_run


def test_equal_priorities_order_by_name() -> None:
    a = record("a", "", 1, {"rules": [{"id": "x", "action": "drop"}]})
    b = record("b", "", 1, {"rules": [{"id": "x", "action": "allow"}]})
    assert [r.name for r in select([b, a], {})] == ["a", "b"]


def test_dry_run_policy_audits_its_drops_and_never_drops_by_default() -> None:
    policy, _ = merged_for([AUDIT, EDGE], {"role": "edge"})
    assert [r.id for r in policy.rules] == ["audit:a", "audit:b", "edge:ssh", "edge:web"]
    assert policy.rules[0].audit and not policy.rules[1].audit
    assert not policy.rules[2].audit  # edge is not dry-run: its drop is enforced
    assert policy.default_action is Action.ALLOW  # audit's default drop is not enforced
    assert not policy.dry_run


def test_merged_names_must_stay_valid() -> None:
    long_name = "p" * 60
    bad = record(long_name, "", 0, {"rules": [{"id": "r" * 100, "action": "drop"}]})
    with pytest.raises(PolicyError) as info:
        merge([bad])
    assert info.value.field == f"policies/{long_name}.rules[0].id"
    digit = record("9lives", "", 0, {"sets": {"s": {"type": "port", "elements": [1]}}})
    with pytest.raises(PolicyError) as info:
        merge([digit])
    assert info.value.field == "policies/9lives.sets.s"


def test_limits_of_the_whole_are_checked() -> None:
    many = [
        record(f"p{i}", "", i, {"sets": {f"s{j}": {"type": "prefix", "elements": []} for j in range(4)}})
        for i in range(5)
    ]
    with pytest.raises(PolicyError, match="prefix sets"):
        merge(select(many, {}))


def test_hash_is_of_content() -> None:
    one, _ = merged_for([EDGE, BASE], {"role": "edge"})
    again, _ = merged_for([BASE, record("edge", "role=edge", 20, {"default_action": "allow", "sets": {"mgmt": {"type": "port", "elements": [80]}}, "rules": [{"id": "ssh", "action": "drop", "src": ["198.19.0.0/16"]}, {"id": "web", "action": "allow", "protocol": "tcp", "dst_port_set": "mgmt"}]}, rev=9)], {"role": "edge"})  # fmt: skip
    assert policy_hash(one) == policy_hash(again)  # a new mod revision, same content
    other, _ = merged_for([BASE], {"role": "edge"})
    assert policy_hash(one) != policy_hash(other)


_rule = st.fixed_dictionaries(
    {"id": st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), "action": st.sampled_from(["allow", "drop"])}
)
_policy = st.fixed_dictionaries(
    {
        "default_action": st.sampled_from(["allow", "drop"]),
        "dry_run": st.booleans(),
        "rules": st.lists(_rule, max_size=5, unique_by=lambda r: r["id"]),
    }
)
_records = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True),
    st.tuples(st.sampled_from(["", "role=edge", "role!=edge", "zone in (a,b)", "!zone"]), st.integers(-3, 3), _policy),
    max_size=6,
)


@given(_records, st.dictionaries(st.sampled_from(["role", "zone"]), st.sampled_from(["edge", "a", "c"])))
def test_merge_properties(raw: dict[str, tuple[str, int, dict[str, Any]]], labels: dict[str, str]) -> None:
    records = [
        decode_policy_record(name, encode_policy_record(sel, prio, policy_from_dict(p)), 1)
        for name, (sel, prio, p) in raw.items()
    ]
    policy, used = merged_for(records, labels)
    chosen = [r for r in records if r.selector.matches(labels)]
    # Exactly the selected policies, in (priority, name) order.
    assert [n for n, _ in used] == [r.name for r in sorted(chosen, key=lambda r: (r.priority, r.name))]
    # Every rule, in that order, renamed <policy>:<id>; drops of dry-run policies audited.
    expected = [
        (f"{name}:{r.id}", r.action, r.audit or (by[name].policy.dry_run and r.action is Action.DROP))
        for name, _ in used
        for by in [{x.name: x for x in records}]
        for r in by[name].policy.rules
    ]
    assert [(r.id, r.action, r.audit) for r in policy.rules] == expected
    assert not policy.dry_run
    if not used:
        assert policy == EMPTY_POLICY
    # Merging is deterministic whatever order etcd listed the keys in.
    assert policy_hash(merged_for(list(reversed(records)), labels)[0]) == policy_hash(policy)


def test_check_mergeable_at_write_time() -> None:
    from fwd.cluster.merge import check_mergeable

    check_mergeable(EDGE)
    with pytest.raises(PolicyError, match="9lives.sets.s"):
        check_mergeable(record("9lives", "", 0, {"sets": {"s": {"type": "port", "elements": [1]}}}))
