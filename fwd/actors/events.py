"""The Events actor: owns the ring buffer reader and fans drop events out to subscribers.

It wakes when the ring buffer's fd is readable, takes at most ``budget``
records per batch and yields to the event loop between batches (so a flood
never stalls the loop), decodes them (:mod:`fwd.core.records`) and offers each
subscriber the events its filter accepts, with ``send_nowait``: a subscriber
whose stream is full loses them (counted, and told in its next
:class:`~fwd.messages.EventBatch`), and never slows the others (STYLE.md 5).

Channels: ``Subscribe`` commands in (from the Api), ``SlotNames`` in (from the
Datapath, whenever the slot -> rule id table changes). Shutdown: when the
command channel closes, every subscriber stream is closed and the actor returns.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd.core.records import (
    DecodeError,
    Decoder,
    DropEvent,
    EventFilter,
    KernelEventStats,
    wall_offset_ns,
)
from fwd.messages import EventBatch, EventsCommand, Reply, SlotNames, Subscribe

log = structlog.get_logger("fwd.core.records")

DEFAULT_BUDGET = 512
_MATCH_ALL = EventFilter()


class RingReader(Protocol):
    """What the actor needs of :class:`fwd.kernel.ringbuf.RingBuffer` (a fake can stand in)."""

    def fileno(self) -> int: ...

    def consume(self, budget: int) -> list[bytes]: ...


@dataclass(frozen=True)
class SubscriberStatistics:
    """One live subscription: events put in its stream, and events it lost."""

    id: int
    filter: EventFilter
    delivered: int
    lost: int
    queued: int  # batches waiting in its stream


@dataclass(frozen=True)
class EventsStatistics:
    """The actor's counters (totals include subscriptions that have ended)."""

    read: int  # records taken from the ring buffer
    decode_errors: int
    delivered: int  # events put into subscriber streams
    lost: int  # events subscribers lost because their stream was full
    subscribers: tuple[SubscriberStatistics, ...]
    kernel: KernelEventStats  # emitted / suppressed / ringbuf_full


@dataclass
class _Subscriber:
    id: int
    filter: EventFilter
    send: MemoryObjectSendStream[EventBatch]
    delivered: int = 0
    lost: int = 0
    unreported: int = 0  # lost since the last batch it received


class Events:
    """Reads the ring buffer and serves subscriptions; see the module docstring."""

    def __init__(
        self,
        ring: RingReader,
        kernel_stats: Callable[[], KernelEventStats] | None = None,
        *,
        budget: int = DEFAULT_BUDGET,
        idle_interval: float = 1.0,
    ) -> None:
        if budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        self._ring = ring
        self._kernel_stats = kernel_stats
        self._budget = budget
        # While the ring is quiet, look after subscribers this often: report
        # losses once they have room again, forget closed streams.
        self._idle_interval = idle_interval
        self._decoder = Decoder({})
        self._interfaces: dict[int, str] = {}  # ifindex -> name, from the Datapath
        self._subs: dict[int, _Subscriber] = {}
        self._ids = itertools.count(1)
        self._read = self._decode_errors = 0
        self._delivered = self._lost = 0

    def statistics(self) -> EventsStatistics:
        """Counters of the actor and of each live subscriber, and the kernel's event stats."""
        subs = tuple(
            SubscriberStatistics(
                s.id, s.filter, s.delivered, s.lost, s.send.statistics().current_buffer_used
            )
            for s in self._subs.values()
        )
        kernel = self._kernel_stats() if self._kernel_stats else KernelEventStats()
        return EventsStatistics(
            self._read, self._decode_errors, self._delivered, self._lost, subs, kernel
        )

    async def run(
        self,
        commands: MemoryObjectReceiveStream[EventsCommand],
        slot_names: MemoryObjectReceiveStream[SlotNames],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until ``commands`` closes; then close every subscriber stream."""
        try:
            async with anyio.create_task_group() as tg, commands, slot_names:
                tg.start_soon(self._follow_names, slot_names)
                tg.start_soon(self._pump)
                task_status.started()
                async for command in commands:
                    self._subscribe(command)
                tg.cancel_scope.cancel()
        finally:
            for sub in self._subs.values():
                sub.send.close()
            self._subs.clear()

    async def _follow_names(self, slot_names: MemoryObjectReceiveStream[SlotNames]) -> None:
        async for msg in slot_names:
            if msg.names is not None:
                self._decoder = Decoder(dict(msg.names))
            self._interfaces = dict(msg.interfaces)  # replaced whole: batches share it
            del msg  # 100,000 (slot, id) pairs: not kept alive while waiting for the next

    def _subscribe(self, cmd: Subscribe) -> None:
        send, receive = anyio.create_memory_object_stream[EventBatch](max(1, cmd.buffer))
        sub = _Subscriber(next(self._ids), cmd.filter, send)
        try:
            cmd.reply.send_nowait(Reply(receive))
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            send.close()
            receive.close()
            log.warning("subscribe_reply_dropped")
            return
        finally:
            cmd.reply.close()
        self._subs[sub.id] = sub
        log.info("events_subscribed", subscriber=sub.id, subscribers=len(self._subs))

    # --- the hot path -------------------------------------------------------------

    async def _pump(self) -> None:
        fd = self._ring.fileno()
        while True:
            with anyio.move_on_after(self._idle_interval):
                await anyio.wait_readable(fd)
            while True:
                records = self._ring.consume(self._budget)
                if records:
                    self._dispatch(records)
                # Yield between batches: other tasks run even during a flood.
                await anyio.lowlevel.checkpoint()
                if len(records) < self._budget:
                    break
            self._report_losses()

    def _dispatch(self, records: list[bytes]) -> None:
        offset, decode = wall_offset_ns(), self._decoder.decode
        try:  # the common case in one comprehension; record by record only if one is bad
            everything = tuple([decode(raw, offset) for raw in records])
        except DecodeError:
            everything = tuple(self._decode_each(records, offset))
        events = everything
        self._read += len(records)
        for sub in list(self._subs.values()):
            f = sub.filter
            batch = everything if f == _MATCH_ALL else tuple(e for e in events if f.matches(e))
            if batch:
                self._offer(sub, batch)

    def _decode_each(self, records: list[bytes], offset: int) -> list[DropEvent]:
        events: list[DropEvent] = []
        for raw in records:
            try:
                events.append(self._decoder.decode(raw, offset))
            except DecodeError as e:
                self._decode_errors += 1
                log.warning("event_undecodable", error=str(e))
        return events

    def _offer(self, sub: _Subscriber, batch: tuple[DropEvent, ...]) -> None:
        """send_nowait one batch; a full stream loses it, a closed one ends the subscription."""
        try:
            sub.send.send_nowait(EventBatch(batch, sub.unreported, self._interfaces))
        except anyio.WouldBlock:
            sub.lost += len(batch)
            sub.unreported += len(batch)
            self._lost += len(batch)
            return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._unsubscribe(sub)
            return
        sub.delivered += len(batch)
        sub.unreported = 0
        self._delivered += len(batch)

    def _report_losses(self) -> None:
        """When the ring runs dry or is quiet: tell subscribers of losses not yet reported, drop dead ones."""
        for sub in list(self._subs.values()):
            if sub.send.statistics().open_receive_streams == 0:
                self._unsubscribe(sub)
            elif sub.unreported:
                self._offer(sub, ())

    def _unsubscribe(self, sub: _Subscriber) -> None:
        sub.send.close()
        if self._subs.pop(sub.id, None) is not None:
            log.info(
                "events_unsubscribed", subscriber=sub.id, delivered=sub.delivered, lost=sub.lost
            )
