"""Prometheus metrics without a kernel: the collector over fakes, the endpoint, gRPC durations."""

from __future__ import annotations

import shutil
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.health.service import Health
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from grpclib.server import Server
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fwd.core.records import KernelEventStats
from fwd.actors.looplag import LagHistogram, LoopLagMonitor, LoopLagStatistics
from fwd.messages import DatapathStatistics
from fwd.core.tables import rule_table
from fwd.actors.discovery import DiscoveryStatistics
from fwd.actors.links import LinksStatistics
from fwd.metrics.grpc import GrpcMetrics
from fwd.core import abi
from fwd.core.counters import SlotCounters
from fwd.kernel.dataplane import Dataplane
from fwd.messages import AttachMode, InterfaceStatus, LinkState, RuleSlot, RuleTable
from fwd.metrics.addr import parse_addr
from fwd.metrics.collector import AgentCollector, BuildInfo, Snapshot
from fwd.metrics.kernel import IfCounters, read_if_stats, sum_if_stats
from fwd.actors.metrics import MetricsServer
from fwd.policy.model import policy_from_dict

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Collected = tuple[str, Samples, "FakeCounters"]

BUILD = BuildInfo("1.2.3", "3.11.2", "6.18.0")
TABLE = RuleTable(
    revision=7,
    default_action="drop",
    dry_run=True,
    rules=(RuleSlot("mgmt-ssh", "allow", 16), RuleSlot("drop-bad", "drop", 17)),
)
COUNTERS = {
    abi.SLOT_DEFAULT: SlotCounters(5, 500, 5, 500),
    abi.SLOT_MALFORMED: SlotCounters(2, 120, 2, 120),
    abi.SLOT_NON_IP: SlotCounters(3, 180, 0, 0),
    16: SlotCounters(10, 1000, 0, 0),
    17: SlotCounters(4, 400, 4, 400),
}
INTERFACES = (
    InterfaceStatus("lo", 1, LinkState.EXCLUDED),
    InterfaceStatus("eth0", 2, LinkState.ATTACHED, AttachMode.NATIVE, prog_id=9, link_id=3),
    InterfaceStatus("eth1", 3, LinkState.FAILED, error="EPERM"),
)
IF_STATS = {
    1: IfCounters((99, 0, 0), (9900, 0, 0)),  # lo: not managed, no series
    2: IfCounters((11, 6, 4), (1100, 600, 400)),
    42: IfCounters((1, 1, 1), (1, 1, 1)),  # a link that is gone
}


@dataclass(frozen=True)
class FakeEventsStatistics:
    delivered: int
    lost: int
    kernel: KernelEventStats


class FakeCounters:
    """Stands in for the Dataplane: canned counters, and the slots it was asked for."""

    def __init__(self, counters: Mapping[int, SlotCounters]) -> None:
        self.counters = counters
        self.asked: list[list[int]] = []

    def read_counters_batch(self, slots: Sequence[int]) -> dict[int, SlotCounters]:
        self.asked.append(list(slots))
        return {s: self.counters[s] for s in slots if s in self.counters}

    async def read(self, slots: Sequence[int]) -> dict[int, SlotCounters]:
        """As the agent's reader does it: asked on the event loop (of the Datapath)."""
        return self.read_counters_batch(slots)


def lag_samples() -> LoopLagStatistics:
    hist = LagHistogram()
    for lag in (0.0002, 0.0003, 0.004, 0.040, 0.3):  # 1 ms, 1 ms, 5 ms, 50 ms, 500 ms buckets
        hist.record(lag, own=0.002 if lag < 0.1 else 0.0)  # the 0.3 s one: off-CPU
    return hist.statistics(0.01)


def snapshot(
    events: FakeEventsStatistics | None = None, loop_lag: LoopLagStatistics | None = None
) -> Snapshot:
    return Snapshot(
        datapath=DatapathStatistics(applies=3, failed_applies=1, recompiles=2, table=TABLE),
        interfaces=INTERFACES,
        links=LinksStatistics(
            attached=1, excluded=1, failed=1, events=5, attaches=4, attach_failures=1, detaches=2
        ),
        discovery=DiscoveryStatistics(events=6, resyncs=1, overflows=0),
        events=events,
        loop_lag=loop_lag,
    )


