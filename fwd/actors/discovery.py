"""The Discovery actor: owns the rtnetlink socket and turns link changes into LinkEvents.

Order matters at start and after every overflow: the socket joins the
RTMGRP_LINK multicast group *before* the link dump, so a change that happens
while the dump runs is queued on the socket and delivered after the RESYNC
event (a duplicate ADDED is harmless; a lost one is not).

When the kernel cannot queue a broadcast (the receive buffer is full) it drops
it and the next read fails with ENOBUFS. Events are then lost for good, but the
kernel's state is not: we open a fresh socket (pyroute2's socket is unusable
after an error), subscribe, dump, and send a RESYNC event carrying every link.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK

from fwd.messages import LinkEvent
from fwd.core.netlink import link_event_from_msg, resync_event

log = structlog.get_logger("fwd.discovery")

DEFAULT_RCVBUF = 32 * 1024 * 1024
# Not exported by Python's socket module; lets CAP_NET_ADMIN exceed net.core.rmem_max.
SO_RCVBUFFORCE = 33


@dataclass(frozen=True)
class DiscoveryStatistics:
    """Counters since start: events sent (RESYNCs included), RESYNCs, socket overflows."""

    events: int
    resyncs: int
    overflows: int


class _SocketLost(Exception):
    """The netlink socket overflowed or stopped delivering: reopen and rescan."""


def _is_enobufs(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOBUFS
    if isinstance(exc, NetlinkError):
        return abs(int(exc.code)) == errno.ENOBUFS
    return False


class Discovery:
    """Reports every link of the current network namespace, then every change.

    ``rcvbuf`` is the netlink receive buffer in bytes; the default (32 MiB)
    absorbed a 1,000-veth burst here. Tests pass a tiny one to force overflow.
    """

    def __init__(self, *, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        self.rcvbuf = rcvbuf
        self._events = 0
        self._resyncs = 0
        self._overflows = 0

    def statistics(self) -> DiscoveryStatistics:
        """Cheap snapshot for the metrics collector."""
        return DiscoveryStatistics(self._events, self._resyncs, self._overflows)

    async def run(
        self,
        events: MemoryObjectSendStream[LinkEvent],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send a RESYNC, signal started, then stream ADDED/REMOVED until cancelled.

        Closing ``events`` on exit tells the consumer that no more changes come.
        """
        ipr: AsyncIPRoute | None = None
        async with events:
            try:
                ipr = await self._subscribe_and_resync(events)
                task_status.started()
                while True:
                    try:
                        await self._forward(ipr, events)
                    except _SocketLost:
                        self._close(ipr)
                        ipr = None
                        ipr = await self._subscribe_and_resync(events)
            finally:
                # close() is synchronous, but keep the cleanup shielded so a
                # future await here cannot be skipped by the cancellation.
                with anyio.CancelScope(shield=True):
                    if ipr is not None:
                        self._close(ipr)

    async def _open(self) -> AsyncIPRoute:
        """A socket subscribed to RTMGRP_LINK, with the configured receive buffer."""
        ipr = AsyncIPRoute(rcvbuf=self.rcvbuf, groups=RTMGRP_LINK)
        try:
            await ipr.bind(groups=RTMGRP_LINK)
            try:
                ipr.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except PermissionError:
                # Without CAP_NET_ADMIN the buffer stays capped at rmem_max.
                log.warning("netlink_rcvbuf_capped", requested=self.rcvbuf)
        except BaseException:
            self._close(ipr)
            raise
        return ipr

    @staticmethod
    def _close(ipr: AsyncIPRoute) -> None:
        try:
            ipr.close()
        except OSError as exc:  # an errored socket may fail to close cleanly
            log.debug("netlink_close_failed", error=str(exc))

    async def _subscribe_and_resync(
        self, events: MemoryObjectSendStream[LinkEvent]
    ) -> AsyncIPRoute:
        """Open a subscribed socket, dump every link, send RESYNC; retry on overflow."""
        while True:
            ipr = await self._open()
            try:
                msgs = [msg async for msg in await ipr.link("dump")]
            except (OSError, NetlinkError) as exc:
                self._close(ipr)
                if not _is_enobufs(exc):
                    raise
                self._overflows += 1
                log.warning("netlink_overflow_during_dump")
                continue
            except BaseException:
                self._close(ipr)
                raise
            event = resync_event(msgs)
            self._resyncs += 1
            self._events += 1
            log.info("links_resync", links=len(event.links))
            try:
                await events.send(event)
            except BaseException:
                self._close(ipr)
                raise
            return ipr

    async def _forward(
        self, ipr: AsyncIPRoute, events: MemoryObjectSendStream[LinkEvent]
    ) -> None:
        """Forward broadcasts until the socket is lost (raises _SocketLost)."""
        while True:
            received = 0
            try:
                # get() with seq 0 yields the broadcasts of one datagram, then returns.
                async for msg in ipr.get():
                    received += 1
                    event = link_event_from_msg(msg)
                    if event is None:
                        continue
                    self._events += 1
                    await events.send(event)
            except (OSError, NetlinkError) as exc:
                if not _is_enobufs(exc):
                    raise
                self._overflows += 1
                log.warning("netlink_overflow", overflows=self._overflows)
                raise _SocketLost from exc
            if received == 0:
                # An empty read means pyroute2 put its terminator or error
                # marker in the queue: this socket will deliver nothing more.
                log.warning("netlink_socket_lost")
                raise _SocketLost


__all__ = ["DEFAULT_RCVBUF", "Discovery", "DiscoveryStatistics"]
