"""The Events actor over a fake ring: fan-out, filters, loss, naming, unsubscribe."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd.actors.events import Events
from fwd.core import abi
from fwd.core.records import EventFilter, KernelEventStats, encode
from fwd.messages import EventBatch, EventsCommand, Reply, SlotNames, Subscribe
from fwd.policy.model import Action
from fwd.testing import FakeRing


@dataclass
class Harness:
    actor: Events
    ring: FakeRing
    commands: MemoryObjectSendStream[EventsCommand]
    names: MemoryObjectSendStream[SlotNames]

    async def subscribe(self, f: EventFilter = EventFilter(), buffer: int = 64) -> MemoryObjectReceiveStream[EventBatch]:
        tx, rx = anyio.create_memory_object_stream[Reply[MemoryObjectReceiveStream[EventBatch]]](1)
        await self.commands.send(Subscribe(f, tx, buffer))
        with anyio.fail_after(5):
            return (await rx.receive()).unwrap()

    async def settle(self) -> None:
        """Wait until the actor consumed everything pushed so far."""
        with anyio.fail_after(5):
            while self.ring.consumed < self.pushed:
                await anyio.sleep(0.001)
        await anyio.sleep(0.01)  # let the dispatch of the last batch finish

    pushed: int = 0

    def push(self, records: list[bytes]) -> None:
        self.pushed += len(records)
        self.ring.push(records)


@asynccontextmanager
async def running(budget: int = 512) -> AsyncIterator[Harness]:
    ring = FakeRing()
    actor = Events(ring, lambda: KernelEventStats(3, 2, 1), budget=budget, idle_interval=0.02)
    cmd_tx, cmd_rx = anyio.create_memory_object_stream[EventsCommand](8)
    names_tx, names_rx = anyio.create_memory_object_stream[SlotNames](math.inf)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run, cmd_rx, names_rx)
            yield Harness(actor, ring, cmd_tx, names_tx)
            cmd_tx.close()  # shutdown flows by closing
    finally:
        ring.close()


async def _drain(rx: MemoryObjectReceiveStream[EventBatch]) -> list[EventBatch]:
    out = []
    while True:
        try:
            out.append(rx.receive_nowait())
        except anyio.WouldBlock:
            return out


@pytest.mark.asyncio
async def test_two_subscribers_with_filters() -> None:
    async with running() as h:
        await h.names.send(SlotNames(1, ((16, "drop-bad"), (17, "log-ssh"))))
        await anyio.sleep(0.01)
        everything = await h.subscribe()
        ssh_only = await h.subscribe(EventFilter(rule_ids=frozenset({"log-ssh"})))
        h.push([encode(slot=16, sport=i) for i in range(10)] + [encode(slot=17, action=abi.ACT_ALLOW)] * 3)
        await h.settle()
        all_events = [e for b in await _drain(everything) for e in b.events]
        ssh_events = [e for b in await _drain(ssh_only) for e in b.events]
        assert len(all_events) == 13
        assert [e.sport for e in all_events[:10]] == list(range(10))  # order kept
        assert len(ssh_events) == 3
        assert all(e.rule_id == "log-ssh" and e.action is Action.ALLOW for e in ssh_events)
        stats = h.actor.statistics()
        assert (stats.read, stats.delivered, stats.lost) == (13, 16, 0)
        assert sorted(s.delivered for s in stats.subscribers) == [3, 13]
        assert stats.kernel.logged == 6


@pytest.mark.asyncio
async def test_budget_splits_a_flood_into_batches() -> None:
    async with running(budget=100) as h:
        rx = await h.subscribe(buffer=1000)
        h.push([encode()] * 1050)
        await h.settle()
        sizes = [len(b.events) for b in await _drain(rx)]
        assert sum(sizes) == 1050 and max(sizes) == 100


@pytest.mark.asyncio
async def test_slow_subscriber_loses_is_told_and_never_slows_the_other() -> None:
    async with running(budget=10) as h:
        slow = await h.subscribe(buffer=2)  # never read until the end
        fast = await h.subscribe(buffer=1000)
        h.push([encode(sport=i) for i in range(100)])
        await h.settle()
        fast_events = [e for b in await _drain(fast) for e in b.events]
        assert [e.sport for e in fast_events] == list(range(100))
        stats = {s.delivered: s for s in h.actor.statistics().subscribers}
        assert set(stats) == {20, 100}
        assert stats[20].lost == 80
        # The slow one got two batches, then lost 80; its next batch says so.
        first = await _drain(slow)
        assert [len(b.events) for b in first] == [10, 10] and first[0].lost == 0
        h.push([encode(sport=500)])
        await h.settle()
        (told,) = await _drain(slow)
        assert told.lost == 80 and [e.sport for e in told.events] == [500]
        assert h.actor.statistics().lost == 80


@pytest.mark.asyncio
async def test_lost_is_reported_when_the_ring_is_quiet() -> None:
    async with running(budget=5) as h:
        slow = await h.subscribe(buffer=1)
        h.push([encode()] * 10)
        await h.settle()
        assert [len(b.events) for b in await _drain(slow)] == [5]
        # No event arrives any more, yet once there is room the loss is reported.
        with anyio.fail_after(5):
            b = await slow.receive()
        assert b.lost == 5 and b.events == ()
        assert await _drain(slow) == []  # reported once


@pytest.mark.asyncio
async def test_closing_the_stream_unsubscribes() -> None:
    async with running() as h:
        rx = await h.subscribe()
        keep = await h.subscribe()
        rx.close()
        h.push([encode()] * 3)
        await h.settle()
        assert len(h.actor.statistics().subscribers) == 1
        assert sum(len(b.events) for b in await _drain(keep)) == 3


@pytest.mark.asyncio
async def test_shutdown_closes_subscriber_streams() -> None:
    async with running() as h:
        rx = await h.subscribe()
    with pytest.raises(anyio.EndOfStream):
        await rx.receive()


@pytest.mark.asyncio
async def test_undecodable_records_are_counted_not_fatal() -> None:
    async with running() as h:
        rx = await h.subscribe()
        h.push([b"short", encode()])
        await h.settle()
        assert h.actor.statistics().decode_errors == 1
        assert sum(len(b.events) for b in await _drain(rx)) == 1
