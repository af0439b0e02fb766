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
import grp
import os
import socket
import stat
import time
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import betterproto2
import grpclib.const
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from fwd import messages
from fwd.api.services import cluster as cluster_api
from fwd.api import convert, policystream, tls, wire
from fwd.api.fastwire import BatchEncoder, EncodedEventBatch
from fwd.api.gen.fwd import v1 as pb
from fwd.api.gen.google_proto_descriptor_pool import (
    default_google_proto_descriptor_pool,
)
from fwd.messages import GetSyncState, SyncState
from fwd.errors import (
    BpfError,
    CapacityError,
    ClusterUnavailable,
    LinkError,
    NotFound,
    PolicyError,
    PreconditionFailed,
    RevisionMismatch,
)
from fwd.core.records import EventFilter
from fwd.messages import DatapathCommand, ListInterfaces, Reply
from fwd.settings import Settings
from fwd.policy import model
from fwd.policy.model import Action
from fwd.policy.lockout import LockoutError

if TYPE_CHECKING:
    from grpclib._typing import IServable

    from fwd.metrics.grpc import GrpcMetrics

log = structlog.get_logger("fwd.api")

T = TypeVar("T")
C = TypeVar("C")

MAX_CONFIRM_SECONDS = 7 * 24 * 3600
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10000
SOCKET_MODE = 0o660
# Members of this group (when it exists) may use the API socket; others may not.
SOCKET_GROUP = "fwd"
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
    except LockoutError as exc:
        raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None
    except PolicyError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
    except (RevisionMismatch, PreconditionFailed) as exc:
        raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None
    except CapacityError as exc:
        raise GRPCError(Status.RESOURCE_EXHAUSTED, str(exc)) from None
    except NotFound as exc:
        raise GRPCError(Status.NOT_FOUND, str(exc)) from None
    except ClusterUnavailable as exc:
        raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
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
        confirmer: MemoryObjectSendStream[messages.ConfirmCommand] | None = None,
        events: MemoryObjectSendStream[messages.EventsCommand] | None = None,
        metrics: GrpcMetrics | None = None,
        cluster: MemoryObjectSendStream[messages.ClusterAdminCommand] | None = None,
        sync: MemoryObjectSendStream[GetSyncState] | None = None,
    ) -> None:
        # Cluster mode: etcd reads and writes go to the ClusterAdmin actor, and
        # GetPolicy answers what the ClusterSync actor has synced and applied.
        self._cluster = cluster
        self._sync = sync
        self._events = events
        self._metrics = metrics
        self._datapath = datapath
        self._links = links
        self._confirmer = confirmer
        self._settings = settings
        self.batch_encoder = BatchEncoder()  # shared by every event subscription
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
            _EventService(self),
            _RuleService(self),
            _SetService(self),
            cluster_api.ClusterService(self),
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
            host, port = _split_hostport(settings.listen)
        server = Server(handlers)
        listen(server, RecvRequest, self._on_request)
        if self._metrics is not None:
            self._metrics.instrument(server)
        servers = [server]
        path = Path(settings.socket_path)
        sock = _listen_unix(path)
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
            _remove_socket(path)
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
                _remove_socket(path)
                log.info("api_stopped", socket=str(path))

    async def _on_request(self, event: RecvRequest) -> None:
        # Runs in the request's own task (grpclib dispatches the event there).
        event.method_func = _limit_request_size(event.method_func, self._settings.max_request_bytes)
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

    @property
    def cluster_mode(self) -> bool:
        return self._cluster is not None

    def local_only(self, what: str) -> None:
        """Refuse a change of the local policy in cluster mode: etcd holds the policy."""
        if self._cluster is not None:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"cluster mode: {what} changes only this node's policy; write the policy in "
                "etcd instead (fwd policy apply --name N --selector S)",
            )

    async def ask_cluster(
        self, make: Callable[[MemoryObjectSendStream[Reply[T]]], messages.ClusterAdminCommand]
    ) -> T:
        """Ask the ClusterAdmin actor; FAILED_PRECONDITION in local mode."""
        if self._cluster is None:
            raise GRPCError(Status.FAILED_PRECONDITION, cluster_api.LOCAL_MODE)
        return await self.ask(self._cluster, make, "cluster")

    @property
    def confirmer(self) -> MemoryObjectSendStream[messages.ConfirmCommand]:
        if self._confirmer is None:
            raise GRPCError(Status.UNIMPLEMENTED, "commit-confirm is not available")
        return self._confirmer

    async def confirm(self, revision: int | None) -> messages.PendingConfirm:
        """Keep the pending revision (FAILED_PRECONDITION if it is not the one pending)."""
        return await self.ask(
            self.confirmer, lambda r: messages.ConfirmRevision(revision, r), "confirmer"
        )

    async def rollback(
        self, revision: int, expect_revision: int | None, force: bool = False
    ) -> messages.Applied:
        """Enforce the stored policy of ``revision`` again, as a new revision."""
        return await self.ask(
            self._datapath,
            lambda r: messages.ApplyRevision(revision, expect_revision, r, force=force),
            "datapath",
        )

    async def change(self, make: Callable[[MemoryObjectSendStream[Reply[messages.Applied]]], Any]) -> messages.Applied:
        """Send a rule or set change to the Datapath; the new revision comes back."""
        return await self.ask(self._datapath, make, "datapath")

    async def rule_page(self, offset: int, limit: int) -> messages.RulePage:
        return await self.ask(
            self._datapath, lambda r: messages.ListRules(offset, limit, r), "datapath"
        )

    async def sets(self) -> tuple[messages.SetInfo, ...]:
        return await self.ask(self._datapath, lambda r: messages.ListSets(r), "datapath")

    async def set_page(self, name: str, offset: int, limit: int) -> messages.SetElementsPage:
        return await self.ask(
            self._datapath, lambda r: messages.ListSetElements(name, offset, limit, r), "datapath"
        )

    async def history(
        self, offset: int, limit: int
    ) -> tuple[tuple[messages.HistoryEntry, ...], int]:
        """A page of the revision history (newest first) and the total count."""
        return await self.ask(
            self._datapath, lambda r: messages.GetHistory(offset, limit, r), "datapath"
        )

    async def arm_confirm(self, revision: int, deadline: float) -> messages.PendingConfirm:
        """Have ``revision`` roll back to the one before it at ``deadline`` unless confirmed."""
        pending = messages.PendingConfirm(revision, revision - 1, deadline)
        return await self.ask(
            self.confirmer, lambda r: messages.ArmConfirm(pending, r), "confirmer"
        )

    def superseded(self, revision: int) -> None:
        """Tell the Confirmer a newer revision replaced whatever was pending."""
        if self._confirmer is not None:
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError,
                                     anyio.ClosedResourceError):
                self._confirmer.send_nowait(messages.Superseded(revision))

    async def subscribe(
        self, flt: EventFilter
    ) -> MemoryObjectReceiveStream[messages.EventBatch]:
        """A new event subscription (close the stream to end it)."""
        if self._events is None:
            raise GRPCError(Status.UNIMPLEMENTED, "events are not available")
        return await self.ask(
            self._events, lambda r: messages.Subscribe(flt, r), "events"
        )

    async def sync_state(self) -> SyncState:
        """Cluster mode: the merged policy enforced here and the etcd revision synced."""
        if self._sync is None:
            raise GRPCError(Status.FAILED_PRECONDITION, cluster_api.LOCAL_MODE)
        return await self.ask(self._sync, lambda r: GetSyncState(reply=r), "cluster sync")

    async def get_policy(self) -> messages.Applied:
        """The policy and revision the data plane enforces now."""
        return await self.ask(self._datapath, lambda r: messages.GetPolicy(reply=r), "datapath")

    async def apply_policy(
        self,
        policy: pb.Policy | policystream.StreamedPolicy | None,
        expect_revision: int | None,
        force: bool = False,
    ) -> messages.Applied:
        """Validate ``policy`` (INVALID_ARGUMENT names the field), check it cannot lock out
        management access (FAILED_PRECONDITION unless ``force``), and have it enforced."""
        with _grpc_errors("apply"):
            model = convert.policy_from_proto(policy)
        if policy is not None:
            # The request stays referenced by grpclib until the response is sent; its
            # rules (~1 KB each as betterproto2 objects) are not needed past this point,
            # so free them before the Datapath compiles (a lower peak, memory reused).
            policy.rules.clear()
        return await self.ask(
            self._datapath,
            lambda r: messages.ApplyPolicy(
                policy=model, expect_revision=expect_revision, reply=r, force=force
            ),
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

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        # ApplyPolicy's request is decoded rule by rule (fwd/api/policystream.py).
        mapping = super().__mapping__()
        name = "/fwd.v1.PolicyService/ApplyPolicy"
        mapping[name] = mapping[name]._replace(request_type=policystream.ApplyPolicyRequest)
        return mapping

    async def get_policy(self, message: pb.GetPolicyRequest) -> pb.GetPolicyResponse:
        if self._api.cluster_mode:
            # The merged policy this node enforces, at the etcd revision it synced.
            state = await self._api.sync_state()
            return pb.GetPolicyResponse(
                revision=state.synced_revision, policy=convert.policy_to_proto(state.policy)
            )
        applied = await self._api.get_policy()
        return pb.GetPolicyResponse(
            revision=applied.revision,
            policy=convert.policy_to_proto(applied.policy),
            adoption=convert.adoption_to_proto(applied.adoption),
        )

    async def apply_policy(  # the streamed request type (see __mapping__)
        self, message: pb.ApplyPolicyRequest | policystream.ApplyPolicyRequest
    ) -> pb.ApplyPolicyResponse:
        if self._api.cluster_mode:
            return await cluster_api.apply_policy(self._api, message)
        cluster_api.refuse_cluster_fields(message)
        if message.confirm_within_seconds > MAX_CONFIRM_SECONDS:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"confirm_within_seconds: at most {MAX_CONFIRM_SECONDS}",
            )
        applied = await self._api.apply_policy(
            message.policy, message.expect_revision, message.force
        )
        deadline = 0.0
        if message.confirm_within_seconds:
            pending = await self._api.arm_confirm(
                applied.revision, time.time() + message.confirm_within_seconds
            )
            deadline = pending.deadline
        else:
            self._api.superseded(applied.revision)
        return pb.ApplyPolicyResponse(
            revision=applied.revision, confirm_deadline_unix_ms=int(deadline * 1000)
        )

    async def confirm_policy(
        self, message: pb.ConfirmPolicyRequest
    ) -> pb.ConfirmPolicyResponse:
        self._api.local_only("ConfirmPolicy")
        pending = await self._api.confirm(message.revision)
        return pb.ConfirmPolicyResponse(revision=pending.revision)

    async def rollback_policy(
        self, message: pb.RollbackPolicyRequest
    ) -> pb.RollbackPolicyResponse:
        self._api.local_only("RollbackPolicy")
        applied = await self._api.rollback(
            message.revision, message.expect_revision, message.force
        )
        self._api.superseded(applied.revision)
        return pb.RollbackPolicyResponse(revision=applied.revision)

    async def list_history(self, message: pb.ListHistoryRequest) -> pb.ListHistoryResponse:
        offset = parse_page_token(message.page_token)
        size = min(message.page_size or 100, MAX_PAGE_SIZE)
        entries, total = await self._api.history(offset, size)
        end = offset + len(entries)
        return pb.ListHistoryResponse(
            revisions=[
                pb.Revision(
                    revision=e.revision,
                    applied_at_unix_ms=int(e.applied_at * 1000),
                    rules=e.rules,
                    default_action=convert.action_to_proto(e.default_action),
                    dry_run=e.dry_run,
                )
                for e in entries
            ],
            next_page_token=str(end) if end < total else "",
        )


