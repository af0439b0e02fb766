"""fwd.cluster.overview: what ``fwd cluster status`` and ``wait`` make of etcd's keys (pure)."""

from __future__ import annotations

from fwd.cluster.layout import InterfaceMode, StatusRecord, encode_labels, encode_status
from fwd.cluster.overview import cluster_view, wait_state
from fwd.cluster.selector import parse_selector


def status(node: str, synced: int, **labels: str) -> bytes:
    return encode_status(StatusRecord(
        node=node, labels=labels, synced_revision=synced, policy_hash="abc",
        policies=(("edge", 5),), applied_revision=3,
        interfaces=(InterfaceMode("eth0", "native"),), version="1.0", updated=1700000000.5,
    ))  # fmt: skip


def test_nodes_from_labels_and_status_records() -> None:
    view = cluster_view(
        20,
        labels={"a": encode_labels({"role": "edge"}), "gone": encode_labels({"role": "edge"}),
                "bad": b"not json"},  # fmt: skip
        statuses={"a": status("a", 18, role="core"), "b": status("b", 20, role="edge"),
                  "bad": b"{"},  # fmt: skip
    )
    nodes = {n.node: n for n in view.nodes}
    assert [n.node for n in view.nodes] == ["a", "b", "bad", "gone"]
    a = nodes["a"]
    # The labels key is the truth; the record says what the agent last saw.
    assert a.labels == (("role", "edge"),) and a.live and a.lag == 2
    assert (a.policy_hash, a.policies, a.applied_revision) == ("abc", (("edge", 5),), 3)
    assert a.interfaces == (("eth0", "native"),) and a.updated == 1700000000.5
    # No labels key: the record's labels.
    assert nodes["b"].labels == (("role", "edge"),) and nodes["b"].lag == 0
    # An unreadable record still says the node is live, and why nothing else is known.
    assert nodes["bad"].live and "unreadable status" in nodes["bad"].last_error
    assert nodes["bad"].labels == ()
    # Labels but no status record: the lease expired (or it never reported).
    assert not nodes["gone"].live and nodes["gone"].synced_revision == 0


def test_lag_counts_from_the_newest_watched_change() -> None:
    """Status writes moved the store to 25; the newest label/policy change is 19."""
    statuses = {"a": status("a", 18), "b": status("b", 19), "c": status("c", 24)}
    view = cluster_view(25, labels={}, statuses=statuses, policy_revision=19)
    assert (view.revision, view.policy_revision) == (25, 19)
    assert {n.node: n.lag for n in view.nodes} == {"a": 1, "b": 0, "c": 0}
    # Without it (older callers), lag counts from the store's revision.
    assert cluster_view(25, {}, statuses).nodes[0].lag == 7


def test_wait_state_counts_only_live_selected_nodes() -> None:
    view = cluster_view(
        30,
        labels={"c": encode_labels({"role": "core"}), "dead": encode_labels({"role": "edge"})},
        statuses={"a": status("a", 30, role="edge"), "b": status("b", 25, role="edge"),
                  "c": status("c", 1, role="core")},  # fmt: skip
    )
    edge = wait_state(view, 30, parse_selector("role=edge").matches)
    assert edge.live == ("a", "b") and edge.silent == ("dead",)
    assert edge.behind == (("b", 25),) and not edge.done
    assert edge.describe_behind() == "b (synced 25)"
    assert wait_state(view, 25, parse_selector("role=edge").matches).done
    everyone = wait_state(view, 25, parse_selector("").matches)
    assert everyone.behind == (("c", 1),)


def test_a_node_that_enforces_what_etcd_holds_for_it_is_current() -> None:
    """A node hears only of writes that concern it: one that enforces exactly the
    policies its labels select now has no lag, whatever its synced revision."""
    from fwd.cluster.layout import decode_policy_record, encode_policy_record
    from fwd.policy.model import policy_from_dict

    value = encode_policy_record("role=edge", 10, policy_from_dict({"rules": []}))
    policies = [decode_policy_record("edge", value, 5)]
    view = cluster_view(
        30,
        labels={"a": encode_labels({"role": "edge"}), "b": encode_labels({"role": "core"}),
                "c": encode_labels({"role": "edge"})},  # fmt: skip
        statuses={"a": status("a", 18, role="edge"), "b": status("b", 18, role="edge"),
                  "c": status("c", 29, role="core")},  # fmt: skip
        policies=policies,
    )
    nodes = {n.node: n for n in view.nodes}
    assert nodes["a"].current and nodes["a"].lag == 0 and nodes["a"].synced_revision == 18
    # b was relabelled out of "edge" and still enforces it; c's record has stale labels.
    assert not nodes["b"].current and nodes["b"].lag == 12
    assert not nodes["c"].current and nodes["c"].lag == 1
    everyone = wait_state(view, 30, parse_selector("").matches)
    assert everyone.behind == (("b", 18), ("c", 29))
    # Current at the view's revision says nothing about a revision after it.
    assert wait_state(view, 31, parse_selector("role=edge").matches).behind == (("a", 18), ("c", 29))
