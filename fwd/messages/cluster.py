"""Cluster mode: Api -> ClusterSync (sync state) and Api -> ClusterAdmin (etcd reads, writes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from anyio.streams.memory import MemoryObjectSendStream

from fwd.messages.reply import Reply
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


# --- Api -> ClusterAdmin (cluster mode, issue 6) ----------------------------------

Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs: hashable, immutable


@dataclass(frozen=True)
class ClusterPolicyInfo:
    """One policy stored in etcd under ``<prefix>policies/<name>``."""

    name: str
    selector: str
    priority: int
    mod_revision: int
    policy: Policy


@dataclass(frozen=True)
class PutClusterPolicy:
    """Write a policy to etcd; the reply is the etcd revision of the write.

    ``expect_revision``: None writes unconditionally, 0 only if the key does not
    exist, N only if N is the key's mod revision (else RevisionMismatch).
    """

    info: ClusterPolicyInfo  # mod_revision is ignored
    expect_revision: int | None
    reply: MemoryObjectSendStream[Reply[int]]


@dataclass(frozen=True)
class DeleteClusterPolicy:
    name: str
    expect_revision: int | None
    reply: MemoryObjectSendStream[Reply[int]]


@dataclass(frozen=True)
class ListClusterPolicies:
    """Every stored policy in merge order, and the etcd revision they were read at."""

    reply: MemoryObjectSendStream[Reply[tuple[int, tuple[ClusterPolicyInfo, ...]]]]


@dataclass(frozen=True)
class NodeView:
    """One node as etcd describes it: its labels and (while its lease lives) its status."""

    node: str
    labels: Labels
    live: bool
    synced_revision: int = 0
    lag: int = 0
    policy_hash: str = ""
    policies: tuple[tuple[str, int], ...] = ()
    applied_revision: int = 0
    interfaces: tuple[tuple[str, str], ...] = ()  # (name, attach mode)
    last_error: str = ""
    version: str = ""
    updated: float = 0.0  # unix time
    # Enforces exactly what etcd holds for it at the view's revision (the policies its
    # labels select, at their mod revisions), though it may not have heard of later,
    # unrelated writes (a node watches only policies/ and its own labels).
    current: bool = False


@dataclass(frozen=True)
class ClusterView:
    """Every node known to etcd at ``revision``, ordered by name; lag is measured
    against ``policy_revision``, the newest change under labels/ and policies/."""

    revision: int
    nodes: tuple[NodeView, ...]
    policy_revision: int = 0


@dataclass(frozen=True)
class ReadClusterStatus:
    reply: MemoryObjectSendStream[Reply[ClusterView]]


@dataclass(frozen=True)
class SetNodeLabels:
    """Set and remove labels of ``node``; the reply is (revision, labels after)."""

    node: str
    set: Labels
    remove: tuple[str, ...]
    reply: MemoryObjectSendStream[Reply[tuple[int, Labels]]]


ClusterAdminCommand = (
    PutClusterPolicy | DeleteClusterPolicy | ListClusterPolicies | ReadClusterStatus | SetNodeLabels
)
