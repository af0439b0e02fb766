"""Control- and data-plane cost of the classifier (prints numbers; not a test).

Run as root from the repository root: ``.venv/bin/python bench/controlplane.py``.
Measures, on the real object under BPF_PROG_TEST_RUN and the real Engine/Dataplane:
per-packet cost at N = 1 ... 100,000 rules for two rule shapes, compile + apply time,
a single AddRule / DeleteRule at 100,000 rules (with the SQLite journal), a
1,000,000-prefix set load and a batch of set changes, and the process RSS.
``--quick`` stops at 10,000 rules and 100,000 prefixes.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fwd import heap  # noqa: E402
from fwd.kernel.objects import BpfObject  # noqa: E402
from fwd.kernel.rcu import RcuBarrier  # noqa: E402
from fwd.kernel.dataplane import Dataplane  # noqa: E402
from fwd.policy.engine import Engine, Pending  # noqa: E402
from fwd.policy.model import Action, NamedSet, Policy, PortRange, Rule, SetType  # noqa: E402
from fwd.store import SqliteStore, save_pending  # noqa: E402
from tests import packets as P  # noqa: E402

REPEAT = 200_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def uniform(n: int) -> tuple[Rule, ...]:
    """/24 source + one destination port: one tuple however many rules."""
    return tuple(
        Rule(f"u{i}", Action.DROP, 17, src=(ipaddress.ip_network((0x0A000000 + i * 256, 24)),),
             dst_ports=(PortRange(1000 + i % 5000, 1000 + i % 5000),))
        for i in range(n)
    )  # fmt: skip


def mixed(n: int) -> tuple[Rule, ...]:
    """Prefix lengths 16-32, port ranges, both protocols: tuples grow with the variety."""
    rnd = random.Random(7)
    out = []
    for i in range(n):
        plen = rnd.choice([16, 20, 24, 28, 32])
        lo = rnd.randrange(1, 60000)
        hi = lo + rnd.choice([0, 0, 7, 100, 1000])
        out.append(
            Rule(f"m{i}", rnd.choice(list(Action)), rnd.choice([6, 17]),
                 src=(ipaddress.ip_network((0x0A000000 + rnd.randrange(1 << 24), plen), strict=False),),
                 dst_ports=(PortRange(lo, min(hi, 65535)),))
        )  # fmt: skip
    return tuple(out)


class Bench:
    def __init__(self, obj: BpfObject, store_dir: str) -> None:
        maps = obj.maps()
        self.prog = obj.program("fwd_xdp")
        self.barrier = RcuBarrier()
        self.dp = Dataplane(maps, maps["fwd_counters"].ncpus, self.barrier)
        self.engine = Engine()
        self.store = SqliteStore(store_dir)

    def run(self, pending: Pending, persist: bool = False) -> tuple[float, float]:
        """Persist and commit like the Datapath does (the store write runs alongside the
        kernel write, before the flip); returns (save s, commit s incl. the save)."""
        saved = [0.0]

        def save() -> None:
            t = time.perf_counter()
            save_pending(self.store, pending)
            saved[0] = time.perf_counter() - t

        t0 = time.perf_counter()
        self.dp.commit(pending.commit, alongside=save if persist else None)
        pending.finish()
        return saved[0], time.perf_counter() - t0

    def ns(self, frame: bytes) -> float:
        return min(self.prog.test_run(frame, repeat=REPEAT, data_out_size=0).duration_ns
                   for _ in range(3))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [1, 100, 1_000, 10_000] + ([] if args.quick else [100_000])
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    miss = P.eth_ipv4("198.18.0.1", "198.18.0.2", P.UDP, P.udp(4000, 53))
    hit = P.eth_ipv4("10.0.0.9", "198.18.0.2", P.UDP, P.udp(4000, 1000))
    with BpfObject.open(ROOT / "bpf/build/fwd.bpf.o") as obj, tempfile.TemporaryDirectory() as d:
        obj.load()
        b = Bench(obj, d)
        print(f"empty policy: {b.ns(miss):.0f} ns/packet")
        print("rules   shape    tuples  miss ns  hit ns  compile+apply s (compile, save, commit incl. save)")
        for shape in (uniform, mixed):
            for n in sizes:
                policy = Policy(rules=shape(n))
                t0 = time.perf_counter()
                pending = b.engine.apply(policy)
                compiled = time.perf_counter() - t0
                saved, committed = b.run(pending, persist=True)  # saved: alongside commit
                took = time.perf_counter() - t0
                print(f"{n:>7} {shape.__name__:8} {b.engine.classifier.tuple_count():>6} "
                      f"{b.ns(miss):>8.0f} {b.ns(hit):>7.0f} {took:>10.2f} "
                      f"({compiled:.2f}, {saved:.2f}, {committed:.2f})")  # fmt: skip
        n = sizes[-1]
        del policy, pending
        b.run(b.engine.apply(Policy(rules=uniform(n))), persist=True)
        heap.release()  # as the agent's Datapath does after a large apply
        print(f"RSS with {n} rules applied: {rss_mb():.0f} MB (the whole bench process; "
              "the agent's own: bench/agent_rss.py)")
        times = []
        for i in range(20):
            rule = Rule(f"add{i}", Action.DROP, 6, dst_ports=(PortRange(9000 + i, 9000 + i),))
            t0 = time.perf_counter()
            b.run(b.engine.add_rule(rule, (i * 7919) % len(b.engine.policy.rules)), persist=True)
            times.append(time.perf_counter() - t0)
        dels = []
        for i in range(20):
            t0 = time.perf_counter()
            b.run(b.engine.delete_rule(f"add{i}"), persist=True)
            dels.append(time.perf_counter() - t0)
        times.sort(), dels.sort()
        print(f"AddRule at {n} rules (incl. journal fsync): median {times[10] * 1000:.1f} ms, "
              f"max {times[-1] * 1000:.1f} ms; DeleteRule median {dels[10] * 1000:.1f} ms")
        count = 100_000 if args.quick else 1_000_000
        prefixes = frozenset(str(ipaddress.IPv4Address(0xC6000000 + i * 3)) + "/32" for i in range(count))
        named = NamedSet("block", SetType.PREFIX, prefixes=prefixes)
        policy = Policy(rules=(Rule("blk", Action.DROP, src_set="block"),) + uniform(1000),
                        sets=(named,))  # fmt: skip
        b.run(b.engine.apply(Policy()), persist=False)
        t0 = time.perf_counter()
        b.run(b.engine.apply(policy), persist=False)
        print(f"{count} prefix set: load {time.perf_counter() - t0:.2f} s, RSS {rss_mb():.0f} MB; "
              f"per packet {b.ns(P.eth_ipv4('198.0.0.3', '198.18.0.2', P.UDP, P.udp(1, 2))):.0f} ns")
        adds = [f"203.0.{i // 256}.{i % 256}/32" for i in range(1000)]
        t0 = time.perf_counter()
        b.run(b.engine.change_set("block", add=adds), persist=True)
        print(f"SetAddElements of 1000 to it: {(time.perf_counter() - t0) * 1000:.0f} ms")
        b.barrier.close()
        b.store.close()
        os.sync()


if __name__ == "__main__":
    main()
