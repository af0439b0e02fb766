"""The metrics endpoint: prometheus_client's HTTP server in its own thread.

Why a thread and not an asyncio handler on the event loop: a scrape sums
per-CPU counters of every rule in Python, ~0.1 s at 100,000 rules. On the loop
that would stall every actor for as long; in a thread the loop keeps running
(the GIL is handed over every few ms and the bpf(2) syscalls release it).

What the scrape thread touches is chosen so that is safe: BPF maps (syscalls
on fds the agent keeps open until this actor has stopped) and actor
statistics, which it never reads itself: :class:`MetricsServer` asks the event
loop for them through a blocking portal, so actor state is only ever read on
the loop, between two of its awaits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal
from prometheus_client import CollectorRegistry, start_http_server

from fwd.metrics.addr import parse_addr
from fwd.metrics.collector import AgentCollector, CounterReader, Snapshot
from fwd.metrics.kernel import IfCounters

log = structlog.get_logger("fwd.metrics")

class MetricsServer:
    """Serves ``registry`` plus an :class:`AgentCollector` on ``addr`` until cancelled.

    ``snapshot`` runs on the event loop at each scrape; ``counters`` and
    ``if_stats`` read BPF maps from the scrape thread.
    """

    def __init__(
        self,
        addr: str,
        registry: CollectorRegistry,
        *,
        snapshot: Callable[[], Snapshot],
        counters: CounterReader,
        if_stats: Callable[[], Mapping[int, IfCounters]] | None = None,
    ) -> None:
        self.host, self.port = parse_addr(addr)
        self._registry = registry
        self._snapshot = snapshot
        self._counters = counters
        self._if_stats = if_stats
        self.bound: tuple[str, int] | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen, report started, serve until cancelled, then stop the thread."""
        async with BlockingPortal() as portal:
            collector = AgentCollector(
                lambda: portal.call(self._snapshot), self._counters, self._if_stats
            )
            self._registry.register(collector)  # no describe(): nothing is read here
            try:
                httpd, thread = start_http_server(self.port, self.host, self._registry)
            except BaseException:
                self._registry.unregister(collector)
                raise
            self.bound = (self.host, int(httpd.server_port))
            log.info("metrics_listening", host=self.host, port=self.bound[1])
            try:
                task_status.started()
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    # Off the loop: shutdown() waits for the serve loop to notice,
                    # and a scrape in progress may still need the portal.
                    await anyio.to_thread.run_sync(httpd.shutdown)
                    httpd.server_close()
                    await anyio.to_thread.run_sync(collector.close)
                    await anyio.to_thread.run_sync(thread.join, 5.0)
                    self._registry.unregister(collector)
                    log.info("metrics_stopped", host=self.host, port=self.bound[1])
