"""BPF tier: a commit that fails half-way leaves the kernel as it was.

A map write can fail in the middle of a commit (ENOMEM, a full map). The
failure is injected after a drawn number of map writes into the real object's
maps; afterwards the inactive generation must equal the live one again (both
halves of every entry agree, both generations hold the same set elements), the
kernel's verdicts must still be the old policy's, and the next change must
bring exactly its own state live: nothing of the failed change may leak in at
its flip. A failure after the flip is reported as TornCommit, never as an
ordinary error.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fwd.core.transaction import TornCommit
from fwd.kernel.dataplane import Dataplane
from fwd.errors import BpfError, CapacityError
from fwd.policy.model import policy_from_dict
from tests import strategies as S
from tests.bpf.test_dataplane import Plane, plane  # noqa: F401 - the fixture
from tests.bpf.test_differential import SETTINGS, check, fresh_policy, step

pytestmark = pytest.mark.root

WRITES = ("update", "update_batch", "delete_batch", "delete")
MAPS = ("_live", "_gen", "_tuples", "_rules", "_sets")


class Failing:
    """A map that passes calls through until the shared budget of writes runs out."""

    def __init__(self, inner: Any, budget: list[int]) -> None:
        self._inner = inner
        self._budget = budget

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            if self._budget[0] == 0:
                raise BpfError(f"injected failure in {name}", errno.ENOMEM)
            self._budget[0] -= 1
            return attr(*args, **kwargs)

        return write


@contextmanager
def failing_after(dp: Dataplane, writes: int) -> Iterator[list[int]]:
    """Make the ``writes``+1-th map write of ``dp`` fail (the undo path writes freely)."""
    budget = [writes]
    saved = {name: getattr(dp, name) for name in MAPS}
    for name in MAPS:
        setattr(dp, name, Failing(saved[name], budget))
    undo = dp._undo_inactive

    def unlimited(*args: Any) -> None:
        budget[0] = -1  # the repair itself is not what is tested for failure
        undo(*args)

    dp._undo_inactive = unlimited  # type: ignore[assignment]
    try:
        yield budget
    finally:
        for name, m in saved.items():
            setattr(dp, name, m)
        del dp._undo_inactive


def generations_agree(plane: Plane) -> str:
    view = plane.dp.read_kernel()
    torn = [k.hex() for k, (live, other) in view.entries.items() if live != other]
    problems = []
    if torn:
        problems.append(f"{len(torn)} entries with differing halves, e.g. {torn[:3]}")
    if view.sets != view.sets_other:
        problems.append(
            f"set elements differ: {len(view.sets - view.sets_other)} only live, "
            f"{len(view.sets_other - view.sets)} only inactive"
        )
    return "; ".join(problems)


@SETTINGS(150)
@given(S.policy_dict(max_rules=25), st.integers(0, 6), st.data())
def test_failed_commit_leaves_the_live_policy_and_leaks_nothing(
    plane: Plane, raw: dict[str, Any], writes: int, data: st.DataObject
) -> None:
    assume(fresh_policy(plane, raw))
    old = plane.engine.policy
    try:
        pending = step(plane, data, 0)
    except CapacityError:
        pending = None
    assume(pending is not None)
    assert pending is not None
    # Everything is drawn whatever happens below: the draws must not depend on
    # whether the injected failure struck (hypothesis replays examples).
    frames = data.draw(st.lists(S.frame(), min_size=1, max_size=6))
    with failing_after(plane.dp, writes):
        try:
            plane.dp.commit(pending.commit)
            outcome = "done"  # the commit needed fewer writes than the budget
        except TornCommit:
            outcome = "torn"  # struck after the flip (the other test covers it)
        except BpfError:
            outcome = "failed"
    if outcome == "failed":
        pending.abort()
        assert plane.engine.policy is old
        assert generations_agree(plane) == ""
        check(plane, frames)
    else:
        pending.finish()
        if outcome == "torn":  # what a restarted agent's adoption does in effect
            plane.dp.settle(pending.commit)
    # The next change brings its own state, and nothing of the failed one, live.
    try:
        nxt = step(plane, data, 1)
    except CapacityError:
        nxt = None
    if nxt is not None:
        plane.run(nxt)
    assert generations_agree(plane) == ""
    check(plane, data.draw(st.lists(S.frame(), min_size=1, max_size=8)))


@SETTINGS(200)
@given(S.policy_dict(max_rules=25), st.data())
def test_an_aborted_change_leaves_the_engine_matching_the_kernel(
    plane: Plane, raw: dict[str, Any], data: st.DataObject
) -> None:
    # Found by the test above: a DeleteRule prepared and aborted (as a lockout refusal
    # does) re-added the rule under a new tuple id while the kernel kept the old one.
    assume(fresh_policy(plane, raw))
    try:
        pending = step(plane, data, 0)
    except CapacityError:
        pending = None
    if pending is not None:
        pending.abort()
    try:
        nxt = step(plane, data, 1)
    except CapacityError:
        nxt = None
    if nxt is not None:
        plane.run(nxt)
    assert generations_agree(plane) == ""
    check(plane, data.draw(st.lists(S.frame(), min_size=1, max_size=8)))


def test_failure_after_the_flip_is_torn_not_an_error(plane: Plane) -> None:
    raw = {"rules": [{"id": "a", "action": "drop", "protocol": "udp", "dst_ports": [9]}]}
    plane.install(policy_from_dict(raw))
    pending = plane.engine.apply(
        policy_from_dict({"rules": [{"id": "a", "action": "drop", "protocol": "udp", "dst_ports": [10]}]})
    )
    real = plane.dp._barrier

    class Broken:
        def wait(self) -> None:
            raise OSError(errno.EIO, "injected")

    plane.dp._barrier = Broken()
    try:
        with pytest.raises(TornCommit) as err:
            plane.dp.commit(pending.commit)
        assert not isinstance(err.value, BpfError)
        assert err.value.revision == pending.commit.revision
        # The new generation is live: the kernel says so.
        assert plane.dp.read_kernel().revision == pending.commit.revision
        # Why it must stop the agent: the retired half still holds the old verdicts,
        # and the next commit (which writes only its own diff) would flip them live.
        assert generations_agree(plane) != ""
    finally:
        plane.dp._barrier = real
        pending.finish()
    plane.dp.settle(pending.commit)  # as a restarted agent's adoption would
    assert generations_agree(plane) == ""


def test_the_store_write_alongside_finishes_before_the_flip_and_its_failure_undoes(
    plane: Plane,
) -> None:
    raw = {"rules": [{"id": "a", "action": "drop", "protocol": "udp", "dst_ports": [9]}]}
    plane.install(policy_from_dict(raw))
    old = plane.engine.revision
    seen: list[int] = []

    def save() -> None:
        seen.append(plane.dp.read_kernel().revision)  # what packets see meanwhile

    moved = {"rules": [{"id": "a", "action": "drop", "protocol": "udp", "dst_ports": [10]}]}
    pending = plane.engine.apply(policy_from_dict(moved))
    plane.dp.commit(pending.commit, alongside=save)
    pending.finish()
    assert seen == [old] and plane.dp.read_kernel().revision == pending.commit.revision

    def broken() -> None:
        raise OSError(errno.ENOSPC, "injected: the disk is full")

    before = plane.engine.policy
    pending = plane.engine.apply(policy_from_dict(raw))
    with pytest.raises(OSError, match="disk is full"):
        try:
            plane.dp.commit(pending.commit, alongside=broken)
        except BaseException:
            pending.abort()
            raise
    assert plane.engine.policy is before
    assert plane.dp.read_kernel().revision == old + 1  # still the moved policy
    assert generations_agree(plane) == ""