def scrape(registry: CollectorRegistry) -> tuple[str, Samples]:
    text = generate_latest(registry).decode()
    return text, parse(text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not in {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def names(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for n, labels in samples if n == name]


@pytest.fixture
def collected() -> Collected:
    counters = FakeCounters(COUNTERS)
    events = FakeEventsStatistics(
        delivered=100, lost=3, kernel=KernelEventStats(emitted=110, suppressed=20, ringbuf_full=4)
    )
    registry = CollectorRegistry()
    registry.register(
        AgentCollector(
            lambda: snapshot(events, lag_samples()), counters, lambda: IF_STATS, build=BUILD
        )
    )
    text, samples = scrape(registry)
    return text, samples, counters


def test_rule_counters_by_rule_id_and_action(collected: Collected) -> None:
    _, s, counters = collected
    assert value(s, "fwd_rule_packets_total", rule_id="mgmt-ssh", action="allow") == 10
    assert value(s, "fwd_rule_bytes_total", rule_id="mgmt-ssh", action="allow") == 1000
    assert value(s, "fwd_rule_packets_total", rule_id="drop-bad", action="drop") == 4
    assert value(s, "fwd_rule_bytes_total", rule_id="drop-bad", action="drop") == 400
    assert value(s, "fwd_rule_would_drop_packets_total", rule_id="drop-bad", action="drop") == 4
    assert value(s, "fwd_rule_would_drop_bytes_total", rule_id="drop-bad", action="drop") == 400
    # An allow rule never would-drop: no always-zero series for it.
    assert [d["rule_id"] for d in names(s, "fwd_rule_would_drop_packets_total")] == ["drop-bad"]
    # Only rules of the policy carry a rule_id: no "(default)" pseudo rule.
    assert {d["rule_id"] for d in names(s, "fwd_rule_packets_total")} == {"mgmt-ssh", "drop-bad"}
    # One batch read per scrape, of the reserved slots and each rule's slot.
    assert counters.asked == [[0, 1, 2, 3, 16, 17]]


def test_reserved_slots_are_unmatched_by_reason(collected: Collected) -> None:
    _, s, _ = collected
    assert value(s, "fwd_unmatched_packets_total", reason="no_rule", action="drop") == 5
    assert value(s, "fwd_unmatched_bytes_total", reason="no_rule", action="drop") == 500
    assert value(s, "fwd_unmatched_would_drop_packets_total", reason="no_rule", action="drop") == 5
    assert value(s, "fwd_unmatched_would_drop_bytes_total", reason="no_rule", action="drop") == 500
    assert value(s, "fwd_unmatched_packets_total", reason="malformed", action="drop") == 2
    assert value(s, "fwd_unmatched_packets_total", reason="non_ip", action="allow") == 3
    assert value(s, "fwd_unmatched_bytes_total", reason="non_ip", action="allow") == 180


def test_interfaces_verdicts_and_attach_mode(collected: Collected) -> None:
    _, s, _ = collected
    for verdict, packets, nbytes in [("pass", 11, 1100), ("drop", 6, 600), ("would_drop", 4, 400)]:
        assert value(s, "fwd_interface_packets_total", interface="eth0", verdict=verdict) == packets
        assert value(s, "fwd_interface_bytes_total", interface="eth0", verdict=verdict) == nbytes
    # Excluded lo and the vanished ifindex 42 have no verdict series; eth1 has no counters.
    assert {d["interface"] for d in names(s, "fwd_interface_packets_total")} == {"eth0"}
    assert value(s, "fwd_interface_attached", interface="eth0", mode="native") == 1
    assert value(s, "fwd_interface_attached", interface="eth1", mode="none") == 0
    assert {d["interface"] for d in names(s, "fwd_interface_attached")} == {"eth0", "eth1"}
    assert value(s, "fwd_interfaces", state="attached") == 1
    assert value(s, "fwd_interfaces", state="failed") == 1


def test_policy_events_actors_and_build_info(collected: Collected) -> None:
    _, s, _ = collected
    assert value(s, "fwd_policy_revision") == 7
    assert value(s, "fwd_policy_dry_run") == 1
    assert value(s, "fwd_policy_rules") == 2
    assert value(s, "fwd_policy_applies_total") == 3
    assert value(s, "fwd_policy_apply_failures_total") == 1
    assert value(s, "fwd_policy_recompiles_total") == 2
    assert value(s, "fwd_events_delivered_total") == 100
    assert value(s, "fwd_events_suppressed_total") == 20
    assert value(s, "fwd_events_emitted_total") == 110
    assert value(s, "fwd_events_lost_total", reason="slow_subscriber") == 3
    assert value(s, "fwd_events_lost_total", reason="ringbuf_full") == 4
    assert value(s, "fwd_xdp_attaches_total") == 4
    assert value(s, "fwd_xdp_attach_failures_total") == 1
    assert value(s, "fwd_xdp_detaches_total") == 2
    assert value(s, "fwd_netlink_link_events_total") == 6
    assert value(s, "fwd_netlink_resyncs_total") == 1
    assert value(s, "fwd_netlink_overflows_total") == 0
    info = {"version": "1.2.3", "python_version": "3.11.2", "kernel": "6.18.0"}
    assert value(s, "fwd_build_info", **info) == 1


def test_event_loop_lag_histogram_and_max(collected: Collected) -> None:
    _, s, _ = collected
    lag = "fwd_event_loop_lag_seconds"
    # Cumulative buckets: two samples under 1 ms, one under 5 ms, one under 50 ms, one 0.3 s.
    assert value(s, f"{lag}_bucket", le="0.001") == 2
    assert value(s, f"{lag}_bucket", le="0.002") == 2
    assert value(s, f"{lag}_bucket", le="0.005") == 3
    assert value(s, f"{lag}_bucket", le="0.05") == 4
    assert value(s, f"{lag}_bucket", le="0.25") == 4
    assert value(s, f"{lag}_bucket", le="0.5") == 5
    assert value(s, f"{lag}_bucket", le="+Inf") == 5
    assert value(s, f"{lag}_count") == 5
    assert value(s, f"{lag}_sum") == pytest.approx(0.3445)
    assert value(s, "fwd_event_loop_lag_max_seconds") == pytest.approx(0.3)
    assert value(s, "fwd_event_loop_lag_own_max_seconds") == pytest.approx(0.002)


def test_lag_histogram_edges() -> None:
    hist = LagHistogram((0.01, 0.1))
    for lag in (-0.001, 0.01, 0.0100001, 5.0):  # early wake-up = 0; a bound is inclusive
        hist.record(lag, own=1.0)  # own work can never exceed the lag
    stats = hist.statistics()
    assert stats.counts == (2, 1, 1)
    assert stats.max == 5.0 and stats.samples == 4
    assert stats.own_max == 1.0
    with pytest.raises(ValueError):
        LagHistogram((0.1, 0.01))


def test_without_kernel_interface_stats_or_events_those_series_are_absent() -> None:
    registry = CollectorRegistry()
    registry.register(AgentCollector(snapshot, FakeCounters(COUNTERS), None, build=BUILD))
    _, s = scrape(registry)
    assert names(s, "fwd_interface_packets_total") == []
    assert names(s, "fwd_events_lost_total") == []
    assert names(s, "fwd_event_loop_lag_max_seconds") == []
    assert names(s, "fwd_event_loop_lag_own_max_seconds") == []
    assert value(s, "fwd_interface_attached", interface="eth0", mode="native") == 1


def test_help_and_types_follow_conventions(collected: Collected) -> None:
    text, _, _ = collected
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, family in families.items():
        assert name.startswith("fwd_"), name
        assert family.documentation, f"{name} has no help text"
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (prometheus)")
def test_promtool_accepts_the_exposition(collected: Collected) -> None:
    text, _, _ = collected
    registry = CollectorRegistry()
    GrpcMetrics(registry).duration.labels("/fwd.v1.PolicyService/GetPolicy", "OK").observe(0.001)
    full = text + generate_latest(registry).decode()
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=full, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_closed_collector_reads_nothing() -> None:
    counters = FakeCounters(COUNTERS)
    collector = AgentCollector(snapshot, counters, None, build=BUILD)
    collector.close()
    assert list(collector.collect()) == []
    assert counters.asked == []


def test_rule_table_follows_the_policy_and_slots() -> None:
    policy = policy_from_dict(
        {
            "default_action": "drop",
            "dry_run": True,
            "rules": [{"id": "a", "action": "allow"}, {"id": "b", "action": "drop"}],
        }
    )
    assert rule_table(policy, 4, {"a": 17, "b": 16}) == RuleTable(
        4, "drop", True, (RuleSlot("a", "allow", 17), RuleSlot("b", "drop", 16))
    )


# --- kernel decoding --------------------------------------------------------------


class FakeArray:
    """A per-CPU array as lookup_batch returns it, counting the entries it handed out."""

    def __init__(self, values: dict[int, bytes], size: int, value_size: int) -> None:
        self.values, self.size, self.value_size = values, size, value_size
        self.handed = 0

    def lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[bytes, bytes]]:
        empty = bytes(self.value_size * 2)
        for key in range(self.size):
            self.handed += 1
            yield struct.pack("=I", key), self.values.get(key, empty)


def percpu(fmt: str, *cpus: tuple[int, ...]) -> bytes:
    return b"".join(struct.pack(fmt, *vals) for vals in cpus)


def test_read_counters_batch_sums_cpus_and_stops_at_the_last_slot() -> None:
    counters = FakeArray(
        {
            0: percpu("=4Q", (1, 10, 1, 10), (2, 20, 0, 0)),
            17: percpu("=4Q", (5, 50, 0, 0), (6, 60, 3, 30)),
            99: percpu("=4Q", (7, 7, 7, 7), (7, 7, 7, 7)),
        },
        size=abi.MAX_SLOTS,
        value_size=32,
    )
    maps = {
        n: counters
        for n in ("fwd_live", "fwd_gen", "fwd_tuples", "fwd_rules", "fwd_sets", "fwd_counters")
    }
    dp = Dataplane(maps, 2, barrier=None)  # type: ignore[arg-type]
    got = dp.read_counters_batch([0, 17, 16])
    assert got == {
        0: SlotCounters(3, 30, 1, 10),
        17: SlotCounters(11, 110, 3, 30),
        16: SlotCounters(0, 0, 0, 0),
    }
    assert counters.handed == 18  # slots 0..17, not the whole array
    assert dp.read_counters_batch([]) == {}


def test_if_stats_summed_over_cpus() -> None:
    raw = percpu("=6Q", (1, 2, 3, 10, 20, 30), (4, 5, 6, 40, 50, 60))
    assert sum_if_stats(raw, 2) == IfCounters((5, 7, 9), (50, 70, 90))
    stats = FakeArray({0: raw}, size=1, value_size=48)
    assert read_if_stats(stats, 2) == {0: IfCounters((5, 7, 9), (50, 70, 90))}


# --- the endpoint and gRPC durations ----------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:9469", ("127.0.0.1", 9469)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_addr(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize(
    "addr", ["9469", ":9469", "host:", "host:http", "::1:9469", "[x]:1", "a:70000"]
)
def test_parse_addr_rejects(addr: str) -> None:
    with pytest.raises(ValueError, match="metrics address"):
        parse_addr(addr)


