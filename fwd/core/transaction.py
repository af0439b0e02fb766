"""One change to the enforced policy, as a fixed sequence: guard, persist, commit, finish.

The Datapath actor runs every change through :func:`run` (in a worker thread,
awaiting it; nothing else touches the Engine meanwhile), and the tests run the
same function over fake maps and the in-memory store. The sequence:

1. **guard**: the anti-lockout check of the resulting policy (unless forced);
2. **persist** the revision (a journal record or a snapshot) *alongside* the
   kernel write and before the flip: an agent restarted after the flip must
   come back with this revision, never an older one;
3. **commit**: write the inactive generation, flip, settle the retired half;
4. **finish**: the Engine keeps the prepared state.

A failure before the flip (guard, store, kernel) **discards** the stored
revision (it was never enforced: it must not come back at a restart, and the
next change reuses its number) and **aborts** (the Engine is as before). A
failure after the flip (:class:`TornCommit`) is neither: the change is live
and persisted, the agent stops and its restart adopts the kernel.

An adoption (the agent starting over maps a previous agent left) enforces what
is stored: no guard, nothing persisted, and no commit at all when the kernel
already holds exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fwd.policy.adopt import KernelView
from fwd.policy.engine import Commit, Pending
from fwd.policy.model import Policy


class TornCommit(RuntimeError):
    """A commit failed after its flip: the new generation is live, the retired half
    is stale. Not a FwdError on purpose: the agent must stop (and its restart adopt
    and align the kernel), not go on answering as if nothing happened."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision {revision} went live but settling the retired half failed")
        self.revision = revision


class Plane(Protocol):
    """What a change needs of the kernel side (fwd.kernel.dataplane.Dataplane)."""

    def commit(self, c: Commit, alongside: Callable[[], None] | None = None) -> None: ...

    def unchanged(self, c: Commit, view: KernelView) -> bool: ...

    def align_inactive_sets(self, view: KernelView) -> None: ...


class Journal(Protocol):
    """What a change needs of the store (fwd.store.SqliteStore and MemoryStore)."""

    def save(self, revision: int, policy: Policy, slots: dict[str, int]) -> None: ...

    def save_change(self, revision: int, change: Mapping[str, Any]) -> None: ...

    def discard(self, revision: int) -> None: ...


Guard = Callable[[Policy], None]


@dataclass(frozen=True)
class Outcome:
    """What a change did: ``flipped`` whether the kernel switched generation (an
    adoption of an unchanged kernel does not), ``entries`` how many rule-map
    entries the commit rewrote."""

    revision: int
    flipped: bool
    entries: int


def persist(store: Journal, pending: Pending) -> None:
    """Store the revision ``pending`` makes: a journal record for an incremental change,
    a snapshot for a whole policy."""
    revision = pending.commit.revision
    if pending.change is not None:
        store.save_change(revision, pending.change)
    else:
        assert pending.slots is not None
        store.save(revision, pending.policy, dict(pending.slots))


def run(
    pending: Pending,
    plane: Plane,
    *,
    store: Journal | None = None,
    guard: Guard | None = None,
) -> Outcome:
    """Guard, persist (if ``store``), commit and finish ``pending``; on a failure
    before the flip discard and abort, then re-raise. Blocking: a worker thread."""
    commit = pending.commit
    try:
        if guard is not None:
            guard(pending.policy)
        save = (lambda: persist(store, pending)) if store is not None else None
        plane.commit(commit, alongside=save)
    except TornCommit:
        raise  # live and persisted: neither discard nor abort
    except BaseException:
        _undo(pending, store)
        raise
    pending.finish()
    return Outcome(commit.revision, flipped=True, entries=len(commit.changes))


def adopt(pending: Pending, plane: Plane, view: KernelView) -> Outcome:
    """Enforce the stored policy ``pending`` over what the kernel holds (``view``):
    only the difference is written, with one flip, or nothing when there is none."""
    commit = pending.commit
    try:
        if plane.unchanged(commit, view):
            pending.finish()
            return Outcome(commit.revision, flipped=False, entries=0)
        # The other generation may hold a cut-short apply's set elements.
        plane.align_inactive_sets(view)
        plane.commit(commit)
    except TornCommit:
        raise
    except BaseException:
        _undo(pending, None)
        raise
    pending.finish()
    return Outcome(commit.revision, flipped=True, entries=len(commit.changes))


def _undo(pending: Pending, store: Journal | None) -> None:
    """Discard the stored revision (if any) and abort, even when discarding fails."""
    try:
        if store is not None:
            store.discard(pending.commit.revision)
    finally:
        pending.abort()
