"""The Links actor: owns XDP attachments, keyed by ifindex.

Work is serialised per interface: the actor's main task takes LinkEvents from
Discovery in order and hands each to the child task of its ifindex, through
that child's own bounded queue. A child does its interface's work one event at
a time: for a new (or renamed) interface it first has the Datapath compile
rules naming it (``LinkChanged``, awaited), then attaches XDP, so such a rule
is enforced from the interface's first packet. Attach, detach, pin and unpin
run in a worker thread: a slow driver delays its own interface, never the event
loop nor the other interfaces. The table of interfaces is changed only on the
loop, whole steps at a time, so ListInterfaces (answered by another task) sees
each interface before or after a step, never in the middle.

Channels, and who waits when one is full: Discovery -> Links (bounded by the
supervisor): Discovery waits, the netlink socket buffers, and an overflow there
ends in a full resync. Main task -> a child (``QUEUE``): the main task waits,
so one interface whose driver hangs with ``QUEUE`` events pending holds back
the dispatch of later events (their work still runs in their own children).
Children -> Datapath (its bounded inbox, shared with the Api): the child waits.

Pins: with a ``pin_dir`` every attachment is pinned at ``<pin_dir>/links/<ifindex>``
so enforcement survives the agent. On exit they stay (default) or are detached
and unpinned (``detach_on_exit=True``). Without a pin_dir the links live as long
as their fds, which close when the actor exits.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd.kernel.attach import Attached, attach
from fwd.kernel.attach import AttachedLink as AttachedLink
from fwd.kernel.attach import Attacher as Attacher
from fwd.kernel.attach import XdpAttacher as XdpAttacher
from fwd.messages import (
    AttachMode,
    DatapathCommand,
    InterfaceStatus,
    LinkChange,
    LinkChanged,
    LinkEvent,
    LinkInfo,
    LinkState,
    ListInterfaces,
    Reply,
    request,
)

log = structlog.get_logger("fwd.links")

LOOPBACK = "lo"
QUEUE = 16  # events waiting for one interface's child (see the module docstring)

# One step of an interface's work: yields blocking I/O (run in a worker thread by
# the actor, inline by handle()) and gets its result back.
Steps = Generator[Callable[[], Any], Any, None]


def is_managed(name: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Whether ``name`` gets the program: matches an include glob and no exclude glob.

    The loopback is managed only when "lo" is listed literally in ``include``:
    a catch-all "*" must not put a firewall on lo by accident.
    """
    include = tuple(include)
    if name == LOOPBACK and LOOPBACK not in include:
        return False
    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


@dataclass(frozen=True)
class LinksStatistics:
    """Gauges (attached/excluded/failed now) and counters since start."""

    attached: int
    excluded: int
    failed: int
    events: int
    attaches: int
    attach_failures: int
    detaches: int


@dataclass
class _Entry:
    """What we know about one ifindex; ``link`` is set only while attached."""

    info: LinkInfo
    state: LinkState
    link: AttachedLink | None = None
    mode: AttachMode = AttachMode.NONE
    error: str = ""
    pinned: bool = False
    link_id: int = 0  # read once at attach: status() must not need a syscall
    prog_id: int = 0
    adopted: bool = False  # taken over from a previous agent's pin, not attached anew

    def status(self) -> InterfaceStatus:
        return InterfaceStatus(
            name=self.info.name,
            ifindex=self.info.ifindex,
            state=self.state,
            mode=self.mode,
            prog_id=self.prog_id if self.link is not None else 0,
            link_id=self.link_id if self.link is not None else 0,
            error=self.error,
            adopted=self.adopted and self.link is not None,
        )


