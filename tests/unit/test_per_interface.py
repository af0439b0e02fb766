"""Work serialised per interface (issue 12), with the real Datapath and Links actors
over in-memory maps: a rule naming a new interface is compiled before XDP is
attached there, whatever else runs meanwhile, and a slow driver delays only its
own interface, never the event loop."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream

from fwd.actors.datapath import Datapath
from fwd.actors.links import AttachedLink, Links
from fwd.kernel.dataplane import Dataplane
from fwd.messages import (
    AddRule,
    Applied,
    ApplyPolicy,
    AttachMode,
    DatapathCommand,
    DeleteRule,
    InterfaceStatus,
    LinkChange,
    LinkEvent,
    LinkInfo,
    LinkState,
    ListInterfaces,
    Reply,
    SlotNames,
    request,
)
from fwd.policy.model import parse_rule, policy_from_dict
from fwd.store import MemoryStore
from fwd.testing.maps import FakeMaps

TIMEOUT = 10.0


class SlowBarrier:
    """Every commit waits this long for programs on the old generation: the Datapath
    is busy most of the time, so an attach that did not wait for it would win."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def wait(self) -> None:
        time.sleep(self.seconds)


@dataclass
class FakeLink:
    ifindex: int
    id: int = 1
    prog_id: int = 77

    def pin(self, path: str) -> None: ...

    def unpin(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class RecordingAttacher:
    """Attaches instantly (or after ``slow[ifindex]`` seconds, in the calling thread),
    recording when, from which thread, and what the Datapath had compiled by then."""

    datapath: Datapath | None = None
    slow: dict[int, float] = field(default_factory=dict)
    attached: list[tuple[int, float]] = field(default_factory=list)
    compiled_at_attach: dict[int, dict[str, int]] = field(default_factory=dict)
    threads: set[int] = field(default_factory=set)

    def attach(self, prog_fd: int, ifindex: int) -> tuple[FakeLink, AttachMode]:
        self.threads.add(threading.get_ident())
        time.sleep(self.slow.get(ifindex, 0.0))
        if self.datapath is not None:
            # The interfaces the Datapath's rules are compiled against at this moment
            # (a test may look inside; the actors never do).
            self.compiled_at_attach[ifindex] = dict(self.datapath._engine.ifindexes)
        self.attached.append((ifindex, time.monotonic()))
        return FakeLink(ifindex), AttachMode.NATIVE

    def detach(self, link: AttachedLink) -> None: ...

    def adopt(self, prog_fd: int, path: Path) -> tuple[FakeLink, AttachMode]:
        raise AssertionError("nothing is pinned")


def added(ifindex: int, name: str) -> LinkEvent:
    return LinkEvent(LinkChange.ADDED, link=LinkInfo(ifindex, name, up=True))


def removed(ifindex: int, name: str) -> LinkEvent:
    return LinkEvent(LinkChange.REMOVED, link=LinkInfo(ifindex, name, up=True))


@dataclass
class Agent:
    """The Datapath and Links wired as fwd.agent wires them (bounded channels)."""

    datapath: Datapath
    links: Links
    commands: MemoryObjectSendStream[DatapathCommand]
    link_events: MemoryObjectSendStream[LinkEvent]
    interfaces: MemoryObjectSendStream[ListInterfaces]
    names: list[SlotNames]


@asynccontextmanager
async def agent(attacher: RecordingAttacher, barrier_seconds: float) -> AsyncIterator[Agent]:
    names: list[SlotNames] = []
    names_tx, names_rx = anyio.create_memory_object_stream[SlotNames](16)
    dp_tx, dp_rx = anyio.create_memory_object_stream[DatapathCommand](64)
    ev_tx, ev_rx = anyio.create_memory_object_stream[LinkEvent](256)
    if_tx, if_rx = anyio.create_memory_object_stream[ListInterfaces](16)
    plane = Dataplane(FakeMaps(), 2, SlowBarrier(barrier_seconds))
    datapath = Datapath(plane, MemoryStore(), names=names_tx)
    attacher.datapath = datapath
    links = Links(5, attacher=attacher, datapath=dp_tx.clone(), reply_timeout=TIMEOUT)

    async def collect() -> None:
        async with names_rx:
            async for msg in names_rx:
                names.append(msg)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        await tg.start(datapath.run, dp_rx)
        await tg.start(links.run, ev_rx, if_rx)
        async with dp_tx, ev_tx, if_tx:
            yield Agent(datapath, links, dp_tx, ev_tx, if_tx, names)
        tg.cancel_scope.cancel()


async def interfaces(a: Agent) -> dict[int, InterfaceStatus]:
    def make(r: MemoryObjectSendStream[Reply[tuple[InterfaceStatus, ...]]]) -> ListInterfaces:
        return ListInterfaces(reply=r)

    return {s.ifindex: s for s in await request(a.interfaces, make, timeout=TIMEOUT)}


async def wait_attached(a: Agent, *ifindexes: int) -> dict[int, InterfaceStatus]:
    with anyio.fail_after(TIMEOUT):
        while True:
            table = await interfaces(a)
            if all(i in table and table[i].state is LinkState.ATTACHED for i in ifindexes):
                return table
            await anyio.sleep(0.005)


EDGE = {"id": "edge-udp", "action": "drop", "protocol": "udp", "interfaces": ["veth7"]}


@pytest.mark.asyncio
async def test_a_rule_naming_a_new_interface_is_compiled_before_xdp_is_attached() -> None:
    attacher = RecordingAttacher()
    async with agent(attacher, barrier_seconds=0.01) as a:

        async def apply() -> Applied:
            def make(r: MemoryObjectSendStream[Reply[Applied]]) -> ApplyPolicy:
                return ApplyPolicy(policy_from_dict({"rules": [EDGE]}), None, r)

            return await request(a.commands, make, timeout=TIMEOUT)

        async def churn_rules() -> None:
            # Rule changes keep the Datapath's inbox busy while the links come and go.
            for i in range(15):
                rule = parse_rule({"id": f"r{i}", "action": "drop", "dst": [f"198.18.0.{i}"]})

                def add(r: MemoryObjectSendStream[Reply[Applied]]) -> AddRule:
                    return AddRule(rule, r)

                def delete(r: MemoryObjectSendStream[Reply[Applied]]) -> DeleteRule:
                    return DeleteRule(f"r{i}", r)

                await request(a.commands, add, timeout=TIMEOUT)
                if i % 3 == 0:
                    await request(a.commands, delete, timeout=TIMEOUT)

        async def churn_links() -> None:
            for event in (added(8, "veth8"), added(7, "veth7"), removed(8, "veth8"),
                          added(9, "veth9"), added(8, "veth8b")):  # fmt: skip
                await a.link_events.send(event)
                await anyio.sleep(0.002)

        async with anyio.create_task_group() as tg:
            tg.start_soon(churn_rules)
            tg.start_soon(churn_links)
            await apply()
        table = await wait_attached(a, 7, 8, 9)

        # Every interface was compiled into the policy before its XDP program ran.
        for ifindex, name in ((7, "veth7"), (9, "veth9"), (8, "veth8b")):
            assert attacher.compiled_at_attach[ifindex].get(name) == ifindex, (name, attacher)
        assert table[8].name == "veth8b" and len(attacher.attached) == 4  # 8 twice
        # The rule naming veth7 is enforced with veth7 compiled in, now and at the end
        # (the host's own interfaces, read at start, are there too: no Discovery here).
        engine = a.datapath._engine
        assert {n: i for n, i in engine.ifindexes.items() if n.startswith("veth")} == {
            "veth7": 7, "veth9": 9, "veth8b": 8,
        }
        assert "edge-udp" in [r.id for r in engine.policy.rules]
        # Events learn the slot table and the interface names in revision order,
        # ending with the live link table.
        revisions = [n.revision for n in a.names]
        assert revisions == sorted(revisions)
        last = {i: n for i, n in a.names[-1].interfaces if n.startswith("veth")}
        assert last == {7: "veth7", 8: "veth8b", 9: "veth9"}


@pytest.mark.asyncio
async def test_a_slow_attach_stalls_neither_the_loop_nor_other_interfaces() -> None:
    attacher = RecordingAttacher(slow={5: 0.6})
    lags: list[float] = []

    async def measure_lag(stop: anyio.Event) -> None:
        while not stop.is_set():
            before = time.monotonic()
            await anyio.sleep(0.005)
            lags.append(time.monotonic() - before - 0.005)

    async with agent(attacher, barrier_seconds=0.0) as a:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(measure_lag, stop)
            start = time.monotonic()
            for ifindex in (5, 6, 7):
                await a.link_events.send(added(ifindex, f"veth{ifindex}"))
            await wait_attached(a, 6, 7)
            others_done = time.monotonic() - start
            assert 5 not in dict(attacher.attached), "the slow one is still attaching"
            await wait_attached(a, 5)
            stop.set()
    assert others_done < 0.3, f"other interfaces waited {others_done:.3f}s for the slow one"
    assert [i for i, _ in attacher.attached][-1] == 5
    # Under 50 ms throughout; one outlier allowed for the 2-core machine descheduling
    # the process (it shows as one late wake-up), but none near the 600 ms attach.
    worst = sorted(lags)[-2:]
    print(f"loop lag while attaching: worst {[round(w * 1000, 1) for w in worst]} ms")
    assert worst[0] < 0.050 and worst[1] < 0.300, f"the event loop stalled {worst} s"
    assert threading.main_thread().ident not in attacher.threads  # attach ran off the loop
