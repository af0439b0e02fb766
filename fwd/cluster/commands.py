"""The cluster commands of the API, answered against etcd: ``ClusterCommands``.

What the Api asks of etcd in cluster mode (``ClusterAdminCommand``s in
fwd/messages/): policy writes and deletes, the policy list, the cluster's
status, label changes. The agent runs it as the ClusterAdmin actor
(fwd/actors/cluster_admin.py); the CLI's ``--etcd`` mode (fwd/api/direct.py)
answers the same commands in its own process with the caller's identity.

Writes use etcd transactions so nothing is overwritten unseen:
- a policy write compares the key's mod revision when the caller gives one
  (0 = the key must not exist) and reports the revision of the write;
- a label change reads the labels key and writes it back only if its mod
  revision did not move in between, retrying a few times on a race.
"""

from __future__ import annotations

from typing import Any

import anyio
import structlog

from fwd.cluster import overview
from fwd.cluster.etcd import EtcdClient, EtcdError, EtcdUnavailable, KeyValue, PermissionDenied, prefix_end
from fwd.cluster.layout import (
    Layout,
    PolicyRecord,
    decode_policy_record,
    encode_labels,
    encode_policy_record,
)
from fwd.cluster.merge import check_mergeable
from fwd.errors import (
    AccessDenied,
    ClusterUnavailable,
    FwdError,
    NotFound,
    PolicyError,
    PreconditionFailed,
)
from fwd.messages import (
    ClusterAdminCommand,
    ClusterPolicyInfo,
    DeleteClusterPolicy,
    Labels,
    ListClusterPolicies,
    PutClusterPolicy,
    ReadClusterStatus,
    Reply,
    SetNodeLabels,
)

log = structlog.get_logger("fwd.actors.cluster_admin")

LABEL_RETRIES = 5


def _stale(name: str, expected: int, current: KeyValue | None) -> PreconditionFailed:
    """The compare-and-swap failed: say what the key holds now."""
    if current is None:
        now = "does not exist"
    elif expected == 0:
        now = f"already exists (mod revision {current.mod_revision})"
    else:
        now = f"has mod revision {current.mod_revision}"
    return PreconditionFailed(
        f"expect_revision: expected policy {name!r} at mod revision {expected}, but it {now}"
    )


