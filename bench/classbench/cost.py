"""Per-packet cost of fwd over ClassBench sets and their traces (issue 10, done-when 2 and 3).

Run as root from the repository root::

    sudo .venv/bin/python -m bench.classbench.cost [--sets acl1_1k,fw_100k] [--quick]

For each set (shared, and generated acl / fw / ipc at 10k and 100k; see sets.py)
the translated policy (rules.py: odd rules drop, even allow, default allow) is
installed in fwd's real XDP object the way the agent's Datapath does it
(``bench.dataplane.fwdplane.Plane``: compile for the inactive generation,
install, flip). Every trace frame then runs through three programs, taking turns
pass by pass (measure.py): the bare ``XDP_DROP`` floor, fwd with a one-rule
policy (the set's first rule: the baseline), and fwd with the set. Printed per
set: mean / p99 / worst ns per packet (hot: repeated frame) and the cold mean,
the ratios to the one-rule policy (targets: mean <= 2.5x, worst <= 4x), every
verdict against the reference classifier (trace.py) and every rule's packet
counter against the expected histogram. Exit status 1 on any mismatch.

A set fwd refuses (today's tuple-space classifier: too many masks) is reported
as ``refused: <message>`` and the run goes on. xdp-filter matches one field per
entry (one exact address or one port): it cannot express ClassBench rules
(prefix pairs, ranges, field combinations); the table says how many rules of
each set it could express.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

from bench.classbench import measure, rules, sets, trace  # noqa: E402
from bench.dataplane import kernel  # noqa: E402
from bench.dataplane.fwdplane import Plane  # noqa: E402
from fwd.errors import FwdError  # noqa: E402

DEFAULT_SETS = (*rules.SHARED_SETS, "acl_10k", "fw_10k", "ipc_10k",
                "acl_100k", "fw_100k", "ipc_100k")
MEAN_TARGET, WORST_TARGET = 2.5, 4.0


def machine() -> str:
    """CPU model and count, kernel release: the machine every number belongs to."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    virt = " (VM)" if "hypervisor" in Path("/proc/cpuinfo").read_text() else ""
    return f"{model} x {os.cpu_count()} CPUs{virt}, Linux {platform.release()}"


def xdp_filter_expressible(r: rules.CbRule) -> bool:
    """Whether xdp-filter (one exact field per entry, deny list) can say what ``r`` says."""
    fields = [r.src_len == 32, r.dst_len == 32, r.sport != rules.FULL, r.dport != rules.FULL]
    wild = [r.src_len == 0, r.dst_len == 0, r.sport == rules.FULL, r.dport == rules.FULL]
    one_port = (r.sport[0] == r.sport[1]) if fields[2] else (r.dport[0] == r.dport[1])
    if sum(fields) != 1 or sum(wild) != 3:
        return False
    return one_port if (fields[2] or fields[3]) else r.proto is None


@dataclass
class Row:
    name: str
    origin: str
    translation: str
    cb_rules: int
    fwd_rules: int
    packets: int
    xdpf: int                       # rules xdp-filter could express
    refused: str | None = None
    install_s: float = 0.0
    fwd: measure.PerPacket | None = None
    one: measure.PerPacket | None = None
    bare: measure.PerPacket | None = None
    check: measure.Check | None = None
    own: float = 0.0                # share of trace headers decided by the rule drawn from


def one_rule_policy(t: rules.Translation) -> dict[str, Any]:
    first = dict(t.raw["rules"][0], id="one")
    return {"default_action": "allow", "rules": [first]}


def _counters(plane: Plane, rule_ids: list[str]) -> dict[str | None, int]:
    slots = {rid: plane.slots[rid] for rid in rule_ids}
    got = plane.dp.read_counters_batch([0, *slots.values()])
    out: dict[str | None, int] = {rid: got[s].packets for rid, s in slots.items()}
    out[None] = got[0].packets
    return out


def run_set(name: str, plane: Plane, base: Plane, bare: Any, args: argparse.Namespace,
            log: Any) -> Row:
    log(f"{name}: loading")
    rs = sets.load(name, args.seed)
    t = rules.translate(rs.rules, name)
    policy = t.policy()
    row = Row(name, rs.origin, t.summary(), t.cb_rules, t.rules, len(rs.trace),
              sum(map(xdp_filter_expressible, rs.rules)))
    log(f"{name}: installing {t.rules:,} rules")
    started = time.perf_counter()
    try:
        plane.install(t.raw)
    except FwdError as e:
        row.refused = f"{type(e).__name__}: {e}"
        return row
    row.install_s = time.perf_counter() - started
    base.install(one_rule_policy(t))
    log(f"{name}: expected verdicts of {len(rs.trace):,} packets (reference)")
    ex = trace.expected(policy, rs.trace)
    origin = {r["id"]: n for r, n in zip(t.raw["rules"], t.origin)}
    row.own = sum(origin.get(d.rule_id or "", -2) == h.filter
                  for h, d in zip(rs.trace, ex.decisions)) / max(1, len(rs.trace))
    ids = [r.id for r in policy.rules]
    before = _counters(plane, ids)
    log(f"{name}: measuring ({args.trials} x {args.repeat} + 1 runs per packet, 3 programs)")
    row.bare, row.one, row.fwd = measure.over_trace(
        [bare, base.prog, plane.prog], ex.frames, repeat=args.repeat, trials=args.trials,
        cpu=args.cpu)
    after = _counters(plane, ids)
    counted = {rid: after[rid] - before[rid] for rid in after}
    row.check = measure.check([d.xdp_action for d in ex.decisions], row.fwd.retvals,
                              ex.histogram(), row.fwd.runs_per_packet, counted)
    return row


