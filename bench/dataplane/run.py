"""bench/dataplane: fwd's data plane against a bare XDP_DROP, xdp-filter and nftables.

Run as root from the repository root: ``bench/dataplane/run.sh [--quick]``
(or ``python -m bench.dataplane``). Prints two tables and the ratios of
issue 3; see bench/dataplane/README.md for the method. Everything it creates
(namespaces, veths, XDP attachments, the agent, xdp-filter's private bpffs, nft
tables, pin dirs) is removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

from bench.dataplane import kernel, report  # noqa: E402
from bench.dataplane.cost import Log, measure  # noqa: E402
from bench.dataplane.veth import ENGINES, Budget  # noqa: E402
from bench.dataplane.veth import measure as measure_veth  # noqa: E402
from tests.netns import Netns  # noqa: E402

FULL_SIZES = (1, 100, 1_000, 10_000, 100_000)
QUICK_SIZES = FULL_SIZES  # 100,000 rules install in a few seconds: keep them
VETH_RULES = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/dataplane/run.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="~1 minute: fewer repetitions and trials, shorter bursts")
    p.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                   help="CPU the test runs and the veth traffic are pinned to (default: the last)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   help="rule counts for the cost table (default 1,100,1000,10000,100000)")
    p.add_argument("--repeat", type=int, help="BPF_PROG_TEST_RUN repetitions per trial")
    p.add_argument("--trials", type=int, help="trials per measurement (median reported)")
    p.add_argument("--skip-cost", action="store_true", help="skip part 1 (test-run cost)")
    p.add_argument("--skip-veth", action="store_true", help="skip part 2 (veth drop rate)")
    p.add_argument("--engines", type=lambda s: s.split(","), default=list(ENGINES),
                   help=f"veth engines, comma separated (default: {','.join(ENGINES)})")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # The first Ctrl-C / SIGTERM unwinds through every cleanup; later ones are
    # ignored so they cannot cut a cleanup short.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/dataplane: run as root (BPF, network namespaces)", file=sys.stderr)
        return 2
    kernel.check_uapi()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    repeat = args.repeat or (100_000 if args.quick else 1_000_000)
    trials = args.trials or (3 if args.quick else 7)
    budget = Budget(
        seconds=0.5 if args.quick else 2.0,
        max_packets=1_000_000 if args.quick else 5_000_000,
        trials=args.trials or (3 if args.quick else 5),
        cpu=args.cpu,
    )
    log = Log()
    started = time.monotonic()
    net = Netns(prefix="fwdb")
    print(report.header(args.cpu, repeat, trials, budget))
    try:
        with ExitStack() as stack:
            stack.callback(_cleanup, net)
            ref = stack.enter_context(kernel.build_reference())
            if not args.skip_cost:
                rows = measure(net, ref.program("xdp_drop"), sizes, repeat=repeat,
                               trials=trials, cpu=args.cpu, log=log)
                print(report.cost_table(rows))
            if not args.skip_veth:
                results = measure_veth(args.engines, VETH_RULES, ref, net, budget, log)
                print(report.veth_table(results))
    except KeyboardInterrupt:
        print("\ninterrupted: cleaned up", file=sys.stderr)
        return 130
    print(f"(run took {time.monotonic() - started:.0f} s)")
    return 0


def _cleanup(net: Netns) -> None:
    errors = net.cleanup()
    if errors:
        print(f"cleanup errors: {errors}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
