"""The hand-written Event encoding equals betterproto2's, field for field."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwd.api import convert
from fwd.api.fastwire import (
    BatchEncoder,
    EncodedEventBatch,
    EventEncoder,
    encode_batch,
    encode_event,
    scan_batch,
)
from fwd.api.gen.fwd import v1 as pb
from fwd.core.records import DropEvent
from fwd.policy.model import Action

U16 = st.integers(min_value=0, max_value=65535)
ADDRS = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(min_value=0, max_value=2**128 - 1).map(ipaddress.IPv6Address),
)
EVENTS = st.builds(
    DropEvent,
    time_ns=st.integers(min_value=0, max_value=2**64 - 1),
    ifindex=st.integers(min_value=0, max_value=2**32 - 1),
    rule_id=st.text(max_size=20),
    slot=st.integers(min_value=0, max_value=2**20),
    action=st.sampled_from([Action.ALLOW, Action.DROP]),
    dry_run=st.booleans(), would_drop=st.booleans(), default=st.booleans(),
    malformed=st.booleans(), src=ADDRS, dst=ADDRS, sport=U16, dport=U16,
    proto=st.integers(min_value=0, max_value=255), tcp_flags=st.integers(min_value=0, max_value=255),
    icmp=st.booleans(), length=U16,
)


@given(st.lists(st.tuples(EVENTS, st.text(max_size=15)), max_size=8),
       st.integers(min_value=0, max_value=2**64 - 1))
def test_same_message_as_betterproto2(events: list[tuple[DropEvent, str]], lost: int) -> None:
    fast = encode_batch([encode_event(e, iface) for e, iface in events], lost)
    slow = pb.EventBatch(events=[convert.event_to_proto(e, iface) for e, iface in events], lost=lost)
    assert pb.EventBatch.parse(fast) == slow
    assert fast == bytes(slow)  # field order too: identical bytes
    assert EncodedEventBatch(fast).SerializeToString() == fast


@given(st.lists(st.tuples(EVENTS, st.text(max_size=15)), max_size=8),
       st.integers(min_value=0, max_value=2**64 - 1))
def test_scan_batch_counts_what_betterproto2_parses(
    events: list[tuple[DropEvent, str]], lost: int
) -> None:
    data = bytes(pb.EventBatch(events=[convert.event_to_proto(e, i) for e, i in events], lost=lost))
    assert scan_batch(data) == (len(events), lost)


def test_scan_batch_rejects_truncated_input() -> None:
    data = encode_batch([encode_event(e, "eth0") for e in [_event()] * 2], 3)
    assert scan_batch(data) == (2, 3)
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError):
            scan_batch(data[:cut])


def _event() -> DropEvent:
    return DropEvent(
        1, 2, "r", 16, Action.DROP, False, False, False, False,
        ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.18.0.2"),
        1000, 53, 17, 0, False, 64,
    )


@given(st.lists(st.tuples(EVENTS, st.sampled_from(["", "eth0", "vB"])), max_size=8))
def test_event_encoder_equals_encode_event(events: list[tuple[DropEvent, str]]) -> None:
    enc = EventEncoder(max_entries=3)
    for e, iface in events * 2:  # the second round hits the cache
        assert enc.encode(e, iface) == encode_event(e, iface)


def test_event_encoder_time_varint_at_every_size() -> None:
    enc = EventEncoder()
    base = _event()
    for t in (0, 1, 127, 128, 2**28 - 1, 2**28, 2**35 + 5, 2**63 - 1, 2**64 - 1, 1_800_000_000 * 10**9):
        e = base._replace(time_ns=t)
        assert enc.encode(e, "eth0") == encode_event(e, "eth0"), t


def test_batch_encoder_encodes_a_shared_batch_once() -> None:
    enc = BatchEncoder(keep=2)
    events = tuple(_event()._replace(time_ns=2**40 + i) for i in range(5))
    names = {2: "eth0"}
    expect = encode_batch([encode_event(e, "eth0") for e in events], 0)
    assert enc.encode(events, names, 0) == expect
    assert enc.encode(events, dict(names), 4) == encode_batch(
        [encode_event(e, "eth0") for e in events], 4
    )
    # Other names for the same tuple: not the cached bytes.
    assert enc.encode(events, {2: "eth9"}, 0) == encode_batch(
        [encode_event(e, "eth9") for e in events], 0
    )
    for _ in range(3):  # older tuples are forgotten: still right
        other = tuple(e._replace(sport=7) for e in events)
        assert enc.encode(other, names, 0) == encode_batch(
            [encode_event(e, "eth0") for e in other], 0
        )
    assert enc.encode((), names, 9) == encode_batch([], 9)
