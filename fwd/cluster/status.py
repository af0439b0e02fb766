"""Reading the cluster's status: which nodes exist, which are live, which lag (for
``fwd cluster status`` and ``fwd cluster wait``).

A node is known by its ``labels/<node>`` key (agents create it at first start)
or its ``status/<node>`` key. It is live while its status key exists: the key is
attached to the agent's lease, and etcd deletes it when the lease expires.

Lag: the cluster's revision also counts status writes, which agents do not
watch, so ``lag`` is measured against the newest change agents do watch (the
highest mod revision under labels/ and policies/; deletes are not visible to a
range read, so after a delete the lag may read 0 a little early).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fwd.cluster.etcd import EtcdClient
from fwd.cluster.layout import Layout, StatusRecord, decode_labels, decode_status
from fwd.cluster.selector import Selector
from fwd.errors import PolicyError


@dataclass(frozen=True)
class NodeStatus:
    node: str
    labels: Mapping[str, str] = field(default_factory=dict)  # from labels/<node> (etcd's truth)
    live: bool = False
    status: StatusRecord | None = None  # None when silent (lease expired) or never reported
    lag: int = 0  # revisions of watched changes the node has not synced yet
    error: str = ""  # a stored value that does not decode


@dataclass(frozen=True)
class ClusterStatus:
    revision: int  # etcd's revision when read
    watched_revision: int  # newest change under labels/ and policies/
    nodes: tuple[NodeStatus, ...]


async def read_cluster(etcd: EtcdClient, layout: Layout) -> ClusterStatus:
    """Every known node with its labels, status and liveness (two range reads)."""
    start, end = layout.watch_range()
    watched = await etcd.get_range(start, end)
    statuses = await etcd.get_prefix(layout.status)
    labels: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    for kv in watched.kvs:
        node = layout.name_in(layout.labels, kv.key)
        if node is None:
            continue
        try:
            labels[node] = decode_labels(node, kv.value)
        except PolicyError as e:
            labels[node], errors[node] = {}, str(e)
    records: dict[str, StatusRecord] = {}
    for kv in statuses.kvs:
        node = layout.name_in(layout.status, kv.key)
        if node is None:
            continue
        try:
            records[node] = decode_status(node, kv.value)
        except PolicyError as e:
            errors[node] = str(e)
    newest = max((kv.mod_revision for kv in watched.kvs), default=0)
    return ClusterStatus(statuses.revision, newest, tuple(node_statuses(labels, records, newest, errors)))


def node_statuses(
    labels: Mapping[str, Mapping[str, str]],
    records: Mapping[str, StatusRecord],
    watched_revision: int,
    errors: Mapping[str, str] | None = None,
) -> list[NodeStatus]:
    """Join labels and status records by node name (pure), sorted by name."""
    out = []
    for node in sorted(set(labels) | set(records)):
        record = records.get(node)
        synced = record.synced_revision if record is not None else 0
        out.append(
            NodeStatus(
                node=node,
                labels=dict(labels.get(node, record.labels if record is not None else {})),
                live=record is not None,
                status=record,
                lag=max(0, watched_revision - synced) if record is not None else 0,
                error=(errors or {}).get(node, ""),
            )
        )
    return out


def nodes_behind(nodes: Iterable[NodeStatus], revision: int, selector: Selector) -> list[NodeStatus]:
    """The live nodes ``selector`` matches whose synced_revision is below ``revision``
    (``fwd cluster wait`` returns once this is empty). Silent nodes are not waited for."""
    return [
        n
        for n in nodes
        if n.live and n.status is not None and selector.matches(n.labels) and n.status.synced_revision < revision
    ]
