"""Messages to and from the ClusterSync actor (the cluster-mode part of fwd/messages/).

Kept beside the cluster package so that local mode imports nothing of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from anyio.streams.memory import MemoryObjectSendStream

from fwd.messages.datapath import Reply
from fwd.policy.model import EMPTY_POLICY, Policy


@dataclass(frozen=True)
class SyncState:
    """What the node enforces in cluster mode, as ClusterSync last published it."""

    node: str
    labels: Mapping[str, str] = field(default_factory=dict)
    synced_revision: int = 0  # etcd revision through which everything is seen and applied
    policy: Policy = EMPTY_POLICY
    policy_hash: str = ""
    policies: tuple[tuple[str, int], ...] = ()  # selected (name, mod_revision), merge order
    applied_revision: int = 0  # the Datapath's local revision
    last_error: str = ""
    connected: bool = False  # a watch on etcd is live
    etcd_error: str = ""  # why not, when not


@dataclass(frozen=True)
class GetSyncState:
    """Api -> ClusterSync: the current SyncState (GetPolicy in cluster mode)."""

    reply: MemoryObjectSendStream[Reply[SyncState]]


ClusterCommand = GetSyncState
