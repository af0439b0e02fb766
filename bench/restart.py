"""What a restart costs: adopting pinned maps that hold N rules, vs enforcing N rules afresh.

Run as root from the repository root: ``.venv/bin/python bench/restart.py [--quick]``.
For each N, a first "agent" loads the object with its maps pinned and applies
N rules (the uniform and mixed shapes of bench/controlplane.py); a second one
loads the object over the pins and does what Datapath does at start: read
the kernel's contents, compile the stored policy and diff it against them
(nothing to write), and a third applies the same policy over fresh maps (what
a restart cost before maps were pinned). Prints seconds per step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.controlplane import mixed, uniform  # noqa: E402
from fwd.kernel import pins  # noqa: E402
from fwd.kernel.objects import BpfObject  # noqa: E402
from fwd.kernel.rcu import RcuBarrier  # noqa: E402
from fwd.kernel.dataplane import Dataplane  # noqa: E402
from tests.netns import bpffs  # noqa: E402
from fwd.policy.engine import Engine  # noqa: E402
from fwd.policy.model import Policy  # noqa: E402

OBJ = ROOT / "bpf/build/fwd.bpf.o"


def load(root: Path | None) -> tuple[BpfObject, Dataplane, RcuBarrier]:
    obj = BpfObject.open(OBJ)
    reuse = pins.reuse_pinned(obj, root) if root else None
    obj.load()
    if root and reuse:
        pins.pin_object(obj, obj.program("fwd_xdp"), root, reuse)
    maps = obj.maps()
    barrier = RcuBarrier()
    return obj, Dataplane(maps, maps["fwd_counters"].ncpus, barrier), barrier


def measure(policy: Policy, root: Path) -> tuple[float, float, float, int]:
    """(read kernel, compile + diff, fresh apply) seconds and the entries adopted."""
    obj, dp, barrier = load(root)
    first = Engine()
    p = first.apply(policy)
    dp.commit(p.commit)
    p.finish()
    revision, slots = first.revision, dict(first.slots)
    barrier.close()
    obj.close()

    obj, dp, barrier = load(root)
    t0 = time.perf_counter()
    view = dp.read_kernel()
    t1 = time.perf_counter()
    p = Engine().adopt(policy, revision, slots, view)
    assert dp.unchanged(p.commit, view), f"{len(p.commit.changes)} changes"
    p.finish()
    t2 = time.perf_counter()
    barrier.close()
    obj.close()

    obj, dp, barrier = load(None)
    t3 = time.perf_counter()
    p = Engine().apply(policy, revision, slots)
    dp.commit(p.commit)
    p.finish()
    t4 = time.perf_counter()
    barrier.close()
    obj.close()
    return t1 - t0, t2 - t1, t4 - t3, len(view.entries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="stop at 10,000 rules")
    args = ap.parse_args()
    tag = os.environ.get("FWD_TEST_NS_PREFIX", "fwdbench")
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    print(f"{'shape':8} {'rules':>8} {'entries':>8} {'read':>7} {'diff':>7} {'adopt':>7} {'fresh':>7}")
    for shape, make in (("uniform", uniform), ("mixed", mixed)):
        for n in sizes:
            root = bpffs() / f"{tag}-restart-{os.getpid()}"
            root.mkdir()
            try:
                read, diff, fresh, entries = measure(Policy(rules=make(n)), root)
            finally:
                shutil.rmtree(root)
            print(f"{shape:8} {n:8} {entries:8} {read:7.3f} {diff:7.3f} {read + diff:7.3f} "
                  f"{fresh:7.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
