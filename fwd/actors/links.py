"""The Links actor: owns XDP attachments, keyed by ifindex.

One task consumes LinkEvents in order and does every attach, detach, pin and
unpin itself. Those are short synchronous syscalls (well under a millisecond
each), so a single ordered loop is the simplest design that serialises the work
for each interface: an ADDED and a REMOVED for the same ifindex can never run
out of order or overlap. A second task answers ListInterfaces; it only reads the
state, between two events, since nothing here awaits in the middle of an update.

Pins: with a ``pin_dir`` every attachment is pinned at ``<pin_dir>/links/<ifindex>``
so enforcement survives the agent. On exit they stay (default) or are detached
and unpinned (``detach_on_exit=True``). Without a pin_dir the links live as long
as their fds, which close when the actor exits.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from fwd.messages import (
    AttachMode,
    InterfaceStatus,
    LinkChange,
    LinkEvent,
    LinkInfo,
    LinkState,
    ListInterfaces,
    Reply,
)

log = structlog.get_logger("fwd.links")

LOOPBACK = "lo"


class AttachedLink(Protocol):
    """What Links needs of an attachment (fwd.kernel.xdp.XdpLink provides it)."""

    @property
    def id(self) -> int: ...

    @property
    def prog_id(self) -> int: ...

    def pin(self, path: str) -> None: ...

    def unpin(self) -> None: ...

    def close(self) -> None: ...


class Attacher(Protocol):
    """The I/O seam: the real one wraps fwd.kernel.xdp, tests may pass a fake."""

    def attach(self, prog_fd: int, ifindex: int) -> tuple[AttachedLink, AttachMode]: ...

    def detach(self, link: AttachedLink) -> None: ...

    def adopt(self, prog_fd: int, path: Path) -> tuple[AttachedLink, AttachMode]:
        """Take over the link pinned at ``path`` and make it run ``prog_fd``."""
        ...


class XdpAttacher:
    """The real attacher: best XDP mode via a bpf_link (offload, native, generic)."""

    def attach(self, prog_fd: int, ifindex: int) -> tuple[AttachedLink, AttachMode]:
        from fwd.kernel.xdp import attach_xdp_best

        return attach_xdp_best(prog_fd, ifindex)

    def detach(self, link: AttachedLink) -> None:
        from fwd.kernel.xdp import XdpLink

        assert isinstance(link, XdpLink)
        link.detach()

    def adopt(self, prog_fd: int, path: Path) -> tuple[AttachedLink, AttachMode]:
        from fwd.kernel.xdp import XdpLink, query_xdp

        link = XdpLink.open_pinned(path)
        try:
            link.update(prog_fd)  # atomic swap: the device is never without XDP
            _, mode = query_xdp(link.ifindex)
        except BaseException:
            link.close()
            raise
        return link, mode


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
    ) -> None:
        self.prog_fd = prog_fd
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.pin_dir = Path(pin_dir) if pin_dir is not None else None
        self.attacher: Attacher = attacher if attacher is not None else XdpAttacher()
        self.detach_on_exit = detach_on_exit
        self._entries: dict[int, _Entry] = {}
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
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._serve, requests)
                    task_status.started()
                    async for event in events:
                        self.handle(event)
                    # Discovery closed its end: nothing more to enforce against.
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    self._shutdown()

    async def _serve(self, requests: MemoryObjectReceiveStream[ListInterfaces]) -> None:
        async for request in requests:
            async with request.reply:
                try:
                    await request.reply.send(Reply(value=self.interfaces()))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    log.debug("list_interfaces_requester_gone")

    # --- event handling (synchronous: one event is applied whole) ------------

    def handle(self, event: LinkEvent) -> None:
        """Apply one event to the table and the kernel."""
        self._events += 1
        if event.change is LinkChange.RESYNC:
            present = {link.ifindex for link in event.links}
            for ifindex in [i for i in self._entries if i not in present]:
                self._forget(ifindex)
            for link in event.links:
                self._update(link)
        elif event.link is None:
            log.warning("link_event_without_link", change=event.change.value)
        elif event.change is LinkChange.ADDED:
            self._update(event.link)
        else:
            self._forget(event.link.ifindex)

    def _update(self, info: LinkInfo) -> None:
        entry = self._entries.get(info.ifindex)
        if entry is None:
            entry = self._entries[info.ifindex] = _Entry(info, LinkState.EXCLUDED)
        else:
            entry.info = info  # a rename or a flag change
        managed = is_managed(info.name, self.include, self.exclude)
        if managed and entry.link is None:
            self._attach(entry)
        elif not managed and entry.link is not None:
            log.info("link_unmanaged", iface=info.name, ifindex=info.ifindex)
            self._detach(entry)
        elif not managed:
            entry.state, entry.error = LinkState.EXCLUDED, ""

    def _pin_path(self, ifindex: int) -> Path | None:
        return self.pin_dir / "links" / str(ifindex) if self.pin_dir is not None else None

    def _attach(self, entry: _Entry) -> None:
        ifindex = entry.info.ifindex
        path = self._pin_path(ifindex)
        adopted = False
        link: AttachedLink
        if path is not None and path.exists():
            # A previous agent pinned a link here: swap our program into it, so
            # the device is never without XDP across a restart.
            try:
                link, mode = self.attacher.adopt(self.prog_fd, path)
                adopted = True
            except Exception as exc:
                # Defunct (device gone and ifindex reused) or not ours: drop it.
                log.warning("stale_link_pin_removed", path=str(path), error=str(exc))
                path.unlink(missing_ok=True)
        if not adopted:
            try:
                link, mode = self.attacher.attach(self.prog_fd, ifindex)
            except Exception as exc:  # any failure is reported on the interface
                self._attach_failures += 1
                entry.state, entry.mode, entry.error = LinkState.FAILED, AttachMode.NONE, str(exc)
                log.error(
                    "xdp_attach_failed", iface=entry.info.name, ifindex=ifindex, error=str(exc)
                )
                return
        self._attaches += 1
        entry.link, entry.mode, entry.pinned, entry.adopted = link, mode, False, adopted
        entry.state, entry.error = LinkState.ATTACHED, ""
        try:
            entry.link_id, entry.prog_id = link.id, link.prog_id
        except Exception as exc:  # the ids are for reporting only
            entry.link_id = entry.prog_id = 0
            log.warning(
                "xdp_link_info_failed", iface=entry.info.name, ifindex=ifindex, error=str(exc)
            )
        if adopted:
            entry.pinned = True
        elif path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                link.pin(str(path))
                entry.pinned = True
            except Exception as exc:
                # Enforcement is in place; only survival across restarts is lost.
                entry.error = f"pin {path}: {exc}"
                log.error(
                    "xdp_link_pin_failed",
                    iface=entry.info.name,
                    ifindex=ifindex,
                    path=str(path),
                    error=str(exc),
                )
        log.info(
            "xdp_adopted" if adopted else "xdp_attached", iface=entry.info.name,
            ifindex=ifindex, mode=mode.value, prog_id=entry.prog_id, link_id=entry.link_id,
        )

    def _detach(self, entry: _Entry) -> None:
        """Detach (the device still exists), unpin and close; leaves the entry EXCLUDED."""
        link, entry.link = entry.link, None
        entry.state, entry.mode, entry.error = LinkState.EXCLUDED, AttachMode.NONE, ""
        if link is None:
            return
        self._detaches += 1
        try:
            self.attacher.detach(link)
        except Exception as exc:
            log.error(
                "xdp_detach_failed",
                iface=entry.info.name,
                ifindex=entry.info.ifindex,
                error=str(exc),
            )
        self._release(link, entry.pinned)
        entry.pinned = False

    def _forget(self, ifindex: int) -> None:
        """The device is gone: the kernel detached already; drop the pin and the fd."""
        entry = self._entries.pop(ifindex, None)
        if entry is not None and entry.link is not None:
            log.info("xdp_link_gone", iface=entry.info.name, ifindex=ifindex)
            self._release(entry.link, entry.pinned)

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
                self._detach(entry)
            else:
                entry.link.close()  # a pinned link stays attached; an unpinned one goes
        self._entries.clear()
