"""Hand-written protobuf encoding of fwd.v1.EventBatch: the event stream's hot path.

betterproto2 builds and serialises ~18k messages/s here, and a batch carries up
to 512 Event messages, so a subscriber could not get near the 50,000 events/s a
flood produces. Events are flat (scalars and strings), so their wire format is
a few lines; ``tests/unit/test_fastwire.py`` checks every field against
betterproto2's own encoding of the same event.
"""

from __future__ import annotations

from fwd.api.gen.fwd import v1 as pb
from fwd.events import DropEvent
from fwd.policy.model import Action

_ACTION = {Action.ALLOW: int(pb.Action.ALLOW), Action.DROP: int(pb.Action.DROP)}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


# Field tags, precomputed: (number, wire type 0 = varint, 2 = length-delimited).
_T = {n: _tag(n, 0) for n in (1, 3, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16, 17)}
_S = {n: _tag(n, 2) for n in (2, 4, 11, 12)}
_EVENTS = _tag(1, 2)
_LOST = _tag(2, 0)


def _uint(out: list[bytes], field: int, value: int) -> None:
    if value:
        out.append(_T[field])
        out.append(_varint(value))


def _str(out: list[bytes], field: int, value: str) -> None:
    if value:
        data = value.encode()
        out.append(_S[field])
        out.append(_varint(len(data)))
        out.append(data)


def encode_event(e: DropEvent, interface: str) -> bytes:
    """One fwd.v1.Event (fields in number order, defaults left out, as proto3 does)."""
    out: list[bytes] = []
    _uint(out, 1, e.time_ns)
    _str(out, 2, interface)
    _uint(out, 3, e.ifindex)
    _str(out, 4, e.rule_id)
    _uint(out, 5, _ACTION[e.action])
    _uint(out, 6, int(e.dropped))
    _uint(out, 7, int(e.dry_run))
    _uint(out, 8, int(e.would_drop))
    _uint(out, 9, int(e.default))
    _uint(out, 10, int(e.malformed))
    _str(out, 11, str(e.src) if e.src is not None else "")
    _str(out, 12, str(e.dst) if e.dst is not None else "")
    _uint(out, 13, e.sport)
    _uint(out, 14, e.dport)
    _uint(out, 15, e.proto)
    _uint(out, 16, e.tcp_flags)
    _uint(out, 17, e.length)
    return b"".join(out)


def encode_batch(events: list[bytes], lost: int) -> bytes:
    """A fwd.v1.EventBatch from already encoded events."""
    out: list[bytes] = []
    for ev in events:
        out.append(_EVENTS)
        out.append(_varint(len(ev)))
        out.append(ev)
    if lost:
        out.append(_LOST)
        out.append(_varint(lost))
    return b"".join(out)


class EncodedEventBatch(pb.EventBatch):
    """An EventBatch whose wire bytes are already known: grpclib's codec asks for
    ``SerializeToString()`` after an isinstance check, so the stream sends them as is."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._encoded = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - the protobuf API name
        return self._encoded

    def __bytes__(self) -> bytes:
        return self._encoded


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def scan_batch(data: bytes) -> tuple[int, int]:
    """(events, lost) of an encoded fwd.v1.EventBatch, without decoding each event.

    For clients that count events at flood rates (bench/events): a full
    betterproto2 parse costs ~30x more. Walks only the batch's own fields;
    unknown fields are skipped as protobuf requires. Raises ValueError on
    malformed input.
    """
    events = lost = pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field == 2:
                lost = value
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            pos += size
            if pos > end:
                raise ValueError("truncated field")
            if field == 1:
                events += 1
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != end:
        raise ValueError("truncated field")
    return events, lost
