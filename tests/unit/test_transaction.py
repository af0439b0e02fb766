"""The change sequence (fwd.core.transaction) without a kernel: the real Engine and
Dataplane over in-memory maps (fwd.testing.maps) and the in-memory store, with a
failure put at every point of the sequence in turn."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from fwd.core import transaction
from fwd.core.transaction import Outcome, TornCommit
from fwd.errors import BpfError, PolicyError
from fwd.kernel.dataplane import Dataplane
from fwd.policy.adopt import KernelView
from fwd.policy.engine import Engine, Pending
from fwd.policy.model import Policy, parse_rule, policy_from_dict
from fwd.store import MemoryStore
from fwd.testing.maps import FakeBarrier, FakeMaps

class Rig:
    """An Engine, a Dataplane over fake maps, a store: what the Datapath actor owns."""

    def __init__(self) -> None:
        self.maps = FakeMaps()
        self.barrier = FakeBarrier()
        self.dp = Dataplane(self.maps, 2, self.barrier)
        self.engine = Engine()
        self.store = MemoryStore()

    def kernel(self) -> KernelView:
        """What packets and the next commit see: the live word, both halves of every
        rule entry, both generations' set elements, the live generation's config
        and tuples (the inactive ones are rewritten whole by every commit)."""
        return self.dp.read_kernel()

    def live_revision(self) -> int:
        return self.dp.read_kernel().revision

    def run(self, pending: Pending, **kw: Any) -> Outcome:
        return transaction.run(pending, self.dp, store=self.store, **kw)


def policy(*ports: int, default: str = "allow") -> Policy:
    return policy_from_dict({
        "default_action": default,
        "rules": [
            {"id": f"r{p}", "action": "drop", "protocol": "udp", "dst_ports": [p]} for p in ports
        ],
    })  # fmt: skip


@pytest.fixture
def rig() -> Rig:
    r = Rig()
    r.run(r.engine.apply(policy(9, 10)))
    return r


def test_a_change_is_guarded_persisted_committed_and_kept(rig: Rig) -> None:
    seen: list[Policy] = []
    out = rig.run(rig.engine.apply(policy(9, 11)), guard=seen.append)
    assert out == Outcome(2, flipped=True, entries=out.entries) and out.entries > 0
    assert [r.id for r in seen[0].rules] == ["r9", "r11"]
    assert rig.engine.revision == 2 and rig.live_revision() == 2
    stored = rig.store.latest()
    assert stored is not None and stored.revision == 2 and stored.policy == rig.engine.policy


def test_an_incremental_change_is_persisted_as_a_journal_record(rig: Rig) -> None:
    rule = parse_rule({"id": "r53", "action": "drop", "protocol": "udp", "dst_ports": [53]})
    rig.run(rig.engine.add_rule(rule, 0))
    stored = rig.store.latest()
    assert stored is not None and stored.revision == 2
    assert [r.id for r in stored.policy.rules] == ["r53", "r9", "r10"]


def test_without_a_store_nothing_is_persisted(rig: Rig) -> None:
    transaction.run(rig.engine.apply(policy(12)), rig.dp)
    assert rig.live_revision() == 2 and rig.store.get(2) is None


def refused(p: Policy) -> None:
    raise PolicyError("policy", "would drop the management traffic")


def test_a_guard_refusal_changes_nothing(rig: Rig) -> None:
    before = rig.kernel()
    with pytest.raises(PolicyError, match="management"):
        rig.run(rig.engine.apply(policy(22, default="drop")), guard=refused)
    assert rig.engine.revision == 1 and [r.id for r in rig.engine.policy.rules] == ["r9", "r10"]
    assert rig.kernel() == before and rig.store.get(2) is None


def test_a_store_failure_undoes_the_kernel_write(rig: Rig) -> None:
    class FullDisk(MemoryStore):
        def save(self, revision: int, policy: Policy, slots: dict[str, int]) -> None:
            raise OSError(errno.ENOSPC, "injected: the disk is full")

    rig.store = FullDisk()
    before = rig.kernel()
    with pytest.raises(OSError, match="disk is full"):
        rig.run(rig.engine.apply(policy(9, 13)))
    assert rig.kernel() == before and rig.live_revision() == 1 and rig.engine.revision == 1


def writes_of_a_commit() -> int:
    """How many map writes the commit of the parametrized change takes (counted once)."""
    r = Rig()
    r.run(r.engine.apply(policy(9, 10)))
    r.maps.fail_after(10_000)
    r.run(r.engine.apply(policy(10, 14, 15)))
    left = r.maps.writes_left
    assert left is not None
    return 10_000 - left + 1  # and one more: no failure at all


@pytest.mark.parametrize("writes", range(writes_of_a_commit()))
def test_a_kernel_failure_at_any_write_before_the_flip_leaves_everything_as_before(
    rig: Rig, writes: int
) -> None:
    before = rig.kernel()
    policy_before = rig.engine.policy
    rig.maps.fail_after(writes)
    try:
        rig.run(rig.engine.apply(policy(10, 14, 15)))
    except TornCommit:
        # Struck after the flip (settling): live and persisted, the engine untouched.
        rig.maps.fail_after(None)
        assert rig.live_revision() == 2 and rig.store.get(2) is not None
        assert rig.engine.revision == 1
        return
    except BpfError:
        pass
    else:  # the budget covered every write: no failure
        assert rig.live_revision() == 2 and rig.store.get(2) is not None
        return
    rig.maps.fail_after(None)
    assert rig.kernel() == before, "the inactive generation was not put back"
    assert rig.live_revision() == 1 and rig.store.get(2) is None
    assert rig.engine.policy is policy_before and rig.engine.revision == 1
    # The next change reuses the number and brings only its own state live.
    rig.run(rig.engine.apply(policy(16)))
    clean = Rig()
    clean.run(clean.engine.apply(policy(9, 10)))
    clean.run(clean.engine.apply(policy(16)))
    assert rig.live_revision() == 2 and rig.kernel() == clean.kernel()


def test_a_failure_after_the_flip_is_torn_live_and_persisted(rig: Rig) -> None:
    rig.barrier.fail = OSError(errno.EINTR, "injected: the barrier failed")
    with pytest.raises(TornCommit) as err:
        rig.run(rig.engine.apply(policy(17)))
    assert err.value.revision == 2
    assert rig.live_revision() == 2 and rig.store.get(2) is not None  # an agent restart adopts it
    assert rig.engine.revision == 1  # neither finished nor aborted: the agent stops


def test_a_failing_discard_still_aborts(rig: Rig) -> None:
    class Stubborn(MemoryStore):
        def discard(self, revision: int) -> None:
            raise OSError(errno.EIO, "injected: cannot discard")

    rig.store = Stubborn()
    rig.maps.fail_after(0)
    with pytest.raises(OSError, match="cannot discard"):
        rig.run(rig.engine.apply(policy(18)))
    assert rig.engine.revision == 1 and [r.id for r in rig.engine.policy.rules] == ["r9", "r10"]


def test_a_cancelled_change_is_undone_like_a_failed_one(rig: Rig) -> None:
    class Cancelled(BaseException):
        pass

    def cancel(p: Policy) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        rig.run(rig.engine.apply(policy(19)), guard=cancel)
    assert rig.engine.revision == 1 and rig.store.get(2) is None


def test_adopting_an_unchanged_kernel_writes_nothing(rig: Rig) -> None:
    stored = rig.store.latest()
    assert stored is not None
    view = rig.dp.read_kernel()
    fresh = Engine()
    rig.maps.fail_after(0)  # a write would raise
    out = transaction.adopt(
        fresh.adopt(stored.policy, stored.revision, stored.slots, view), rig.dp, view
    )
    assert out == Outcome(1, flipped=False, entries=0) and fresh.revision == 1
    assert rig.maps.writes_left == 0  # none was made


def test_adopting_a_different_kernel_reconciles_it_with_one_flip(rig: Rig) -> None:
    view = rig.dp.read_kernel()
    fresh = Engine()
    wanted = policy(9, 20)
    out = transaction.adopt(fresh.adopt(wanted, 5, {}, view), rig.dp, view)
    assert out.flipped and out.entries > 0 and rig.live_revision() == 5
    clean = Rig()
    clean.run(clean.engine.apply(wanted, 5))
    assert rig.kernel().entries == clean.kernel().entries


def test_a_failed_adoption_aborts(rig: Rig) -> None:
    view = rig.dp.read_kernel()
    fresh = Engine()
    rig.maps.fail_after(0)
    with pytest.raises(BpfError):
        transaction.adopt(fresh.adopt(policy(21), 7, {}, view), rig.dp, view)
    assert fresh.revision == 0
