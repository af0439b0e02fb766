"""One node's view of the watched key range: policies and its own labels (pure).

``load`` replaces the view from a range get; ``apply`` folds in one watch batch.
A stored value that does not validate never replaces a good one: the policy
keeps its last valid version (or is left out if it never had one) and the
error is reported, so a hand-edited bad key in etcd cannot take a node's
firewall down or make it less strict than the last valid state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fwd.cluster.etcd import Event, KeyValue
from fwd.cluster.layout import Layout, PolicyRecord, decode_labels, decode_policy_record
from fwd.cluster.merge import select
from fwd.errors import PolicyError


class NodeView:
    """The policies in etcd and the labels of ``node``, kept current by watch events."""

    def __init__(self, layout: Layout, node: str) -> None:
        self.layout = layout
        self.node = node
        self._labels_key = layout.labels_key(node)
        self.policies: dict[str, PolicyRecord] = {}
        self.labels: dict[str, str] | None = None  # None: no labels key
        self.errors: dict[str, str] = {}  # key -> why its stored value was refused

    def load(self, kvs: Iterable[KeyValue]) -> None:
        """Start over from a range get (after a reconnect or a compaction)."""
        old = self.policies
        self.policies, self.labels, self.errors = {}, None, {}
        seen: set[str] = set()
        for kv in kvs:
            name = self.layout.name_in(self.layout.policies, kv.key)
            if name is not None:
                seen.add(name)
                self._put_policy(name, kv, old.get(name))
            elif kv.key == self._labels_key:
                self._put_labels(kv)

    def apply(self, events: Iterable[Event]) -> bool:
        """Fold in one watch batch, in order; False if none of it concerns this node
        (only other nodes' labels changed)."""
        relevant = False
        for ev in events:
            kv = ev.kv
            name = self.layout.name_in(self.layout.policies, kv.key)
            if name is not None or kv.key == self._labels_key:
                relevant = True
            if name is not None:
                if ev.deleted:
                    self.policies.pop(name, None)
                    self.errors.pop(kv.key, None)
                else:
                    self._put_policy(name, kv, self.policies.get(name))
            elif kv.key == self._labels_key:
                if ev.deleted:
                    self.labels = None
                    self.errors.pop(kv.key, None)
                else:
                    self._put_labels(kv)
        return relevant

    def _put_policy(self, name: str, kv: KeyValue, previous: PolicyRecord | None) -> None:
        try:
            self.policies[name] = decode_policy_record(name, kv.value, kv.mod_revision)
            self.errors.pop(kv.key, None)
        except PolicyError as e:
            self.errors[kv.key] = str(e)
            if previous is not None:
                self.policies[name] = previous

    def _put_labels(self, kv: KeyValue) -> None:
        try:
            self.labels = decode_labels(self.node, kv.value)
            self.errors.pop(kv.key, None)
        except PolicyError as e:
            self.errors[kv.key] = str(e)

    def node_labels(self) -> Mapping[str, str]:
        return self.labels if self.labels is not None else {}

    def selected(self) -> list[PolicyRecord]:
        """The policies that select this node, in merge order."""
        return select(self.policies.values(), self.node_labels())

    def error_text(self) -> str:
        return "; ".join(f"refused {k[len(self.layout.prefix):]}: {v}" for k, v in sorted(self.errors.items()))
