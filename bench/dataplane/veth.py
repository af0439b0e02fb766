"""Part 2: dropped packets per CPU-second through a veth pair, one engine at a time.

Each engine gets a fresh pair of namespaces: the sender ``S`` (veth ``s0``) and
the receiver ``R`` (veth ``r0``, where the filter runs). The generator
transmits the ``match`` frame out of ``s0`` (live-frames test run of an
``XDP_TX`` program, :func:`kernel.inject`), so it arrives on ``r0`` as an XDP
frame. Sender and receiver work both happen on the one CPU the injector is
pinned to; CPU time is that CPU's system + irq + softirq time during the
injection, so every rate includes the generator's own cost (measured alone as
the ``bare XDP_DROP`` row).

Engines on ``r0``:
* ``bare XDP_DROP``: the reference program (drops counted as r0's rx packets);
* ``fwd``: the agent in ``R`` (native mode), policy applied over gRPC, drops read
  from the last rule's counter over gRPC;
* ``xdp-filter``: native, N source addresses, drops from ``xdp-filter status``;
* ``nft chain`` / ``nft set``: nftables in R's netdev ingress hook on ``r0``
  (the earliest nftables hook), drops from the rule counter. ``r0`` carries a
  bare ``XDP_PASS`` program: a veth only accepts XDP frames from its peer when
  it has an XDP program (or GRO, which needs ethtool) on its side.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from bench.dataplane import workload
from bench.dataplane.cost import Log
from bench.dataplane.engines import Nftables, XdpFilter
from bench.dataplane.fwdplane import Agent
from bench.dataplane.kernel import Injection, inject
from fwd.kernel.objects import BpfObject
from fwd.kernel.xdp import attach_xdp
from fwd.messages import AttachMode
from tests.netns import Netns, entered, run

Counter = Callable[[], int]
ENGINES = ("bare XDP_DROP", "fwd", "xdp-filter", "nft chain", "nft set")


@dataclass(frozen=True)
class Budget:
    """Bounds of one trial: at most ``seconds`` of injection and ``max_packets`` packets."""

    seconds: float
    max_packets: int
    trials: int
    cpu: int


@dataclass(frozen=True)
class VethResult:
    engine: str
    n: int
    injected: int       # packets sent, all trials
    dropped: int        # packets the engine counted as dropped, all trials
    cpu_s: float        # CPU seconds (/proc/stat, the pinned CPU), all trials
    task_s: float       # CPU seconds of the injector thread + ksoftirqd, all trials
    wall_s: float
    rates: list[float]  # drops per CPU-second (/proc/stat), per trial
    task_rates: list[float]  # drops per CPU-second (tasks), per trial

    @property
    def rate(self) -> float:
        """Median drops per CPU-second over the trials."""
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def task_rate(self) -> float:
        """Median drops per CPU-second by the per-task cross-check."""
        return statistics.median(self.task_rates) if self.task_rates else 0.0

    @property
    def ns_per_packet(self) -> float:
        """CPU nanoseconds per dropped packet (generator included)."""
        return 1e9 / self.rate if self.rate else float("inf")


def _rx_packets(ns: str, dev: str) -> int:
    info = json.loads(run(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev]).stdout)[0]
    return int(info["stats64"]["rx"]["packets"])


def _engine(name: str, n: int, ref: BpfObject, net: Netns, r: str, stack: ExitStack) -> Counter:
    """Set up ``name`` on r0 in namespace ``r`` (its cleanup goes on ``stack``).

    Returns the engine's cumulative drop counter. This is where each engine gets
    its policy of ``n`` rules.
    """
    ifindex = net.ifindex(r, "r0")
    if name == "bare XDP_DROP":
        with entered(r):
            stack.enter_context(attach_xdp(ref.program("xdp_drop"), ifindex, AttachMode.NATIVE))
        return lambda: _rx_packets(r, "r0")
    elif name == "fwd":
        agent = Agent(net, r, "r0")
        stack.callback(agent.stop)
        agent.start()
        agent.apply(workload.fwd_policy(n))
        mode = agent.attach_mode("r0")
        if "NATIVE" not in mode.upper():
            raise RuntimeError(f"fwd attached r0 in mode {mode}, not native")
        last = workload.last_rule_id(n)
        return lambda: agent.packets(last)
    elif name == "xdp-filter":
        xdpf = XdpFilter(r, "r0")
        stack.callback(xdpf.close)
        xdpf.load(workload.XDP_FILTER_PORTS)
        xdpf.set_addresses(workload.filter_addresses(min(n, xdpf.max_addresses)))
        return xdpf.drops
    elif name in ("nft chain", "nft set"):
        with entered(r):
            stack.enter_context(attach_xdp(ref.program("xdp_pass"), ifindex, AttachMode.NATIVE))
        nft = Nftables(r, "fwdb")
        stack.callback(nft.delete)
        build = workload.nft_chain if name == "nft chain" else workload.nft_set
        nft.load(build(n, "fwdb", "r0"))
        return nft.counter
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")


def _drop_namespaces(net: Netns, *names: str) -> None:
    """Delete this engine's namespaces now (their links and attachments go with them)."""
    for ns in names:
        run(["ip", "netns", "del", ns], check=False)
        if ns in net.namespaces:
            net.namespaces.remove(ns)
    net.links[:] = [(ns, dev) for ns, dev in net.links if ns not in names]


