"""Many concurrent gRPC clients against one agent: the load test's core.

tests/e2e/test_load.py runs it short (CI); bench/load.py runs it long and
prints the numbers. Roles go by client index: every 5th client writes (reads
the revision, then applies a policy of its own with ``expect_revision``),
every 10th (offset by 1) subscribes to events for the whole run, the others
read (GetPolicy, ListRules, ListRuleStats, ListInterfaces, a history page).

What must hold afterwards (:meth:`LoadReport.problems`): no error other than
FAILED_PRECONDITION on an apply that lost a revision race; every successful
apply's revision is in the history, no revision was handed out twice, and the
agent's final policy is the last successful apply's.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from fwd.api import convert
from fwd.api.client import Client
from fwd.api.gen.fwd import v1 as pb
from fwd.policy.model import Policy, policy_from_dict
from tests.e2e.agentproc import AgentProcess
from tests.netns import Netns

FLOOD = str(Path(__file__).with_name("flood.py"))
WRITER_EVERY = 5
SUBSCRIBER_EVERY = 10


def writer_policy(client: int, n: int) -> Policy:
    """A writer's policy: the flood's drop, the logged control traffic, and a rule
    only this apply has (the flood itself is not logged: this is a control-plane
    load, bench/events measures event floods)."""
    return policy_from_dict({"rules": [
        {"id": "drop-flood", "action": "drop", "protocol": "udp", "src": ["198.18.1.0/24"],
         "dst_ports": [9999]},
        {"id": "log-control", "action": "allow", "protocol": "udp", "dst_ports": [9998],
         "log": True},
        {"id": f"w{client}-{n}", "action": "allow", "protocol": "tcp",
         "dst_ports": [1024 + (client * 1000 + n) % 60000]},
        *({"id": f"bulk-{i}", "action": "drop", "protocol": "udp",
           "src": [f"198.19.{i}.0/24"]} for i in range(n % 20)),
    ]})  # fmt: skip


@dataclass
class LoadReport:
    """What the clients saw."""

    clients: int
    seconds: float = 0.0
    applied: dict[int, Policy] = field(default_factory=dict)  # revision -> policy sent
    races: int = 0  # FAILED_PRECONDITION: another writer got the revision first
    errors: list[str] = field(default_factory=list)
    calls: int = 0
    reads: int = 0
    event_batches: int = 0
    events: int = 0
    events_lost: int = 0
    latencies: list[float] = field(default_factory=list)

    def problems(self, history: set[int], revision: int, policy: pb.Policy) -> list[str]:
        """Broken promises, given the agent's history, final revision and final policy."""
        out = list(self.errors)
        missing = sorted(set(self.applied) - history)
        if missing:
            out.append(f"applies lost from the history: revisions {missing[:10]}")
        if self.applied:
            last = max(self.applied)
            if revision != last:
                out.append(f"final revision {revision}, last successful apply {last}")
            elif policy != convert.policy_to_proto(self.applied[last]):
                out.append(f"final policy is not revision {last}'s")
        return out

    def summary(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"{self.clients} clients, {self.seconds:.1f} s: {self.calls} calls "
            f"({self.calls / max(self.seconds, 1e-9):.0f}/s; p50 {p50 * 1e3:.1f} ms, "
            f"p99 {p99 * 1e3:.1f} ms), {len(self.applied)} applies, {self.races} revision "
            f"races, {self.reads} reads, {self.events} events in {self.event_batches} "
            f"batches ({self.events_lost} lost to slow subscribers), {len(self.errors)} errors"
        )


async def _timed(report: LoadReport, call: Callable[[], object]) -> object:
    start = time.monotonic()
    try:
        return await call()  # type: ignore[misc]
    finally:
        report.calls += 1
        report.latencies.append(time.monotonic() - start)


