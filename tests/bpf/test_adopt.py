"""BPF tier: a second object loaded over the first one's pinned maps (an agent restart).

Each test loads the real object with its maps pinned in a bpffs directory of
its own, changes the policy the way the Datapath does, then loads a *new*
object that reuses the pins (fwd.kernel.pins) and adopts the kernel's contents
with ``Engine.adopt``, exactly as a restarted agent does. The kernel's verdicts
are checked against the pure reference on the corpus of test_dataplane.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwd.core import abi
from fwd.kernel import pins
from fwd.kernel.maps import Map
from fwd.kernel.objects import BpfObject
from fwd.policy import reference
from fwd.policy.adopt import KernelView
from fwd.policy.compiler import fresh_slots
from fwd.policy.engine import Engine, Pending
from fwd.policy.model import Policy, policy_from_dict
from tests import packets as P
from tests.bpf.test_dataplane import CORPUS, IFNAMES, LO, POLICIES, ROOT, Plane
from tests.netns import bpffs, require_root

pytestmark = pytest.mark.root

OBJ = ROOT / "bpf/build/fwd.bpf.o"
IFNAMES_BY = {name: index for index, name in IFNAMES.items()}
UDP_9999 = P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1, 9999))


@pytest.fixture
def pin_root() -> Iterator[Path]:
    require_root()
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    tag = os.environ.get("FWD_TEST_NS_PREFIX", "fwdt")
    path = bpffs() / f"{tag}-adopt-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)


class Agent:
    """One "agent lifetime": an object loaded over the pins, with a Plane around it."""

    def __init__(self, root: Path) -> None:
        self.obj = BpfObject.open(OBJ)
        self.reuse = pins.reuse_pinned(self.obj, root)
        self.obj.load()
        pins.pin_object(self.obj, self.obj.program("fwd_xdp"), root, self.reuse)
        self.plane = Plane(self.obj)

    def adopt(self, policy: Policy, revision: int, slots: dict[str, int],
              before: dict[str, int] | None = None,
              ifindexes: dict[str, int] | None = None) -> tuple[Pending, KernelView, bool]:
        """What Datapath._adopt does: returns the pending change, the view, and whether
        the kernel had to be written."""
        dp = self.plane.dp
        view = dp.read_kernel()
        p = self.plane.engine.adopt(
            policy, revision, slots, view, fresh_slots(before or {}, slots), ifindexes or IFNAMES_BY
        )
        if dp.unchanged(p.commit, view):
            p.finish()
            return p, view, False
        dp.align_inactive_sets(view)
        self.plane.run(p)
        return p, view, True

    def close(self) -> None:
        self.plane.barrier.close()
        self.obj.close()


def mismatches(plane: Plane, policy: Policy) -> list[str]:
    out = []
    for label, frame in CORPUS:
        want = reference.classify(policy, frame, ifindex=LO, ifnames=IFNAMES, slots=plane.slots)
        got = plane.prog.test_run(frame)
        if got.retval != want.xdp_action:
            out.append(f"{label}: kernel {got.retval}, reference {want}")
    return out


def halves_agree(plane: Plane) -> bool:
    half = len(bytes(abi.Verdict()))
    rules = plane.obj.map("fwd_rules")
    return all(v[:half] == v[half:] for _, v in rules.lookup_batch())


def test_restart_adopts_the_kernel_unchanged_and_keeps_counters(pin_root: Path) -> None:
    first = Agent(pin_root)
    assert first.reuse.reused == () and "fwd_rules" in first.reuse.created
    eng = first.plane.engine
    base = policy_from_dict({"default_action": "drop", "rules": [
        {"id": "a", "action": "allow", "protocol": "tcp", "dst_ports": [22]},
        {"id": "drop", "action": "drop", "protocol": "udp", "dst_ports": [9999]},
    ]})  # fmt: skip
    first.plane.run(eng.apply(base))
    # History-dependent contents: a midpoint priority and a rule deleted again.
    rule = policy_from_dict({"rules": [{"id": "mid", "action": "allow", "src": ["198.18.9.0/24"]}]})
    first.plane.run(eng.add_rule(rule.rules[0], 1))
    first.plane.run(eng.add_rule(policy_from_dict(
        {"rules": [{"id": "gone", "action": "drop", "protocol": 47}]}).rules[0], 0))
    first.plane.run(eng.delete_rule("gone"))
    policy, revision, slots = eng.policy, eng.revision, dict(eng.slots)
    for _ in range(7):
        assert first.plane.prog.test_run(UDP_9999).retval == reference.XDP_DROP
    counted = first.plane.packets(slots["drop"])[0]
    first.close()  # the agent dies; the pins keep its maps

    second = Agent(pin_root)
    try:
        assert set(second.reuse.reused) >= set(pins.POLICY_MAPS) | {"fwd_counters"}
        assert second.reuse.created == () and second.reuse.notes == ()
        p, view, written = second.adopt(policy, revision, slots, before=slots)
        assert view.revision == revision
        assert not written, f"{len(p.commit.changes)} entries rewritten"
        assert second.plane.engine.revision == revision
        assert second.plane.packets(slots["drop"])[0] == counted  # not reset
        assert second.plane.prog.test_run(UDP_9999).retval == reference.XDP_DROP
        assert second.plane.packets(slots["drop"])[0] == counted + 1
        assert not mismatches(second.plane, policy)
        # Later diff-based updates start from the adopted contents.
        second.plane.run(second.plane.engine.delete_rule("drop"))
        assert second.plane.prog.test_run(UDP_9999).retval == reference.XDP_DROP  # default
        assert not mismatches(second.plane, second.plane.engine.policy)
        assert halves_agree(second.plane)
    finally:
        second.close()


@pytest.mark.parametrize("i", range(0, len(POLICIES), 4), ids=lambda i: POLICIES[i][0])
def test_restart_reconciles_a_different_desired_policy(pin_root: Path, i: int) -> None:
    old_name, old = POLICIES[i]
    new_name, new = POLICIES[(i + 7) % len(POLICIES)]
    first = Agent(pin_root)
    first.plane.run(first.plane.engine.apply(old, 5, ifindexes={"lo": LO}))
    first.close()
    second = Agent(pin_root)
    try:
        _, view, written = second.adopt(new, 6, {})
        assert view.revision == 5 and written
        assert not mismatches(second.plane, new), f"{old_name} -> {new_name}"
        assert halves_agree(second.plane)
        slots = dict(second.plane.engine.slots)
        second.plane.engine = Engine()  # another restart, over the reconciled kernel
        _, _, rewritten = second.adopt(new, 6, slots, before=slots)
        assert not rewritten, "adopting what is enforced must change nothing"
    finally:
        second.close()


def test_an_apply_cut_short_is_repaired(pin_root: Path) -> None:
    first = Agent(pin_root)
    eng = first.plane.engine
    sets = {"sets": {"bad": {"type": "prefix", "elements": ["198.18.1.0/24"]}}}
    a = policy_from_dict({**sets, "rules": [{"id": "s", "action": "drop", "src_set": "bad"}]})
    first.plane.run(eng.apply(a))
    # Crash after writing the inactive generation, before the flip: its halves and
    # set elements hold a policy that never went live.
    b = policy_from_dict({"sets": {"bad": {"type": "prefix", "elements": ["198.18.2.0/24"]}},
                          "rules": [{"id": "t", "action": "drop", "protocol": "tcp"}]})  # fmt: skip
    half = eng.apply(b)
    dp = first.plane.dp
    live = dp.live_generation()
    dp._write_entries(half.commit.changes, live, 1 - live)
    dp._write_sets(half.commit.set_add, half.commit.set_remove, 1 - live)
    revision, slots = eng.revision, dict(eng.slots)
    first.close()
    second = Agent(pin_root)
    try:
        view = second.plane.dp.read_kernel()
        assert view.sets != view.sets_other
        _, _, written = second.adopt(a, revision, slots, before=slots)
        assert written and halves_agree(second.plane)
        after = second.plane.dp.read_kernel()
        assert after.sets == after.sets_other
        assert not mismatches(second.plane, a)
    finally:
        second.close()


def test_a_changed_layout_starts_fresh_and_says_why(pin_root: Path) -> None:
    first = Agent(pin_root)
    first.plane.run(first.plane.engine.apply(policy_from_dict({"default_action": "drop"})))
    first.close()
    # An "upgrade" whose fwd_rules is bigger: the policy maps are all created anew.
    obj = BpfObject.open(OBJ)
    try:
        obj.set_max_entries("fwd_rules", abi.DEFAULT_RULE_ENTRIES * 2)
        reuse = pins.reuse_pinned(obj, pin_root)
        assert not reuse.policy_reused
        assert set(pins.POLICY_MAPS) <= set(reuse.created)
        assert "fwd_counters" in reuse.reused  # counters do not depend on the policy layout
        assert any("fwd_rules: layout changed (max_entries" in n for n in reuse.notes), reuse
        assert any("reused together" in n for n in reuse.notes), reuse
        obj.load()
        pins.pin_object(obj, obj.program("fwd_xdp"), pin_root, reuse)
        pinned = Map.from_pinned(pin_root / "maps" / "fwd_rules")
        with pinned:
            assert pinned.max_entries == abi.DEFAULT_RULE_ENTRIES * 2  # the pin was replaced
        assert not list(pin_root.glob("**/*_new"))
    finally:
        obj.close()
