"""The Api actor: the grpclib server in front of the Datapath and Links actors.

Handlers validate, send the owning actor a command carrying a one-shot reply
stream, and await the answer with a deadline (STYLE.md practice 3). They never
touch maps, sockets or links, and raise only ``GRPCError``: the project's
errors are translated to status codes here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from fwd import messages
from fwd.api import convert
from fwd.api.gen.fwd import v1 as pb
from fwd.api.gen.google_proto_descriptor_pool import (
    default_google_proto_descriptor_pool,
)
from fwd.errors import BpfError, CapacityError, LinkError, PolicyError, RevisionMismatch
from fwd.messages import DatapathCommand, ListInterfaces, Reply, Settings

if TYPE_CHECKING:
    from grpclib._typing import IServable

    from fwd.api.metrics import GrpcMetrics

log = structlog.get_logger("fwd.api")

T = TypeVar("T")
C = TypeVar("C")

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10000
SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o755
DRAIN_TIMEOUT = 2.0  # seconds shutdown waits for pending requests to be answered
SHUTTING_DOWN = "the agent is shutting down"
_PACKAGE = "fwd.v1"


@contextlib.contextmanager
def _grpc_errors(what: str) -> Iterator[None]:
    """Translate what an actor answered into a gRPC status (the only place that does)."""
    try:
        yield
    except GRPCError:
        raise
    except PolicyError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
    except RevisionMismatch as exc:
        raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None
    except CapacityError as exc:
        raise GRPCError(Status.RESOURCE_EXHAUSTED, str(exc)) from None
    except (BpfError, LinkError) as exc:
        raise GRPCError(Status.INTERNAL, f"{what}: {exc}") from None
    except Exception as exc:
        # A bug, not a user error: keep the details in the log, give the caller a hint.
        log.exception("api_handler_failed", what=what)
        raise GRPCError(
            Status.INTERNAL, f"{what}: internal error ({type(exc).__name__}); see the agent log"
        ) from None


class Api:
    """Serves the fwd.v1 services, health and reflection on ``settings.socket_path``.

    Holds only send ends: ``datapath`` for DatapathCommand, ``links`` for
    ListInterfaces. Each request makes its own reply stream.
    """

    def __init__(
        self,
        datapath: MemoryObjectSendStream[DatapathCommand],
        links: MemoryObjectSendStream[ListInterfaces],
        settings: Settings,
        metrics: GrpcMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._datapath = datapath
        self._links = links
        self._settings = settings
        # Shutdown bookkeeping: new asks fail fast once closing; pending asks are
        # cancelled and answer UNAVAILABLE; request tasks are awaited so those
        # answers reach the clients before the server closes the connections.
        self._closing = False
        self._asks: set[anyio.CancelScope] = set()
        self._requests: set[asyncio.Task[Any]] = set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen, report started, serve until cancelled, then close gracefully."""
        services: list[IServable] = [
            _PolicyService(self),
            _InterfaceService(self),
            _StatsService(self),
        ]
        # An empty check list per service: each reports SERVING while the server runs.
        health = Health({service: [] for service in services})
        handlers = ServerReflection.extend(
            [*services, health], pool=default_google_proto_descriptor_pool
        )
        server = Server(handlers)
        listen(server, RecvRequest, self._on_request)
        if self._metrics is not None:
            self._metrics.instrument(server)
        path = Path(self._settings.socket_path)
        sock = _listen_unix(path)
        try:
            await server.start(sock=sock)
        except BaseException:
            sock.close()
            _remove_socket(path)
            raise
        log.info("api_listening", socket=str(path))
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._drain()
                # close() cancels what is left (e.g. health watches); wait_closed
                # lets those handlers unwind.
                server.close()
                with anyio.move_on_after(5):
                    await server.wait_closed()
                _remove_socket(path)
                log.info("api_stopped", socket=str(path))

    async def _on_request(self, event: RecvRequest) -> None:
        # Runs in the request's own task (grpclib dispatches the event there).
        if event.method_name.startswith(f"/{_PACKAGE}."):
            task = asyncio.current_task()
            if task is not None:
                self._requests.add(task)
                task.add_done_callback(self._requests.discard)

    async def _drain(self) -> None:
        """Answer every pending request UNAVAILABLE instead of leaving clients
        to wait for their deadline on a connection nobody serves."""
        self._closing = True
        for scope in list(self._asks):
            scope.cancel()
        pending = {task for task in self._requests if not task.done()}
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)

    async def ask(
        self,
        channel: MemoryObjectSendStream[C],
        make: Callable[[MemoryObjectSendStream[Reply[T]]], C],
        actor: str,
    ) -> T:
        """Send ``make(reply)`` to an actor and return its answer, or raise GRPCError."""
        if self._closing:
            raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)
        timeout = self._settings.reply_timeout
        reply_tx, reply_rx = anyio.create_memory_object_stream[Reply[T]](1)
        delivered = False
        shutdown = anyio.CancelScope()  # cancelled by _drain
        self._asks.add(shutdown)
        try:
            with reply_rx, shutdown:
                with anyio.fail_after(timeout):
                    await channel.send(make(reply_tx))
                    delivered = True
                    reply = await reply_rx.receive()
        except TimeoutError:
            raise GRPCError(
                Status.UNAVAILABLE, f"{actor} did not answer within {timeout:g}s"
            ) from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            # The actor closed its end: the agent is shutting down (or it dropped the reply).
            raise GRPCError(Status.UNAVAILABLE, f"{actor} is not running") from None
        finally:
            self._asks.discard(shutdown)
            if not delivered:
                reply_tx.close()  # nobody else holds it
        if shutdown.cancelled_caught:
            raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)
        with _grpc_errors(actor):
            return reply.unwrap()

    async def get_policy(self) -> messages.Applied:
        """The policy and revision the data plane enforces now."""
        return await self.ask(self._datapath, lambda r: messages.GetPolicy(reply=r), "datapath")

    async def apply_policy(
        self, policy: pb.Policy | None, expect_revision: int | None
    ) -> messages.Applied:
        """Validate ``policy`` (INVALID_ARGUMENT names the field) and have it enforced."""
        with _grpc_errors("apply"):
            model = convert.policy_from_proto(policy)
        return await self.ask(
            self._datapath,
            lambda r: messages.ApplyPolicy(policy=model, expect_revision=expect_revision, reply=r),
            "datapath",
        )

    async def rule_stats(self) -> tuple[messages.RuleStats, ...]:
        """Every rule's counters, in policy order."""
        return await self.ask(self._datapath, lambda r: messages.GetStats(reply=r), "datapath")

    async def interfaces(self) -> tuple[messages.InterfaceStatus, ...]:
        """Every interface the Links actor knows."""
        return await self.ask(self._links, lambda r: ListInterfaces(reply=r), "links")


