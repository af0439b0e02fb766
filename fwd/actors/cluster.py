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
Both present the node's certificate (``--etcd-cert``; CN = node name), unless
the operator gave the agent an admin identity (``--etcd-admin-cert``) for the
API's cluster calls: the node's own etcd user never needs the admin role.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from fwd.actors.cluster_admin import ClusterAdmin
from fwd.cluster.credentials import TlsCredentials, TlsFiles
from fwd.cluster.etcd import EtcdClient, check_transport
from fwd.cluster.layout import Layout, check_node_name
from fwd.messages import GetSyncState
from fwd.cluster.selector import parse_labels
from fwd.actors.cluster_sync import ClusterSync, SyncConfig
from fwd.messages import ClusterAdminCommand, DatapathCommand, ListInterfaces
from fwd.settings import Settings

Starter = Callable[..., Coroutine[Any, Any, Any]]

log = structlog.get_logger("fwd.cluster")


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
        node_creds, admin_creds = self._credentials(settings)
        timeout = settings.reply_timeout / 2
        self._sync_etcd = EtcdClient(settings.etcd_endpoints, timeout=timeout, credentials=node_creds)
        self._admin_etcd = EtcdClient(settings.etcd_endpoints, timeout=timeout,
                                      credentials=admin_creds or node_creds)  # fmt: skip
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

    def _credentials(self, settings: Settings) -> tuple[TlsCredentials | None, TlsCredentials | None]:
        """The node's identity and the optional admin one (the CLI validated both)."""
        files = TlsFiles(settings.etcd_ca, settings.etcd_cert, settings.etcd_key)
        scheme = check_transport(settings.etcd_endpoints, tls=bool(files.paths), insecure=settings.etcd_insecure)
        if scheme == "http":
            log.warning("etcd_insecure", endpoints=list(settings.etcd_endpoints),
                        reason="plain-text etcd (--etcd-insecure): anyone on the path can read "
                        "and rewrite every node's policy, and no node has an identity")  # fmt: skip
            return None, None
        node = TlsCredentials(files, check_interval=settings.etcd_cert_check)
        cn = node.identity.common_name
        if not cn:
            log.warning("etcd_no_client_certificate", node=self.node,
                        reason="etcd with --client-cert-auth will refuse this agent")  # fmt: skip
        elif cn != self.node:
            log.warning("etcd_identity_mismatch", node=self.node, certificate_cn=cn,
                        reason="etcd treats this agent as the certificate's CN: it may read and "
                        "write only that node's keys")  # fmt: skip
        log.info("etcd_identity", node=self.node, cn=cn, not_after=node.identity.not_after,
                 fingerprint=node.identity.fingerprint)  # fmt: skip
        admin = None
        if settings.etcd_admin_cert:
            admin = TlsCredentials(TlsFiles(settings.etcd_ca, settings.etcd_admin_cert, settings.etcd_admin_key),
                                   check_interval=settings.etcd_cert_check)  # fmt: skip
            log.info("etcd_admin_identity", cn=admin.identity.common_name)
        return node, admin

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
