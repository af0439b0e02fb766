"""Hand-written protobuf for fwd.v1.ListRuleStatsResponse, both ways.

betterproto2 encodes and decodes ~25k RuleStats per second here, so 100,000
rules' counters took ~8 s of encoding and decoding alone (and `fwd stats` 1 min
51 s with the page-by-page full reads before). The messages are flat, so their
wire format is a few lines each way; the bytes are what betterproto2 makes
(tests/unit/test_statswire.py compares them field by field).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from fwd.api import convert, wire
from fwd.api.gen.fwd import v1 as pb
from fwd.messages import RuleStats

_ACTION = {name: int(convert.action_to_proto(name)) for name in ("allow", "drop")}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint(i) for i in range(16384)]


def _v(value: int) -> bytes:
    return _SMALL[value] if value < 16384 else _varint(value)


def encode_rule_stats(s: RuleStats) -> bytes:
    """One fwd.v1.RuleStats (fields in number order, zero values left out)."""
    rid = s.rule_id.encode()
    out = [b"\x0a", _v(len(rid)), rid] if rid else []
    action = _ACTION.get(s.action, 0)
    if action:
        out += (b"\x10", _v(action))
    if s.packets:
        out += (b"\x18", _v(s.packets))
    if s.bytes:
        out += (b"\x20", _v(s.bytes))
    if s.would_drop_packets:
        out += (b"\x28", _v(s.would_drop_packets))
    if s.would_drop_bytes:
        out += (b"\x30", _v(s.would_drop_bytes))
    return b"".join(out)


def encode_page(stats: Sequence[RuleStats], next_page_token: str) -> bytes:
    """A fwd.v1.ListRuleStatsResponse."""
    parts: list[bytes] = []
    for s in stats:
        body = encode_rule_stats(s)
        parts += (b"\x0a", _v(len(body)), body)
    if next_page_token:
        token = next_page_token.encode()
        parts += (b"\x12", _v(len(token)), token)
    return b"".join(parts)


class EncodedStatsPage(pb.ListRuleStatsResponse):
    """A response whose wire bytes are already known (grpclib's codec sends them as is)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._encoded = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf API name
        return self._encoded

    def __bytes__(self) -> bytes:
        return self._encoded


@dataclass
class StatsRow:
    """One decoded RuleStats (the action as its proto number)."""

    rule_id: str = ""
    action: int = 0
    packets: int = 0
    bytes: int = 0
    would_drop_packets: int = 0
    would_drop_bytes: int = 0


_read = wire.read_varint


def _skip(data: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _read(data, pos)[1]
    if wire_type == 2:
        n, pos = _read(data, pos)
        return pos + n
    if wire_type == 1:
        return pos + 8
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire_type}")


def _row(data: bytes, pos: int, end: int) -> StatsRow:
    # The hot loop of a 100,000-row read: one-byte varints (tags, small counts)
    # are read inline, longer ones by wire.read_varint.
    if end > len(data):
        raise ValueError("truncated RuleStats")
    values = [0, 0, 0, 0, 0, 0, 0]  # by field number; 1 (the id) stays unused
    rule_id = ""
    while pos < end:
        key = data[pos]
        pos += 1
        if key == 0x0A:  # field 1, length-delimited: the rule id
            n = data[pos]
            if n < 0x80:
                pos += 1
            else:
                n, pos = _read(data, pos)
            rule_id = data[pos : pos + n].decode()
            pos += n
        elif key in _VARINT_KEYS:
            value = data[pos]
            if value < 0x80:
                pos += 1
            else:
                value, pos = _read(data, pos)
            values[key >> 3] = value
        else:
            if key & 0x80:
                key, pos = _read(data, pos - 1)
            pos = _skip(data, pos, key & 7)
    if pos != end:
        raise ValueError("truncated RuleStats")
    return StatsRow(rule_id, values[2], values[3], values[4], values[5], values[6])


_VARINT_KEYS = frozenset({0x10, 0x18, 0x20, 0x28, 0x30})  # fields 2-6, wire type 0


class DecodedStatsPage:
    """A ListRuleStatsResponse decoded by hand: the reply type the CLI asks grpclib for."""

    def __init__(self, rows: list[StatsRow], next_page_token: str) -> None:
        self.stats = rows
        self.next_page_token = next_page_token

    @classmethod
    def FromString(cls, data: bytes) -> Self:  # noqa: N802 - the protobuf API name
        rows: list[StatsRow] = []
        token = ""
        pos, end = 0, len(data)
        while pos < end:
            key, pos = _read(data, pos)
            field, wt = key >> 3, key & 7
            if field == 1 and wt == 2:
                n, pos = _read(data, pos)
                rows.append(_row(data, pos, pos + n))
                pos += n
            elif field == 2 and wt == 2:
                n, pos = _read(data, pos)
                token = data[pos : pos + n].decode()
                pos += n
            else:
                pos = _skip(data, pos, wt)
        if pos != end:
            raise ValueError("truncated ListRuleStatsResponse")
        return cls(rows, token)
