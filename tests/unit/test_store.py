"""The SQLite store: snapshots plus a journal; any revision can be read back for rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fwd.policy.model import policy_from_dict, policy_to_dict, rule_to_dict
from fwd.store import MemoryStore, SqliteStore, Store, policy_json

P1 = policy_from_dict({
    "sets": {"bl": {"type": "prefix", "elements": ["198.51.100.0/24"]}},
    "rules": [{"id": "a", "action": "drop", "src_set": "bl"}],
})
NEW_RULE = policy_from_dict({"rules": [{"id": "b", "action": "drop", "protocol": "udp"}]}).rules[0]


def fill(store: Store) -> None:
    store.save(1, P1, {"a": 16})
    store.save_change(2, {"op": "add_rule", "rule": rule_to_dict(NEW_RULE), "index": 0, "slot": 17})
    store.save_change(3, {"op": "set", "name": "bl", "add": ["198.18.1.0/24"], "remove": []})
    store.save_change(4, {"op": "delete_rule", "id": "a"})


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_every_revision_reads_back(tmp_path: Path, kind: str) -> None:
    store: Store = SqliteStore(tmp_path) if kind == "sqlite" else MemoryStore()
    fill(store)
    latest = store.latest()
    assert latest is not None and latest.revision == 4
    assert [r.id for r in latest.policy.rules] == ["b"] and latest.slots == {"b": 17}
    two = store.get(2)
    assert two is not None and [r.id for r in two.policy.rules] == ["b", "a"]
    three = store.get(3)
    assert three is not None
    assert three.policy.set_named("bl").elements() == ["198.18.1.0/24", "198.51.100.0/24"]  # type: ignore[union-attr]
    assert store.get(99) is None
    page, total = store.history(0, 3)
    assert total == 4 and [s.revision for s in page] == [4, 3, 2]
    page, _ = store.history(3, 3)
    assert [s.revision for s in page] == [1]


def test_a_snapshot_after_journal_records_keeps_their_history(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    fill(store)
    store.save(5, P1, {"a": 16})
    reopened = SqliteStore(tmp_path)  # survives a restart
    assert reopened.latest().revision == 5  # type: ignore[union-attr]
    old = reopened.get(2)
    assert old is not None and [r.id for r in old.policy.rules] == ["b", "a"]
    assert reopened.history(0, 10)[1] == 5


@pytest.mark.parametrize("raw", [
    {},
    {"default_action": "drop", "dry_run": True, "log_default": True,
     "sets": {"bl": {"type": "prefix", "elements": ["198.51.100.0/24", "2001:db8::/32"]},
              "web": {"type": "port", "elements": [80, "8000-8080"]}},
     "rules": [{"id": "a", "action": "drop", "src_set": "bl"},
               {"id": "b", "action": "allow", "protocol": "tcp", "src": ["198.18.0.0/15"],
                "dst": ["198.18.0.1"], "dst_port_set": "web", "tcp_flags": "syn,!ack",
                "interfaces": ["eth*"], "log": True, "audit": True, "fragment": False},
               {"id": "c", "action": "drop", "protocol": "icmpv6", "icmp_type": 128,
                "icmp_code": 0, "src": ["2001:2::/48"]}]},
])  # fmt: skip
def test_policy_json_is_the_json_of_the_plain_data(raw: dict[str, object]) -> None:
    """The snapshot text is encoded rule by rule; it must decode to policy_to_dict's form."""
    policy = policy_from_dict(raw)
    assert json.loads(policy_json(policy)) == policy_to_dict(policy)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_discarded_revision_is_gone_and_its_number_free(tmp_path: Path, kind: str) -> None:
    # The Datapath saves before it commits; a commit that fails discards the revision.
    store: Store = SqliteStore(tmp_path) if kind == "sqlite" else MemoryStore()
    fill(store)
    store.discard(4)  # a journal record
    latest = store.latest()
    assert latest is not None and latest.revision == 3 and store.get(4) is None
    store.save(4, P1, {"a": 16})  # the next change takes the same number
    store.discard(4)  # a snapshot
    latest = store.latest()
    assert latest is not None and latest.revision == 3
    assert [r.id for r in latest.policy.rules] == ["b", "a"]
    store.save_change(4, {"op": "delete_rule", "id": "b"})
    latest = store.latest()
    assert latest is not None and [r.id for r in latest.policy.rules] == ["a"]
    assert store.history(0, 10)[1] == 4
