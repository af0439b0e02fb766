"""The Prometheus collector: actor statistics and BPF counters, read at scrape time.

Stats are read, not pushed (STYLE.md practice 10): nothing here counts
anything. At each scrape the collector takes one :class:`Snapshot` of the
actors' ``statistics()`` (plain dataclasses, taken on the event loop by the
caller) and reads the kernel's counters with batch lookups, then turns both
into metric families with the pure ``*_families`` functions below.

Reserved counter slots are separate metrics, not pseudo rule ids: every
``rule_id`` label value is then a rule of the policy (the same id events and
``fwd stats`` carry), so joins and top-k over rules never meet a
"(default)" bucket that dwarfs them; and malformed / non-IP packets are not
policy decisions at all. They are one family, ``fwd_unmatched_*``, with a
``reason`` label (no_rule, malformed, non_ip), so
``sum(fwd_rule_packets_total) + sum(fwd_unmatched_packets_total)`` is every
packet the program saw.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Protocol

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from fwd.messages import DatapathStatistics
from fwd.actors.discovery import DiscoveryStatistics
from fwd.actors.links import LinksStatistics
from fwd.core import abi
from fwd.core.counters import SlotCounters
from fwd.actors.looplag import LoopLagStatistics
from fwd.messages import InterfaceStatus, LinkState, RuleTable
from fwd.metrics.kernel import VERDICTS, IfCounters


class KernelEvents(Protocol):
    @property
    def emitted(self) -> int: ...

    @property
    def suppressed(self) -> int: ...

    @property
    def ringbuf_full(self) -> int: ...


class EventsStatistics(Protocol):
    """What the collector reads of the Events actor's ``statistics()`` (cumulative counts)."""

    @property
    def delivered(self) -> int: ...

    @property
    def lost(self) -> int: ...  # slow subscribers

    @property
    def kernel(self) -> KernelEvents: ...


@dataclass(frozen=True)
class Snapshot:
    """The actors' statistics at one instant, taken on the event loop."""

    datapath: DatapathStatistics
    interfaces: tuple[InterfaceStatus, ...] = ()
    links: LinksStatistics | None = None
    discovery: DiscoveryStatistics | None = None
    events: EventsStatistics | None = None
    loop_lag: LoopLagStatistics | None = None


class CounterReader(Protocol):
    """Per-slot rule counters, summed over CPUs (fwd.kernel.dataplane.Dataplane provides it)."""

    def read_counters_batch(self, slots: Sequence[int]) -> Mapping[int, SlotCounters]: ...


@dataclass(frozen=True)
class BuildInfo:
    version: str
    python_version: str
    kernel: str

    @classmethod
    def current(cls) -> BuildInfo:
        try:
            version = metadata.version("fwd")
        except metadata.PackageNotFoundError:
            version = "unknown"
        return cls(version, platform.python_version(), platform.release())


# Reserved slots: (reason label, the action the slot's packets get).
_UNMATCHED = {
    abi.SLOT_DEFAULT: "no_rule",
    abi.SLOT_MALFORMED: "malformed",
    abi.SLOT_NON_IP: "non_ip",
    abi.SLOT_FAILSAFE: "failsafe",  # a policy's drop the failsafe turned into a pass
}


def build_families(build: BuildInfo) -> list[Metric]:
    info = GaugeMetricFamily(
        "fwd_build_info",
        "Always 1; labels say which fwd, Python and kernel this agent runs.",
        labels=("version", "python_version", "kernel"),
    )
    info.add_metric([build.version, build.python_version, build.kernel], 1)
    return [info]


def policy_families(stats: DatapathStatistics) -> list[Metric]:
    t = stats.table
    return [
        GaugeMetricFamily(
            "fwd_policy_revision", "Revision of the policy the data plane enforces.", t.revision
        ),
        GaugeMetricFamily(
            "fwd_policy_dry_run",
            "1 when the enforced policy is in dry-run (drops are only counted), else 0.",
            int(t.dry_run),
        ),
        GaugeMetricFamily("fwd_policy_rules", "Rules in the enforced policy.", len(t.rules)),
        CounterMetricFamily(
            "fwd_policy_applies", "Policies applied since the agent started.", stats.applies
        ),
        CounterMetricFamily(
            "fwd_policy_apply_failures",
            "Policy applies refused (invalid, revision mismatch, capacity) since start.",
            stats.failed_applies,
        ),
        CounterMetricFamily(
            "fwd_policy_recompiles",
            "Recompiles of the enforced policy after interface changes since start.",
            stats.recompiles,
        ),
    ]


