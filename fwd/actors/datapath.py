"""The Datapath actor: the only writer of BPF maps.

It owns the enforced policy, its revision, the rule-id -> counter-slot table
and the map contents (an ``Engine``). Commands arrive on one channel and are
handled one at a time, so a change is never interleaved with another change
or a counter read. Every change is: check the expected revision, prepare it
(pure, in ``Engine``), persist it, commit it to the kernel (one generation
flip), then keep it (``Pending.finish``) or roll it back (``Pending.abort``).
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd import heap
from fwd.core import abi
from fwd.kernel.dataplane import Dataplane, TornCommit
from fwd.errors import FwdError, NotFound, PolicyError, RevisionMismatch
from fwd.messages import (
    AddRule,
    Adoption,
    Applied,
    ApplyPolicy,
    ApplyRevision,
    DatapathCommand,
    DeleteRule,
    GetHistory,
    GetPolicy,
    HistoryEntry,
    GetStats,
    LinkChange,
    LinkEvent,
    ListRules,
    ListSetElements,
    ListSets,
    Reply,
    RulePage,
    RuleSlot,
    RuleStats,
    RuleTable,
    SetAddElements,
    SetElementsPage,
    SetInfo,
    SetRemoveElements,
    SlotNames,
)
from fwd.policy.adopt import KernelView
from fwd.policy.compiler import fresh_slots
from fwd.policy.engine import Engine, Pending
from fwd.policy.model import EMPTY_POLICY, Action, NamedSet, Policy
from fwd.store import Store, save_pending

log = structlog.get_logger("fwd.datapath")

RESERVED_SLOTS = {
    abi.SLOT_DEFAULT: "(default)",
    abi.SLOT_MALFORMED: "(malformed)",
    abi.SLOT_NON_IP: "(non-ip)",
    abi.SLOT_FAILSAFE: "(failsafe)",
}
MAX_PAGE = 10_000
# A whole-policy change involving this many rules frees enough memory to be
# worth handing back to the kernel (fwd/heap.py) once the reply is sent.
RELEASE_AFTER_RULES = 1_000


@dataclass
class DatapathStatistics:
    applies: int = 0
    failed_applies: int = 0
    recompiles: int = 0
    rule_changes: int = 0
    set_changes: int = 0
    revision: int = 0
    entries: int = 0
    tuples: int = 0
    # The enforced policy's rule -> slot table for the metrics collector: replaced
    # whole on each change, so another thread reads one revision's table or the next.
    table: RuleTable = field(default_factory=RuleTable)


def rule_table(policy: Policy, revision: int, slots: dict[str, int]) -> RuleTable:
    """The slot of every rule of ``policy`` (built once per change, read at scrape time)."""
    return RuleTable(
        revision=revision,
        default_action=policy.default_action.value,
        dry_run=policy.dry_run,
        rules=tuple(RuleSlot(r.id, r.action.value, slots[r.id]) for r in policy.rules),
    )


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
        # Commands and recompiles after link changes both change the maps; the
        # lock keeps them one at a time. The work runs in a worker thread so
        # compiling a large policy never stalls the event loop.
        self._lock = anyio.Lock()
        self._release_due = False  # set by a large whole-policy change

    def _enforceable(self, policy: Policy) -> Policy:
        if self._force_dry_run and not policy.dry_run:
            return replace(policy, dry_run=True)
        return policy

    def statistics(self) -> DatapathStatistics:
        return DatapathStatistics(**vars(self._stats))

    async def run(
        self,
        commands: MemoryObjectReceiveStream[DatapathCommand],
        links: MemoryObjectReceiveStream[LinkEvent],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Enforce the stored policy, report started, then serve commands and link changes."""
        await self._adopt()
        await self._release_heap()
        task_status.started()
        async with anyio.create_task_group() as tg, commands, links:
            tg.start_soon(self._follow_links, links)
            async for command in commands:
                await self._handle(command)
            tg.cancel_scope.cancel()

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

    async def _follow_links(self, links: MemoryObjectReceiveStream[LinkEvent]) -> None:
        """Keep interface name -> ifindex current; recompile (a diff) when rules need it."""
        async for event in links:
            names = dict(self._engine.ifindexes)
            if event.change is LinkChange.RESYNC:
                names = {li.name: li.ifindex for li in event.links}
            elif event.link is not None and event.change is LinkChange.ADDED:
                names = {n: i for n, i in names.items() if i != event.link.ifindex}
                names[event.link.name] = event.link.ifindex
            elif event.link is not None:
                names = {n: i for n, i in names.items() if i != event.link.ifindex}
            try:
                if await self._change(lambda: self._engine.relink(names)):
                    self._stats.recompiles += 1
            except FwdError as e:
                log.error("recompile_failed", revision=self._engine.revision, error=str(e))
            await self._release_heap()

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
            reply = self._list_rules(command)
        elif isinstance(command, ListSets):
            reply = Reply(tuple(SetInfo(s.name, s.type, len(s)) for s in e.policy.sets))
        elif isinstance(command, ListSetElements):
            reply = self._list_set_elements(command)
        elif isinstance(command, ApplyRevision):
            reply = await self._apply_revision(command)
            self._count(reply, "applies")
        elif isinstance(command, GetHistory):
            reply = await self._history(command)
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
        entries = tuple(
            HistoryEntry(
                s.revision,
                s.applied_at,
                len(s.policy.rules),
                s.policy.default_action.value,
                s.policy.dry_run,
            )
            for s in page
        )
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
        if reply.error is None:
            setattr(self._stats, what, getattr(self._stats, what) + 1)
        elif what == "applies":
            self._stats.failed_applies += 1

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
    ) -> bool:
        async with self._lock:
            changed = await anyio.to_thread.run_sync(
                self._change_sync, prepare, persist, force, adopt
            )
        if changed and self._names is not None:  # on the loop: memory streams are not thread-safe
            slots = self._engine.slots
            table = [*RESERVED_SLOTS.items(), *((s, rid) for rid, s in slots.items())]
            # Unbounded channel: never blocks; a closed one means Events is gone (shutdown).
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._names.send_nowait(SlotNames(self._engine.revision, tuple(table)))
        return changed

    def _change_sync(
        self,
        prepare: Callable[[], Pending | None],
        persist: bool,
        force: bool,
        adopt: KernelView | None = None,
    ) -> bool:
        before = len(self._engine.policy.rules)
        pending = prepare()
        if pending is None:
            return False
        if pending.change is None and max(before, len(pending.policy.rules)) >= RELEASE_AFTER_RULES:
            self._release_due = True
        revision = pending.commit.revision
        try:
            if self._guard is not None and not force:
                self._guard(pending.policy)
            assert adopt is None or not persist  # adoption enforces what is stored
            save = functools.partial(save_pending, self._store, pending) if persist else None
            if adopt is None:
                # Persisted before the flip (an agent restarted after it must come
                # back with this revision, never an older one), written meanwhile.
                self._dp.commit(pending.commit, alongside=save)
            elif not self._dp.unchanged(pending.commit, adopt):
                # The other generation may hold a cut-short apply's set elements.
                self._dp.align_inactive_sets(adopt)
                self._dp.commit(pending.commit)
                self._adoption = replace(
                    self._adoption, reapplied=True, entries_changed=len(pending.commit.changes)
                )
        except TornCommit:
            raise  # live and persisted: the agent stops, its restart adopts the kernel
        except BaseException:
            if persist:
                # Saved first, never enforced: the revision must not come back at a
                # restart, and the next change reuses its number.
                self._store.discard(revision)
            pending.abort()
            raise
        pending.finish()
        self._stats.table = rule_table(self._engine.policy, revision, dict(self._engine.slots))
        self._stats.revision = revision
        self._stats.entries = len(self._engine.classifier.entries)
        self._stats.tuples = self._engine.classifier.tuple_count()
        return True

    def _list_rules(self, cmd: ListRules) -> Reply[RulePage]:
        e = self._engine
        if cmd.offset < 0 or not 0 < cmd.limit <= MAX_PAGE:
            return Reply(error=PolicyError("limit", f"offset >= 0 and limit 1-{MAX_PAGE}"))
        rules = e.policy.rules
        page = rules[cmd.offset : cmd.offset + cmd.limit]
        return Reply(RulePage(e.revision, cmd.offset, len(rules), page))

    def _list_set_elements(self, cmd: ListSetElements) -> Reply[SetElementsPage]:
        e = self._engine
        named = e.policy.set_named(cmd.set_name)
        if named is None:
            return Reply(error=NotFound(f"set: no set named {cmd.set_name!r}"))
        if cmd.offset < 0 or not 0 < cmd.limit <= MAX_PAGE:
            return Reply(error=PolicyError("limit", f"offset >= 0 and limit 1-{MAX_PAGE}"))
        # Sorting a big set once per version, not once per page.
        if self._sorted is None or self._sorted[0] is not named:
            self._sorted = (named, named.elements())
        elements = self._sorted[1]
        page = tuple(elements[cmd.offset : cmd.offset + cmd.limit])
        return Reply(SetElementsPage(e.revision, cmd.set_name, cmd.offset, len(elements), page))

    def _read_stats(self, offset: int = 0, limit: int = 0) -> tuple[RuleStats, ...]:
        """Counters of one page of rows: the reserved slots, then each rule (only the
        page's slots are read, so paging through 100,000 rules stays linear)."""
        e = self._engine
        policy = e.policy
        slots = e.slots
        nres = len(RESERVED_SLOTS)
        end = nres + len(policy.rules) if limit <= 0 else offset + limit
        reserved = list(RESERVED_SLOTS.items())[offset:end]
        rules = policy.rules[max(offset - nres, 0) : max(end - nres, 0)]
        # The page's slots: batch lookups (a few syscalls) instead of one per slot.
        counters = self._dp.read_counters_batch(
            [s for s, _ in reserved] + [slots[r.id] for r in rules]
        )
        out: list[RuleStats] = []
        for slot, name in reserved:
            c = counters[slot]
            action = policy.default_action if slot == abi.SLOT_DEFAULT else None
            if slot == abi.SLOT_MALFORMED:
                action = Action.DROP
            elif slot in (abi.SLOT_NON_IP, abi.SLOT_FAILSAFE):
                action = Action.ALLOW
            out.append(
                RuleStats(
                    name,
                    action.value if action else "",
                    c.packets,
                    c.bytes,
                    c.would_drop_packets,
                    c.would_drop_bytes,
                )
            )
        for rule in rules:
            c = counters[slots[rule.id]]
            out.append(
                RuleStats(
                    rule.id,
                    rule.action.value,
                    c.packets,
                    c.bytes,
                    c.would_drop_packets,
                    c.would_drop_bytes,
                )
            )
        return tuple(out)
