"""Fakes of the actors behind the Api, shipped in the package for unit tests.

They speak the same messages over the same channels as the real actors and
raise the same errors, so the Api (and anything else that talks to the
Datapath or Links) can be tested without BPF, netlink or root.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd.errors import CapacityError, FwdError, PolicyError, RevisionMismatch
from fwd.messages import (
    ApplyRevision,
    GetHistory,
    HistoryEntry,
    Applied,
    ApplyPolicy,
    DatapathCommand,
    GetPolicy,
    GetStats,
    InterfaceStatus,
    ListInterfaces,
    ListRules,
    Reply,
    RulePage,
    RuleStats,
)
from fwd.settings import Settings
from fwd.policy.model import EMPTY_POLICY, Policy

__all__ = ["ApiHarness", "FakeDatapath", "FakeLinks", "FakeRing", "Recorded", "serve_api"]


T = TypeVar("T")


async def _answer(reply: MemoryObjectSendStream[Reply[T]], answer: Reply[T]) -> None:
    """Send one answer and close the reply stream, as the real actors do.

    A requester that gave up (deadline passed) has closed its end; that is not
    the actor's problem, so BrokenResourceError is swallowed.
    """
    with reply:
        try:
            await reply.send(answer)
        except anyio.BrokenResourceError:
            pass


@dataclass(frozen=True)
class Recorded:
    """One apply the fake took: when (unix time), the local revision, the policy."""

    at: float
    revision: int
    policy: Policy


class FakeDatapath:
    """Serves DatapathCommand from memory: a policy, a revision and canned counters.

    The one fake Datapath, for the Api tests, the ClusterSync tests and the cluster
    benchmark (cheap enough to run a thousand in one process): it records every
    apply (``applied``, with its wall-clock time) and sets ``changed`` after each.

    - ApplyPolicy honours ``expect_revision`` (RevisionMismatch), refuses more
      than ``max_rules`` rules (CapacityError), and fails with ``fail_next``
      once if that is set; otherwise the revision goes up by one.
    - GetStats answers ``stats`` if set, else one zeroed entry per rule.
    - With ``silent`` it takes commands but never answers (deadline tests); commands
      whose type is in ``silent_to`` only those.
    """

    def __init__(
        self,
        commands: MemoryObjectReceiveStream[DatapathCommand],
        *,
        policy: Policy = EMPTY_POLICY,
        revision: int = 0,
        max_rules: int | None = None,
    ) -> None:
        self._commands = commands
        self.policy = policy
        self.revision = revision
        self.max_rules = max_rules
        self.stats: tuple[RuleStats, ...] | None = None
        self.fail_next: FwdError | None = None
        self.silent = False
        self.silent_to: tuple[type, ...] = ()
        self.applies = 0  # successful applies, for assertions
        self.received: list[DatapathCommand] = []
        self.history: dict[int, Policy] = {revision: policy}
        self.applied: list[Recorded] = []
        self.changed = anyio.Event()  # set (and replaced) after every apply

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Answer commands until the channel closes."""
        unanswered: list[DatapathCommand] = []
        try:
            async with self._commands:
                task_status.started()
                await self._serve(unanswered)
        finally:
            # Like a real actor's end of life: its reply streams close with it.
            for command in unanswered:
                command.reply.close()

    async def _serve(self, unanswered: list[DatapathCommand]) -> None:
        async for command in self._commands:
            self.received.append(command)
            if self.silent or isinstance(command, self.silent_to):
                unanswered.append(command)
                continue
            if isinstance(command, GetPolicy):
                await _answer(command.reply, Reply(value=Applied(self.revision, self.policy)))
            elif isinstance(command, GetStats):
                rows = self.current_stats()
                end = len(rows) if command.limit <= 0 else command.offset + command.limit
                await _answer(command.reply, Reply(value=rows[command.offset : end]))
            elif isinstance(command, GetHistory):
                revs = sorted(self.history, reverse=True)
                page = tuple(
                    HistoryEntry(r, 0.0, len(p.rules), p.default_action.value, p.dry_run)
                    for r in revs[command.offset : command.offset + command.limit]
                    for p in (self.history[r],)
                )
                await _answer(command.reply, Reply(value=(page, len(revs))))
            elif isinstance(command, ApplyRevision):
                old = self.history.get(command.revision)
                if old is None:
                    err = PolicyError("revision", f"no revision {command.revision} is stored")
                    await _answer(command.reply, Reply[Applied](error=err))
                else:
                    await _answer(
                        command.reply,
                        self.apply(ApplyPolicy(old, command.expect_revision, command.reply)),
                    )
            elif isinstance(command, ApplyPolicy):
                await _answer(command.reply, self.apply(command))
            elif isinstance(command, ListRules):
                every = self.policy.rules
                chunk = every[command.offset : command.offset + command.limit]
                await _answer(
                    command.reply,
                    Reply(value=RulePage(self.revision, command.offset, len(every), chunk)),
                )
            else:  # rule and set commands are not faked: the reply closes unanswered
                command.reply.close()

    def apply(self, command: ApplyPolicy) -> Reply[Applied]:
        """The answer to an ApplyPolicy (no I/O), updating the in-memory state."""
        if command.expect_revision is not None and command.expect_revision != self.revision:
            return Reply(error=RevisionMismatch(command.expect_revision, self.revision))
        if self.max_rules is not None and len(command.policy.rules) > self.max_rules:
            return Reply(
                error=CapacityError(
                    f"{len(command.policy.rules)} rules exceed the capacity of {self.max_rules}"
                )
            )
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            return Reply(error=error)
        self.policy = command.policy
        self.revision += 1
        self.applies += 1
        self.history[self.revision] = self.policy
        self.applied.append(Recorded(time.time(), self.revision, self.policy))
        self.changed.set()
        self.changed = anyio.Event()
        return Reply(value=Applied(self.revision, self.policy))

    def current_stats(self) -> tuple[RuleStats, ...]:
        """``stats`` when set, else a zeroed entry per rule of the current policy."""
        if self.stats is not None:
            return self.stats
        return tuple(RuleStats(r.id, r.action.value, 0, 0) for r in self.policy.rules)


