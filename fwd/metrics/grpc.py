"""gRPC request durations for Prometheus, from grpclib's server events.

``RecvRequest`` and ``SendTrailingMetadata`` are dispatched in the task that
serves the request, so the start time travels between them in a context
variable: no table keyed by stream to grow or clean up. A request whose
trailers are never sent (the client reset the stream) is not observed.
Calls to unknown methods are answered by grpclib before any event and are not
observed either.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from grpclib.events import RecvRequest, SendTrailingMetadata, listen
from grpclib.server import Server
from prometheus_client import CollectorRegistry, Histogram

# Unix-socket calls take ~1 ms; an apply of a large policy takes seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_started: ContextVar[tuple[str, float] | None] = ContextVar("fwd_grpc_started", default=None)


class GrpcMetrics:
    """``fwd_grpc_request_duration_seconds{method, code}``, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "fwd_grpc_request_duration_seconds",
            "Time from a gRPC request's headers to its status, by full method name and "
            "status code.",
            ("method", "code"),
            buckets=BUCKETS,
            registry=registry,
        )

    def instrument(self, server: Server) -> None:
        """Observe every request ``server`` serves (call before it starts)."""
        listen(server, RecvRequest, self._on_request)
        listen(server, SendTrailingMetadata, self._on_trailers)

    async def _on_request(self, event: RecvRequest) -> None:
        _started.set((event.method_name, time.perf_counter()))

    async def _on_trailers(self, event: SendTrailingMetadata) -> None:
        started = _started.get()
        if started is None:
            return
        _started.set(None)
        method, t0 = started
        self.duration.labels(method, event.status.name).observe(time.perf_counter() - t0)
