"""The Datapath actor: the only writer of BPF maps.

It owns the enforced policy, its revision, the rule-id -> counter-slot table
and the map contents (an ``Engine`` and a ``Dataplane``) and their statistics,
alone. Everything reaches it as a command on its one inbox (policy, rule and
set changes, link changes from Links, reads, counter reads for the metrics
collector) and is handled one at a time: a change is never interleaved with
another change or a read, and no lock is needed. A change is prepared (pure,
in ``Engine``) and run through fwd.core.transaction (guard, persist, commit,
finish or abort) in a worker thread so that compiling a large policy never
stalls the event loop; the actor awaits it, and nothing else touches the
Engine meanwhile. Statistics are published as an immutable snapshot.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd import heap
from fwd.core import tables, transaction
from fwd.core.counters import SlotCounters
from fwd.errors import FwdError, NotFound, PolicyError, RevisionMismatch
from fwd.kernel.dataplane import Dataplane
from fwd.messages import (
    AddRule,
    Adoption,
    Applied,
    ApplyPolicy,
    ApplyRevision,
    DatapathCommand,
    DatapathStatistics,
    DeleteRule,
    GetHistory,
    GetPolicy,
    GetStats,
    HistoryEntry,
    LinkChanged,
    ListRules,
    ListSetElements,
    ListSets,
    ReadCounters,
    Reply,
    RuleStats,
    SetAddElements,
    SetElementsPage,
    SetInfo,
    SetRemoveElements,
    SlotNames,
)
from fwd.policy.adopt import KernelView
from fwd.policy.compiler import fresh_slots
from fwd.policy.engine import Engine, Pending
from fwd.policy.model import EMPTY_POLICY, NamedSet, Policy
from fwd.store import Store

log = structlog.get_logger("fwd.datapath")

# A whole-policy change involving this many rules frees enough memory to be
# worth handing back to the kernel (fwd/heap.py) once the reply is sent.
RELEASE_AFTER_RULES = 1_000


class Datapath:
    """Enforces policies and incremental changes atomically; answers reads."""

    def __init__(
        self,
        dataplane: Dataplane,
        store: Store,
        engine: Engine | None = None,
        names: MemoryObjectSendStream[SlotNames] | None = None,
        guard: Callable[[Policy], None] | None = None,
        force_dry_run: bool = False,
        adoption: Adoption | None = None,
    ) -> None:
        # Which maps the agent took over from pins (fwd.kernel.pins); completed at start
        # with what the kernel enforced and what the reconcile changed.
        self._adoption = adoption or Adoption()
        # fwd agent --dry-run: every policy this agent enforces is put in dry-run.
        self._force_dry_run = force_dry_run
        # Anti-lockout: raises (LockoutError) for a resulting policy that could drop
        # the management traffic; every change is checked unless it says force.
        self._guard = guard
        self._dp = dataplane
        self._store = store
        self._names = names  # the slot -> rule id table goes to the Events actor
        self._engine = engine or Engine()
        self._stats = DatapathStatistics()
        self._sorted: tuple[NamedSet, list[str]] | None = None  # ListSetElements cache
        self._release_due = False  # set by a large whole-policy change
        self._names_interfaces = True  # a rule names an interface (until a change says)

    def _enforceable(self, policy: Policy) -> Policy:
        if self._force_dry_run and not policy.dry_run:
            return replace(policy, dry_run=True)
        return policy

    def statistics(self) -> DatapathStatistics:
        """The snapshot published after the last change (immutable: safe to keep)."""
        return self._stats

    async def run(
        self,
        commands: MemoryObjectReceiveStream[DatapathCommand],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Enforce the stored policy, report started, then serve the inbox until it closes."""
        await self._adopt()
        await self._release_heap()
        task_status.started()
        async with commands:
            async for command in commands:
                await self._handle(command)

    async def _adopt(self) -> None:
        """Enforce the stored policy over whatever the (maybe reused) maps hold.

        The kernel's contents are the "before": only differences are written,
        with one generation flip, or nothing at all when the previous agent
        left exactly the stored policy (the common restart). Counter slots are
        zeroed only for rule ids that did not own them at the kernel's revision.
        """
        stored = await anyio.to_thread.run_sync(self._store.latest)
        view = await anyio.to_thread.run_sync(self._dp.read_kernel)
        policy, revision, slots = (
            (self._enforceable(stored.policy), stored.revision, stored.slots)
            if stored is not None
            else (EMPTY_POLICY, 0, {})
        )
        before = None
        if view.revision and "fwd_counters" in self._adoption.maps_reused:
            with contextlib.suppress(FwdError):  # unknown: every slot starts from zero
                before = await anyio.to_thread.run_sync(self._store.get, view.revision)
        fresh = fresh_slots(before.slots if before is not None else {}, slots)
        # The interfaces now, before Discovery reports them: rules naming an
        # interface must keep their entries through the adoption.
        links = {name: index for index, name in socket.if_nameindex()}
        e = self._engine
        await self._change(
            lambda: e.adopt(policy, revision, slots, view, fresh, links), adopt=view
        )
        self._adoption = replace(self._adoption, kernel_revision=view.revision)
        log.info(
            "policy_adopted" if view.revision else "policy_restored",
            revision=revision, rules=len(policy.rules), kernel_revision=view.revision,
            reapplied=self._adoption.reapplied, entries_changed=self._adoption.entries_changed,
            maps_reused=len(self._adoption.maps_reused),
            maps_created=len(self._adoption.maps_created),
        )  # fmt: skip

    async def _relink(self, cmd: LinkChanged) -> Reply[int]:
        """Keep interface name -> ifindex current; recompile (a diff) when rules need it.

        Links asks before it attaches XDP to a new interface, so a rule naming it
        is enforced from the first packet. A failed recompile is logged and the
        old entries stay; the interface still gets XDP (its reply carries the error).
        """
        names = tables.link_names(self._engine.ifindexes, cmd.event)
        if names == self._engine.ifindexes:
            return Reply(self._engine.revision)
        try:
            if not self._names_interfaces:
                # No rule names an interface: nothing compiles, only the table changes
                # (on the loop: a link storm must not queue a thread hop per link).
                compiled = self._engine.relink(names)
                assert compiled is None, "relink compiled with no rule naming an interface"
            elif await self._change(lambda: self._engine.relink(names), names_changed=True):
                self._stats = replace(self._stats, recompiles=self._stats.recompiles + 1)
                return Reply(self._engine.revision)
            await self._publish_names(slots=False)
        except FwdError as e:
            log.error("recompile_failed", revision=self._engine.revision, error=str(e))
            return Reply(error=e)
        return Reply(self._engine.revision)

    async def _handle(self, command: DatapathCommand) -> None:
        reply: Any
        e = self._engine
        if isinstance(command, ApplyPolicy):
            wanted = self._enforceable(command.policy)
            reply = await self._mutate(
                command.expect_revision,
                lambda: None if command.unchanged_ok and e.policy == wanted else e.apply(wanted),
                force=command.force,
            )
            self._count(reply, "applies")
        elif isinstance(command, AddRule):
            reply = await self._mutate(
                command.expect_revision, lambda: self._add_rule(command), "rule_added",
                force=command.force,
            )
            self._count(reply, "rule_changes")
        elif isinstance(command, DeleteRule) and e.index_of(command.rule_id) is None:
            reply = Reply(error=NotFound(f"rule_id: no rule with id {command.rule_id!r}"))
        elif isinstance(command, DeleteRule):
            reply = await self._mutate(
                command.expect_revision, lambda: e.delete_rule(command.rule_id), "rule_deleted",
                force=command.force,
            )
            self._count(reply, "rule_changes")
        elif isinstance(command, (SetAddElements, SetRemoveElements)):
            reply = await self._change_set(command)
            self._count(reply, "set_changes")
        elif isinstance(command, GetPolicy):
            reply = Reply(Applied(e.revision, e.policy, self._adoption))
        elif isinstance(command, GetStats):
            reply = Reply(self._read_stats(command.offset, command.limit))
        elif isinstance(command, ListRules):
            reply = tables.rule_page(e.revision, e.policy.rules, command.offset, command.limit)
        elif isinstance(command, ListSets):
            reply = Reply(tuple(SetInfo(s.name, s.type, len(s)) for s in e.policy.sets))
        elif isinstance(command, ListSetElements):
            reply = self._list_set_elements(command)
        elif isinstance(command, ApplyRevision):
            reply = await self._apply_revision(command)
            self._count(reply, "applies")
        elif isinstance(command, GetHistory):
            reply = await self._history(command)
        elif isinstance(command, LinkChanged):
            reply = await self._relink(command)
        elif isinstance(command, ReadCounters):
            reply = await self._read_counters(command.slots)
        else:  # pragma: no cover - the channel's type forbids it
            raise TypeError(f"unknown command {command!r}")
        try:
            command.reply.send_nowait(reply)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
            log.warning("reply_dropped", command=type(command).__name__)
        finally:
            command.reply.close()
        await self._release_heap()

    async def _release_heap(self) -> None:
        """After a large whole-policy change, return the freed memory (off the loop)."""
        if self._release_due:
            self._release_due = False
            await anyio.to_thread.run_sync(heap.release)

    async def _apply_revision(self, cmd: ApplyRevision) -> Reply[Applied]:
        """A rollback: the stored policy of ``cmd.revision`` becomes a new revision."""
        try:
            stored = await anyio.to_thread.run_sync(self._store.get, cmd.revision)
        except FwdError as e:
            return Reply(error=e)
        if stored is None:
            return Reply(error=PolicyError("revision", f"no revision {cmd.revision} is stored"))
        log.info("policy_rollback", revision=self._engine.revision, to_revision=cmd.revision)
        return await self._mutate(
            cmd.expect_revision,
            lambda: self._engine.apply(self._enforceable(stored.policy)),
            force=cmd.force,
        )

    async def _history(self, cmd: GetHistory) -> Reply[tuple[tuple[HistoryEntry, ...], int]]:
        try:
            page, total = await anyio.to_thread.run_sync(
                self._store.history, cmd.offset, cmd.limit
            )
        except FwdError as e:
            return Reply(error=e)
        entries = tuple(tables.history_entry(s.revision, s.applied_at, s.policy) for s in page)
        return Reply((entries, total))

    async def _change_set(self, cmd: SetAddElements | SetRemoveElements) -> Reply[Applied]:
        """Add or remove elements; when none would change, no revision is made."""
        adding = isinstance(cmd, SetAddElements)
        named = self._engine.policy.set_named(cmd.set_name)
        if named is None:
            return Reply(error=NotFound(f"set: no set named {cmd.set_name!r}"))
        try:
            changed, unchanged = named.count_change(cmd.elements, adding)
        except PolicyError as err:
            return Reply(error=err)
        reply = await self._mutate(
            cmd.expect_revision,
            lambda: None if not changed else self._engine.change_set(
                cmd.set_name, cmd.elements if adding else (), () if adding else cmd.elements
            ),
            "set_changed",
            force=cmd.force,
        )
        if reply.value is None:
            return reply
        return Reply(replace(reply.value, elements_changed=changed, elements_unchanged=unchanged))

    def _count(self, reply: Reply[Applied], what: str) -> None:
        if reply.value is not None and reply.value.unchanged:
            return  # nothing was applied
        if reply.error is not None:
            what = "failed_applies" if what == "applies" else ""
        if what:
            self._stats = replace(self._stats, **{what: getattr(self._stats, what) + 1})

    def _add_rule(self, cmd: AddRule) -> Pending:
        e = self._engine
        anchor = cmd.before_id or cmd.after_id
        if anchor is not None:
            index = e.index_of(anchor)
            if index is None:
                field = "before_id" if cmd.before_id else "after_id"
                raise PolicyError(field, f"no rule with id {anchor!r}")
            index += 0 if cmd.before_id else 1
        else:
            index = len(e.policy.rules) if cmd.position is None else cmd.position
        return e.add_rule(cmd.rule, index)

    async def _mutate(
        self,
        expect_revision: int | None,
        prepare: Callable[[], Pending | None],
        event: str = "policy_applied",
        *,
        force: bool = False,
    ) -> Reply[Applied]:
        current = self._engine.revision
        if expect_revision is not None and expect_revision != current:
            return Reply(error=RevisionMismatch(expect_revision, current))
        try:
            changed = await self._change(prepare, persist=True, force=force)
        except FwdError as e:
            log.warning("change_refused", revision=current, error=str(e))
            return Reply(error=e)
        log.info(event if changed else "change_unchanged", revision=self._engine.revision,
                 rules=len(self._engine.policy.rules))  # fmt: skip
        return Reply(Applied(self._engine.revision, self._engine.policy, unchanged=not changed))

    async def _change(
        self,
        prepare: Callable[[], Pending | None],
        persist: bool = False,
        force: bool = True,
        adopt: KernelView | None = None,
        names_changed: bool = False,
    ) -> bool:
        """Prepare and run one change in a worker thread, awaited: the actor does
        nothing else meanwhile. Then publish what changed, on the loop
        (``names_changed``: a relink, the rules and their slots stay)."""
        guard = None if force else self._guard
        store = self._store if persist else None
        outcome, release, names_interfaces = await anyio.to_thread.run_sync(
            self._change_sync, prepare, store, guard, adopt
        )
        if outcome is None:
            return False
        self._release_due = self._release_due or release
        self._names_interfaces = names_interfaces
        e = self._engine
        if adopt is not None and outcome.flipped:
            self._adoption = replace(
                self._adoption, reapplied=True, entries_changed=outcome.entries
            )
        self._stats = replace(
            self._stats,
            table=tables.rule_table(e.policy, e.revision, dict(e.slots)),
            revision=e.revision,
            entries=len(e.classifier.entries),
            tuples=e.classifier.tuple_count(),
        )
        await self._publish_names(slots=not names_changed or adopt is not None)
        return True

    async def _publish_names(self, slots: bool = True) -> None:
        """Tell Events the interface names and (``slots``) the slot -> rule id table.

        The channel is bounded: the Datapath waits for Events, which only swaps a
        table per message. A closed one means Events is gone (shutdown). The slot
        table (100,000 entries at scale) goes only when it may have changed.
        """
        if self._names is None:
            return
        e = self._engine
        interfaces = tuple(sorted((i, n) for n, i in e.ifindexes.items()))
        names = tables.slot_names(e.slots) if slots else None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._names.send(SlotNames(e.revision, names, interfaces))

    def _change_sync(
        self,
        prepare: Callable[[], Pending | None],
        store: Store | None,
        guard: Callable[[Policy], None] | None,
        adopt: KernelView | None,
    ) -> tuple[transaction.Outcome | None, bool, bool]:
        """In the worker thread: prepare (compile) and run the transaction. Also says
        whether it was a whole-policy change large enough to release the heap after,
        and whether any rule of the resulting policy names an interface."""
        before = len(self._engine.policy.rules)
        pending = prepare()
        if pending is None:
            return None, False, self._names_interfaces
        release = (
            pending.change is None
            and max(before, len(pending.policy.rules)) >= RELEASE_AFTER_RULES
        )
        named = any(r.interfaces for r in pending.policy.rules)
        if adopt is not None:
            assert store is None  # adoption enforces what is stored
            return transaction.adopt(pending, self._dp, adopt), release, named
        return transaction.run(pending, self._dp, store=store, guard=guard), release, named

    def _list_set_elements(self, cmd: ListSetElements) -> Reply[SetElementsPage]:
        e = self._engine
        named = e.policy.set_named(cmd.set_name)
        if named is None:
            return Reply(error=NotFound(f"set: no set named {cmd.set_name!r}"))
        if (bad := tables.check_page(cmd.offset, cmd.limit)) is not None:
            return Reply(error=bad)
        # Sorting a big set once per version, not once per page.
        if self._sorted is None or self._sorted[0] is not named:
            self._sorted = (named, named.elements())
        elements = self._sorted[1]
        page = tuple(elements[cmd.offset : cmd.offset + cmd.limit])
        return Reply(SetElementsPage(e.revision, cmd.set_name, cmd.offset, len(elements), page))

    async def _read_counters(self, slots: tuple[int, ...]) -> Reply[Mapping[int, SlotCounters]]:
        """For the metrics collector: batch lookups, off the loop (100,000 slots take
        a while), awaited like a change: the actor does nothing else meanwhile."""
        try:
            return Reply(await anyio.to_thread.run_sync(self._dp.read_counters_batch, slots))
        except FwdError as e:
            return Reply(error=e)

    def _read_stats(self, offset: int = 0, limit: int = 0) -> tuple[RuleStats, ...]:
        e = self._engine
        # The page's slots only: batch lookups (a few syscalls) instead of one per slot.
        wanted = tables.stat_slots(e.policy, e.slots, offset, limit)
        counters = self._dp.read_counters_batch(wanted)
        return tables.rule_stats(e.policy, e.slots, counters, offset, limit)
