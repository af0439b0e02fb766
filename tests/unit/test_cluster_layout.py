"""The etcd key layout and its records: round trips and errors naming the key and field."""

from __future__ import annotations

import json

import pytest

from fwd.cluster.layout import (
    InterfaceMode,
    Layout,
    StatusRecord,
    check_policy_name,
    decode_labels,
    decode_policy_record,
    decode_status,
    encode_labels,
    encode_policy_record,
    encode_status,
)
from fwd.errors import PolicyError
from fwd.policy.model import policy_from_dict

POLICY = policy_from_dict(
    {"default_action": "drop", "rules": [{"id": "ssh", "action": "allow", "protocol": "tcp", "dst_ports": [22]}]}
)


def test_keys_and_the_watch_range() -> None:
    layout = Layout("/x")  # a missing trailing slash is added
    assert layout.policy_key("web") == "/x/policies/web"
    assert layout.labels_key("n1") == "/x/labels/n1"
    assert layout.status_key("n1") == "/x/status/n1"
    start, end = layout.watch_range()
    assert start <= layout.labels_key("n1") < end
    assert start <= layout.policy_key("zzz") < end
    assert not start <= layout.status_key("n1") < end  # agents never watch status writes
    assert layout.name_in(layout.policies, "/x/policies/web") == "web"
    assert layout.name_in(layout.policies, "/x/policies/a/b") is None
    assert layout.name_in(layout.policies, "/x/labels/web") is None


@pytest.mark.parametrize("name", ["", ".", "..", "-x", "a/b", "a b", "x" * 65])
def test_bad_policy_names(name: str) -> None:
    with pytest.raises(PolicyError) as info:
        check_policy_name(name)
    assert info.value.field == "name"


def test_policy_record_round_trip() -> None:
    value = encode_policy_record("role=edge", 100, POLICY)
    record = decode_policy_record("web", value, mod_revision=7)
    assert (record.name, record.priority, record.mod_revision) == ("web", 100, 7)
    assert record.policy == POLICY
    assert record.selector.matches({"role": "edge"}) and not record.selector.matches({})
    assert json.loads(value)["selector"] == "role=edge"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"{not json", "policies/web"),
        (b"[]", "policies/web"),
        (b'{"selector": "role=edge", "extra": 1}', "policies/web.extra"),
        (b'{"selector": 5}', "policies/web.selector"),
        (b'{"selector": "role in (a"}', "policies/web.selector"),
        (b'{"priority": "high"}', "policies/web.priority"),
        (b'{"priority": true}', "policies/web.priority"),
        (b'{"policy": {"rules": [{"id": "x", "action": "reject"}]}}', "policies/web.rules[0].action"),
    ],
)
def test_bad_policy_records_name_key_and_field(raw: bytes, field: str) -> None:
    with pytest.raises(PolicyError) as info:
        decode_policy_record("web", raw)
    assert info.value.field == field


def test_encode_refuses_a_bad_selector() -> None:
    with pytest.raises(PolicyError, match="selector"):
        encode_policy_record("role in (", 0, POLICY)


def test_labels_round_trip_and_errors() -> None:
    assert decode_labels("n1", encode_labels({"zone": "a", "role": "edge"})) == {"role": "edge", "zone": "a"}
    with pytest.raises(PolicyError) as info:
        decode_labels("n1", b'{"role": 3}')
    assert info.value.field == "labels/n1.role"
    with pytest.raises(PolicyError):
        decode_labels("n1", b'["role"]')


def test_status_round_trip() -> None:
    status = StatusRecord(
        node="n1",
        labels={"role": "edge"},
        synced_revision=42,
        policy_hash="ab" * 32,
        policies=(("base", 3), ("web", 40)),
        applied_revision=5,
        interfaces=(InterfaceMode("eth0", "native"),),
        last_error="",
        version="0.1.0",
        updated=1.5,
    )
    raw = json.loads(encode_status(status))
    assert raw["policies"] == [["base", 3], ["web", 40]]
    assert raw["interfaces"] == [{"name": "eth0", "mode": "native"}]
    assert decode_status("n1", encode_status(status)) == status
    with pytest.raises(PolicyError):
        decode_status("n1", b'{"synced_revision": "x"}')
