"""Discovery against a real kernel, inside a throwaway network namespace."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from fwd.actors.discovery import Discovery
from fwd.messages import LinkChange, LinkEvent
from tests.netns import Netns, entered, netns  # noqa: F401  (fixture)

pytestmark = [pytest.mark.root, pytest.mark.asyncio]


async def next_matching(
    rx: MemoryObjectReceiveStream[LinkEvent],
    pred: Callable[[LinkEvent], bool],
    timeout: float,
) -> LinkEvent:
    with anyio.fail_after(timeout):
        async for event in rx:
            if pred(event):
                return event
    raise AssertionError("event stream closed")


def is_link(change: LinkChange, name: str) -> Callable[[LinkEvent], bool]:
    return lambda e: e.change is change and e.link is not None and e.link.name == name


async def test_resync_then_added_then_removed(netns: Netns) -> None:
    ns, peer = netns.make_netns(), netns.make_netns()
    netns.veth_pair(ns, "pre0", peer, "pre0p")
    tx, rx = anyio.create_memory_object_stream[LinkEvent](math.inf)
    disc = Discovery()
    with rx, entered(ns):
        async with anyio.create_task_group() as tg:
            await tg.start(disc.run, tx)
            # The RESYNC is sent before started(): it is already queued.
            first = rx.receive_nowait()
            assert first.change is LinkChange.RESYNC
            by_name = {link.name: link for link in first.links}
            assert set(by_name) == {"lo", "pre0"}
            assert by_name["pre0"].kind == "veth" and by_name["pre0"].up
            assert by_name["pre0"].ifindex == netns.ifindex(ns, "pre0")

            t0 = time.monotonic()
            netns.veth_pair(ns, "new0", peer, "new0p", up=False)
            added = await next_matching(rx, is_link(LinkChange.ADDED, "new0"), 1.0)
            assert time.monotonic() - t0 < 1.0
            assert added.link is not None and not added.link.up
            assert added.link.ifindex == netns.ifindex(ns, "new0")

            t0 = time.monotonic()
            netns.del_link(ns, "new0")
            removed = await next_matching(rx, is_link(LinkChange.REMOVED, "new0"), 1.0)
            assert time.monotonic() - t0 < 1.0
            assert removed.link is not None and removed.link.ifindex == added.link.ifindex
            tg.cancel_scope.cancel()
        # Shutdown closes the send end: the consumer sees the end of the stream.
        with pytest.raises(anyio.EndOfStream):
            while True:
                rx.receive_nowait()
    stats = disc.statistics()
    assert stats.resyncs == 1 and stats.overflows == 0 and stats.events >= 3


async def test_overflow_triggers_full_resync(netns: Netns) -> None:
    ns = netns.make_netns()
    tx, rx = anyio.create_memory_object_stream[LinkEvent](math.inf)
    disc = Discovery(rcvbuf=4096)
    names = [f"b{i}" for i in range(200)]
    with rx, entered(ns):
        async with anyio.create_task_group() as tg:
            await tg.start(disc.run, tx)
            # The burst runs while this thread (and so the event loop) blocks in
            # subprocess.run: nobody reads the 4 KiB buffer, so the kernel drops.
            netns.batch(ns, [f"link add {name} type ifb" for name in names])
            kernel = netns.link_names(ns)
            assert len(kernel) == 201

            state: dict[int, str] = {}
            resyncs: list[LinkEvent] = []
            with anyio.fail_after(10):
                while not (disc.statistics().overflows and resyncs[1:] and state == kernel):
                    event = await rx.receive()
                    if event.change is LinkChange.RESYNC:
                        resyncs.append(event)
                        state = {link.ifindex: link.name for link in event.links}
                    elif event.change is LinkChange.ADDED:
                        assert event.link is not None
                        state[event.link.ifindex] = event.link.name
                    elif event.link is not None:
                        state.pop(event.link.ifindex, None)
            tg.cancel_scope.cancel()
    assert disc.statistics().overflows >= 1
    assert set(names) <= {link.name for link in resyncs[-1].links}
    assert state == kernel
