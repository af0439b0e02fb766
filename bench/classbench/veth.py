"""A 10,000-rule fw-style set through a veth pair: drops per CPU-second (issue 10, done-when 5).

Run as root from the repository root::

    sudo .venv/bin/python -m bench.classbench.veth [--set fw_10k] [--quick]

bench/dataplane's veth machinery (``bench/dataplane/README.md`` part 2), with a
ClassBench-like rule set instead of the uniform one: the sender namespace injects
one frame with a live-frames ``XDP_TX`` test run, pinned to one CPU, and the
receiver's engine runs in softirq on that same CPU; CPU time is that CPU's
system + irq + softirq time (and, as a cross-check, the injector thread's and
``ksoftirqd``'s). Engines, each on its own veth pair:

* ``bare XDP_DROP``: the floor (drops = r0's rx packets);
* ``fwd``: the real agent (``fwd agent``) in the receiver namespace, the set
  applied over gRPC (drops = the deciding rule's counter over gRPC); if fwd
  refuses the set, the row says ``refused: <message>``;
* ``nft chain``: the same rules as one netdev ingress chain on r0 (behind a bare
  ``XDP_PASS`` so veth delivers XDP frames), each rule ``... counter drop``.

Every rule drops (the default allows). The frame is the trace header of the
latest rule (in rule order) that decides its own header, so a chain evaluates
nearly every rule before it matches. Addresses: the set is moved by XOR (source
field and destination field each with their own constant, which maps prefixes
onto prefixes of the same length and keeps every overlap) so that the frame's
addresses fall in 198.18.0.0/15; no other address is ever sent.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

from bench.classbench import rules, sets, trace  # noqa: E402
from bench.classbench.cost import machine  # noqa: E402
from bench.dataplane import kernel, report  # noqa: E402
from bench.dataplane.cost import Log  # noqa: E402
from bench.dataplane.engines import Nftables  # noqa: E402
from bench.dataplane.fwdplane import Agent  # noqa: E402
from bench.dataplane.veth import Budget, VethResult, _drop_namespaces, _Lane, _rx_packets, _send  # noqa: E402
from fwd.kernel.xdp import attach_xdp  # noqa: E402
from fwd.core.attach import AttachMode  # noqa: E402
from tests.netns import Netns, entered  # noqa: E402

ENGINES = ("bare XDP_DROP", "fwd", "nft chain")
TARGET_SRC = int(ipaddress.IPv4Address("198.18.0.1"))
TARGET_DST = int(ipaddress.IPv4Address("198.19.255.254"))
M32 = 0xFFFFFFFF


def _mask(length: int) -> int:
    return (M32 << (32 - length)) & M32 if length else 0


def moved(rs: Sequence[rules.CbRule], c_src: int, c_dst: int) -> list[rules.CbRule]:
    """Every rule's prefixes XOR-ed with the field's constant (host bits stay zero)."""
    return [replace(r, src=(r.src ^ c_src) & _mask(r.src_len), dst=(r.dst ^ c_dst) & _mask(r.dst_len))
            for r in rs]


@dataclass(frozen=True)
class Picked:
    """The moved set, the moved header, the fwd rule that decides it, the XOR constants."""

    rules: list[rules.CbRule]
    header: trace.Header
    rule_id: str
    c_src: int
    c_dst: int


def pick_frame(rs: Sequence[rules.CbRule], headers: Sequence[trace.Header]) -> Picked:
    """The header of the latest rule (TCP/UDP) that decides its own header, and the set
    moved so that header's addresses are in 198.18.0.0/15."""
    t = rules.translate(rs, "veth", actions=rules.all_drop)
    ex = trace.expected(t.policy(), headers)
    origin = dict(zip((r["id"] for r in t.raw["rules"]), t.origin))
    best: tuple[int, trace.Header, str] | None = None
    for h, d in zip(headers, ex.decisions):
        n = origin.get(d.rule_id or "", -1)
        if n == h.filter and h.proto in (6, 17) and (best is None or n > best[0]):
            best = (n, h, d.rule_id or "")
    if best is None:
        raise RuntimeError("no TCP/UDP trace header is decided by its own rule")
    _, h, rid = best
    c_src, c_dst = h.src ^ TARGET_SRC, h.dst ^ TARGET_DST
    out = moved(rs, c_src, c_dst)
    hh = replace(h, src=TARGET_SRC, dst=TARGET_DST)
    # Sanity: moved, the frame is still decided by the same rule.
    t2 = rules.translate(out, "veth", actions=rules.all_drop)
    got = trace.Expect(t2.policy()).decide(trace.frame(hh)).rule_id
    if got != rid:
        raise RuntimeError(f"moving the set changed the frame's rule: {rid} -> {got}")
    return Picked(out, hh, rid, c_src, c_dst)


