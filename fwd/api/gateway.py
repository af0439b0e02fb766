"""The Api's side of every conversation with the actors behind it.

``Gateway`` holds only send ends (Datapath, Links, Confirmer, Events,
ClusterAdmin, ClusterSync). Each request makes its own one-shot reply stream,
sends the owning actor a command and awaits the answer with a deadline
(STYLE.md practice 3); what the actor answered becomes a gRPC status in
fwd.api.status. The services (fwd.api.services) call it; the Api actor
(fwd.actors.api) extends it with the server's lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from grpclib import GRPCError
from grpclib.const import Status

from fwd import messages
from fwd.api import convert, policystream
from fwd.api.fastwire import BatchEncoder
from fwd.api.gen.fwd import v1 as pb
from fwd.api.status import grpc_errors
from fwd.core.records import EventFilter
from fwd.messages import DatapathCommand, GetSyncState, ListInterfaces, Reply, SyncState
from fwd.settings import Settings

if TYPE_CHECKING:
    from fwd.metrics.grpc import GrpcMetrics

T = TypeVar("T")
C = TypeVar("C")

SHUTTING_DOWN = "the agent is shutting down"
LOCAL_MODE = "not in cluster mode: start the agent with --etcd to use the cluster API"


class Gateway:
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
        self._closing = False  # set by the Api actor when it drains
        self._asks: set[anyio.CancelScope] = set()
        self._requests: set[asyncio.Task[Any]] = set()


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
        with grpc_errors(actor):
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
            raise GRPCError(Status.FAILED_PRECONDITION, LOCAL_MODE)
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
            raise GRPCError(Status.FAILED_PRECONDITION, LOCAL_MODE)
        return await self.ask(self._sync, lambda r: GetSyncState(reply=r), "cluster sync")

    async def get_policy(self) -> messages.Applied:
        """The policy and revision the data plane enforces now."""
        return await self.ask(self._datapath, lambda r: messages.GetPolicy(reply=r), "datapath")

    async def apply_policy(
        self,
        policy: pb.Policy | policystream.StreamedPolicy | None,
        expect_revision: int | None,
        force: bool = False,
        unchanged_ok: bool = True,
    ) -> messages.Applied:
        """Validate ``policy`` (INVALID_ARGUMENT names the field), check it cannot lock out
        management access (FAILED_PRECONDITION unless ``force``), and have it enforced
        (a policy equal to the enforced one makes no revision when ``unchanged_ok``)."""
        with grpc_errors("apply"):
            model = convert.policy_from_proto(policy)
        if policy is not None:
            # The request stays referenced by grpclib until the response is sent; its
            # rules (~1 KB each as betterproto2 objects) are not needed past this point,
            # so free them before the Datapath compiles (a lower peak, memory reused).
            policy.rules.clear()
        return await self.ask(
            self._datapath,
            lambda r: messages.ApplyPolicy(
                policy=model, expect_revision=expect_revision, reply=r, force=force,
                unchanged_ok=unchanged_ok,
            ),
            "datapath",
        )

    async def rule_stats(self, offset: int = 0, limit: int = 0) -> tuple[messages.RuleStats, ...]:
        """Counters of rows ``offset`` .. ``offset + limit`` (reserved slots, then the rules
        in policy order; ``limit`` 0: all)."""
        return await self.ask(
            self._datapath, lambda r: messages.GetStats(reply=r, offset=offset, limit=limit),
            "datapath",
        )

    async def interfaces(self) -> tuple[messages.InterfaceStatus, ...]:
        """Every interface the Links actor knows."""
        return await self.ask(self._links, lambda r: ListInterfaces(reply=r), "links")