def _f(x: float) -> str:
    return f"{x:,.0f}"


def report(rows: list[Row], args: argparse.Namespace) -> str:
    head = ("| set | rules (ClassBench -> fwd) | packets | fwd mean / p99 / worst ns | "
            "one rule mean / worst ns | mean x (<= 2.5) | worst x (<= 4) | XDP_DROP floor ns | "
            "cold mean ns: fwd / one / floor | verdicts, counters | xdp-filter |")
    out = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for r in rows:
        rules_s = f"{r.cb_rules:,} -> {r.fwd_rules:,}"
        xf = f"cannot express ({r.xdpf:,} of {r.cb_rules:,} rules are one address or port)"
        if r.refused is not None or r.fwd is None or r.one is None or r.bare is None:
            out.append(f"| {r.name} | {rules_s} | {r.packets:,} | refused: {r.refused} "
                       "| | | | | | | " + xf + " |")
            continue
        mx, wx = r.fwd.mean / r.one.mean, r.fwd.worst / r.one.worst
        ok = "equal" if r.check and r.check.ok else (
            f"MISMATCH: {len(r.check.verdict_mismatches) if r.check else '?'} verdicts, "
            f"{len(r.check.counter_mismatches) if r.check else '?'} counters")
        out.append(
            f"| {r.name} | {rules_s} | {r.packets:,} | {_f(r.fwd.mean)} / {_f(r.fwd.p99)} / "
            f"{_f(r.fwd.worst)} | {_f(r.one.mean)} / {_f(r.one.worst)} | "
            f"{mx:.2f} {'met' if mx <= MEAN_TARGET else 'NOT met'} | "
            f"{wx:.2f} {'met' if wx <= WORST_TARGET else 'NOT met'} | {_f(r.bare.mean)} | "
            f"{_f(r.fwd.cold_mean)} / {_f(r.one.cold_mean)} / {_f(r.bare.cold_mean)} | {ok} | {xf} |")
    notes = ["", "Sets:"]
    for r in rows:
        extra = f"; installed in {r.install_s:.2f} s; {100 * r.own:.1f}% of the trace decided " \
                "by the rule it was drawn from" if r.refused is None else ""
        notes.append(f"- {r.translation} [{r.origin}]{extra}")
        if r.check and not r.check.ok:
            for i, e, g in r.check.verdict_mismatches[:5]:
                notes.append(f"  verdict mismatch: packet {i}: expected {e}, kernel {g}")
            for rid, e, g in r.check.counter_mismatches[:5]:
                notes.append(f"  counter mismatch: {rid}: expected {e}, kernel {g}")
    return "\n".join(out + notes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.classbench.cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", type=lambda s: s.split(","), default=list(DEFAULT_SETS),
                   help=f"comma separated (default: {','.join(DEFAULT_SETS)})")
    p.add_argument("--repeat", type=int, default=200, help="repetitions per test run (200)")
    p.add_argument("--trials", type=int, default=3, help="passes over the trace (3; median)")
    p.add_argument("--quick", action="store_true", help="--repeat 20 --trials 1")
    p.add_argument("--seed", type=int, default=1, help="seed of generated sets (1)")
    p.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                   help="CPU the test runs are pinned to (default: the last)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.trials = 20, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/classbench/cost: run as root (BPF)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"  .. {msg}", file=sys.stderr, flush=True)

    started = time.monotonic()
    print(f"# bench/classbench/cost on {machine()}; pinned to CPU {args.cpu}; "
          f"{args.trials} x {args.repeat} repetitions per packet (median) + 1 cold run")
    rows = []
    with ExitStack() as stack:
        ref = stack.enter_context(kernel.build_reference())
        base = Plane()
        stack.callback(base.close)
        for name in args.sets:
            # A fresh object per set: each set meets an empty data plane, as on a new
            # node (the refusal message of a policy applied over another one differs).
            plane = Plane()
            try:
                rows.append(run_set(name, plane, base, ref.program("xdp_drop"), args, log))
            finally:
                plane.close()
    print(report(rows, args))
    print(f"(run took {time.monotonic() - started:.0f} s)")
    return 0 if all(r.check is None or r.check.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