async def _writer(client: Client, i: int, report: LoadReport, until: float) -> None:
    for n in itertools.count():
        if time.monotonic() >= until:
            return
        try:
            current = await _timed(report, client.get_policy)
            assert isinstance(current, pb.GetPolicyResponse)
            policy = writer_policy(i, n)
            expect = current.revision
            revision = await _timed(
                report, lambda p=policy, r=expect: client.apply_policy(p, r)  # type: ignore[misc]
            )
        except GRPCError as e:
            if e.status is Status.FAILED_PRECONDITION and "revision" in (e.message or ""):
                report.races += 1
                continue
            report.errors.append(f"writer {i}: {e.status.name} {e.message}")
            continue
        except Exception as e:  # noqa: BLE001 - every other failure is a finding
            report.errors.append(f"writer {i}: {type(e).__name__} {e}")
            continue
        assert isinstance(revision, int)
        if revision in report.applied:
            report.errors.append(f"revision {revision} reported to two applies")
        report.applied[revision] = policy


async def _reader(client: Client, i: int, report: LoadReport, until: float) -> None:
    rules = pb.RuleServiceStub(client.channel, timeout=client.timeout)
    history = pb.PolicyServiceStub(client.channel, timeout=client.timeout)
    calls: list[Callable[[], object]] = [
        client.get_policy,
        lambda: rules.list_rules(pb.ListRulesRequest(page_size=100)),
        client.list_rule_stats,
        client.list_interfaces,
        lambda: history.list_history(pb.ListHistoryRequest(page_size=20)),
    ]
    for n in itertools.count(i):
        if time.monotonic() >= until:
            return
        try:
            await _timed(report, calls[n % len(calls)])
            report.reads += 1
        except Exception as e:  # noqa: BLE001 - any failure of a read is a finding
            report.errors.append(f"reader {i}: {type(e).__name__} {e}")


async def _subscriber(client: Client, i: int, report: LoadReport, until: float) -> None:
    with anyio.move_on_after(max(0.0, until - time.monotonic())):
        try:
            async for batch in client.events(pb.SubscribeRequest()):
                report.event_batches += 1
                report.events += len(batch.events)
                report.events_lost += batch.lost
        except Exception as e:  # noqa: BLE001
            report.errors.append(f"subscriber {i}: {type(e).__name__} {e}")


async def run_load(socket: str, clients: int, seconds: float) -> LoadReport:
    """Run ``clients`` concurrent clients for ``seconds``; one connection each."""
    report = LoadReport(clients)
    start = time.monotonic()
    until = start + seconds

    async def one(i: int) -> None:
        async with Client(socket, timeout=30) as client:
            if i % WRITER_EVERY == 0:
                await _writer(client, i, report, until)
            elif i % SUBSCRIBER_EVERY == 1:
                await _subscriber(client, i, report, until)
            else:
                await _reader(client, i, report, until)

    async with anyio.create_task_group() as tg:
        for i in range(clients):
            tg.start_soon(one, i)
    report.seconds = time.monotonic() - start
    return report


async def final_state(socket: str) -> tuple[set[int], int, pb.Policy]:
    """The agent's whole history, its revision and its policy."""
    async with Client(socket, timeout=60) as client:
        history = {r.revision for r in await client.list_history(page_size=10_000)}
        current = await client.get_policy()
    return history, current.revision, current.policy or pb.Policy()


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class LoadLab:
    """A (198.18.1.2) floods B (agent, 198.18.1.1) while the clients run."""

    net: Netns
    a: str
    b: str
    agent: AgentProcess
    stop: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @classmethod
    def make(cls, net: Netns, workdir: Path, pins: Path) -> LoadLab:
        a, b = net.make_netns(), net.make_netns()
        net.veth_pair(b, "veth-a", a, "eth0")
        net.add_address(b, "veth-a", "198.18.1.1/24")
        net.add_address(a, "eth0", "198.18.1.2/24")
        agent = AgentProcess(b, workdir, pins, "--log-level", "info")
        agent.start()
        return cls(net, a, b, agent, workdir / "flood-stop")

    def flood(self, seconds: float) -> None:
        """Start the flood (bounded by ``seconds`` and stopped by :meth:`stop_flood`)."""
        self.stop.unlink(missing_ok=True)
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.a, sys.executable, FLOOD, "send", "--to", "198.18.1.1",
             "--port", "9999", "--control", "9998", "--stop", str(self.stop),
             "--max-seconds", str(seconds), "--pause", "0.002"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip

    def stop_flood(self) -> str:
        self.stop.touch()
        out = ""
        for p in self.procs:
            try:
                out += p.communicate(timeout=30)[0]
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        self.procs.clear()
        return out.strip()