class ClusterCommands:
    """Answers the Api's cluster commands against etcd, keys placed by ``layout``."""

    def __init__(self, client: EtcdClient, layout: Layout) -> None:
        self._etcd = client
        self._layout = layout
        self._decoded: dict[str, PolicyRecord] = {}

    async def serve(self, command: ClusterAdminCommand) -> None:
        """Answer one command on its reply stream (and close it)."""
        reply: Reply[Any]
        try:
            reply = Reply(await self.handle(command))
        except EtcdUnavailable as e:
            # The Api maps ClusterUnavailable to UNAVAILABLE; the next call tries the
            # next endpoint.
            generation = self._etcd.generation
            reply = Reply(error=ClusterUnavailable(str(e)))
            await self._etcd.failover(generation)
        except PermissionDenied as e:
            reply = Reply(error=AccessDenied(
                f"{e}: this agent has no etcd admin identity (fwd agent --etcd-admin-cert/"
                "--etcd-admin-key); write with your own admin certificate instead: "
                "fwd ... --etcd URL --etcd-ca CA --etcd-cert CERT --etcd-key KEY"))  # fmt: skip
        except EtcdError as e:
            reply = Reply(error=PreconditionFailed(str(e)))
        except FwdError as e:
            reply = Reply(error=e)
        try:
            command.reply.send_nowait(reply)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
            log.warning("reply_dropped", command=type(command).__name__)
        finally:
            command.reply.close()

    async def handle(self, command: ClusterAdminCommand) -> Any:
        """The answer to one command (raises FwdError subclasses)."""
        if isinstance(command, PutClusterPolicy):
            return await self.put_policy(command.info, command.expect_revision)
        if isinstance(command, DeleteClusterPolicy):
            return await self.delete_policy(command.name, command.expect_revision)
        if isinstance(command, ListClusterPolicies):
            return await self.list_policies()
        if isinstance(command, ReadClusterStatus):
            return await self.read_status()
        if isinstance(command, SetNodeLabels):
            return await self.set_labels(command.node, command.set, command.remove)
        raise TypeError(f"unknown command {command!r}")  # pragma: no cover

    async def put_policy(self, info: ClusterPolicyInfo, expect: int | None) -> int:
        key = self._layout.policy_key(info.name)
        value = encode_policy_record(info.selector, info.priority, info.policy)
        # Refuse here what every agent would refuse at merge time (ids or set names
        # too long once prefixed with the policy name): the writer hears why at once,
        # instead of each node keeping its old policy and reporting last_error.
        check_mergeable(decode_policy_record(info.name, value))
        result = await self._etcd.put_if(key, value, mod_revision=expect)
        if not result.succeeded:
            raise _stale(info.name, expect or 0, result.current)
        revision = result.revision
        log.info("cluster_policy_written", policy=info.name, revision=revision,
                 selector=info.selector, priority=info.priority)  # fmt: skip
        return revision

    async def delete_policy(self, name: str, expect: int | None) -> int:
        key = self._layout.policy_key(name)
        if expect is None:  # delete what is there, but say NOT_FOUND if nothing is
            kv, _ = await self._etcd.get(key)
            if kv is None:
                raise NotFound(f"name: no policy named {name!r}")
            expect = kv.mod_revision
        result = await self._etcd.delete_if(key, mod_revision=expect)
        if not result.succeeded:
            if result.current is None:
                raise NotFound(f"name: no policy named {name!r}")
            raise _stale(name, expect, result.current)
        revision = result.revision
        log.info("cluster_policy_deleted", policy=name, revision=revision)
        return revision

    async def list_policies(self) -> tuple[int, tuple[ClusterPolicyInfo, ...]]:
        directory = self._layout.policies
        listed = await self._etcd.get_prefix(directory)
        infos = []
        for kv in listed.kvs:
            name = self._layout.name_in(directory, kv.key)
            if name is None:
                continue
            try:
                r = decode_policy_record(name, kv.value, kv.mod_revision)
            except PolicyError as e:
                log.warning("cluster_policy_unreadable", policy=name, error=str(e))
                continue
            infos.append(
                ClusterPolicyInfo(name, r.selector_text, r.priority, kv.mod_revision, r.policy)
            )
        infos.sort(key=lambda i: (i.priority, i.name))
        return listed.revision, tuple(infos)

    async def read_status(self) -> Any:
        """Status records, labels and policies read at one revision (one read-only txn),
        so whether a node is current is judged against one state of etcd."""
        lay = self._layout
        ranges = [(d, prefix_end(d)) for d in (lay.status, lay.labels, lay.policies)]
        read = await self._etcd.get_ranges(ranges)
        kvs = {d: tuple(kv for kv in read.kvs if kv.key.startswith(d)) for d in (lay.status, lay.labels, lay.policies)}
        # Lag is measured against what agents watch (labels/ and policies/), not the
        # store's revision, which every status write (a node's own heartbeat of news)
        # moves on: a converged, quiet cluster reads lag 0 on every node.
        watched = max((kv.mod_revision for d in (lay.labels, lay.policies) for kv in kvs[d]), default=0)
        return overview.cluster_view(
            read.revision,
            self._named(lay.labels, kvs[lay.labels]),
            self._named(lay.status, kvs[lay.status]),
            self._policies(kvs[lay.policies]),
            policy_revision=watched,
        )

    def _policies(self, kvs: tuple[KeyValue, ...]) -> list[PolicyRecord]:
        """The valid policy records, decoded once per (name, mod revision)."""
        out = []
        seen = {}
        for kv in kvs:
            name = self._layout.name_in(self._layout.policies, kv.key)
            if name is None:
                continue
            record = self._decoded.get(name)
            if record is None or record.mod_revision != kv.mod_revision:
                try:
                    record = decode_policy_record(name, kv.value, kv.mod_revision)
                except PolicyError:
                    continue
            seen[name] = record
            out.append(record)
        self._decoded = seen
        return out

    def _named(self, directory: str, kvs: tuple[KeyValue, ...]) -> dict[str, bytes]:
        out = {}
        for kv in kvs:
            name = self._layout.name_in(directory, kv.key)
            if name is not None:
                out[name] = kv.value
        return out

    async def set_labels(
        self, node: str, add: Labels, remove: tuple[str, ...]
    ) -> tuple[int, Labels]:
        key = self._layout.labels_key(node)
        for _ in range(LABEL_RETRIES):
            kv, _ = await self._etcd.get(key)
            current = overview.read_labels(node, kv.value) if kv is not None else {}
            wanted = {k: v for k, v in current.items() if k not in remove}
            wanted.update(add)
            if kv is not None and wanted == current:
                return 0, overview.labels_of(current)
            mod = kv.mod_revision if kv is not None else 0
            result = await self._etcd.put_if(key, encode_labels(wanted), mod_revision=mod)
            if result.succeeded:
                log.info("cluster_labels_written", node=node, labels=wanted,
                         revision=result.revision)  # fmt: skip
                return result.revision, overview.labels_of(wanted)
        raise PreconditionFailed(
            f"node: the labels of {node!r} changed {LABEL_RETRIES} times while writing; try again"
        )