class _EventService(pb.EventServiceBase):
    def __init__(self, api: Api) -> None:
        self._api = api

    async def subscribe(self, message: pb.SubscribeRequest) -> AsyncIterator[pb.EventBatch]:
        names = {s.ifindex: s.name for s in await self._api.interfaces()}
        by_name = {n: i for i, n in names.items()}
        unknown = [n for n in message.interfaces if n not in by_name]
        if unknown:
            raise GRPCError(Status.INVALID_ARGUMENT, f"interfaces: no interface {unknown[0]!r}")
        prefixes = []
        for i, text in enumerate(message.prefixes):
            try:
                prefixes.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise GRPCError(
                    Status.INVALID_ARGUMENT, f"prefixes[{i}]: invalid CIDR {text!r}"
                ) from None
        actions = set()
        for a in message.actions:
            if a == pb.Action.UNSPECIFIED:
                raise GRPCError(Status.INVALID_ARGUMENT, "actions: UNSPECIFIED is not an action")
            actions.add(Action.ALLOW if a == pb.Action.ALLOW else Action.DROP)
        flt = EventFilter(
            actions=frozenset(actions),
            rule_ids=frozenset(message.rule_ids),
            ifindexes=frozenset(by_name[n] for n in message.interfaces),
            prefixes=tuple(prefixes),
        )
        batches = await self._api.subscribe(flt)
        with batches:
            async for batch in batches:
                # Hand-encoded: betterproto2 objects per event cannot keep up with a flood.
                # One encoder for every subscription: shared batches are encoded once.
                encoded = self._api.batch_encoder.encode(batch.events, names, batch.lost)
                yield EncodedEventBatch(encoded)


