"""Formatting of the tables and ratios (pure)."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence

from bench.dataplane.cost import CostRow
from bench.dataplane.kernel import Cost
from bench.dataplane.veth import Budget, VethResult


def header(cpu: int, repeat: int, trials: int, budget: Budget) -> str:
    return (
        f"# bench/dataplane on {platform.node()} (Linux {platform.release()}, "
        f"{os.cpu_count()} CPUs), pinned to CPU {cpu}\n"
        f"# test runs: {repeat:,} repetitions x {trials} trials (median); veth: "
        f"{budget.trials} trials of <= {budget.seconds} s / {budget.max_packets:,} packets"
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, rule, *body])


def _ns(c: Cost | None) -> str:
    return "n/a" if c is None else f"{c.median_ns:.0f}"


def _met(value: float, target: float, le: bool = False) -> str:
    ok = value <= target if le else value >= target
    return f"{'met' if ok else 'NOT met'} ({'<=' if le else '>='} {target:g})"


def cost_table(rows: Sequence[CostRow]) -> str:
    """Part 1: ns per packet and the added-cost comparison at every N."""
    out = ["", "## Per-packet cost under BPF_PROG_TEST_RUN (ns, median)", "",
           "last = the frame matches the LAST of N rules; miss = it matches none "
           "(fwd: default drop; xdp-filter: passes after every lookup).", ""]
    table = []
    for r in rows:
        capped = r.xdpf_n is not None and r.xdpf_n != r.n
        mark = f" (at {r.xdpf_n:,})" if capped else ""
        added = []
        for fwd, xf in ((r.fwd_match, r.xdpf_match), (r.fwd_miss, r.xdpf_miss)):
            if xf is None:
                added.append("n/a")
            else:
                fa, xa = fwd.median_ns - r.bare.median_ns, xf.median_ns - r.bare.median_ns
                added.append(f"{fa:.0f} vs {xa:.0f}{mark}")
        table.append([
            f"{r.n:,}", _ns(r.bare), _ns(r.fwd_match), _ns(r.fwd_miss),
            f"{r.fwd_match.median_ns / r.bare.median_ns:.2f}",
            f"{r.fwd_miss.median_ns / r.bare.median_ns:.2f}",
            _ns(r.xdpf_match) + mark, _ns(r.xdpf_miss) + mark, *added,
        ])
    out.append(_table(
        ["N rules", "bare", "fwd last", "fwd miss", "fwd/bare last", "fwd/bare miss",
         "xdp-filter match", "xdp-filter miss", "added last: fwd vs xdp-filter",
         "added miss: fwd vs xdp-filter"], table))
    out.append("")
    out.append("nftables: not measurable here (no program to test-run: it runs in the stack on "
               "skbs); see the veth table.")
    by_n = {r.n: r for r in rows}
    one = by_n.get(1)
    if one is not None:
        for big in (10_000, 100_000):
            row = by_n.get(big)
            if row is None:
                continue
            for what, a, b in (("last", row.fwd_match, one.fwd_match), ("miss", row.fwd_miss, one.fwd_miss)):
                ratio = a.median_ns / b.median_ns
                target = f"  target {_met(ratio, 1.5, le=True)}" if big == 10_000 else ""
                out.append(f"fwd cost({big:,}) / cost(1), {what}: {ratio:.2f}{target}")
    worst = []
    for r in rows:
        for fwd, xf in ((r.fwd_match, r.xdpf_match), (r.fwd_miss, r.xdpf_miss)):
            if xf is not None:
                worst.append((fwd.median_ns - r.bare.median_ns) <= (xf.median_ns - r.bare.median_ns))
    if worst:
        verdict = "met" if all(worst) else "NOT met"
        out.append(f"fwd adds no more than xdp-filter over bare, at every N and frame: {verdict}")
    return "\n".join(out)


def _rate(rate: float) -> str:
    return f"{rate / 1e6:.3f} M" if rate >= 1e5 else f"{rate / 1e3:.1f} k"


def veth_table(results: Sequence[VethResult]) -> str:
    """Part 2: drops per CPU-second and the ratios of issue 3."""
    by = {r.engine: r for r in results}
    bare = by.get("bare XDP_DROP")
    out = ["", f"## Dropped packets per CPU-second through a veth pair ({results[0].n:,} rules)"
           if results else "", "",
           "CPU = system + irq + softirq time of the pinned CPU while injecting (/proc/stat; "
           "the generator's own cost included: see the bare row). task CPU = time charged to "
           "the injector thread + ksoftirqd of that CPU (excludes other processes).", ""]
    rows = []
    for r in results:
        vs_bare = f"{bare.rate / r.rate:,.1f}x fewer" if bare and r.rate and r is not bare else "-"
        rows.append([
            r.engine, f"{r.injected:,}", f"{r.dropped:,}", f"{r.cpu_s:.2f}", f"{r.task_s:.2f}",
            f"{r.wall_s:.2f}", _rate(r.rate), f"{r.ns_per_packet:,.0f}", vs_bare, _rate(r.task_rate),
        ])
    out.append(_table(["engine", "injected", "dropped", "CPU s", "task CPU s", "wall s",
                       "drops / CPU-s", "CPU ns / drop", "vs bare", "drops / task CPU-s"], rows))
    out.append("")
    fwd = by.get("fwd")
    if fwd is not None:
        for other, target in (("xdp-filter", 1.0), ("nft chain", 100.0), ("nft set", 2.5)):
            o = by.get(other)
            if o is not None and o.rate:
                ratio = fwd.rate / o.rate
                check = f" (task CPU: {fwd.task_rate / o.task_rate:,.2f})" if o.task_rate else ""
                out.append(f"fwd / {other}: {ratio:,.2f}  target {_met(ratio, target)}{check}")
    return "\n".join(out)
