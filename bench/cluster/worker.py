"""One benchmark process: ``count`` simulated agents against one etcd.

    python bench/cluster/worker.py URL COUNT FIRST OUT.json [--client-per-agent]

Each simulated agent is the real ClusterSync actor with a FakeDatapath in
place of BPF: its own watch stream, its own lease and keep-alive stream, its
own status record. By default the agents of one process share one EtcdClient
(one gRPC channel, one HTTP/2 connection); ``--client-per-agent`` gives each
its own. Prints ``ready`` once every agent has loaded and published its
status; on a line on stdin (or EOF) it stops, and writes every recorded apply
as JSON: ``{node: [[unix_time, "rule,ids"], ...]}``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fwd.cluster.etcd import EtcdClient
from fwd.testing import FakeDatapath
from fwd.actors.cluster_sync import ClusterSync, SyncConfig
from fwd.messages import DatapathCommand


async def main(url: str, count: int, first: int, out: str, per_agent: bool) -> None:
    shared = EtcdClient(url, timeout=10.0)
    clients = [EtcdClient(url, timeout=10.0) for _ in range(count)] if per_agent else [shared] * count
    fakes: dict[str, FakeDatapath] = {}
    syncs: list[ClusterSync] = []
    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(count):
            node = f"sim{first + i:07d}"
            tx, rx = anyio.create_memory_object_stream[DatapathCommand](4)
            fake = FakeDatapath(rx)
            # A long keep-alive period would hide nothing here: TTL 10 s as the agent's default.
            sync = ClusterSync(clients[i], tx, SyncConfig(node=node, labels={"role": "edge", "bench": "yes"}))
            fakes[node] = fake
            syncs.append(sync)
            await tg.start(fake.run)
            tg.start_soon(sync.run)
        while not all(s.statistics().status_puts for s in syncs):
            await anyio.sleep(0.05)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"ready {count} agents in {time.monotonic() - t0:.1f} s, {rss:.0f} MB max RSS", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        tg.cancel_scope.cancel()
    for c in set(clients):
        await c.close()
    records = {
        node: [[r.at, ",".join(rule.id for rule in r.policy.rules)] for r in fake.applied]
        for node, fake in fakes.items()
    }
    stats = [s.statistics() for s in syncs]
    summary = {
        "failures": sum(s.failures for s in stats),
        "apply_errors": sum(s.apply_errors for s in stats),
        "sessions": sum(s.sessions for s in stats),
    }
    Path(out).write_text(json.dumps({"applied": records, "summary": summary}))


if __name__ == "__main__":
    import logging

    import structlog

    # Warnings only, and on stderr: stdout carries the "ready" line.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    url, count, first, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    anyio.run(main, url, count, first, out, "--client-per-agent" in sys.argv[5:])
