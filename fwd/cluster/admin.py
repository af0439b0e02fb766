"""The ClusterAdmin actor: the API's reads and writes of etcd in cluster mode.

The Api sends it ``ClusterCommand``s (fwd/messages.py) and awaits the reply,
as it does with the Datapath; this actor alone holds the etcd connection the
API uses (the ClusterSync actor has its own, so a slow admin call never holds
up a watch). Each command runs in its own task: etcd serves them concurrently
and a ``fwd cluster wait`` poll must not queue behind a policy write.

Writes use etcd transactions so nothing is overwritten unseen:
- a policy write compares the key's mod revision when the caller gives one
  (0 = the key must not exist) and reports the revision of the write;
- a label change reads the labels key and writes it back only if its mod
  revision did not move in between, retrying a few times on a race.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from fwd.cluster import view
from fwd.cluster.etcdops import EtcdOps, key_name
from fwd.errors import FwdError, PolicyError, PreconditionFailed, RevisionMismatch
from fwd.messages import (
    ClusterCommand,
    ClusterPolicyInfo,
    DeleteClusterPolicy,
    Labels,
    ListClusterPolicies,
    PutClusterPolicy,
    ReadClusterStatus,
    Reply,
    SetNodeLabels,
)
from fwd.policy.model import policy_from_dict, policy_to_dict

log = structlog.get_logger("fwd.cluster.admin")

LABEL_RETRIES = 5


class NotFound(FwdError):
    """The named object does not exist (NOT_FOUND)."""


def encode_policy(info: ClusterPolicyInfo) -> bytes:
    """The JSON value of ``<prefix>policies/<name>`` (docs/cluster.md)."""
    record = {"selector": info.selector, "priority": info.priority,
              "policy": policy_to_dict(info.policy)}  # fmt: skip
    return json.dumps(record, sort_keys=True).encode()


def decode_policy(name: str, raw: bytes, mod_revision: int) -> ClusterPolicyInfo:
    """A stored policy record; PolicyError naming the key if it is not valid."""
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        priority = record.get("priority", 100)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError("priority is not an integer")
        return ClusterPolicyInfo(
            name, str(record.get("selector", "")), priority, mod_revision,
            policy_from_dict(record.get("policy") or {}),
        )  # fmt: skip
    except (ValueError, PolicyError) as e:
        raise PolicyError(f"policies/{name}", str(e)) from None


class ClusterAdmin:
    """Serves the Api's cluster commands against etcd under ``client.prefix``."""

    def __init__(self, client: EtcdOps) -> None:
        self._etcd = client

    async def run(
        self,
        commands: MemoryObjectReceiveStream[ClusterCommand],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve commands until the channel closes; each in its own task."""
        async with anyio.create_task_group() as tg, commands:
            task_status.started()
            async for command in commands:
                tg.start_soon(self._serve, command)

    async def _serve(self, command: ClusterCommand) -> None:
        reply: Reply[Any]
        try:
            reply = Reply(await self.handle(command))
        except FwdError as e:
            reply = Reply(error=e)
        try:
            command.reply.send_nowait(reply)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
            log.warning("reply_dropped", command=type(command).__name__)
        finally:
            command.reply.close()

    async def handle(self, command: ClusterCommand) -> Any:
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
        key = self._etcd.key("policies", info.name)
        ok, revision, current = await self._etcd.put_if(key, encode_policy(info), expect)
        if not ok:
            raise RevisionMismatch(expect or 0, current)
        log.info("cluster_policy_written", name=info.name, revision=revision,
                 selector=info.selector, priority=info.priority)  # fmt: skip
        return revision

    async def delete_policy(self, name: str, expect: int | None) -> int:
        key = self._etcd.key("policies", name)
        ok, revision, current = await self._etcd.delete_if(key, expect)
        if not ok:
            if current == 0:
                raise NotFound(f"name: no policy named {name!r}")
            raise RevisionMismatch(expect or 0, current)
        log.info("cluster_policy_deleted", name=name, revision=revision)
        return revision

    async def list_policies(self) -> tuple[int, tuple[ClusterPolicyInfo, ...]]:
        revision, kvs = await self._etcd.get_prefix(self._etcd.key("policies", ""))
        infos = []
        for key, value, mod in kvs:
            name = key_name(key)
            try:
                infos.append(decode_policy(name, value, mod))
            except PolicyError as e:
                log.warning("cluster_policy_unreadable", name=name, error=str(e))
        infos.sort(key=lambda i: (i.priority, i.name))
        return revision, tuple(infos)

    async def read_status(self) -> Any:
        revision, labels, statuses = await self._etcd.get_two_prefixes(
            self._etcd.key("labels", ""), self._etcd.key("status", "")
        )
        return view.cluster_view(
            revision,
            {key_name(k): v for k, v, _ in labels},
            {key_name(k): v for k, v, _ in statuses},
        )

    async def set_labels(
        self, node: str, add: Labels, remove: tuple[str, ...]
    ) -> tuple[int, Labels]:
        key = self._etcd.key("labels", node)
        for _ in range(LABEL_RETRIES):
            raw, mod = await self._etcd.get(key)
            current = view.decode_labels(raw) if raw is not None else {}
            wanted = {k: v for k, v in current.items() if k not in remove}
            wanted.update(add)
            if raw is not None and wanted == current:
                return 0, view.labels_of(current)
            value = json.dumps(wanted, sort_keys=True).encode()
            ok, revision, _ = await self._etcd.put_if(key, value, mod)
            if ok:
                log.info("cluster_labels_written", node=node, labels=wanted, revision=revision)
                return revision, view.labels_of(wanted)
        raise PreconditionFailed(
            f"node: the labels of {node!r} changed {LABEL_RETRIES} times while writing; try again"
        )
