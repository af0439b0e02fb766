"""What the API shows of a cluster: pure functions over the keys read from etcd.

``cluster_view`` turns the labels and status keys into one ``NodeView`` per
node; ``wait_state`` says which selected nodes are still behind a revision.
No I/O here: ``fwd.actors.cluster_admin`` reads etcd and calls these.

A node is *live* while its status record exists: the record is attached to the
agent's lease, so etcd deletes it when the agent stops renewing (crash,
partition). Nodes that are known only by their labels key are *silent*.

A node watches only ``policies/`` and its own labels (its etcd role allows no
more), so its ``synced_revision`` moves only with writes that concern it. A
node is *current* at revision R when its record says it enforces exactly the
policies (name, mod revision) that its labels select at R: it has nothing to
catch up on, whatever it has heard of, so its lag is 0 and a wait for any
revision up to R is over for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fwd.cluster.layout import PolicyRecord, decode_labels, decode_status
from fwd.cluster.merge import select
from fwd.errors import PolicyError
from fwd.messages import ClusterView, Labels, NodeView

Matcher = Callable[[Mapping[str, str]], bool]


def labels_of(mapping: Mapping[str, str]) -> Labels:
    """Labels in their canonical form: sorted (key, value) pairs."""
    return tuple(sorted(mapping.items()))


def read_labels(node: str, raw: bytes) -> dict[str, str]:
    """A labels key's value; an unreadable one counts as no labels (and is logged
    by whoever wrote it wrong: ``fwd cluster label`` only writes valid ones)."""
    try:
        return decode_labels(node, raw)
    except PolicyError:
        return {}


def node_view(
    node: str,
    raw: bytes,
    labels: Mapping[str, str] | None,
    revision: int,
    policies: Sequence[PolicyRecord] | None = None,
) -> NodeView:
    """A live node from its status record (docs/cluster.md has the fields); its lag is
    ``revision`` (the newest change the agents watch) minus its synced revision, or 0
    when it is current.

    ``labels`` from the node's labels key win over the ones in the record (etcd
    is the truth; the record says what the agent last saw). With ``policies``
    (every valid record at ``revision``) the node may be *current* (module doc).
    """
    try:
        s = decode_status(node, raw)
    except PolicyError as e:
        return NodeView(node, labels_of(labels or {}), True, last_error=f"unreadable status: {e}")
    current = False
    if policies is not None and labels is not None:
        wanted = tuple((r.name, r.mod_revision) for r in select(policies, labels))
        current = s.policies == wanted and dict(s.labels) == dict(labels)
    return NodeView(
        node=node,
        labels=labels_of(labels if labels is not None else s.labels),
        live=True,
        synced_revision=s.synced_revision,
        lag=0 if current else max(0, revision - s.synced_revision),
        policy_hash=s.policy_hash,
        policies=s.policies,
        applied_revision=s.applied_revision,
        interfaces=tuple((i.name, i.mode) for i in s.interfaces),
        last_error=s.last_error,
        version=s.version,
        updated=s.updated,
        current=current,
    )


def cluster_view(
    revision: int,
    labels: Mapping[str, bytes],
    statuses: Mapping[str, bytes],
    policies: Sequence[PolicyRecord] | None = None,
    *,
    policy_revision: int | None = None,
) -> ClusterView:
    """Every node named by a labels key or a status record, ordered by name.

    ``revision`` is the store's revision of the read (labels, status and ``policies``,
    the valid policy records, all read at it); ``policy_revision`` the newest mod
    revision under labels/ and policies/ (what agents watch), which lag is measured
    against (``revision`` when not given). Status writes move the store's revision but
    no agent watches them, so measuring against it showed lag on a quiet cluster.
    """
    reference = revision if policy_revision is None else policy_revision
    nodes = []
    for node in sorted(set(labels) | set(statuses)):
        own = read_labels(node, labels[node]) if node in labels else None
        if node in statuses:
            nodes.append(node_view(node, statuses[node], own, reference, policies))
        else:
            nodes.append(NodeView(node, labels_of(own or {}), live=False))
    return ClusterView(revision, tuple(nodes), policy_revision=reference)


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
    """Which live nodes whose labels ``selects`` accepts have not synced ``revision``
    (and are not current at the view's revision, which is at least ``revision``)."""
    chosen = [n for n in view.nodes if selects(dict(n.labels))]
    live = [n for n in chosen if n.live]
    caught_up = view.revision >= revision
    return WaitState(
        live=tuple(n.node for n in live),
        behind=tuple(
            (n.node, n.synced_revision)
            for n in live
            if n.synced_revision < revision and not (n.current and caught_up)
        ),
        silent=tuple(n.node for n in chosen if not n.live),
    )
