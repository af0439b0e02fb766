"""The Api actor: the grpclib server in front of the Datapath, Links and other actors.

It serves the fwd.v1 services (fwd.api.services), health and reflection on the
unix socket (and TCP with mutual TLS when asked), and drains pending requests
on shutdown. Handlers validate, ask the owning actor through the Gateway with
a deadline (STYLE.md practice 3), never touch maps, sockets or links, and raise
only ``GRPCError`` (the translation is fwd.api.status).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.abc import TaskStatus
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from fwd.api import tls
from fwd.api.gateway import Gateway
from fwd.api.gen.google_proto_descriptor_pool import (
    default_google_proto_descriptor_pool,
)
from fwd.api.services.cluster import ClusterService
from fwd.api.services.events import EventService
from fwd.api.services.interfaces import InterfaceService
from fwd.api.services.policy import PolicyService
from fwd.api.services.rules import RuleService
from fwd.api.services.sets import SetService
from fwd.api.services.stats import StatsService
from fwd.api.transport import limit_request_size, listen_unix, remove_socket, split_hostport

if TYPE_CHECKING:
    from grpclib._typing import IServable

log = structlog.get_logger("fwd.api")

DRAIN_TIMEOUT = 2.0  # seconds shutdown waits for pending requests to be answered
_PACKAGE = "fwd.v1"


class Api(Gateway):
    """Serves the fwd.v1 services, health and reflection on ``settings.socket_path``.

    Holds only send ends: ``datapath`` for DatapathCommand, ``links`` for
    ListInterfaces. Each request makes its own reply stream.
    """


    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen, report started, serve until cancelled, then close gracefully."""
        services: list[IServable] = [
            PolicyService(self),
            InterfaceService(self),
            StatsService(self),
            EventService(self),
            RuleService(self),
            SetService(self),
            ClusterService(self),
        ]
        # An empty check list per service: each reports SERVING while the server runs.
        health = Health({service: [] for service in services})
        handlers = ServerReflection.extend(
            [*services, health], pool=default_google_proto_descriptor_pool
        )
        settings = self._settings
        ssl_ctx = None
        if settings.listen:
            # Refuse to start a TCP listener without mutual TLS (raises naming what's missing).
            ssl_ctx = tls.server_context(
                settings.tls_cert, settings.tls_key, settings.tls_client_ca
            )
            host, port = split_hostport(settings.listen)
        server = Server(handlers)
        listen(server, RecvRequest, self._on_request)
        if self._metrics is not None:
            self._metrics.instrument(server)
        servers = [server]
        path = Path(settings.socket_path)
        sock = listen_unix(path)
        try:
            await server.start(sock=sock)
            if ssl_ctx is not None:
                tcp = Server(handlers)
                listen(tcp, RecvRequest, self._on_tcp_request)
                servers.append(tcp)
                await tcp.start(host, port, ssl=ssl_ctx)
        except BaseException:
            for s in servers:
                s.close()
            sock.close()
            remove_socket(path)
            raise
        log.info("api_listening", socket=str(path), listen=settings.listen or None)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._drain()
                # close() cancels what is left (e.g. health watches); wait_closed
                # lets those handlers unwind.
                for s in servers:
                    s.close()
                with anyio.move_on_after(5):
                    for s in servers:
                        await s.wait_closed()
                remove_socket(path)
                log.info("api_stopped", socket=str(path))

    async def _on_request(self, event: RecvRequest) -> None:
        # Runs in the request's own task (grpclib dispatches the event there).
        event.method_func = limit_request_size(event.method_func, self._settings.max_request_bytes)
        if event.method_name.startswith(f"/{_PACKAGE}."):
            task = asyncio.current_task()
            if task is not None:
                self._requests.add(task)
                task.add_done_callback(self._requests.discard)

    async def _on_tcp_request(self, event: RecvRequest) -> None:
        """TCP requests are authorised by the client certificate's role first."""
        role = tls.role_of(event.peer.cert())
        if not tls.allowed(event.method_name, role):
            log.warning("api_permission_denied", method=event.method_name, role=role.value)
            raise GRPCError(
                Status.PERMISSION_DENIED,
                f"{event.method_name} changes state; a {role.value} certificate may only read",
            )
        await self._on_request(event)

    async def _drain(self) -> None:
        """Answer every pending request UNAVAILABLE instead of leaving clients
        to wait for their deadline on a connection nobody serves."""
        self._closing = True
        for scope in list(self._asks):
            scope.cancel()
        pending = {task for task in self._requests if not task.done()}
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
