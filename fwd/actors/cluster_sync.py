"""The ClusterSync actor: etcd -> merged policy -> Datapath, and status back to etcd.

One session (repeated after any etcd failure, with capped exponential backoff
and jitter, 0.1 s -> 5 s):

1. Once per actor: seed ``labels/<node>`` with ``--label`` if the key is absent
   (where the node's etcd role allows it: with least privilege it does not, and
   an admin sets labels; docs/cluster.md).
2. Read ``policies/`` and ``labels/<node>`` at one revision R0 (a read-only txn):
   the node's view. Only those: they are what its etcd role lets it read.
3. Make sure the lease is alive (reuse it, else grant one); keep it alive.
4. Reconcile (below), then watch the same two ranges from R0 + 1, on one
   stream (nothing between the read and the watch is lost or seen twice) and
   reconcile after each batch.

When the TLS files of the node's identity change (a renewed certificate), the
session ends and the next one connects with the new certificate at once (no
backoff): a rotation is one reload, not a restart.

Reconcile: select and merge the policies for the node's labels; if the merged
policy's hash differs from the enforced one, send ``ApplyPolicy`` to the
Datapath and await the reply. On success ``synced_revision`` becomes the
batch's header revision; on failure the old policy stays, ``last_error`` says
why and ``synced_revision`` stays (so ``fwd cluster wait`` names the node).
Then ``status/<node>`` is put under the lease.

While etcd is unreachable nothing is applied: the node keeps enforcing the
last policy. A compacted watch revision or a reconnect means a full reload.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd.cluster.etcd import CredentialsChanged, EtcdClient, EtcdError, LeaseExpired, PermissionDenied
from fwd.cluster.layout import (
    InterfaceMode,
    Layout,
    StatusRecord,
    encode_labels,
    encode_status,
)
from fwd.cluster.merge import merge, policy_hash
from fwd.cluster.syncconfig import Backoff, SyncConfig, SyncStatistics, fwd_version
from fwd.messages import ClusterCommand, GetSyncState, SyncState
from fwd.cluster.view import NodeView
from fwd.errors import FwdError
from fwd.messages import (
    Applied,
    ApplyPolicy,
    DatapathCommand,
    GetPolicy,
    InterfaceStatus,
    LinkState,
    ListInterfaces,
    Reply,
)
from fwd.policy.model import Policy

log = structlog.get_logger("fwd.cluster")

__all__ = ["Backoff", "ClusterSync", "SyncConfig", "SyncStatistics", "fwd_version"]


class ClusterSync:
    """Keeps the Datapath enforcing what etcd says this node should, and says so."""

    def __init__(
        self,
        etcd: EtcdClient,
        datapath: MemoryObjectSendStream[DatapathCommand],
        config: SyncConfig,
        *,
        links: MemoryObjectSendStream[ListInterfaces] | None = None,
        commands: MemoryObjectReceiveStream[ClusterCommand] | None = None,
    ) -> None:
        self._etcd = etcd
        self._datapath = datapath
        self._links = links
        self._commands = commands
        self.config = config
        self._layout = config.layout
        self._view = NodeView(config.layout, config.node)
        self._state = SyncState(node=config.node)
        self._applied_key: tuple[tuple[str, int], ...] | None = None
        self._lease = 0
        self._seeded = False
        self._interfaces: tuple[InterfaceMode, ...] = ()
        self._stats = SyncStatistics()
        self._backoff = Backoff(config.backoff_min, config.backoff_max)
        self._status_wanted = anyio.Event()
        self._status_urgent = anyio.Event()
        self._apply_failed = False

    @property
    def state(self) -> SyncState:
        return self._state

    def statistics(self) -> SyncStatistics:
        self._stats.synced_revision = self._state.synced_revision
        return self._stats

    # --- the actor ------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sync until cancelled. ``started`` once the first load is applied, or once
        the first attempt failed (the node then keeps what it enforces and retries)."""
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        with self._datapath:
            try:
                async with anyio.create_task_group() as tg:
                    if self._commands is not None:
                        tg.start_soon(self._serve_commands, self._commands)
                    await self._adopt_enforced()
                    while True:
                        generation = self._etcd.generation
                        try:
                            await self._session(ready)
                        except CredentialsChanged:
                            self._stats.credential_reloads += 1
                            identity = self._etcd.credentials.identity if self._etcd.credentials else None
                            log.info("etcd_credentials_reloaded", node=self.config.node,
                                     cn=identity.common_name if identity else "",
                                     not_after=identity.not_after if identity else "",
                                     fingerprint=identity.fingerprint if identity else "")  # fmt: skip
                            await self._etcd.failover(generation)
                        except EtcdError as e:
                            self._stats.failures += 1
                            self._state = replace(self._state, connected=False, etcd_error=str(e))
                            log.warning("etcd_unavailable", node=self.config.node, error=str(e))
                            ready()
                            await anyio.sleep(self._backoff.next())
                            await self._etcd.failover(generation)
            finally:
                await self._revoke()

    async def _serve_commands(self, commands: MemoryObjectReceiveStream[ClusterCommand]) -> None:
        async with commands:
            async for command in commands:
                if isinstance(command, GetSyncState):
                    with command.reply:
                        try:
                            await command.reply.send(Reply(value=self._state))
                        except anyio.BrokenResourceError:
                            pass

    async def _adopt_enforced(self) -> None:
        """Learn what the Datapath enforces now (e.g. adopted pins after a restart), so
        an unchanged merged policy is not applied again."""
        try:
            applied = await self._ask(lambda r: GetPolicy(reply=r))
        except FwdError as e:
            log.warning("datapath_get_policy_failed", error=str(e))
            return
        self._state = replace(
            self._state,
            policy=applied.policy,
            policy_hash=policy_hash(applied.policy),
            applied_revision=applied.revision,
        )

    async def _session(self, ready: Callable[[], None]) -> None:
        failure: list[EtcdError] = []

        async def guarded(fn: Callable[[], Awaitable[None]]) -> None:
            try:
                await fn()
            except EtcdError as e:
                failure.append(e)
                tg.cancel_scope.cancel()

        async def credentials() -> None:
            await self._etcd.wait_credentials_changed()
            raise CredentialsChanged("etcd credentials changed: reconnecting with the new certificate")

        async def main() -> None:
            await self._seed_labels()
            ranges = self._layout.node_ranges(self.config.node)
            snapshot = await self._etcd.get_ranges(ranges)
            self._view.load(snapshot.kvs)
            await self._ensure_lease()
            tg.start_soon(guarded, credentials)
            tg.start_soon(guarded, self._keep_alive)
            tg.start_soon(guarded, self._publish_status)
            if self._links is not None:
                tg.start_soon(guarded, self._poll_interfaces)
            self._stats.sessions += 1
            self._state = replace(self._state, connected=True, etcd_error="")
            await self._reconcile(snapshot.revision)
            self._backoff.reset()
            ready()
            async with self._etcd.watch_ranges(ranges, snapshot.revision + 1) as batches:
                async for batch in batches:
                    self._stats.batches += 1
                    if self._view.apply(batch.events):
                        await self._reconcile(batch.revision)
                    else:  # only other nodes' labels changed: nothing to merge or apply
                        self._advance(batch.revision)

        async with anyio.create_task_group() as tg:
            await guarded(main)
            tg.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def _seed_labels(self) -> None:
        """Write ``--label`` to ``labels/<node>`` if the key is absent. Read first: a
        node's role may read its labels but not write them (least privilege), and the
        common case, labels already set, then needs no write permission at all."""
        if self._seeded:
            return
        node = self.config.node
        key = self._layout.labels_key(node)
        kv, _ = await self._etcd.get(key)
        if kv is not None:
            log.info("labels_kept", node=node)
        else:
            try:
                result = await self._etcd.put_if(key, encode_labels(self.config.labels), mod_revision=0)
            except PermissionDenied:
                log.warning("labels_not_seeded", node=node, labels=dict(self.config.labels),
                            reason="this node's etcd user may not write labels/ (least privilege): "
                            "an admin sets them with fwd cluster label")  # fmt: skip
            else:
                log.info("labels_seeded" if result.succeeded else "labels_kept", node=node)
        self._seeded = True

    # --- lease and status ---------------------------------------------------------

    async def _ensure_lease(self) -> None:
        if self._lease and await self._etcd.lease_ttl(self._lease) > 0:
            return
        self._lease = await self._etcd.grant_lease(self.config.lease_ttl)
        self._stats.leases += 1

    async def _keep_alive(self) -> None:
        while True:
            try:
                await self._etcd.keep_alive(self._lease, self.config.lease_ttl)
            except LeaseExpired:
                # Our status key went with it: a new lease, and the status again.
                log.warning("lease_expired", node=self.config.node)
                self._lease = 0
                await self._ensure_lease()
                await self._put_status()

    async def _revoke(self) -> None:
        lease, self._lease = self._lease, 0
        if not lease:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            try:
                await self._etcd.revoke_lease(lease)
            except EtcdError:
                pass  # it expires on its own

    def _want_status(self, urgent: bool) -> None:
        self._status_wanted.set()
        if urgent:
            self._status_urgent.set()

    async def _publish_status(self) -> None:
        """Write the status when wanted: at once if urgent, else at most every interval."""
        while True:
            await self._status_wanted.wait()
            self._status_wanted = anyio.Event()
            await self._put_status()
            with anyio.move_on_after(self.config.status_interval):
                await self._status_urgent.wait()
            self._status_urgent = anyio.Event()

    async def _put_status(self) -> None:
        s = self._state
        record = StatusRecord(
            node=s.node,
            labels=s.labels,
            synced_revision=s.synced_revision,
            policy_hash=s.policy_hash,
            policies=s.policies,
            applied_revision=s.applied_revision,
            interfaces=self._interfaces,
            last_error=s.last_error,
            version=self.config.version,
            updated=time.time(),
        )
        await self._etcd.put(self._layout.status_key(s.node), encode_status(record), lease=self._lease)
        self._stats.status_puts += 1

    async def _poll_interfaces(self) -> None:
        assert self._links is not None
        while True:
            try:
                found = await self._ask_links()
            except FwdError as e:
                log.warning("list_interfaces_failed", error=str(e))
            else:
                modes = tuple(
                    InterfaceMode(i.name, i.mode.value if i.state is LinkState.ATTACHED else i.state.value)
                    for i in found
                )
                if modes != self._interfaces:
                    self._interfaces = modes
                    self._want_status(urgent=True)
            await anyio.sleep(self.config.interfaces_poll)

    # --- reconcile ----------------------------------------------------------------

    async def _reconcile(self, revision: int) -> None:
        selected = self._view.selected()
        key = tuple((r.name, r.mod_revision) for r in selected)
        labels = dict(self._view.node_labels())
        state = replace(self._state, labels=labels)
        apply_error = ""
        if key != self._applied_key:
            try:
                policy = merge(selected)
                digest = policy_hash(policy)
                if digest != state.policy_hash:
                    applied = await self._apply(policy)
                    state = replace(state, policy=policy, policy_hash=digest, applied_revision=applied.revision)
                state = replace(state, policies=key)
                self._applied_key = key
            except FwdError as e:
                self._stats.apply_errors += 1
                apply_error = f"apply: {e}"
                log.warning("cluster_apply_failed", node=self.config.node, revision=revision, error=str(e))
        self._apply_failed = bool(apply_error)
        if not apply_error:
            state = replace(state, synced_revision=revision)
        errors = [e for e in (apply_error, self._view.error_text()) if e]
        state = replace(state, last_error="; ".join(errors))
        old, self._state = self._state, state
        news = (old.policy_hash, old.policies, old.last_error, old.labels) != (
            state.policy_hash, state.policies, state.last_error, state.labels
        )  # fmt: skip
        self._want_status(urgent=news or not old.synced_revision)

    def _advance(self, revision: int) -> None:
        """Everything up to ``revision`` is seen and none of it concerns this node."""
        if self._applied_key is not None and not self._apply_failed:
            self._state = replace(self._state, synced_revision=revision)
            self._want_status(urgent=False)

    async def _apply(self, policy: Policy) -> Applied:
        applied = await self._ask(lambda r: ApplyPolicy(policy=policy, expect_revision=None, reply=r))
        self._stats.applies += 1
        return applied

    async def _ask(self, make: Callable[[MemoryObjectSendStream[Reply[Applied]]], DatapathCommand]) -> Applied:
        tx, rx = anyio.create_memory_object_stream[Reply[Applied]](1)
        with rx:
            try:
                with anyio.fail_after(self.config.reply_timeout):
                    await self._datapath.send(make(tx))
                    reply = await rx.receive()
            except TimeoutError:
                raise FwdError(f"datapath did not answer within {self.config.reply_timeout} s") from None
            except anyio.EndOfStream:
                raise FwdError("datapath closed the request unanswered") from None
        return reply.unwrap()

    async def _ask_links(self) -> tuple[InterfaceStatus, ...]:
        assert self._links is not None
        tx, rx = anyio.create_memory_object_stream[Reply[tuple[InterfaceStatus, ...]]](1)
        with rx:
            try:
                with anyio.fail_after(self.config.reply_timeout):
                    await self._links.send(ListInterfaces(reply=tx))
                    reply = await rx.receive()
            except TimeoutError:
                raise FwdError("links did not answer in time") from None
            except anyio.EndOfStream:
                raise FwdError("links closed the request unanswered") from None
        return reply.unwrap()
