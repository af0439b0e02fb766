"""Load test, long variant: 50 concurrent gRPC clients for 60 s while a flood flows.

Run as root from the repository root::

    sudo .venv/bin/python bench/load.py [--clients 50] [--seconds 60]

The agent runs in a namespace of its own with a veth to a second namespace
that floods UDP at it (a logged drop rule, so events flow to the subscribers).
Clients: every 5th applies policies with ``expect_revision``, every 10th
subscribes to events, the rest read (tests/e2e/loadgen.py). Prints the call
rate and latency, applies, revision races, events, the agent's RSS sampled
every 5 s, and checks the promises: no error other than FAILED_PRECONDITION on
revision races, no lost apply, the final policy is the last successful apply's,
memory flat (end within 10% + 10 MiB of the RSS after a 10 s warm-up).
Exits 1 if a promise is broken.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio

from tests.e2e.loadgen import LoadLab, LoadReport, final_state, rss_kib, run_load
from tests.netns import Netns, bpffs

WARMUP = 10.0
SAMPLE = 5.0


async def load_with_rss(socket: str, pid: int, clients: int, seconds: float,
                        samples: list[tuple[float, int]]) -> LoadReport:
    """Run the load and sample the agent's RSS meanwhile."""
    result: list[LoadReport] = []
    start = time.monotonic()

    async def sample() -> None:
        while True:
            samples.append((time.monotonic() - start, rss_kib(pid)))
            await anyio.sleep(SAMPLE)

    async def load() -> None:
        result.append(await run_load(socket, clients, seconds))
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        tg.start_soon(load)
    samples.append((time.monotonic() - start, rss_kib(pid)))
    return result[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    net = Netns(prefix=os.environ.get("FWD_TEST_NS_PREFIX", "fwdload"))
    lab: LoadLab | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="fwd-load-") as tmp:
            pins = bpffs() / f"{net.prefix}-load-{os.getpid()}"
            net.pin_dirs.append(pins)
            pins.mkdir()
            lab = LoadLab.make(net, Path(tmp), pins)
            assert lab.agent.proc is not None
            pid = lab.agent.proc.pid
            rss_start = rss_kib(pid)
            lab.flood(args.seconds + 30)
            samples: list[tuple[float, int]] = []
            report = anyio.run(load_with_rss, lab.agent.socket, pid, args.clients,
                               args.seconds, samples)  # fmt: skip
            flood = lab.stop_flood()
            history, revision, policy = anyio.run(final_state, lab.agent.socket)
            problems = report.problems(history, revision, policy)
            warm = next((kib for t, kib in samples if t >= WARMUP), samples[0][1])
            end = samples[-1][1]
            bound = warm * 1.10 + 10 * 1024
            print(report.summary())
            print(f"flood sent {flood}; history holds {len(history)} revisions, final {revision}")
            peak = max(k for _, k in samples)
            print(f"agent RSS (MiB): start {rss_start / 1024:.1f}, after {WARMUP:.0f} s warm-up "
                  f"{warm / 1024:.1f}, end {end / 1024:.1f}, peak {peak / 1024:.1f}")
            print("RSS samples: " + " ".join(f"{t:.0f}s={k / 1024:.1f}" for t, k in samples))
            flat = end <= bound
            print(f"memory flat (end <= 1.10 x warm-up + 10 MiB = {bound / 1024:.1f}): {flat}")
            if report.errors:
                print("errors (first 10):", *report.errors[:10], sep="\n  ")
            for problem in problems:
                print("BROKEN:", problem)
            code = lab.agent.stop()
            lab = None
            return 0 if not problems and flat and code == 0 else 1
    finally:
        if lab is not None:
            lab.stop_flood()
            lab.agent.stop()
        errors = net.cleanup()
        if errors:
            print("cleanup:", errors, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