def nft_chain(raw: dict[str, Any], table: str, dev: str) -> str:
    """The translated fwd rules as one nftables netdev ingress chain (policy accept)."""
    lines = [f"table netdev {table} {{", "  chain ingress {",
             f'    type filter hook ingress device "{dev}" priority 0; policy accept;']
    for r in raw["rules"]:
        m = []
        if "src" in r:
            m.append(f"ip saddr {r['src'][0]}")
        if "dst" in r:
            m.append(f"ip daddr {r['dst'][0]}")
        proto = r.get("protocol")
        if proto is not None:
            m.append(f"meta l4proto {proto}")
        for key, word in (("src_ports", "sport"), ("dst_ports", "dport")):
            if key in r:
                m.append(f"{proto} {word} {r[key][0]}")
        verdict = "counter drop" if r["action"] == "drop" else "accept"
        lines.append(f"    {' '.join([*m, verdict])}")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _engine(name: str, raw: dict[str, Any], rule_id: str, ref: Any, net: Netns, r: str,
            stack: ExitStack) -> Callable[[], int]:
    ifindex = net.ifindex(r, "r0")
    if name == "bare XDP_DROP":
        with entered(r):
            stack.enter_context(attach_xdp(ref.program("xdp_drop"), ifindex, AttachMode.NATIVE))
        return lambda: _rx_packets(r, "r0")
    if name == "fwd":
        agent = Agent(net, r, "r0")
        stack.callback(agent.stop)
        agent.start()
        agent.apply(raw)
        mode = agent.attach_mode("r0")
        if "NATIVE" not in mode.upper():
            raise RuntimeError(f"fwd attached r0 in mode {mode}, not native")
        return lambda: agent.packets(rule_id)
    if name == "nft chain":
        with entered(r):
            stack.enter_context(attach_xdp(ref.program("xdp_pass"), ifindex, AttachMode.NATIVE))
        nft = Nftables(r, "fwdcb")
        stack.callback(nft.delete)
        nft.load(nft_chain(raw, "fwdcb", "r0"))
        return nft.counter
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")


