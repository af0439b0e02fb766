"""The metrics endpoint: prometheus_client's WSGI app on an HTTP server thread.

Why a thread and not an asyncio handler on the event loop: a scrape costs
~15 ms at 1,000 rules, ~0.3 s at 10,000 and seconds at 100,000 (Python
building and rendering three or four series per rule). On the loop that would
stall every actor for as long; in a thread the loop keeps running (the GIL is
handed over every 5 ms and the bpf(2) syscalls release it).

One thing would still stall the loop from the thread: the cyclic GC, which
the scrape's many new objects trigger and which walks every object of the
process with the GIL held. So a scrape runs with the GC paused: what it builds
is freed by reference counting when it ends, so nothing is left for a later
collection. Measured (worst loop lag during scrapes, GC on -> paused):
10,000 rules, ~0.17 s per scrape: 45 ms -> 17 ms; 100,000 rules, ~1.6 s per
scrape: 756 ms -> 86 ms. Scrapes are serialised (one at a time) so the pause
is bounded and two scrapers cannot double the cost.

What the scrape thread touches is chosen so that it is safe: the per-interface
counter map (syscalls on an fd the agent keeps open until this actor has
stopped); the actors' statistics and the rule counters it never reads itself:
:class:`MetricsServer` runs those reads on the event loop through a blocking
portal (actor snapshots, and the counters asked of the Datapath, which owns
the maps). The HTTP plumbing is fwd.metrics.http.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal
from prometheus_client import CollectorRegistry, make_wsgi_app

from fwd.core.counters import SlotCounters
from fwd.errors import FwdError
from fwd.metrics.addr import parse_addr
from fwd.metrics.collector import AgentCollector, Snapshot
from fwd.metrics.http import bind_wsgi, serialised_without_gc
from fwd.metrics.kernel import IfCounters

log = structlog.get_logger("fwd.metrics")


class MetricsAddressError(FwdError):
    """The metrics address cannot be listened on (in use, not local, unresolvable)."""


class MetricsServer:
    """Serves ``registry`` plus an :class:`AgentCollector` on ``addr`` until cancelled.

    ``snapshot`` (the actors' published statistics) and ``counters`` (the rule
    counters, asked of the Datapath, which owns the maps) run on the event loop
    at each scrape; ``if_stats`` reads the per-interface counter map from the
    scrape thread.
    """

    def __init__(
        self,
        addr: str,
        registry: CollectorRegistry,
        *,
        snapshot: Callable[[], Snapshot],
        counters: Callable[[Sequence[int]], Awaitable[Mapping[int, SlotCounters]]],
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
        try:
            httpd = bind_wsgi(self.host, self.port)
        except OSError as exc:  # socket.gaierror included
            raise MetricsAddressError(
                f"metrics: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self.bound = (self.host, int(httpd.server_port))
        try:
            async with BlockingPortal() as portal:
                collector = AgentCollector(
                    lambda: portal.call(self._snapshot),
                    _PortalCounters(portal, self._counters),
                    self._if_stats,
                )
                self._registry.register(collector)  # no describe(): nothing is read here
                httpd.set_app(serialised_without_gc(make_wsgi_app(self._registry)))
                thread = threading.Thread(
                    target=httpd.serve_forever, name="fwd-metrics", daemon=True
                )
                thread.start()
                log.info("metrics_listening", host=self.host, port=self.bound[1])
                try:
                    task_status.started()
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        # Off the loop: shutdown() waits for the serve loop to notice,
                        # and a scrape in progress may still need the portal.
                        await anyio.to_thread.run_sync(httpd.shutdown)
                        await anyio.to_thread.run_sync(collector.close)
                        await anyio.to_thread.run_sync(thread.join, 5.0)
                        self._registry.unregister(collector)
                        log.info("metrics_stopped", host=self.host, port=self.bound[1])
        finally:
            httpd.server_close()


class _PortalCounters:
    """A CounterReader for the scrape thread: each read runs ``read`` on the event loop."""

    def __init__(
        self,
        portal: BlockingPortal,
        read: Callable[[Sequence[int]], Awaitable[Mapping[int, SlotCounters]]],
    ) -> None:
        self._portal = portal
        self._read = read

    def read_counters_batch(self, slots: Sequence[int]) -> Mapping[int, SlotCounters]:
        return self._portal.call(self._read, slots)