class FakeLinks:
    """Answers ListInterfaces with ``interfaces`` (mutable between requests)."""

    def __init__(
        self,
        requests: MemoryObjectReceiveStream[ListInterfaces],
        interfaces: Sequence[InterfaceStatus] = (),
    ) -> None:
        self._requests = requests
        self.interfaces: tuple[InterfaceStatus, ...] = tuple(interfaces)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Answer requests until the channel closes."""
        async with self._requests:
            task_status.started()
            async for request in self._requests:
                await _answer(request.reply, Reply(value=self.interfaces))


@dataclass
class ApiHarness:
    """A running Api on ``socket_path`` backed by the fakes (see ``serve_api``)."""

    socket_path: str
    settings: Settings
    datapath: FakeDatapath
    links: FakeLinks


@asynccontextmanager
async def serve_api(
    socket_path: str,
    *,
    interfaces: Sequence[InterfaceStatus] = (),
    reply_timeout: float = 5.0,
    max_rules: int | None = None,
) -> AsyncIterator[ApiHarness]:
    """Run the real Api server, FakeDatapath and FakeLinks in one task group.

    The server listens on ``socket_path`` when the block starts; leaving the
    block stops the server (it removes its socket), then the fakes.
    """
    from fwd.actors.api import Api  # here: the fakes themselves need no grpclib

    dp_tx, dp_rx = anyio.create_memory_object_stream[DatapathCommand](16)
    if_tx, if_rx = anyio.create_memory_object_stream[ListInterfaces](16)
    settings = Settings(socket_path=socket_path, reply_timeout=reply_timeout)
    harness = ApiHarness(
        socket_path=socket_path,
        settings=settings,
        datapath=FakeDatapath(dp_rx, max_rules=max_rules),
        links=FakeLinks(if_rx, interfaces),
    )
    api = Api(datapath=dp_tx, links=if_tx, settings=settings)
    with dp_tx, if_tx:
        async with anyio.create_task_group() as actors:
            await actors.start(harness.datapath.run)
            await actors.start(harness.links.run)
            try:
                # Stopped first, like a supervisor would: pending requests are
                # answered "shutting down" while the actors behind still run.
                async with anyio.create_task_group() as front:
                    await front.start(api.run)
                    try:
                        yield harness
                    finally:
                        front.cancel_scope.cancel()
            finally:
                actors.cancel_scope.cancel()


class FakeRing:
    """A ring buffer reader fed by the test: ``push`` records, the actor consumes them.

    Readiness is a pipe holding one byte while records wait, so the Events
    actor's ``anyio.wait_readable(fileno())`` behaves as on the real map fd.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._records: list[bytes] = []
        self.consumed = 0

    def fileno(self) -> int:
        return self._r

    def push(self, records: Sequence[bytes]) -> None:
        if records and not self._records:
            os.write(self._w, b"x")
        self._records.extend(records)

    def consume(self, budget: int) -> list[bytes]:
        out, self._records = self._records[:budget], self._records[budget:]
        if out and not self._records:
            os.read(self._r, 1)
        self.consumed += len(out)
        return out

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)