class _RuleService(pb.RuleServiceBase):
    def __init__(self, api: Api) -> None:
        self._api = api

    async def add_rule(self, message: pb.AddRuleRequest) -> pb.RuleChangeResponse:
        self._api.local_only("AddRule")
        anchors = [
            name
            for name, given in (
                ("position", message.position is not None),
                ("before_id", bool(message.before_id)),
                ("after_id", bool(message.after_id)),
            )
            if given
        ]
        if len(anchors) > 1:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"{anchors[1]}: give at most one of position, "
                "before_id, after_id"
            )
        if message.rule is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "rule: is required")
        with _grpc_errors("add rule"):
            rule = model.parse_rule(convert.rule_to_dict(message.rule), "rule")
        applied = await self._api.change(
            lambda r: messages.AddRule(
                rule, r, position=message.position, before_id=message.before_id or None,
                after_id=message.after_id or None, expect_revision=message.expect_revision,
                force=message.force,
            )
        )
        self._api.superseded(applied.revision)
        return pb.RuleChangeResponse(revision=applied.revision)

    async def delete_rule(self, message: pb.DeleteRuleRequest) -> pb.RuleChangeResponse:
        self._api.local_only("DeleteRule")
        if not message.rule_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "rule_id: is required")
        applied = await self._api.change(
            lambda r: messages.DeleteRule(
                message.rule_id, r, expect_revision=message.expect_revision, force=message.force
            )
        )
        self._api.superseded(applied.revision)
        return pb.RuleChangeResponse(revision=applied.revision)

    async def list_rules(self, message: pb.ListRulesRequest) -> pb.ListRulesResponse:
        offset = parse_page_token(message.page_token)
        size = min(message.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await self._api.rule_page(offset, size)
        end = offset + len(page.rules)
        return pb.ListRulesResponse(
            rules=[convert.rule_to_proto(r) for r in page.rules],
            next_page_token=str(end) if end < page.total else "",
            revision=page.revision,
            total=page.total,
        )


class _SetService(pb.SetServiceBase):
    def __init__(self, api: Api) -> None:
        self._api = api

    async def add_elements(self, message: pb.SetElementsRequest) -> pb.SetChangeResponse:
        return await self._change(message, messages.SetAddElements)

    async def remove_elements(self, message: pb.SetElementsRequest) -> pb.SetChangeResponse:
        return await self._change(message, messages.SetRemoveElements)

    async def _change(self, message: pb.SetElementsRequest, kind: Any) -> pb.SetChangeResponse:
        self._api.local_only("changing set elements")
        if not message.set:
            raise GRPCError(Status.INVALID_ARGUMENT, "set: is required")
        applied = await self._api.change(
            lambda r: kind(
                message.set, tuple(message.elements), r,
                expect_revision=message.expect_revision, force=message.force,
            )
        )
        self._api.superseded(applied.revision)
        return pb.SetChangeResponse(revision=applied.revision)

    async def list_sets(self, message: pb.ListSetsRequest) -> pb.ListSetsResponse:
        return pb.ListSetsResponse(
            sets=[
                pb.SetSummary(name=s.name, type=convert.set_type_to_proto(s.type), size=s.size)
                for s in await self._api.sets()
            ]
        )

    async def list_elements(self, message: pb.ListElementsRequest) -> pb.ListElementsResponse:
        offset = parse_page_token(message.page_token)
        size = min(message.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await self._api.set_page(message.set, offset, size)
        end = offset + len(page.elements)
        return pb.ListElementsResponse(
            elements=list(page.elements),
            next_page_token=str(end) if end < page.total else "",
            revision=page.revision,
            total=page.total,
        )


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


def _limit_request_size(handler: Any, limit: int) -> Any:
    """Wrap a grpclib method so each request message larger than ``limit`` is refused
    with RESOURCE_EXHAUSTED *before* its body is read into memory.

    grpclib has no receive limit of its own: it would buffer whatever length the
    5-byte gRPC message prefix claims. This reads that prefix itself and otherwise
    does what grpclib's Stream.recv_message does (private attributes of grpclib
    0.4; tests/e2e/test_fuzz_api.py sends an oversized request to keep this honest).
    """

    async def limited(stream: Any) -> None:
        async def recv_message() -> Any:
            meta = await stream._stream.recv_data(5)
            if not meta:
                return None
            if meta[0]:
                raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
            size = int.from_bytes(meta[1:5], "big")
            if size > limit:
                raise GRPCError(
                    Status.RESOURCE_EXHAUSTED,
                    f"request message of {size} bytes exceeds the limit of {limit} bytes",
                )
            body = await stream._stream.recv_data(size)
            name = getattr(stream._recv_type, "__name__", "request")
            try:
                message = stream._codec.decode(body, stream._recv_type)
            except Exception:  # any parse failure of untrusted bytes is the caller's error
                raise GRPCError(
                    Status.INVALID_ARGUMENT, f"request is not a valid {name} message"
                ) from None
            if isinstance(message, betterproto2.Message):
                try:
                    wire.check_types(message)
                except wire.WireTypeError as exc:
                    raise GRPCError(Status.INVALID_ARGUMENT, f"{name}: {exc}") from None
            (message,) = await stream._dispatch.recv_message(message)
            return message

        stream.recv_message = recv_message
        await handler(stream)

    return limited


def _split_hostport(value: str) -> tuple[str, int]:
    """"HOST:PORT" or "[v6]:PORT" -> (host, port), with an error naming --listen."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise tls.TlsConfigError(f"--listen: expected HOST:PORT, not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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
        gid = _socket_group()
        if gid is not None:
            os.chown(tmp, 0 if os.geteuid() == 0 else -1, gid)
        os.replace(tmp, path)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return sock


def _socket_group() -> int | None:
    """The gid of the group allowed to use the API socket, if that group exists."""
    try:
        return grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        return None


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