def measure(names: Sequence[str], raw: dict[str, Any], rule_id: str, frame: bytes, ref: Any,
            net: Netns, budget: Budget, log: Log) -> tuple[list[VethResult], dict[str, str]]:
    """bench/dataplane's trial loop (calibrate, then round-robin trials) on these engines.
    Returns the results and, per engine that could not take the set, why."""
    refused: dict[str, str] = {}
    n = len(raw["rules"])
    with ExitStack() as stack:
        lanes: list[_Lane] = []
        for name in names:
            s, r = net.make_netns(), net.make_netns()
            stack.callback(_drop_namespaces, net, s, r)
            net.veth_pair(s, "s0", r, "r0")
            log(f"veth: {name}: setting up {n:,} rules")
            try:
                dropped = _engine(name, raw, rule_id, ref, net, r, stack)
            except Exception as e:  # noqa: BLE001 - a refusal is a result, printed
                status, message = getattr(e, "status", None), getattr(e, "message", None)
                refused[name] = f"{status.name}: {message}" if status is not None \
                    else f"{type(e).__name__}: {e}"
                continue
            lanes.append(_Lane(name, s, dropped))
        for lane in lanes:
            probe = 500 if lane.name == "nft chain" else 50_000
            before = lane.dropped()
            first = _send(ref, net, lane.sender, frame, probe, budget.cpu)
            got = lane.dropped() - before
            if got < probe * 0.5:
                raise RuntimeError(f"{lane.name}: only {got} of {probe} probe packets dropped")
            lane.count = int(min(budget.max_packets, max(500, probe / max(first.wall_s, 1e-6)
                                                         * budget.seconds)))
        for trial in range(budget.trials):
            for lane in lanes:
                log(f"veth: trial {trial + 1}/{budget.trials}: {lane.name}: {lane.count:,} packets")
                before = lane.dropped()
                inj = _send(ref, net, lane.sender, frame, lane.count, budget.cpu)
                d = lane.dropped() - before
                if d < lane.count * 0.9:
                    raise RuntimeError(f"{lane.name}: only {d} of {lane.count} packets dropped by it")
                lane.injected += lane.count
                lane.drops += d
                lane.cpu_s += inj.cpu_s
                lane.task_s += inj.task_s
                lane.wall_s += inj.wall_s
                lane.rates.append(d / inj.cpu_s if inj.cpu_s > 0 else 0.0)
                lane.task_rates.append(d / inj.task_s if inj.task_s > 0 else 0.0)
        return [lane.result(n) for lane in lanes], refused


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classbench.veth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="fw_10k", help="rule set (default fw_10k; see sets.py)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="3 trials of 0.5 s")
    p.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1)
    p.add_argument("--engines", type=lambda s: s.split(","), default=list(ENGINES))
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/classbench/veth: run as root", file=sys.stderr)
        return 2
    kernel.check_uapi()
    budget = Budget(seconds=0.5 if args.quick else 2.0,
                    max_packets=1_000_000 if args.quick else 5_000_000,
                    trials=3 if args.quick else 5, cpu=args.cpu)
    log = Log()
    started = time.monotonic()
    rs = sets.load(args.set, args.seed)
    picked = pick_frame(rs.rules, rs.trace)
    header, rule_id = picked.header, picked.rule_id
    t = rules.translate(picked.rules, args.set, actions=rules.all_drop)
    frame = trace.frame(header)
    print(f"# bench/classbench/veth on {machine()}; pinned to CPU {args.cpu}; "
          f"{budget.trials} trials of <= {budget.seconds} s")
    print(f"# {t.summary()} [{rs.origin}]; every rule drops, default allow")
    print(f"# frame: {ipaddress.IPv4Address(header.src)}:{header.sport} -> "
          f"{ipaddress.IPv4Address(header.dst)}:{header.dport} proto {header.proto}, decided by "
          f"{rule_id} (fwd rule {[r['id'] for r in t.raw['rules']].index(rule_id) + 1:,} "
          f"of {t.rules:,}); set moved by XOR into 198.18.0.0/15 for this frame")
    net = Netns(prefix="fwdb")
    try:
        with ExitStack() as stack:
            stack.callback(net.cleanup)
            ref = stack.enter_context(kernel.build_reference())
            results, refused = measure(args.engines, t.raw, rule_id, frame, ref, net, budget, log)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaned up", file=sys.stderr)
        return 130
    print(report.veth_table(results))
    for name, why in refused.items():
        print(f"{name}: refused: {why}")
    by = {r.engine: r for r in results}
    bare = by.get("bare XDP_DROP")
    for name in ("fwd", "nft chain"):
        r = by.get(name)
        if bare and r and bare.rate:
            target = "  target >= 0.4: " + ("met" if r.rate / bare.rate >= 0.4 else "NOT met") \
                if name == "fwd" else ""
            print(f"{name} / XDP_DROP floor: {r.rate / bare.rate:.4f}{target} "
                  f"(task CPU: {r.task_rate / bare.task_rate:.4f})")
    print(f"(run took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