def parse_page_token(token: str) -> int:
    """The offset a page token stands for; "" is the start. Raises INVALID_ARGUMENT."""
    if not token:
        return 0
    # Base-10 offset today; clients must treat it as opaque so it can change.
    if not (token.isascii() and token.isdigit() and len(token) <= 12):
        raise GRPCError(Status.INVALID_ARGUMENT, f"page_token: invalid page token {token!r}")
    return int(token)


def page_bounds(page_size: int, page_token: str, total: int) -> tuple[int, int, str]:
    """(start, end, next_page_token) of one page over ``total`` entries.

    A token past the end (the table shrank between pages) gives an empty last
    page rather than an error.
    """
    size = page_size or DEFAULT_PAGE_SIZE
    size = min(size, MAX_PAGE_SIZE)
    start = min(parse_page_token(page_token), total)
    end = min(start + size, total)
    return start, end, (str(end) if end < total else "")


class _PolicyService(pb.PolicyServiceBase):
    def __init__(self, api: Api) -> None:
        self._api = api

    async def get_policy(self, message: pb.GetPolicyRequest) -> pb.GetPolicyResponse:
        applied = await self._api.get_policy()
        return pb.GetPolicyResponse(
            revision=applied.revision, policy=convert.policy_to_proto(applied.policy)
        )

    async def apply_policy(self, message: pb.ApplyPolicyRequest) -> pb.ApplyPolicyResponse:
        applied = await self._api.apply_policy(message.policy, message.expect_revision)
        return pb.ApplyPolicyResponse(revision=applied.revision)


class _InterfaceService(pb.InterfaceServiceBase):
    def __init__(self, api: Api) -> None:
        self._api = api

    async def list_interfaces(self, message: pb.ListInterfacesRequest) -> pb.ListInterfacesResponse:
        statuses = sorted(await self._api.interfaces(), key=lambda s: s.ifindex)
        return pb.ListInterfacesResponse(
            interfaces=[convert.interface_to_proto(s) for s in statuses]
        )


class _StatsService(pb.StatsServiceBase):
    def __init__(self, api: Api) -> None:
        self._api = api

    async def list_rule_stats(self, message: pb.ListRuleStatsRequest) -> pb.ListRuleStatsResponse:
        parse_page_token(message.page_token)  # a bad token fails before asking the datapath
        stats = await self._api.rule_stats()
        start, end, next_token = page_bounds(message.page_size, message.page_token, len(stats))
        return pb.ListRuleStatsResponse(
            stats=[convert.rule_stats_to_proto(s) for s in stats[start:end]],
            next_page_token=next_token,
        )


def _listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` with mode 0660, created without a window
    in which it is reachable with looser permissions."""
    path.parent.mkdir(mode=SOCKET_DIR_MODE, parents=True, exist_ok=True)
    _remove_socket(path, stale=True)
    # Bind under a temporary name, fix the mode, then rename into place: clients
    # can only ever find the socket with its final permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock.bind(str(tmp))
        os.chmod(tmp, SOCKET_MODE)
        os.replace(tmp, path)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return sock


def _remove_socket(path: Path, *, stale: bool = False) -> None:
    """Remove the socket file at ``path``; refuse to delete anything but a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        if stale:
            raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
        return
    if stale and _in_use(path):
        raise OSError(errno.EADDRINUSE, f"another process is serving on {path}")
    path.unlink(missing_ok=True)


def _in_use(path: Path) -> bool:
    """Whether something accepts connections on the unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False  # ECONNREFUSED: a leftover of a process that died
        return True
