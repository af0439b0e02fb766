"""bench/cluster: N simulated agents against one etcd; how fast a policy write reaches all.

    .venv/bin/python bench/cluster/run.py [--agents 100 1000] [--procs 2] [--rounds 5]
                                               [--client-per-agent]

For each N: a fresh etcd (tests/etcd.py) on loopback; ``--procs`` worker
processes (bench/cluster/worker.py) run N ClusterSync actors between them, each
with a recording fake datapath. Once all are up, each round writes one policy
(selector ``role=edge``, which every agent has) with a new rule id, and measures:

- enforce: from just before the write to each fake datapath receiving the
  ApplyPolicy with the new rule (wall clock; same machine);
- status: from the write to this process seeing each node's status record with
  ``synced_revision`` >= the write's revision (a watch on ``status/``);
- etcd CPU: etcd's user+system seconds during the round (/proc/<pid>/stat), and
  its CPU share while idle (leases kept alive, nothing written).

Prints p50 / p99 / max per N. Target (DESIGN.md): 1,000 agents, enforce p99 < 3 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fwd.cluster.etcd import EtcdClient
from fwd.cluster.layout import Layout, decode_status, encode_policy_record
from fwd.policy.model import policy_from_dict
from tests.etcd import EtcdServer

LAYOUT = Layout()


@dataclass
class Round:
    rule: str
    t0: float = 0.0
    revision: int = 0
    status_at: dict[str, float] = field(default_factory=dict)
    etcd_cpu: float = 0.0
    enforce: list[float] = field(default_factory=list)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def spread(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1000:7.0f} ms  p99 {pct(values, 99) * 1000:7.0f} ms  max {max(values, default=math.nan) * 1000:7.0f} ms"


async def run_round(server: EtcdServer, url: str, n: int, rnd: Round, timeout: float) -> None:
    async with EtcdClient(url, timeout=10.0) as etcd:
        _, now = await etcd.get(LAYOUT.status_key("x"))
        policy = policy_from_dict({"rules": [{"id": rnd.rule, "action": "drop", "src": ["198.18.0.0/24"]}]})
        value = encode_policy_record("role=edge", 100, policy)
        async with etcd.watch(LAYOUT.status, LAYOUT.status[:-1] + "0", now + 1) as batches:
            cpu0 = server.cpu_seconds()
            rnd.t0 = time.time()
            rnd.revision = (await etcd.put_if(LAYOUT.policy_key("bench"), value, mod_revision=None)).revision
            with anyio.move_on_after(timeout):
                async for batch in batches:
                    at = time.time()
                    for ev in batch.events:
                        if ev.deleted:
                            continue
                        node = ev.kv.key.rsplit("/", 1)[1]
                        if node not in rnd.status_at and decode_status(node, ev.kv.value).synced_revision >= rnd.revision:
                            rnd.status_at[node] = at - rnd.t0
                    if len(rnd.status_at) >= n:
                        break
            rnd.etcd_cpu = server.cpu_seconds() - cpu0


def bench(n: int, procs: int, rounds: int, per_agent: bool, timeout: float) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="fwd-bench-cluster-"))
    server = EtcdServer(work / "etcd", extra_args=("--quota-backend-bytes", str(4 << 30)))
    workers: list[subprocess.Popen[str]] = []
    outs = [work / f"worker{i}.json" for i in range(procs)]
    try:
        server.start()
        share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        first = 0
        t_start = time.monotonic()
        for i, count in enumerate(share):
            argv = [sys.executable, str(ROOT / "bench/cluster/worker.py"), server.url, str(count), str(first), str(outs[i])]
            if per_agent:
                argv.append("--client-per-agent")
            with open(work / f"worker{i}.log", "w") as log:
                workers.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True))
            first += count
        ready = []
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"worker failed: {line!r}; see {work}")
            ready.append(line.strip())
        startup = time.monotonic() - t_start
        # Idle: nothing written, every agent keeping its lease alive.
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        time.sleep(5)
        idle = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        results = []
        for k in range(rounds):
            rnd = Round(rule=f"round{k}")
            anyio.run(run_round, server, server.url, n, rnd, timeout)
            results.append(rnd)
            time.sleep(1.0)
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("stop\n")
            w.stdin.flush()
        for w in workers:
            w.wait(60)
        applied: dict[str, list[list[object]]] = {}
        summary = {"failures": 0, "apply_errors": 0, "sessions": 0}
        for out in outs:
            data = json.loads(out.read_text())
            applied.update(data["applied"])
            for key in summary:
                summary[key] += data["summary"][key]
        for rnd in results:
            want = f"bench:{rnd.rule}"
            for records in applied.values():
                at = next((float(str(a)) for a, rules in records if want in str(rules).split(",")), None)
                if at is not None:
                    rnd.enforce.append(at - rnd.t0)
        enforce = [x for r in results for x in r.enforce]
        status = [x for r in results for x in r.status_at.values()]
        print(f"\nN = {n} agents in {procs} processes ({'a client per agent' if per_agent else 'one shared client per process'}); startup {startup:.1f} s; etcd idle CPU {idle * 100:.1f} %")
        print("  workers: " + "; ".join(ready))
        for k, r in enumerate(results):
            print(
                f"  round {k}: rev {r.revision}: enforcing {len(r.enforce)}/{n}: {spread(r.enforce)} | "
                f"status {len(r.status_at)}/{n}: {spread(list(r.status_at.values()))} | etcd CPU {r.etcd_cpu:.2f} s"
            )
        print(f"  all rounds: enforce {spread(enforce)}")
        print(f"  all rounds: status  {spread(status)}")
        print(f"  sync failures {summary['failures']}, apply errors {summary['apply_errors']}, sessions {summary['sessions']}")
        complete = all(len(r.enforce) == n and len(r.status_at) == n for r in results)
        return {
            "n": n,
            "enforce_p99": pct(enforce, 99),
            "status_p99": pct(status, 99),
            "complete": complete,
            "etcd_cpu_per_round": sum(r.etcd_cpu for r in results) / len(results),
            "idle_cpu": idle,
        }
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--client-per-agent", action="store_true")
    args = ap.parse_args()
    print(f"bench/cluster: etcd on loopback, {os.cpu_count()} CPUs")
    summaries = [bench(n, args.procs, args.rounds, args.client_per_agent, args.timeout) for n in args.agents]
    print("\nsummary:")
    for s in summaries:
        verdict = "PASS" if s["complete"] and float(str(s["enforce_p99"])) < 3.0 else "FAIL"
        print(
            f"  N={s['n']:>5}: enforce p99 {float(str(s['enforce_p99'])) * 1000:.0f} ms, status p99 "
            f"{float(str(s['status_p99'])) * 1000:.0f} ms, etcd CPU {float(str(s['etcd_cpu_per_round'])):.2f} s/round, "
            f"idle {float(str(s['idle_cpu'])) * 100:.1f} % -> {verdict} (target: 1,000 agents p99 < 3 s)"
        )


if __name__ == "__main__":
    main()
