"""Cluster mode's part of the supervisor (``fwd agent --etcd ...``).

``ClusterMode`` builds the two cluster actors and their channels from the
settings; ``fwd.agent`` starts them in its task group after the Datapath and
Links (ClusterSync feeds the one, asks the other for attach modes) and before
the Api (which holds the send ends made here):

    ClusterSync  --ApplyPolicy/GetPolicy-->  Datapath
                 --ListInterfaces-->         Links
    Api --GetSyncState--> ClusterSync        (GetPolicy: merged policy, synced revision)
    Api --ClusterAdminCommand--> ClusterAdmin (etcd reads and CAS writes)

Each actor has its own etcd connection: a slow admin read never delays a
watch, and the sync's reconnect logic does not fail over under the admin.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from fwd.actors.cluster_admin import ClusterAdmin
from fwd.cluster.etcd import EtcdClient
from fwd.cluster.layout import Layout, check_node_name
from fwd.messages import GetSyncState
from fwd.cluster.selector import parse_labels
from fwd.actors.cluster_sync import ClusterSync, SyncConfig
from fwd.messages import ClusterAdminCommand, DatapathCommand, ListInterfaces
from fwd.settings import Settings

Starter = Callable[..., Coroutine[Any, Any, Any]]


def node_name(settings: Settings) -> str:
    """``--node``, or the host name (its first label) when not given."""
    return check_node_name(settings.node_name or socket.gethostname().split(".")[0])


class ClusterMode:
    """The cluster actors of one agent, and the send ends the Api needs."""

    def __init__(
        self,
        settings: Settings,
        datapath: MemoryObjectSendStream[DatapathCommand],
        links: MemoryObjectSendStream[ListInterfaces],
    ) -> None:
        layout = Layout(settings.etcd_prefix)
        self.node = node_name(settings)
        labels = parse_labels([f"{k}={v}" for k, v in settings.node_labels])
        self._sync_etcd = EtcdClient(settings.etcd_endpoints, timeout=settings.reply_timeout / 2)
        self._admin_etcd = EtcdClient(settings.etcd_endpoints, timeout=settings.reply_timeout / 2)
        self.sync_tx, sync_rx = anyio.create_memory_object_stream[GetSyncState](64)
        self.admin_tx, self._admin_rx = anyio.create_memory_object_stream[ClusterAdminCommand](64)
        self.sync = ClusterSync(
            self._sync_etcd,
            datapath,
            SyncConfig(node=self.node, labels=labels, layout=layout, lease_ttl=settings.lease_ttl,
                       reply_timeout=settings.reply_timeout),  # fmt: skip
            links=links,
            commands=sync_rx,
        )
        self.admin = ClusterAdmin(self._admin_etcd, layout)

    async def start(self, tg: TaskGroup, actor: Starter) -> None:
        """Start ClusterSync (ready once the first load is applied, or failed and
        retrying: the node keeps enforcing what it has) and ClusterAdmin."""
        await tg.start(actor, "cluster-sync", self.sync.run)
        await tg.start(actor, "cluster-admin", self.admin.run, self._admin_rx)

    async def aclose(self) -> None:
        """Close both etcd connections (after the actors stopped)."""
        with anyio.CancelScope(shield=True):
            await self._sync_etcd.close()
            await self._admin_etcd.close()