class Links:
    """Attaches ``prog_fd`` to every managed link and keeps the table of interfaces."""

    def __init__(
        self,
        prog_fd: int,
        *,
        include: Iterable[str] = ("*",),
        exclude: Iterable[str] = (),
        pin_dir: Path | None = None,
        attacher: Attacher | None = None,
        detach_on_exit: bool = False,
        datapath: MemoryObjectSendStream[DatapathCommand] | None = None,
        reply_timeout: float = 10.0,
    ) -> None:
        self.prog_fd = prog_fd
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.pin_dir = Path(pin_dir) if pin_dir is not None else None
        self.attacher: Attacher = attacher if attacher is not None else XdpAttacher()
        self.detach_on_exit = detach_on_exit
        # Interface changes go to the Datapath before XDP is attached (None: tests).
        self._datapath = datapath
        self._reply_timeout = reply_timeout
        self._entries: dict[int, _Entry] = {}
        self._children: dict[int, MemoryObjectSendStream[LinkEvent]] = {}
        self._pending = 0  # events handed to children and not done yet
        self._resynced = False  # a full table (RESYNC) was dispatched
        self._synced = anyio.Event()  # ... and every interface's work for it is done
        self._events = self._attaches = self._attach_failures = self._detaches = 0

    # --- read side --------------------------------------------------------------

    def interfaces(self) -> tuple[InterfaceStatus, ...]:
        """Every known interface, managed or not, sorted by ifindex."""
        return tuple(self._entries[i].status() for i in sorted(self._entries))

    def statistics(self) -> LinksStatistics:
        states = [e.state for e in self._entries.values()]
        return LinksStatistics(
            attached=states.count(LinkState.ATTACHED),
            excluded=states.count(LinkState.EXCLUDED),
            failed=states.count(LinkState.FAILED),
            events=self._events,
            attaches=self._attaches,
            attach_failures=self._attach_failures,
            detaches=self._detaches,
        )

    async def wait_synced(self) -> None:
        """Return once every interface of the first full table (Discovery's scan at
        start) has its XDP program, or failed: the agent is ready only then."""
        await self._synced.wait()

    # --- the actor ------------------------------------------------------------------

    async def run(
        self,
        events: MemoryObjectReceiveStream[LinkEvent],
        requests: MemoryObjectReceiveStream[ListInterfaces],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Apply link events and answer requests until cancelled or ``events`` closes."""
        async with events, requests:
            try:
                async with anyio.create_task_group() as serving:
                    serving.start_soon(self._serve, requests)
                    task_status.started()
                    async with anyio.create_task_group() as children:
                        async for event in events:
                            await self._dispatch(event, children)
                        # Discovery closed its end: let every child finish its queue.
                        for queue in self._children.values():
                            queue.close()
                    serving.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._shutdown)

    async def _serve(self, requests: MemoryObjectReceiveStream[ListInterfaces]) -> None:
        async for ask in requests:
            async with ask.reply:
                try:
                    await ask.reply.send(Reply(value=self.interfaces()))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    log.debug("list_interfaces_requester_gone")

    async def _dispatch(self, event: LinkEvent, children: anyio.abc.TaskGroup) -> None:
        """Hand ``event`` to the child of its interface (a RESYNC to every one concerned)."""
        self._events += 1
        if event.change is LinkChange.RESYNC:
            # The Datapath learns the whole table first: new interfaces are compiled
            # before their children attach, and vanished ones leave the rules.
            await self._tell_datapath(event)
            present = {link.ifindex for link in event.links}
            for ifindex in [i for i in self._entries if i not in present]:
                await self._enqueue(ifindex, _removed(self._entries[ifindex].info), children)
            for link in event.links:
                await self._enqueue(link.ifindex, LinkEvent(LinkChange.ADDED, link=link), children)
            self._resynced = True
            self._check_synced()
        elif event.link is None:
            log.warning("link_event_without_link", change=event.change.value)
        else:
            await self._enqueue(event.link.ifindex, event, children)

    def _check_synced(self) -> None:
        if self._resynced and self._pending == 0:
            self._synced.set()

    async def _enqueue(
        self, ifindex: int, event: LinkEvent, children: anyio.abc.TaskGroup
    ) -> None:
        queue = self._children.get(ifindex)
        if queue is None:
            queue, inbox = anyio.create_memory_object_stream[LinkEvent](QUEUE)
            self._children[ifindex] = queue
            children.start_soon(self._interface, ifindex, inbox)
        self._pending += 1
        try:
            queue.send_nowait(event)  # no await: the child cannot go in between
        except anyio.WouldBlock:
            await queue.send(event)  # the child is busy with QUEUE events: wait for it

    async def _interface(self, ifindex: int, inbox: MemoryObjectReceiveStream[LinkEvent]) -> None:
        """One interface's work, one event at a time; ends when the interface is gone
        and nothing more is queued for it (or when the main task closes the queue)."""
        async with inbox:
            async for event in inbox:
                try:
                    await self._drive(self._steps(event), event)
                finally:
                    self._pending -= 1
                    self._check_synced()
                if ifindex not in self._entries and inbox.statistics().current_buffer_used == 0:
                    # Gone, nothing pending: retire (a reused ifindex gets a new child).
                    del self._children[ifindex]
                    return

    async def _drive(self, steps: Steps, event: LinkEvent) -> None:
        """Run one step: its I/O in a worker thread, the table changes on the loop."""
        try:
            io = steps.send(None)
            while True:
                result: Any = None
                if io is _DATAPATH:
                    await self._tell_datapath(event)
                else:
                    result = await anyio.to_thread.run_sync(io)
                io = steps.send(result)
        except StopIteration:
            pass

    async def _tell_datapath(self, event: LinkEvent) -> None:
        """Have the Datapath compile rules against the changed interface (awaited)."""
        if self._datapath is None:
            return

        def changed(reply: MemoryObjectSendStream[Reply[int]]) -> LinkChanged:
            return LinkChanged(event, reply)

        try:
            revision: int = await request(self._datapath, changed, timeout=self._reply_timeout)
            log.debug("link_compiled", change=event.change.value, revision=revision)
        except Exception as exc:  # the interface still gets XDP; the rules keep their entries
            log.error("link_compile_failed", change=event.change.value, error=str(exc))

    # --- one interface's steps (the table changes between two yields) ------------------

    def handle(self, event: LinkEvent) -> None:
        """Apply one event at once, I/O inline (tests; the actor goes per interface)."""
        self._events += 1
        if event.change is LinkChange.RESYNC:
            present = {link.ifindex for link in event.links}
            for ifindex in [i for i in self._entries if i not in present]:
                self._run_inline(self._steps(_removed(self._entries[ifindex].info)))
            for link in event.links:
                self._run_inline(self._steps(LinkEvent(LinkChange.ADDED, link=link)))
        elif event.link is None:
            log.warning("link_event_without_link", change=event.change.value)
        else:
            self._run_inline(self._steps(event))

    @staticmethod
    def _run_inline(steps: Steps) -> None:
        try:
            io = steps.send(None)
            while True:
                io = steps.send(None if io is _DATAPATH else io())
        except StopIteration:
            pass

    def _steps(self, event: LinkEvent) -> Steps:
        info = event.link
        assert info is not None
        if event.change is LinkChange.REMOVED:
            yield from self._forget(info.ifindex)
            yield _DATAPATH  # after: its rules may go (a reused ifindex comes later)
            return
        entry = self._entries.get(info.ifindex)
        if entry is None or entry.info.name != info.name:
            yield _DATAPATH  # before XDP: a rule naming it enforces from the first packet
            entry = self._entries.get(info.ifindex)
        managed = is_managed(info.name, self.include, self.exclude)
        if entry is None:
            # New: it joins the table once attached (or excluded, or failed), never
            # half-way (a managed interface listed as excluded while it attaches).
            entry = _Entry(info, LinkState.EXCLUDED)
            if managed:
                yield from self._attach(entry)
            self._entries[info.ifindex] = entry
            return
        entry.info = info  # a rename or a flag change
        if managed and entry.link is None:
            yield from self._attach(entry)
        elif not managed and entry.link is not None:
            log.info("link_unmanaged", iface=info.name, ifindex=info.ifindex)
            yield from self._detach(entry)
        elif not managed:
            entry.state, entry.error = LinkState.EXCLUDED, ""

    def _pin_path(self, ifindex: int) -> Path | None:
        return self.pin_dir / "links" / str(ifindex) if self.pin_dir is not None else None

    def _attach(self, entry: _Entry) -> Steps:
        ifindex, name = entry.info.ifindex, entry.info.name
        path = self._pin_path(ifindex)
        result: Attached = yield lambda: attach(self.attacher, self.prog_fd, ifindex, name, path)
        if result.link is None:
            self._attach_failures += 1
            entry.state, entry.mode, entry.error = LinkState.FAILED, AttachMode.NONE, result.error
            return
        self._attaches += 1
        entry.link, entry.mode, entry.pinned, entry.adopted = (
            result.link, result.mode, result.pinned, result.adopted
        )
        entry.state, entry.error = LinkState.ATTACHED, result.error
        entry.link_id, entry.prog_id = result.link_id, result.prog_id

    def _detach(self, entry: _Entry) -> Steps:
        """Detach (the device still exists), unpin and close; leaves the entry EXCLUDED."""
        link, pinned, entry.link, entry.pinned = entry.link, entry.pinned, None, False
        entry.state, entry.mode, entry.error = LinkState.EXCLUDED, AttachMode.NONE, ""
        if link is None:
            return
        self._detaches += 1
        name, ifindex = entry.info.name, entry.info.ifindex
        yield lambda: self._detach_io(link, pinned, name, ifindex)

    def _detach_io(self, link: AttachedLink, pinned: bool, name: str, ifindex: int) -> None:
        try:
            self.attacher.detach(link)
        except Exception as exc:
            log.error("xdp_detach_failed", iface=name, ifindex=ifindex, error=str(exc))
        self._release(link, pinned)

    def _forget(self, ifindex: int) -> Steps:
        """The device is gone: the kernel detached already; drop the pin and the fd."""
        entry = self._entries.pop(ifindex, None)
        if entry is not None and entry.link is not None:
            log.info("xdp_link_gone", iface=entry.info.name, ifindex=ifindex)
            link, pinned = entry.link, entry.pinned
            yield lambda: self._release(link, pinned)

    @staticmethod
    def _release(link: AttachedLink, pinned: bool) -> None:
        if pinned:
            try:
                link.unpin()
            except Exception as exc:
                log.error("xdp_link_unpin_failed", link_id=link.id, error=str(exc))
        link.close()

    def _shutdown(self) -> None:
        """Keep pinned enforcement (default) or detach everything; always close fds."""
        for entry in self._entries.values():
            if entry.link is None:
                continue
            if self.detach_on_exit:
                self._run_inline(self._detach(entry))
            else:
                entry.link.close()  # a pinned link stays attached; an unpinned one goes
        self._entries.clear()


def _DATAPATH() -> None:
    """A step's marker for "tell the Datapath about this event now" (not I/O to run)."""


def _removed(info: LinkInfo) -> LinkEvent:
    return LinkEvent(LinkChange.REMOVED, link=info)