def rule_slots(table: RuleTable) -> list[int]:
    """Every counter slot a scrape reads: the reserved ones and each rule's."""
    return [*_UNMATCHED, *(r.slot for r in table.rules)]


def rule_families(table: RuleTable, counters: Mapping[int, SlotCounters]) -> list[Metric]:
    """Per-rule counters (labels rule_id, action) and the reserved slots (reason, action)."""
    zero = SlotCounters(0, 0, 0, 0)
    labels = ("rule_id", "action")
    rp = CounterMetricFamily(
        "fwd_rule_packets", "Packets decided by a rule (would-drops included).", labels=labels
    )
    rb = CounterMetricFamily(
        "fwd_rule_bytes",
        "Bytes of packets decided by a rule (frame length, Ethernet header included).",
        labels=labels,
    )
    rwp = CounterMetricFamily(
        "fwd_rule_would_drop_packets",
        "Packets a drop rule passed because of dry-run or audit.",
        labels=labels,
    )
    rwb = CounterMetricFamily(
        "fwd_rule_would_drop_bytes",
        "Bytes of packets a drop rule passed because of dry-run or audit.",
        labels=labels,
    )
    for rule in table.rules:
        c = counters.get(rule.slot, zero)
        key = [rule.rule_id, rule.action]
        rp.add_metric(key, c.packets)
        rb.add_metric(key, c.bytes)
        if rule.action == "drop":  # an allow rule never would-drop: no always-0 series
            rwp.add_metric(key, c.would_drop_packets)
            rwb.add_metric(key, c.would_drop_bytes)
    ulabels = ("reason", "action")
    up = CounterMetricFamily(
        "fwd_unmatched_packets",
        "Packets no rule decided: no rule matched (the default action), malformed, or not IP.",
        labels=ulabels,
    )
    ub = CounterMetricFamily(
        "fwd_unmatched_bytes", "Bytes of packets no rule decided.", labels=ulabels
    )
    uwp = CounterMetricFamily(
        "fwd_unmatched_would_drop_packets",
        "Packets no rule decided that were passed only because of dry-run.",
        labels=ulabels,
    )
    uwb = CounterMetricFamily(
        "fwd_unmatched_would_drop_bytes",
        "Bytes of packets no rule decided that were passed only because of dry-run.",
        labels=ulabels,
    )
    actions = {
        abi.SLOT_DEFAULT: table.default_action,
        abi.SLOT_MALFORMED: "drop",
        abi.SLOT_NON_IP: "allow",
        abi.SLOT_FAILSAFE: "allow",
    }
    for slot, reason in _UNMATCHED.items():
        c = counters.get(slot, zero)
        key = [reason, actions[slot]]
        up.add_metric(key, c.packets)
        ub.add_metric(key, c.bytes)
        uwp.add_metric(key, c.would_drop_packets)
        uwb.add_metric(key, c.would_drop_bytes)
    return [rp, rb, rwp, rwb, up, ub, uwp, uwb]


def interface_families(
    interfaces: Iterable[InterfaceStatus], if_stats: Mapping[int, IfCounters] | None
) -> list[Metric]:
    """Attach state of managed interfaces and, when the kernel counts them, verdicts.

    Interfaces the agent does not manage (excluded) have no series. Counters of
    an ifindex the Links actor no longer knows (the link is gone) are skipped.
    """
    attached = GaugeMetricFamily(
        "fwd_interface_attached",
        "1 when the XDP program is attached to a managed interface (mode: how), "
        "0 when attaching failed.",
        labels=("interface", "mode"),
    )
    managed = [i for i in interfaces if i.state is not LinkState.EXCLUDED]
    for iface in managed:
        attached.add_metric(
            [iface.name, iface.mode.value], int(iface.state is LinkState.ATTACHED)
        )
    out: list[Metric] = [attached]
    if if_stats is None:
        return out
    labels = ("interface", "verdict")
    packets = CounterMetricFamily(
        "fwd_interface_packets",
        "Packets the XDP program saw on an interface, by verdict "
        "(would_drop: passed only because of dry-run or audit).",
        labels=labels,
    )
    nbytes = CounterMetricFamily(
        "fwd_interface_bytes", "Bytes the XDP program saw on an interface, by verdict.",
        labels=labels,
    )
    for iface in managed:
        c = if_stats.get(iface.ifindex)
        if c is None:
            continue
        for idx, verdict in VERDICTS.items():
            packets.add_metric([iface.name, verdict], c.packets[idx])
            nbytes.add_metric([iface.name, verdict], c.bytes[idx])
    return [*out, packets, nbytes]