@pytest.mark.asyncio
async def test_endpoint_serves_from_a_thread_and_snapshots_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    snapshot_threads: list[int] = []

    def take() -> Snapshot:
        snapshot_threads.append(threading.get_ident())
        return snapshot()

    registry = CollectorRegistry()
    server = MetricsServer(
        "127.0.0.1:0", registry, snapshot=take, counters=FakeCounters(COUNTERS).read
    )
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        assert server.bound is not None
        url = f"http://127.0.0.1:{server.bound[1]}/metrics"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())

        text = await anyio.to_thread.run_sync(get)
        tg.cancel_scope.cancel()
    assert value(parse(text), "fwd_rule_packets_total", rule_id="mgmt-ssh", action="allow") == 10
    assert snapshot_threads == [loop_thread]
    with pytest.raises(OSError):  # the listener is closed
        urllib.request.urlopen(url, timeout=2)


@pytest.mark.asyncio
async def test_grpc_durations_by_method_and_code(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = GrpcMetrics(registry)
    server = Server([Health({})])
    metrics.instrument(server)
    path = str(tmp_path / "grpc.sock")
    await server.start(path=path)
    try:
        channel = Channel(path=path)
        try:
            health = HealthStub(channel)
            await health.Check(HealthCheckRequest(), timeout=5)
            await health.Check(HealthCheckRequest(), timeout=5)
            with pytest.raises(GRPCError) as failed:
                await health.Check(HealthCheckRequest(service="no.such.Service"), timeout=5)
            assert failed.value.status is Status.NOT_FOUND
        finally:
            channel.close()
    finally:
        server.close()
        await server.wait_closed()
    _, s = scrape(registry)
    method = "/grpc.health.v1.Health/Check"
    name = "fwd_grpc_request_duration_seconds"
    assert value(s, f"{name}_count", method=method, code="OK") == 2
    assert value(s, f"{name}_count", method=method, code="NOT_FOUND") == 1
    assert value(s, f"{name}_sum", method=method, code="OK") > 0
    assert value(s, f"{name}_bucket", method=method, code="OK", le="+Inf") == 2


def test_cli_metrics_option(capsys: pytest.CaptureFixture[str]) -> None:
    from fwd.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["agent"]).metrics == "127.0.0.1:9469"
    assert parser.parse_args(["agent", "--metrics", ""]).metrics == ""  # disabled
    assert parser.parse_args(["agent", "--metrics", "[::1]:9100"]).metrics == "[::1]:9100"
    assert main(["agent", "--metrics", "9100"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_scrapes_run_one_at_a_time_with_the_gc_paused() -> None:
    import gc

    from fwd.metrics.http import serialised_without_gc

    seen: list[bool] = []

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        seen.append(gc.isenabled())
        if environ.get("fail"):
            raise RuntimeError("boom")
        return [b"ok"]

    wrapped = serialised_without_gc(app)
    assert gc.isenabled()
    assert list(wrapped({}, print)) == [b"ok"]
    with pytest.raises(RuntimeError):
        wrapped({"fail": True}, print)
    assert seen == [False, False]
    assert gc.isenabled()  # restored, even after a failure


@pytest.mark.asyncio
async def test_address_in_use_is_a_clear_error() -> None:
    import socket

    from fwd.actors.metrics import MetricsAddressError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        registry = CollectorRegistry()
        server = MetricsServer(
            f"127.0.0.1:{port}", registry, snapshot=snapshot, counters=FakeCounters(COUNTERS).read
        )
        with pytest.raises(MetricsAddressError, match=f"cannot listen on 127.0.0.1:{port}"):
            await server.run()
    assert list(registry.collect()) == []  # nothing registered


@pytest.mark.asyncio
async def test_loop_lag_monitor_tells_own_work_from_off_cpu() -> None:
    """A callback that holds the loop shows as own-work lag; sleeping (off-CPU) does not."""
    monitor = LoopLagMonitor(interval=0.005)
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        await anyio.sleep(0.02)
        end = time.thread_time() + 0.06
        while time.thread_time() < end:  # 60 ms of CPU with the loop held
            pass
        await anyio.sleep(0.02)
        time.sleep(0.08)  # noqa: ASYNC251 - on purpose: 80 ms with the loop held, thread off-CPU
        await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    stats = monitor.statistics()
    assert stats.max >= 0.08
    assert 0.04 <= stats.own_max < 0.08  # the spin, not the sleep
