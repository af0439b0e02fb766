"""The Datapath actor: the only writer of BPF maps.

It owns the enforced policy, its revision and the rule-id -> counter-slot
table. Commands arrive on one channel and are handled one at a time, so an
apply is never interleaved with another apply or a counter read.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd.bpf import abi
from fwd.dataplane import Dataplane
from fwd.errors import FwdError, PolicyError, RevisionMismatch
from fwd.messages import (
    Applied,
    ApplyPolicy,
    ApplyRevision,
    DatapathCommand,
    GetHistory,
    HistoryEntry,
    GetPolicy,
    GetStats,
    LinkChange,
    LinkEvent,
    Reply,
    RuleSlot,
    RuleStats,
    SlotNames,
    RuleTable,
)
from fwd.policy.compiler import assign_slots, fresh_slots
from fwd.policy.model import EMPTY_POLICY, Action, Policy
from fwd.store import Store

log = structlog.get_logger("fwd.datapath")

RESERVED_SLOTS = {
    abi.SLOT_DEFAULT: "(default)",
    abi.SLOT_MALFORMED: "(malformed)",
    abi.SLOT_NON_IP: "(non-ip)",
}


@dataclass
class DatapathStatistics:
    applies: int = 0
    failed_applies: int = 0
    recompiles: int = 0
    revision: int = 0
    entries: int = 0
    tuples: int = 0
    # Rule id -> counter slot of the enforced policy, for the metrics collector.
    table: RuleTable = field(default_factory=RuleTable)


@dataclass
class _State:
    revision: int = 0
    policy: Policy = EMPTY_POLICY
    slots: dict[str, int] = field(default_factory=dict)
    ifindexes: dict[str, int] = field(default_factory=dict)


def rule_table(policy: Policy, revision: int, slots: dict[str, int]) -> RuleTable:
    """The slot of every rule of ``policy`` (built once per install, read at scrape time)."""
    return RuleTable(
        revision=revision,
        default_action=policy.default_action.value,
        dry_run=policy.dry_run,
        rules=tuple(RuleSlot(r.id, r.action.value, slots[r.id]) for r in policy.rules),
    )


class Datapath:
    """Compiles policies and installs them atomically; answers GetPolicy / GetStats."""

    def __init__(
        self,
        dataplane: Dataplane,
        store: Store,
        names: MemoryObjectSendStream[SlotNames] | None = None,
    ) -> None:
        self._dp = dataplane
        self._store = store
        self._names = names  # the slot -> rule id table goes to the Events actor
        self._state = _State()
        self._stats = DatapathStatistics()
        # Applies from the command loop and recompiles after link changes both
        # install; the lock keeps them one at a time. Installs run in a worker
        # thread so compiling a large policy never stalls the event loop.
        self._lock = anyio.Lock()

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
        stored = await anyio.to_thread.run_sync(self._store.latest)
        if stored is not None:
            await self._install(stored.policy, stored.revision, stored.slots)
            log.info("policy_restored", revision=stored.revision, rules=len(stored.policy.rules))
        else:
            await self._install(EMPTY_POLICY, 0, {})
        task_status.started()
        async with anyio.create_task_group() as tg, commands, links:
            tg.start_soon(self._follow_links, links)
            async for command in commands:
                await self._handle(command)
            tg.cancel_scope.cancel()

    async def _follow_links(self, links: MemoryObjectReceiveStream[LinkEvent]) -> None:
        """Keep interface name -> ifindex current; recompile when interface rules need it."""
        async for event in links:
            names = dict(self._state.ifindexes)
            if event.change is LinkChange.RESYNC:
                names = {li.name: li.ifindex for li in event.links}
            elif event.link is not None and event.change is LinkChange.ADDED:
                names = {n: i for n, i in names.items() if i != event.link.ifindex}
                names[event.link.name] = event.link.ifindex
            elif event.link is not None:
                names = {n: i for n, i in names.items() if i != event.link.ifindex}
            old = self._state.ifindexes
            self._state.ifindexes = names
            if names != old and any(r.interfaces for r in self._state.policy.rules):
                try:
                    await self._install(
                        self._state.policy, self._state.revision, self._state.slots
                    )
                    self._stats.recompiles += 1
                except FwdError as e:
                    log.error("recompile_failed", revision=self._state.revision, error=str(e))

    async def _handle(self, command: DatapathCommand) -> None:
        reply: Any
        if isinstance(command, ApplyPolicy):
            reply = await self._apply(command)
        elif isinstance(command, GetPolicy):
            reply = Reply(Applied(self._state.revision, self._state.policy))
        elif isinstance(command, GetStats):
            reply = Reply(self._read_stats())
        elif isinstance(command, ApplyRevision):
            reply = await self._apply_revision(command)
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

    async def _apply_revision(self, cmd: ApplyRevision) -> Reply[Applied]:
        """A rollback: the stored policy of ``cmd.revision`` becomes a new revision."""
        stored = await anyio.to_thread.run_sync(self._store.get, cmd.revision)
        if stored is None:
            return Reply(error=PolicyError("revision", f"no revision {cmd.revision} is stored"))
        log.info("policy_rollback", revision=self._state.revision, to_revision=cmd.revision)
        return await self._apply(ApplyPolicy(stored.policy, cmd.expect_revision, cmd.reply))

    async def _history(self, cmd: GetHistory) -> Reply[tuple[tuple[HistoryEntry, ...], int]]:
        page, total = await anyio.to_thread.run_sync(self._store.history, cmd.offset, cmd.limit)
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

    async def _apply(self, cmd: ApplyPolicy) -> Reply[Applied]:
        current = self._state.revision
        if cmd.expect_revision is not None and cmd.expect_revision != current:
            self._stats.failed_applies += 1
            return Reply(error=RevisionMismatch(cmd.expect_revision, current))
        revision = current + 1
        try:
            slots = assign_slots(self._state.slots, [r.id for r in cmd.policy.rules])
            # Persist first: an agent restarted after the flip must come back
            # with this revision, never an older one.
            await self._install(cmd.policy, revision, slots, persist_first=True)
        except FwdError as e:
            self._stats.failed_applies += 1
            log.warning("apply_refused", revision=current, error=str(e))
            return Reply(error=e)
        self._stats.applies += 1
        log.info(
            "policy_applied",
            revision=revision,
            rules=len(cmd.policy.rules),
            default_action=cmd.policy.default_action.value,
            dry_run=cmd.policy.dry_run,
        )
        return Reply(Applied(revision, cmd.policy))

    async def _install(
        self, policy: Policy, revision: int, slots: dict[str, int], persist_first: bool = False
    ) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(
                self._install_sync, policy, revision, slots, persist_first
            )
        if self._names is not None:  # on the loop: memory streams are not thread-safe
            table = [*RESERVED_SLOTS.items(), *((s, rid) for rid, s in slots.items())]
            # Unbounded channel: never blocks; a closed one means Events is gone (shutdown).
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._names.send_nowait(SlotNames(revision, tuple(table)))

    def _install_sync(
        self, policy: Policy, revision: int, slots: dict[str, int], persist_first: bool
    ) -> None:
        compiled = self._dp.compile(
            policy, revision, slots=slots, ifindexes=self._state.ifindexes
        )
        if persist_first:
            self._store.save(revision, policy, slots)
        self._dp.install(compiled, revision, fresh_slots(self._state.slots, slots))
        self._state.policy, self._state.revision, self._state.slots = policy, revision, slots
        self._stats.revision = revision
        self._stats.entries = compiled.count
        self._stats.tuples = len(compiled.tuples)
        self._stats.table = rule_table(policy, revision, slots)

    def _read_stats(self) -> tuple[RuleStats, ...]:
        policy = self._state.policy
        by_slot = {self._state.slots[r.id]: r for r in policy.rules}
        counters = self._dp.read_counters(list(RESERVED_SLOTS) + list(by_slot))
        out: list[RuleStats] = []
        for slot, name in RESERVED_SLOTS.items():
            c = counters[slot]
            action = policy.default_action if slot == abi.SLOT_DEFAULT else None
            if slot == abi.SLOT_MALFORMED:
                action = Action.DROP
            elif slot == abi.SLOT_NON_IP:
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
        for rule in policy.rules:
            c = counters[self._state.slots[rule.id]]
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