def links_families(stats: LinksStatistics) -> list[Metric]:
    state = GaugeMetricFamily(
        "fwd_interfaces", "Interfaces the agent knows, by state.", labels=("state",)
    )
    state.add_metric(["attached"], stats.attached)
    state.add_metric(["excluded"], stats.excluded)
    state.add_metric(["failed"], stats.failed)
    return [
        state,
        CounterMetricFamily(
            "fwd_xdp_attaches", "XDP attachments made or adopted since start.", stats.attaches
        ),
        CounterMetricFamily(
            "fwd_xdp_attach_failures", "XDP attachments that failed since start.",
            stats.attach_failures,
        ),
        CounterMetricFamily(
            "fwd_xdp_detaches", "XDP attachments removed since start.", stats.detaches
        ),
    ]


def discovery_families(stats: DiscoveryStatistics) -> list[Metric]:
    return [
        CounterMetricFamily(
            "fwd_netlink_link_events", "Link events turned from netlink messages since start.",
            stats.events,
        ),
        CounterMetricFamily(
            "fwd_netlink_resyncs", "Full link table rescans since start.", stats.resyncs
        ),
        CounterMetricFamily(
            "fwd_netlink_overflows",
            "Times the netlink socket overflowed (ENOBUFS) and was rescanned since start.",
            stats.overflows,
        ),
    ]


def events_families(stats: EventsStatistics) -> list[Metric]:
    lost = CounterMetricFamily(
        "fwd_events_lost",
        "Logged verdicts that reached no subscriber: the kernel ring buffer was full, "
        "or a subscriber's stream was (counted once per subscriber).",
        labels=["reason"],
    )
    lost.add_metric(["ringbuf_full"], stats.kernel.ringbuf_full)
    lost.add_metric(["slow_subscriber"], stats.lost)
    return [
        CounterMetricFamily(
            "fwd_events_emitted", "Event records the kernel wrote to the ring buffer.",
            stats.kernel.emitted,
        ),
        CounterMetricFamily(
            "fwd_events_delivered", "Events delivered to subscribers (once per subscriber).",
            stats.delivered,
        ),
        CounterMetricFamily(
            "fwd_events_suppressed",
            "Events the kernel did not emit because its per-CPU budget was spent.",
            stats.kernel.suppressed,
        ),
        lost,
    ]


def loop_lag_families(stats: LoopLagStatistics) -> list[Metric]:
    """The event loop's wake-up lag: a histogram and the worst sample since start."""
    cumulative, buckets = 0, []
    for bound, count in zip((*stats.buckets, float("inf")), stats.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
    return [
        HistogramMetricFamily(
            "fwd_event_loop_lag_seconds",
            f"How late the agent's event loop woke a task sleeping {stats.interval:g} s "
            "(time every actor had to wait for the loop).",
            buckets=buckets,
            sum_value=stats.sum,
        ),
        GaugeMetricFamily(
            "fwd_event_loop_lag_max_seconds",
            "The worst event loop lag measured since the agent started.",
            stats.max,
        ),
        GaugeMetricFamily(
            "fwd_event_loop_lag_own_max_seconds",
            "The worst event loop lag the loop's own work accounts for since start, at least "
            "(the rest of a lag the loop thread was off-CPU: descheduled or waiting for the GIL).",
            stats.own_max,
        ),
    ]


class AgentCollector:
    """Everything the agent exposes except gRPC durations, read at each scrape.

    ``snapshot`` is called from the scrape thread and must hand back actor
    statistics taken safely (the agent runs it on the event loop); the kernel
    readers are plain bpf(2) syscalls. :meth:`close` waits for a scrape in
    progress and makes later ones skip the kernel, so the BPF object can be
    closed after it.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        counters: CounterReader,
        if_stats: Callable[[], Mapping[int, IfCounters]] | None = None,
        build: BuildInfo | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._counters = counters
        self._if_stats = if_stats
        self._build = build or BuildInfo.current()
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """No kernel reads after this returns (blocks while a scrape reads)."""
        with self._lock:
            self._closed = True

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._closed:
                return
            snap = self._snapshot()
            table = snap.datapath.table
            counters = self._counters.read_counters_batch(rule_slots(table))
            if_stats = self._if_stats() if self._if_stats is not None else None
        yield from build_families(self._build)
        yield from policy_families(snap.datapath)
        yield from rule_families(table, counters)
        yield from interface_families(snap.interfaces, if_stats)
        if snap.links is not None:
            yield from links_families(snap.links)
        if snap.discovery is not None:
            yield from discovery_families(snap.discovery)
        if snap.events is not None:
            yield from events_families(snap.events)
        if snap.loop_lag is not None:
            yield from loop_lag_families(snap.loop_lag)
