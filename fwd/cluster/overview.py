"""What the API shows of a cluster: pure functions over the keys read from etcd.

``cluster_view`` turns the labels and status keys into one ``NodeView`` per
node; ``wait_state`` says which selected nodes are still behind a revision.
No I/O here: ``fwd.cluster.admin`` reads etcd and calls these.

A node is *live* while its status record exists: the record is attached to the
agent's lease, so etcd deletes it when the agent stops renewing (crash,
partition). Nodes that are known only by their labels key are *silent*.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fwd.messages import ClusterView, Labels, NodeView

Matcher = Callable[[Mapping[str, str]], bool]


def labels_of(mapping: Mapping[str, str]) -> Labels:
    """Labels in their canonical form: sorted (key, value) pairs."""
    return tuple(sorted(mapping.items()))


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def decode_labels(raw: bytes) -> dict[str, str]:
    """A labels key's JSON object; anything unreadable counts as no labels."""
    data = _decode(raw)
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def _pairs(value: Any, second: Callable[[Any], Any]) -> tuple[tuple[str, Any], ...]:
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            out.append((str(item[0]), second(item[1])))
    return tuple(out)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def decode_status(node: str, raw: bytes, labels: Mapping[str, str] | None, revision: int) -> NodeView:
    """A live node from its status record (see docs/cluster.md for the fields).

    ``labels`` from the node's labels key win over the ones in the record (etcd
    is the truth; the record says what the agent last saw).
    """
    data = _decode(raw)
    if not isinstance(data, dict):
        return NodeView(node, labels_of(labels or {}), True, last_error="unreadable status record")
    own = data.get("labels")
    seen = {str(k): str(v) for k, v in own.items()} if isinstance(own, dict) else {}
    synced = _int(data.get("synced_revision"))
    interfaces = tuple(
        (str(i.get("name", "")), str(i.get("mode", "")))
        for i in data.get("interfaces", [])
        if isinstance(i, dict)
    ) if isinstance(data.get("interfaces"), list) else ()
    updated = data.get("updated")
    return NodeView(
        node=node,
        labels=labels_of(labels if labels is not None else seen),
        live=True,
        synced_revision=synced,
        lag=max(0, revision - synced),
        policy_hash=str(data.get("policy_hash", "")),
        policies=_pairs(data.get("policies"), _int),
        applied_revision=_int(data.get("applied_revision")),
        interfaces=interfaces,
        last_error=str(data.get("last_error", "")),
        version=str(data.get("version", "")),
        updated=float(updated) if isinstance(updated, (int, float)) else 0.0,
    )


def cluster_view(
    revision: int, labels: Mapping[str, bytes], statuses: Mapping[str, bytes]
) -> ClusterView:
    """Every node named by a labels key or a status record, ordered by name."""
    nodes = []
    for node in sorted(set(labels) | set(statuses)):
        own = decode_labels(labels[node]) if node in labels else None
        if node in statuses:
            nodes.append(decode_status(node, statuses[node], own, revision))
        else:
            nodes.append(NodeView(node, labels_of(own or {}), live=False))
    return ClusterView(revision, tuple(nodes))


@dataclass(frozen=True)
class WaitState:
    """Where a ``fwd cluster wait`` stands: the selected live nodes, which of
    them are behind (with their synced revision), and the selected silent ones."""

    live: tuple[str, ...]
    behind: tuple[tuple[str, int], ...]
    silent: tuple[str, ...]

    @property
    def done(self) -> bool:
        return not self.behind

    def describe_behind(self) -> str:
        return ", ".join(f"{n} (synced {r})" for n, r in self.behind)


def wait_state(view: ClusterView, revision: int, selects: Matcher) -> WaitState:
    """Which live nodes whose labels ``selects`` accepts have not synced ``revision``."""
    chosen = [n for n in view.nodes if selects(dict(n.labels))]
    live = [n for n in chosen if n.live]
    return WaitState(
        live=tuple(n.node for n in live),
        behind=tuple((n.node, n.synced_revision) for n in live if n.synced_revision < revision),
        silent=tuple(n.node for n in chosen if not n.live),
    )
