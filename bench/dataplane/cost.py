"""Part 1: per-packet cost under BPF_PROG_TEST_RUN, fwd vs a bare XDP_DROP vs xdp-filter.

At each rule count N the three programs are measured back to back on the same
two frames (``workload.frames``), pinned to one CPU: the median of ``trials``
test runs of ``repeat`` repetitions each. nftables has no program to test-run
(it runs inside the stack, on skbs), so it only appears in the veth part.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from bench.dataplane import workload
from bench.dataplane.engines import XdpFilter
from bench.dataplane.fwdplane import Plane
from bench.dataplane.kernel import Cost, cost_ns, pinned_to
from fwd.kernel.objects import Program
from tests.netns import Netns

XDP_DROP, XDP_PASS = 1, 2


@dataclass(frozen=True)
class CostRow:
    """Costs at one rule count; ``xdpf_*`` is None past xdp-filter's capacity."""

    n: int
    bare: Cost
    fwd_match: Cost
    fwd_miss: Cost
    xdpf_n: int | None          # entries xdp-filter held (None: could not be loaded)
    xdpf_match: Cost | None
    xdpf_miss: Cost | None


def measure(
    net: Netns, bare: Program, sizes: Sequence[int], *, repeat: int, trials: int, cpu: int,
    log: "Log",
) -> list[CostRow]:
    """One row per N in ``sizes`` (ascending). Sanity: every verdict is the expected one."""
    rows: list[CostRow] = []
    with ExitStack() as stack:
        plane = Plane()
        stack.callback(plane.close)
        ns = net.make_netns()
        net.veth_pair(ns, "xf0", ns, "xf1")  # xdp-filter must be loaded on a device
        xdpf = XdpFilter(ns, "xf0")
        stack.callback(xdpf.close)
        xdpf.load(workload.XDP_FILTER_PORTS)
        xf_rows: tuple[int, Cost, Cost] | None = None
        for n in sorted(sizes):
            log(f"cost: N={n}: installing fwd policy")
            plane.install(workload.fwd_policy(n))
            if n <= xdpf.max_addresses:
                xdpf.set_addresses(workload.filter_addresses(n))
                fresh = True
            else:
                fresh = False  # xdp-filter keeps its last (largest) list
            fr = workload.frames(n)
            last = workload.last_rule_id(n)
            log(f"cost: N={n}: measuring")
            with pinned_to(cpu):
                hits0, defaults0 = plane.packets(last), plane.packets(None)
                b = cost_ns(bare, fr.match, repeat=repeat, trials=trials)
                fm = cost_ns(plane.prog, fr.match, repeat=repeat, trials=trials)
                fx = cost_ns(plane.prog, fr.miss, repeat=repeat, trials=trials)
                if fresh:
                    xf_rows = (
                        n,
                        cost_ns(xdpf.prog, fr.match, repeat=repeat, trials=trials),
                        cost_ns(xdpf.prog, fr.miss, repeat=repeat, trials=trials),
                    )
            runs = repeat * trials
            # Sanity: the match frame was decided by the LAST rule, the miss by the default.
            if (fm.retval, fx.retval) != (XDP_DROP, XDP_DROP):
                raise RuntimeError(f"fwd N={n}: verdicts {fm.retval}/{fx.retval}, expected drop/drop")
            if plane.packets(last) - hits0 != runs or plane.packets(None) - defaults0 != runs:
                raise RuntimeError(f"fwd N={n}: the last rule / default slot did not count every run")
            if xf_rows is not None and (xf_rows[1].retval, xf_rows[2].retval) != (XDP_DROP, XDP_PASS):
                raise RuntimeError(f"xdp-filter N={n}: verdicts {xf_rows[1].retval}/{xf_rows[2].retval}")
            rows.append(CostRow(
                n, b, fm, fx,
                None if xf_rows is None else xf_rows[0],
                None if xf_rows is None else xf_rows[1],
                None if xf_rows is None else xf_rows[2],
            ))
        # The deny list is in xdp-filter's own format: its status must list our last entry.
        if xf_rows is not None and not xdpf.listed(workload.filter_address(xf_rows[0] - 1)):
            raise RuntimeError("xdp-filter status does not list the addresses written to its map")
    return rows


class Log:
    """Progress lines on stderr (the tables go to stdout)."""

    def __call__(self, message: str) -> None:  # pragma: no cover - I/O
        import sys

        print(f"  .. {message}", file=sys.stderr, flush=True)
