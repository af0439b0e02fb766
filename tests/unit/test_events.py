"""Pure decoding and filtering of drop events (fwd/core/records.py): no kernel."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from fwd.core import abi
from fwd.core.records import (
    RECORD_SIZE,
    DecodeError,
    Decoder,
    EventFilter,
    decode,
    encode,
    sum_event_stats,
)
from fwd.policy.model import Action

NAMES = {abi.SLOT_DEFAULT: "(default)", 16: "drop-bad", 17: "log-ssh"}


def test_decode_ipv4_tcp_record() -> None:
    raw = encode(
        src="198.18.1.2", dst="198.18.0.1", sport=40000, dport=22, proto=6, tcp_flags=0x02,
        ifindex=7, slot=17, action=abi.ACT_ALLOW, length=74, time_ns=5_000,
    )
    e = decode(raw, NAMES, wall_offset_ns=1_000_000)
    assert e.time_ns == 1_005_000
    assert (e.ifindex, e.rule_id, e.slot, e.action) == (7, "log-ssh", 17, Action.ALLOW)
    assert e.src == ipaddress.IPv4Address("198.18.1.2")
    assert e.dst == ipaddress.IPv4Address("198.18.0.1")
    assert (e.sport, e.dport, e.proto, e.tcp_flags, e.length) == (40000, 22, 6, 0x02, 74)
    assert not (e.dry_run or e.would_drop or e.default or e.malformed or e.icmp or e.dropped)


def test_decode_ipv6_icmp_flags_and_unknown_slot() -> None:
    flags = abi.EV_DRY_RUN | abi.EV_WOULD_DROP | abi.EV_DEFAULT
    raw = encode(src="2001:2::1", dst="2001:2::2", proto=58, sport=128, icmp=True, slot=99, flags=flags)
    e = decode(raw, NAMES)
    assert e.src == ipaddress.IPv6Address("2001:2::1")
    assert e.rule_id == ""  # slot not in the table
    assert e.icmp and e.sport == 128
    assert e.dry_run and e.would_drop and e.default and not e.malformed
    assert e.action is Action.DROP and not e.dropped  # would drop only


def test_ipv4_mapped_ipv6_stays_ipv6() -> None:
    e = decode(encode(src="::ffff:198.18.1.2", dst="2001:2::2"), NAMES)
    assert isinstance(e.src, ipaddress.IPv6Address)


def test_malformed_record_without_addresses() -> None:
    raw = bytearray(encode(flags=abi.EV_MALFORMED, slot=abi.SLOT_MALFORMED))
    raw[16:48] = bytes(32)  # the key's zeroes: parsing stopped before the addresses
    e = decode(bytes(raw), NAMES)
    assert e.malformed and e.src is None and e.dst is None and e.dropped


def test_decode_refuses_wrong_size_and_action() -> None:
    with pytest.raises(DecodeError):
        decode(b"\0" * (RECORD_SIZE - 1), NAMES)
    raw = bytearray(encode())
    raw[58] = 9  # action byte
    with pytest.raises(DecodeError, match="action"):
        decode(bytes(raw), NAMES)


def test_decoder_equals_decode_and_caches_only_what_decodes() -> None:
    dec = Decoder(NAMES, max_entries=2)
    records = [
        encode(sport=1000 + i % 3, time_ns=10**18 + i, slot=16 + i % 2) for i in range(12)
    ] + [encode(src="2001:2::1", dst="2001:2::2", proto=58, icmp=True, time_ns=5)]
    for raw in records:  # more distinct records than the cache holds: it is cleared, still right
        assert dec.decode(raw, 7) == decode(raw, NAMES, 7)
    first, again = dec.decode(records[0]), dec.decode(records[0])
    assert first.src is again.src  # repeated records share their address objects
    bad = bytearray(encode())
    bad[58] = 9
    for _ in range(2):  # an undecodable record is refused every time, never cached
        with pytest.raises(DecodeError, match="action"):
            dec.decode(bytes(bad))
    with pytest.raises(DecodeError):
        dec.decode(b"\0" * (RECORD_SIZE + 1))


def test_filter_fields() -> None:
    e = decode(encode(src="198.18.1.2", dst="198.18.0.1", ifindex=3, slot=16), NAMES)
    e6 = decode(encode(src="2001:2:0:1::2", dst="2001:2::1", ifindex=4, slot=17, action=0), NAMES)
    assert EventFilter().matches(e) and EventFilter().matches(e6)
    assert EventFilter(actions=frozenset({Action.DROP})).matches(e)
    assert not EventFilter(actions=frozenset({Action.DROP})).matches(e6)
    assert EventFilter(rule_ids=frozenset({"log-ssh"})).matches(e6)
    assert not EventFilter(rule_ids=frozenset({"log-ssh"})).matches(e)
    assert EventFilter(ifindexes=frozenset({3})).matches(e)
    assert not EventFilter(ifindexes=frozenset({3})).matches(e6)
    by_dst = EventFilter(prefixes=(ipaddress.ip_network("198.18.0.0/24"),))
    assert by_dst.matches(e) and not by_dst.matches(e6)
    v6 = EventFilter(prefixes=(ipaddress.ip_network("2001:2:0:1::/64"),))
    assert v6.matches(e6) and not v6.matches(e)
    # Every field must match.
    both = EventFilter(actions=frozenset({Action.DROP}), ifindexes=frozenset({4}))
    assert not both.matches(e) and not both.matches(e6)


def test_sum_event_stats_over_cpus() -> None:
    raw = struct.pack("=QQQ", 5, 1, 0) + struct.pack("=QQQ", 7, 2, 3)
    s = sum_event_stats(raw, 2)
    assert (s.emitted, s.suppressed, s.ringbuf_full, s.logged) == (12, 3, 3, 18)
    with pytest.raises(DecodeError):
        sum_event_stats(raw, 3)


def test_agent_event_budget_options(capsys: pytest.CaptureFixture[str]) -> None:
    from fwd.cli import build_parser, main
    from fwd.settings import Settings

    # The agent's defaults are the kernel's (bpf/fwd.h FWD_EVENT_RATE / _BURST).
    assert (Settings().event_rate, Settings().event_burst) == (abi.EVENT_RATE, abi.EVENT_BURST)
    parser = build_parser()
    args = parser.parse_args(["agent"])
    assert (args.event_rate, args.event_burst) == (abi.EVENT_RATE, abi.EVENT_BURST)
    args = parser.parse_args(["agent", "--event-rate", "0", "--event-burst", "1"])
    assert (args.event_rate, args.event_burst) == (0, 1)  # the kernel accepts both (bpf/fwd.h limits)
    for bad in (["--event-rate", "-1"], ["--event-rate", str(abi.EVENT_MAX_RATE + 1)],
                ["--event-burst", "0"], ["--event-rate", "fast"]):
        assert main(["agent", *bad]) == 2, bad
        assert "--event-" in capsys.readouterr().err
