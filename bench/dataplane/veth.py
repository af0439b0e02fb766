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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from bench.dataplane import workload
from bench.dataplane.cost import Log
from bench.dataplane.engines import Nftables, XdpFilter
from bench.dataplane.fwdplane import Agent
from bench.dataplane.kernel import Injection, inject
from fwd.bpf.objects import BpfObject
from fwd.bpf.xdp import attach_xdp
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
    cpu_s: float        # CPU seconds, all trials
    wall_s: float
    rates: list[float]  # drops per CPU-second, per trial

    @property
    def rate(self) -> float:
        """Median drops per CPU-second over the trials."""
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def ns_per_packet(self) -> float:
        """CPU nanoseconds per dropped packet (generator included)."""
        return 1e9 / self.rate if self.rate else float("inf")


def _rx_packets(ns: str, dev: str) -> int:
    info = json.loads(run(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev]).stdout)[0]
    return int(info["stats64"]["rx"]["packets"])


@contextmanager
def _engine(name: str, n: int, ref: BpfObject, net: Netns, r: str, stack: ExitStack) -> Iterator[Counter]:
    """Set up ``name`` on r0 in namespace ``r``; yield its cumulative drop counter."""
    ifindex = net.ifindex(r, "r0")
    if name == "bare XDP_DROP":
        with entered(r):
            stack.enter_context(attach_xdp(ref.program("xdp_drop"), ifindex, AttachMode.NATIVE))
        yield lambda: _rx_packets(r, "r0")
    elif name == "fwd":
        agent = Agent(net, r, "r0")
        stack.callback(agent.stop)
        agent.start()
        agent.apply(workload.fwd_policy(n))
        mode = agent.attach_mode("r0")
        if "NATIVE" not in mode.upper():
            raise RuntimeError(f"fwd attached r0 in mode {mode}, not native")
        last = workload.last_rule_id(n)
        yield lambda: agent.packets(last)
    elif name == "xdp-filter":
        xdpf = XdpFilter(r, "r0")
        stack.callback(xdpf.close)
        xdpf.load(workload.XDP_FILTER_PORTS)
        xdpf.set_addresses(workload.filter_addresses(min(n, xdpf.max_addresses)))
        yield xdpf.drops
    elif name in ("nft chain", "nft set"):
        with entered(r):
            stack.enter_context(attach_xdp(ref.program("xdp_pass"), ifindex, AttachMode.NATIVE))
        nft = Nftables(r, "fwdb")
        stack.callback(nft.delete)
        build = workload.nft_chain if name == "nft chain" else workload.nft_set
        nft.load(build(n, "fwdb", "r0"))
        yield nft.counter
    else:
        raise ValueError(name)


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


def measure_engine(
    name: str, n: int, ref: BpfObject, net: Netns, budget: Budget, log: Log
) -> VethResult:
    """Calibrate, then run ``budget.trials`` bounded injections against ``name``."""
    frame = workload.frames(n).match
    with ExitStack() as stack:
        s, r = net.make_netns(), net.make_netns()
        stack.callback(_drop_namespaces, net, s, r)  # runs last: the engine is gone by then
        net.veth_pair(s, "s0", r, "r0")
        log(f"veth: {name}: setting up {n} rules")
        with _engine(name, n, ref, net, r, stack) as dropped:
            # Calibrate: a short burst tells how many packets fill the time budget.
            probe = 2000 if name.startswith("nft chain") else 50_000
            c0 = dropped()
            first = _send(ref, net, s, frame, probe, budget.cpu)
            if dropped() - c0 < probe * 0.5:
                raise RuntimeError(f"{name}: only {dropped() - c0} of {probe} probe packets dropped")
            pps = probe / max(first.wall_s, 1e-6)
            count = int(min(budget.max_packets, max(1000, pps * budget.seconds)))
            rates: list[float] = []
            injected = drops = 0
            cpu_s = wall_s = 0.0
            for trial in range(budget.trials):
                log(f"veth: {name}: trial {trial + 1}/{budget.trials}: {count} packets")
                before = dropped()
                inj = _send(ref, net, s, frame, count, budget.cpu)
                d = dropped() - before
                # Sanity: the flood was really dropped by the engine (not lost elsewhere).
                if d < count * 0.9:
                    raise RuntimeError(f"{name}: only {d} of {count} packets dropped by the engine")
                injected += count
                drops += d
                cpu_s += inj.cpu_s
                wall_s += inj.wall_s
                rates.append(d / inj.cpu_s if inj.cpu_s > 0 else 0.0)
            return VethResult(name, n, injected, drops, cpu_s, wall_s, rates)
