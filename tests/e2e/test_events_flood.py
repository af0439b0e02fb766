"""End to end: a veth flood through the real agent, a gRPC subscriber, exact event accounting.

    S: vA ──(live XDP_TX frames)──► R: vB, fwd agent (logged drop rule, small event budget)

The flood (bench/events/inject.py, bounded by a packet count) is dropped by a
``log: true`` rule; the agent runs with a small kernel event budget so some
events are suppressed. A subscriber (the project's gRPC client, full decoding)
follows the stream. At the end, from the agent's metrics and what the
subscriber received, exactly:

    packets the rule dropped = events received + suppressed + ring full + lost

No timing is asserted (bench/events/e2e.py measures rates and loop lag).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fwd.api.client import Client
from fwd.api.gen.fwd import v1 as pb
from fwd.policy.model import policy_from_dict
from tests import packets as P
from tests.e2e.agentproc import AgentProcess, stop_lab
from tests.netns import Netns, entered

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
PORT = 19471  # R is a fresh namespace: nothing else listens on its loopback
FLOOD = 200_000  # packets: a fraction of a second at this machine's injection rate
RATE, BURST = 20_000, 2_000  # events/s per CPU: far below the flood, so most are suppressed
TX_PROG = (
    'char LICENSE[] __attribute__((section("license"))) = "GPL";\n'
    '__attribute__((section("xdp"), used)) int tx(void *ctx) { return 3; /* XDP_TX */ }\n'
)
FRAME = P.eth_ipv4("198.18.0.1", "198.18.0.2", P.UDP, P.udp(40000, 9, b"x" * 18))
POLICY = {
    "default_action": "allow",
    "rules": [{"id": "flood", "action": "drop", "protocol": "udp", "log": True}],
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Lab:
    net: Netns
    sender: str
    receiver: str
    agent: AgentProcess
    tx_obj: Path

    def scrape(self) -> Samples:
        with entered(self.receiver):  # this thread only
            url = f"http://127.0.0.1:{PORT}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def flood(self, packets: int) -> int:
        out = subprocess.run(
            ["ip", "netns", "exec", self.sender, sys.executable,
             str(ROOT / "bench" / "events" / "inject.py"), "--obj", str(self.tx_obj),
             "--dev", "vA", "--frame-hex", FRAME.hex(), "--seconds", "20",
             "--max-packets", str(packets)],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout
        return int(out.split()[0])


def value(s: Samples, name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    src, obj = tmp_path / "tx.bpf.c", tmp_path / "tx.bpf.o"
    src.write_text(TX_PROG)
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", str(src), "-o", str(obj)], check=True)
    net = Netns()
    agent: AgentProcess | None = None
    try:
        s, r = net.make_netns(), net.make_netns()
        net.veth_pair(s, "vA", r, "vB")
        agent = AgentProcess(
            r, tmp_path, net.pin_dir(), "--metrics", f"127.0.0.1:{PORT}", "--detach-on-exit",
            "--event-rate", str(RATE), "--event-burst", str(BURST),
        )
        agent.start()
        yield Lab(net, s, r, agent, obj)
    finally:
        stop_lab(agent, net)


@dataclass
class Received:
    events: list[pb.Event] = field(default_factory=list)
    lost: int = 0


def counts(before: Samples, after: Samples) -> tuple[int, int, int, int]:
    """(dropped by the rule, emitted, suppressed, ring full) between two scrapes."""

    def d(name: str, **labels: str) -> int:
        return int(value(after, name, **labels) - value(before, name, **labels))

    return (
        d("fwd_rule_packets_total", rule_id="flood", action="drop"),
        d("fwd_events_emitted_total"),
        d("fwd_events_suppressed_total"),
        d("fwd_events_lost_total", reason="ringbuf_full"),
    )


def test_every_dropped_packet_is_an_event_or_counted(lab: Lab) -> None:
    async def apply() -> None:
        async with Client(lab.agent.socket, timeout=20) as client:
            await client.apply_policy(policy_from_dict(POLICY))

    anyio.run(apply)
    got = Received()

    async def main() -> tuple[int, Samples, Samples]:
        async def follow() -> None:
            async with Client(lab.agent.socket) as client:
                async for batch in client.events(pb.SubscribeRequest()):
                    got.events.extend(batch.events)
                    got.lost += batch.lost

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            with anyio.fail_after(15):  # the subscription is live once the agent says so
                while '"events_subscribed"' not in lab.agent.log():
                    await anyio.sleep(0.05)
            before = await anyio.to_thread.run_sync(lab.scrape)
            sent = await anyio.to_thread.run_sync(lab.flood, FLOOD)
            # Settle: frames still queued in the veth reach the rule; then wait
            # until the subscriber has everything the kernel emitted (or time out).
            with anyio.fail_after(30):
                after = await anyio.to_thread.run_sync(lab.scrape)
                while True:
                    await anyio.sleep(0.3)
                    now = await anyio.to_thread.run_sync(lab.scrape)
                    if counts(before, now) == counts(before, after):
                        break
                    after = now
                dropped, _, suppressed, full = counts(before, after)
                while len(got.events) + got.lost < dropped - suppressed - full:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # more than expected would be a mismatch too
            tg.cancel_scope.cancel()
        return sent, before, after

    sent, before, after = anyio.run(main)
    dropped, emitted, suppressed, full = counts(before, after)
    assert 0 < dropped <= sent
    assert suppressed > 0  # the budget was exercised: accounting covers what has no event
    assert emitted == len(got.events) + got.lost  # nothing emitted went unaccounted
    assert dropped == len(got.events) + suppressed + full + got.lost
    assert got.events, "no event reached the subscriber"
    for e in got.events[:: max(1, len(got.events) // 50)]:  # a sample of them, spread out
        assert (e.rule_id, e.action, e.dropped) == ("flood", pb.Action.DROP, True)
        assert (e.src, e.dst, e.src_port, e.dst_port, e.protocol) == (
            "198.18.0.1", "198.18.0.2", 40000, 9, 17,
        )
        assert e.interface == "vB"
    # The loop-lag monitor ran through the flood and is exported.
    lag = "fwd_event_loop_lag_seconds"
    assert value(after, f"{lag}_count") > value(before, f"{lag}_count")
    assert value(after, f"{lag}_bucket", le="+Inf") == value(after, f"{lag}_count")
    for gauge in ("fwd_event_loop_lag_max_seconds", "fwd_event_loop_lag_own_max_seconds"):
        assert (gauge, ()) in after, gauge
    assert value(after, "fwd_event_loop_lag_own_max_seconds") <= value(
        after, "fwd_event_loop_lag_max_seconds"
    )