def _send(ref: BpfObject, net: Netns, s: str, frame: bytes, count: int, cpu: int) -> Injection:
    with entered(s):
        return inject(ref.program("xdp_tx"), frame, net.ifindex(s, "s0"), count, cpu=cpu)


@dataclass
class _Lane:
    """One engine on its own veth pair, with the totals of its trials."""

    name: str
    sender: str
    dropped: Counter
    count: int = 0
    injected: int = 0
    drops: int = 0
    cpu_s: float = 0.0
    task_s: float = 0.0
    wall_s: float = 0.0
    rates: list[float] = field(default_factory=list)
    task_rates: list[float] = field(default_factory=list)

    def result(self, n: int) -> VethResult:
        return VethResult(self.name, n, self.injected, self.drops, self.cpu_s, self.task_s,
                          self.wall_s, self.rates, self.task_rates)


def measure(
    names: Sequence[str], n: int, ref: BpfObject, net: Netns, budget: Budget, log: Log
) -> list[VethResult]:
    """Set every engine up on its own veth pair, then run the trials round-robin.

    Round-robin (trial 1 of every engine, then trial 2, ...) spreads the
    machine's background load over the engines instead of letting it land on
    whichever ran when it peaked.
    """
    frame = workload.frames(n).match
    with ExitStack() as stack:
        lanes: list[_Lane] = []
        for name in names:
            s, r = net.make_netns(), net.make_netns()
            stack.callback(_drop_namespaces, net, s, r)  # after the engine's own cleanup
            net.veth_pair(s, "s0", r, "r0")
            log(f"veth: {name}: setting up {n:,} rules")
            dropped = _engine(name, n, ref, net, r, stack)
            lanes.append(_Lane(name, s, dropped))
        for lane in lanes:
            # Calibrate: a short burst tells how many packets fill the time budget.
            probe = 2000 if lane.name == "nft chain" else 50_000
            before = lane.dropped()
            first = _send(ref, net, lane.sender, frame, probe, budget.cpu)
            got = lane.dropped() - before
            if got < probe * 0.5:
                raise RuntimeError(f"{lane.name}: only {got} of {probe} probe packets dropped")
            pps = probe / max(first.wall_s, 1e-6)
            lane.count = int(min(budget.max_packets, max(1000, pps * budget.seconds)))
        for trial in range(budget.trials):
            for lane in lanes:
                log(f"veth: trial {trial + 1}/{budget.trials}: {lane.name}: {lane.count:,} packets")
                before = lane.dropped()
                inj = _send(ref, net, lane.sender, frame, lane.count, budget.cpu)
                d = lane.dropped() - before
                # Sanity: the flood was really dropped by the engine (not lost elsewhere).
                if d < lane.count * 0.9:
                    raise RuntimeError(f"{lane.name}: only {d} of {lane.count} packets dropped by it")
                lane.injected += lane.count
                lane.drops += d
                lane.cpu_s += inj.cpu_s
                lane.task_s += inj.task_s
                lane.wall_s += inj.wall_s
                lane.rates.append(d / inj.cpu_s if inj.cpu_s > 0 else 0.0)
                lane.task_rates.append(d / inj.task_s if inj.task_s > 0 else 0.0)
        return [lane.result(n) for lane in lanes]
