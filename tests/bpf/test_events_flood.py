"""BPF tier: the Events actor on the real ring buffer under a flood.

A worker thread floods the fwd program with BPF_PROG_TEST_RUN (a logged drop
rule, so every packet is a logged verdict) while the actor drains the ring and
feeds a subscriber. The agent's LoopLagMonitor measures how late the event loop
wakes a sleeping task and how much of that lateness its own work can account
for (the thread's CPU time): the issue's bound (50 ms) is asserted on that
share. The wall-clock lag is printed, not asserted: on a machine busy with
other work the loop's thread also waits for a CPU, which no code of ours causes
(bench/events measures the whole, with the machine otherwise idle).
"""

from __future__ import annotations

import gc
import math
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from fwd.actors.events import Events
from fwd.kernel.objects import BpfObject
from fwd.kernel.ringbuf import RingBuffer, configure_events, kernel_event_stats
from fwd.kernel.rcu import RcuBarrier
from fwd.core import transaction
from fwd.kernel.dataplane import Dataplane
from fwd.messages import EventBatch, EventsCommand, Reply, SlotNames, Subscribe
from fwd.core.records import EventFilter
from fwd.actors.looplag import LoopLagMonitor
from fwd.policy.engine import Engine
from fwd.policy.model import policy_from_dict
from tests import packets as P

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
FRAME = P.eth_ipv4("198.18.1.2", "198.18.0.1", P.UDP, P.udp(1000, 53, b"flood"))


@pytest.mark.asyncio
async def test_flood_never_stalls_the_loop_and_every_event_is_accounted_for() -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    with BpfObject.open(ROOT / "bpf/build/fwd.bpf.o") as obj:
        configure_events(obj, rate=1_000_000, burst=100_000, size=1 << 20)
        obj.load()
        maps = obj.maps()
        barrier = RcuBarrier()
        dp = Dataplane(maps, maps["fwd_counters"].ncpus, barrier)
        policy = policy_from_dict({"rules": [{"id": "log-udp", "action": "drop", "protocol": "udp", "log": True}]})
        engine = Engine()
        transaction.run(engine.apply(policy, ifindexes={}), dp)
        slots = engine.slots
        ring = RingBuffer(maps["fwd_events"].fd)
        actor = Events(ring, lambda: kernel_event_stats(maps["fwd_event_stats"]))
        prog = obj.program("fwd_xdp")
        cmd_tx, cmd_rx = anyio.create_memory_object_stream[EventsCommand](4)
        names_tx, names_rx = anyio.create_memory_object_stream[SlotNames](math.inf)
        received = 0
        monitor = LoopLagMonitor(interval=0.001)
        lag_scope = anyio.CancelScope()

        async def watch_lag() -> None:
            with lag_scope:
                await monitor.run()

        async def reader(rx: MemoryObjectReceiveStream[EventBatch]) -> None:
            nonlocal received
            async for batch in rx:
                received += len(batch.events)
                assert all(e.rule_id == "log-udp" for e in batch.events)

        def flood() -> None:
            for _ in range(20):  # 20 x 20,000 packets, bounded
                prog.test_run(FRAME, repeat=20_000, data_out_size=0)

        # As the agent does once started (fwd/agent.py): what exists now is out of
        # the cyclic GC's sight. Here that is also every object the earlier tests of
        # this pytest process left: a full collection over them held this loop for
        # 0.5 s in a CI run. (Before the lag monitor starts: it would count it.)
        gc.collect()
        gc.freeze()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(actor.run, cmd_rx, names_rx)
                await names_tx.send(SlotNames(1, ((slots["log-udp"], "log-udp"),)))
                reply_tx, reply_rx = anyio.create_memory_object_stream[Reply[MemoryObjectReceiveStream[EventBatch]]](1)
                await cmd_tx.send(Subscribe(EventFilter(), reply_tx, buffer=256))
                rx = (await reply_rx.receive()).unwrap()
                tg.start_soon(reader, rx)
                tg.start_soon(watch_lag)
                await anyio.sleep(0.05)
                started = time.perf_counter()
                await anyio.to_thread.run_sync(flood)
                elapsed = time.perf_counter() - started
                lag_scope.cancel()
                lag = monitor.statistics()
                with anyio.fail_after(10):  # drain what is left
                    while ring.pending():
                        await anyio.sleep(0.01)
                    await anyio.sleep(0.05)
                cmd_tx.close()
            stats = actor.statistics()
            kernel = kernel_event_stats(maps["fwd_event_stats"])
            dropped = dp.read_counters([slots["log-udp"]])[slots["log-udp"]].packets
            print(
                f"\nflood: {dropped / elapsed:,.0f} pps, events read {stats.read:,} "
                f"({stats.read / elapsed:,.0f}/s), suppressed {kernel.suppressed:,}, "
                f"ring full {kernel.ringbuf_full:,}, lost {stats.lost:,}, max loop lag {lag.max * 1000:.1f} ms, "
                f"of it the loop's own work at most {(lag.own_max + lag.interval) * 1000:.1f} ms"
            )
            assert dropped == 400_000 == kernel.logged
            assert stats.read == kernel.emitted
            assert received + stats.lost == kernel.emitted
            assert dropped == received + kernel.suppressed + kernel.ringbuf_full + stats.lost
            assert received > 0
            assert lag.samples > 0
            assert lag.own_max + lag.interval < 0.050, lag
        finally:
            gc.unfreeze()
            ring.close()
            barrier.close()
