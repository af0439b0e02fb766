"""BPF tier, differential: the kernel against the reference classifier on generated input.

Hypothesis generates policies (overlapping and nested prefixes of both
families, port ranges, wildcards, TCP flags, ICMP, fragments, interfaces,
audit, named prefix and port sets) and frames (matching, near-miss, VLAN,
IPv6 extension headers, fragments, malformed, truncated). Each policy goes
through the real Engine and Dataplane into the loaded object; for every frame
the verdict of BPF_PROG_TEST_RUN and the counter slot it bumped must equal
``fwd.policy.reference``. The second test does the same after every step of a
sequence of AddRule / DeleteRule / set element changes / re-applies.

CI runs ~2,075 examples in total; bench/differential.sh sets
FWD_HYPOTHESIS_EXAMPLES=24200, which scales every count to ~50,000 in total.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fwd.errors import CapacityError, PolicyError
from fwd.policy import reference
from fwd.policy.engine import Pending
from fwd.policy.model import Policy, SetType, policy_from_dict
from tests import strategies as S
from tests.bpf.test_dataplane import LO, Plane, plane  # noqa: F401 - the fixture

pytestmark = pytest.mark.root

# BPF_PROG_TEST_RUN without a context runs as if received on lo (ifindex 1).
IFNAMES = {LO: "lo"}
def SETTINGS(n: int) -> settings:
    return settings(
        max_examples=S.examples(n),
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.large_base_example,
        ],
        database=None,
    )


def check(plane: Plane, frames: list[tuple[int, bytes]]) -> None:
    policy = plane.engine.policy
    for _, frame in frames:
        want = reference.classify(policy, frame, ifindex=LO, ifnames=IFNAMES, slots=plane.slots)
        before = plane.packets(want.slot)
        got = plane.prog.test_run(frame, data_out_size=0)
        after = plane.packets(want.slot)
        counted = (after[0] - before[0], after[1] - before[1])
        assert (got.retval, counted) == (want.xdp_action, (1, int(want.would_drop))), (
            f"frame {frame.hex()}: kernel {got.retval} counted {counted} in slot {want.slot}; "
            f"reference {want}; parsed {reference.parse_packet(frame, LO)}"
        )


def fresh_policy(plane: Plane, raw: dict[str, Any]) -> bool:
    try:
        plane.run(plane.engine.apply(policy_from_dict(raw), ifindexes=S.IFINDEXES))
    except (PolicyError, CapacityError):
        return False
    return True


@SETTINGS(1000)
@given(S.policy_dict(max_rules=60), st.lists(S.frame(), min_size=1, max_size=12))
def test_kernel_equals_reference(
    plane: Plane, raw: dict[str, Any], frames: list[tuple[int, bytes]]
) -> None:
    assume(fresh_policy(plane, raw))
    check(plane, frames)


@SETTINGS(25)
@given(S.policy_dict(max_rules=40), st.integers(3, 10), st.randoms(use_true_random=False), st.data())
def test_kernel_equals_reference_with_hundreds_of_rules(
    plane: Plane, raw: dict[str, Any], copies: int, rnd: Any, data: st.DataObject
) -> None:
    # Hundreds of rules exceed what hypothesis draws one by one: copies of the drawn
    # ones (new ids) in a shuffled order give as many, overlapping and shadowing.
    rules = [dict(r, id=f"c{k}-{r['id']}") for k in range(copies) for r in raw["rules"]]
    rnd.shuffle(rules)
    raw = dict(raw, rules=rules)
    assume(fresh_policy(plane, raw))
    check(plane, data.draw(st.lists(S.frame(), min_size=20, max_size=40)))


def step(plane: Plane, data: st.DataObject, i: int) -> Pending | None:
    e = plane.engine
    op = data.draw(st.sampled_from(["add", "add", "delete", "set", "set", "apply"]))
    sets = S.sets_dict(e.policy)
    if op == "add":
        rule = policy_from_dict({"sets": sets, "rules": [data.draw(S.rule_dict(f"n{i}", sets))]})
        return e.add_rule(rule.rules[0], data.draw(st.integers(0, len(e.policy.rules))))
    if op == "delete" and e.policy.rules:
        return e.delete_rule(data.draw(st.sampled_from(e.policy.rules)).id)
    if op == "set" and e.policy.sets:
        named = data.draw(st.sampled_from(e.policy.sets))
        new = S.cidr() if named.type is SetType.PREFIX else S.port_range()
        add = data.draw(st.lists(new, max_size=4))
        remove = data.draw(st.lists(st.sampled_from(named.elements()), max_size=3)) if len(named) else []
        return e.change_set(named.name, add, remove)
    # A re-apply of an edited whole policy that keeps most ids.
    kept = list(e.policy.rules)
    flip: bool = data.draw(st.booleans())
    if flip:
        kept.reverse()
    return e.apply(Policy(e.policy.default_action, e.policy.dry_run, tuple(kept),
                          e.policy.log_default, e.policy.sets))  # fmt: skip


@SETTINGS(400)
@given(S.policy_dict(max_rules=30), st.data())
def test_kernel_equals_reference_across_incremental_changes(
    plane: Plane, raw: dict[str, Any], data: st.DataObject
) -> None:
    assume(fresh_policy(plane, raw))
    for i in range(data.draw(st.integers(1, 6))):
        try:
            pending = step(plane, data, i)
        except CapacityError:
            continue
        if pending is not None:
            plane.run(pending)
        check(plane, data.draw(st.lists(S.frame(), min_size=1, max_size=6)))
