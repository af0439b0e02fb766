"""Type-check decoded request messages before any handler sees them.

betterproto2 0.10 does not check wire types while parsing: bytes that put a
varint where a message belongs decode into a message whose field holds an int
(``ApplyPolicyRequest.parse(b"\\x08\\x00").policy == 0``). Handlers would then
crash on untrusted input. ``check_types`` walks a decoded message against its
field metadata and names the first field whose value has the wrong type.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import betterproto2

_SCALARS: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "bytes": bytes,
    "bool": bool,
    "float": (float, int),
    "double": (float, int),
}


class WireTypeError(ValueError):
    """A decoded message holds a value of the wrong type (malformed wire data)."""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The protobuf varint at ``data[pos:]`` and the position after it (at most 10
    bytes); ValueError if it is truncated or longer."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def _check_value(value: Any, proto_type: str, cls: type | None, path: str) -> None:
    if proto_type == "message":
        if cls is not None and not isinstance(value, cls):
            raise WireTypeError(f"{path}: expected a message, got malformed data")
        if isinstance(value, betterproto2.Message):
            check_types(value, path)
        return
    expected = _SCALARS.get(proto_type)
    if expected is not None:
        ok = isinstance(value, expected) and not (
            proto_type != "bool" and isinstance(value, bool)
        )
    else:  # enums and every integer type
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise WireTypeError(f"{path}: expected {proto_type}, got malformed data")


def check_types(message: betterproto2.Message, path: str = "") -> None:
    """Raise WireTypeError naming the first field of ``message`` with a wrongly typed value."""
    meta = message._betterproto  # type: ignore[arg-type]  # classproperty typing
    for field in dataclasses.fields(message):  # type: ignore[arg-type]
        fmeta = field.metadata.get("betterproto")
        if fmeta is None:
            continue
        value = getattr(message, field.name)
        name = f"{path}.{field.name}" if path else field.name
        if value is None:
            if fmeta.optional or (fmeta.proto_type == "message" and not fmeta.repeated):
                continue  # unset optional field or message
            # A scalar is never None in a well-formed message (a deprecated
            # group wire type, for one, decodes to None).
            raise WireTypeError(f"{name}: expected {fmeta.proto_type}, got malformed data")
        cls = meta.cls_by_field.get(field.name) if fmeta.proto_type == "message" else None
        if fmeta.map_meta is not None:
            if not isinstance(value, dict):
                raise WireTypeError(f"{name}: expected a map, got malformed data")
            continue  # our protos have no maps of messages with nested checks yet
        if fmeta.repeated:
            if not isinstance(value, list):
                raise WireTypeError(f"{name}: expected a list, got malformed data")
            for i, item in enumerate(value):
                _check_value(item, fmeta.proto_type, cls, f"{name}[{i}]")
        else:
            _check_value(value, fmeta.proto_type, cls, name)
