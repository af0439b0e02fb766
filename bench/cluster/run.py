"""bench/cluster: N simulated agents against one etcd; how fast a policy write reaches all.

    .venv/bin/python bench/cluster/run.py [--agents 1000 10000] [--procs P] [--rounds 5]
                                          [--tiers direct proxy] [--proxies 2]
                                          [--client-per-agent]

For each N and each tier: a fresh etcd (tests/etcd.py) on loopback; ``--procs``
worker processes (bench/cluster/worker.py) run N ClusterSync actors between
them, each with a recording fake datapath. Tier ``direct``: the agents talk to
etcd. Tier ``proxy``: ``--proxies`` ``etcd grpc-proxy`` processes stand between
them (worker i uses proxy i mod P), the fan-out tier of the 1,000,000-node
plan; etcd's own metrics (watchers, watch streams, events sent) show what
reaches it. Once all are up, each round writes one policy (selector
``role=edge``, which every agent has) with a new rule id, and measures:

- enforce: from just before the write to each fake datapath receiving the
  ApplyPolicy with the new rule (wall clock; same machine);
- status: from the write to this process seeing each node's status record with
  ``synced_revision`` >= the write's revision (a watch on ``status/``);
- etcd CPU: etcd's user+system seconds during the round (/proc/<pid>/stat), and
  its CPU share while idle (leases kept alive, nothing written); the same for the
  proxies together;
- etcd's watchers and watch streams once every agent is up
  (etcd_debugging_mvcc_watcher_total / _watch_stream_total) and the events etcd
  sent per round (etcd_debugging_mvcc_events_total).

Prints p50 / p99 / max per N and tier, direct and proxy side by side (same run,
same machine). Target (DESIGN.md): 1,000 agents, enforce p99 < 3 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import select
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

from fwd.cluster.etcd import EtcdClient, EtcdError
from fwd.cluster.layout import Layout, decode_status, encode_policy_record
from fwd.policy.model import policy_from_dict
from tests.etcd import EtcdServer, GrpcProxy, read_metrics

LAYOUT = Layout()
# --procs 0 (the default): this many agents per worker process at most. 5,000 in one
# process fell into keep-alive timeouts, lease expiry and reconnect churn here.
AGENTS_PER_PROC = 1250


@dataclass
class Round:
    rule: str
    t0: float = 0.0
    revision: int = 0
    status_at: dict[str, float] = field(default_factory=dict)
    etcd_cpu: float = 0.0
    proxy_cpu: float = 0.0
    events: float = 0.0  # events etcd sent to the agents' watchers during the round
    observed: int = 0  # events etcd sent to the benchmark's own status watch
    enforce: list[float] = field(default_factory=list)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def spread(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1000:7.0f} ms  p99 {pct(values, 99) * 1000:7.0f} ms  max {max(values, default=math.nan) * 1000:7.0f} ms"


def etcd_metrics(server: EtcdServer) -> dict[str, float]:
    return read_metrics(f"{server.url}/metrics")


def proxies_cpu(proxies: list[GrpcProxy]) -> float:
    return sum(p.cpu_seconds() for p in proxies)


async def run_round(server: EtcdServer, proxies: list[GrpcProxy], n: int, rnd: Round, timeout: float) -> None:
    # The benchmark itself talks to etcd directly (it is the writer and the observer).
    async with EtcdClient(server.url, timeout=10.0) as etcd:
        _, now = await etcd.get(LAYOUT.status_key("x"))
        policy = policy_from_dict({"rules": [{"id": rnd.rule, "action": "drop", "src": ["198.18.0.0/24"]}]})
        value = encode_policy_record("role=edge", 100, policy)
        async with etcd.watch(LAYOUT.status, LAYOUT.status[:-1] + "0", now + 1) as batches:
            cpu0, pcpu0 = server.cpu_seconds(), proxies_cpu(proxies)
            events0 = etcd_metrics(server).get("etcd_debugging_mvcc_events_total", 0.0)
            rnd.t0 = time.time()
            rnd.revision = (await etcd.put_if(LAYOUT.policy_key("bench"), value, mod_revision=None)).revision
            with anyio.move_on_after(timeout):
                async for batch in batches:
                    at = time.time()
                    rnd.observed += len(batch.events)
                    for ev in batch.events:
                        if ev.deleted:
                            continue
                        node = ev.kv.key.rsplit("/", 1)[1]
                        if node not in rnd.status_at and decode_status(node, ev.kv.value).synced_revision >= rnd.revision:
                            rnd.status_at[node] = at - rnd.t0
                    if len(rnd.status_at) >= n:
                        break
            rnd.etcd_cpu = server.cpu_seconds() - cpu0
            rnd.proxy_cpu = proxies_cpu(proxies) - pcpu0
            # Less the status puts the benchmark's own watch was sent.
            rnd.events = etcd_metrics(server).get("etcd_debugging_mvcc_events_total", 0.0) - events0 - rnd.observed


def bench(n: int, procs: int, rounds: int, per_agent: bool, timeout: float, n_proxies: int,
          startup_timeout: float) -> dict[str, object]:
    procs = procs or max(2, math.ceil(n / AGENTS_PER_PROC))
    work = Path(tempfile.mkdtemp(prefix="fwd-bench-cluster-"))
    server = EtcdServer(work / "etcd", extra_args=("--quota-backend-bytes", str(4 << 30)))
    proxies = [GrpcProxy(server, work / f"proxy{i}") for i in range(n_proxies)]
    workers: list[subprocess.Popen[str]] = []
    outs = [work / f"worker{i}.json" for i in range(procs)]
    tier = f"{n_proxies} grpc-proxies" if proxies else "direct"
    try:
        server.start()
        for p in proxies:
            p.start()
        urls = [p.url for p in proxies] or [server.url]
        share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        first = 0
        t_start = time.monotonic()
        for i, count in enumerate(share):
            url = urls[i % len(urls)]
            argv = [sys.executable, str(ROOT / "bench/cluster/worker.py"), url, str(count), str(first), str(outs[i])]
            if per_agent:
                argv.append("--client-per-agent")
            with open(work / f"worker{i}.log", "w") as log:
                workers.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True))
            first += count
        ready = []
        for w in workers:
            assert w.stdout is not None
            # Bounded: agents that cannot all start (a worker overloaded into lease expiry
            # and reconnect churn) make this configuration a failed one, not a hang.
            left = startup_timeout - (time.monotonic() - t_start)
            if left <= 0 or not select.select([w.stdout], [], [], left)[0]:
                print(f"\nN = {n} agents, {tier}, in {procs} processes: not all started within "
                      f"{startup_timeout:.0f} s (see {work}/worker*.log)")  # fmt: skip
                return {"n": n, "tier": tier, "failed": f"not started within {startup_timeout:.0f} s"}
            line = w.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"worker failed: {line!r}; see {work}")
            ready.append(line.strip())
        startup = time.monotonic() - t_start
        # Idle: nothing written, every agent keeping its lease alive.
        cpu0, pcpu0, t0 = server.cpu_seconds(), proxies_cpu(proxies), time.monotonic()
        time.sleep(5)
        idle = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        proxy_idle = (proxies_cpu(proxies) - pcpu0) / (time.monotonic() - t0)
        m = etcd_metrics(server)
        watchers = int(m.get("etcd_debugging_mvcc_watcher_total", -1))
        streams = int(m.get("etcd_debugging_mvcc_watch_stream_total", -1))
        etcd_rss = server.rss_bytes()
        proxy_rss = sum(p.rss_bytes() for p in proxies)
        coalesced = sum(p.metrics().get("etcd_grpc_proxy_watchers_coalescing_total", 0.0) for p in proxies)
        results = []
        for k in range(rounds):
            rnd = Round(rule=f"round{k}")
            try:
                anyio.run(run_round, server, proxies, n, rnd, timeout)
            except EtcdError as e:  # the machine is past what it holds: say so, run the rest
                print(f"\nN = {n} agents, {tier}: round {k} failed: {e}")
                return {"n": n, "tier": tier, "failed": f"round {k}: the benchmark's own etcd call failed ({e})"}
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
        print(f"\nN = {n} agents, {tier}, in {procs} processes ({'a client per agent' if per_agent else 'one shared client per process'}); startup {startup:.1f} s; idle CPU: etcd {idle * 100:.1f} %, proxies {proxy_idle * 100:.1f} %")
        print(f"  etcd: {watchers} watchers on {streams} watch streams; RSS etcd {etcd_rss / 2**20:.0f} MB, proxies {proxy_rss / 2**20:.0f} MB; proxies' coalesced watchers {coalesced:.0f}")
        print("  workers: " + "; ".join(ready))
        for k, r in enumerate(results):
            print(
                f"  round {k}: rev {r.revision}: enforcing {len(r.enforce)}/{n}: {spread(r.enforce)} | "
                f"status {len(r.status_at)}/{n}: {spread(list(r.status_at.values()))} | CPU etcd {r.etcd_cpu:.2f} s, "
                f"proxies {r.proxy_cpu:.2f} s | etcd sent the agents {r.events:.0f} events"
            )
        print(f"  all rounds: enforce {spread(enforce)}")
        print(f"  all rounds: status  {spread(status)}")
        print(f"  sync failures {summary['failures']}, apply errors {summary['apply_errors']}, sessions {summary['sessions']}")
        complete = all(len(r.enforce) == n and len(r.status_at) == n for r in results)
        return {
            "n": n,
            "tier": tier,
            "startup": startup,
            "enforce_p50": pct(enforce, 50),
            "status_p50": pct(status, 50),
            "watchers": watchers,
            "streams": streams,
            "etcd_rss_mb": etcd_rss / 2**20,
            "proxy_cpu_per_round": sum(r.proxy_cpu for r in results) / len(results),
            "proxy_idle_cpu": proxy_idle,
            "events_per_round": sum(r.events for r in results) / len(results),
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
        for p in proxies:
            p.stop()
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--procs", type=int, default=0,
                    help=f"worker processes (default: N / {AGENTS_PER_PROC}, at least 2)")
    ap.add_argument("--startup-timeout", type=float, default=300.0, metavar="SECONDS")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--client-per-agent", action="store_true")
    ap.add_argument("--tiers", nargs="+", choices=("direct", "proxy"), default=["direct", "proxy"])
    ap.add_argument("--proxies", type=int, default=2, help="grpc-proxy processes in the proxy tier")
    args = ap.parse_args()
    print(f"bench/cluster: etcd 3.4 on loopback; {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")  # fmt: skip
    summaries = [
        bench(n, args.procs, args.rounds, args.client_per_agent, args.timeout,
              args.proxies if tier == "proxy" else 0, args.startup_timeout)
        for n in args.agents
        for tier in args.tiers
    ]
    print("\nsummary (ms; p50 / p99 over all agent-rounds; etcd CPU-s per write; events etcd sent the agents' watchers per write):")
    print(f"  {'N':>6} {'tier':<15} {'enforce p50/p99':>16} {'status p50/p99':>16} {'etcd CPU':>8} {'proxy CPU':>9} "
          f"{'events':>7} {'watchers':>8} {'streams':>7} {'etcd idle':>9} {'startup':>7}")  # fmt: skip
    for s in summaries:
        if "failed" in s:
            print(f"  {s['n']:>6} {str(s['tier']):<15} FAILED: {s['failed']}")
            continue

        def ms(key: str) -> str:
            return f"{float(str(s[key])) * 1000:.0f}"

        verdict = "" if s["complete"] else "  INCOMPLETE"
        if s["n"] == 1000 and not float(str(s["enforce_p99"])) < 3.0:
            verdict += "  FAIL (target: 1,000 agents p99 < 3 s)"
        print(
            f"  {s['n']:>6} {str(s['tier']):<15} {ms('enforce_p50') + ' / ' + ms('enforce_p99'):>16} "
            f"{ms('status_p50') + ' / ' + ms('status_p99'):>16} {float(str(s['etcd_cpu_per_round'])):>8.2f} "
            f"{float(str(s['proxy_cpu_per_round'])):>9.2f} {float(str(s['events_per_round'])):>7.0f} "
            f"{s['watchers']:>8} {s['streams']:>7} {float(str(s['idle_cpu'])) * 100:>8.1f}% "
            f"{float(str(s['startup'])):>6.1f}s{verdict}"
        )


if __name__ == "__main__":
    main()
