"""How the CLI prints: aligned tables, JSON, enum names; the error a command fails with.

Every ``-o json`` output follows one convention: keys are snake_case (proto field names,
never protobuf's camelCase JSON names); integers are JSON numbers, 64-bit ones too
(protobuf's JSON mapping makes them strings); enums are the short lower-case words the
policy YAML uses (``drop``, ``native``), never proto names (``ACTION_DROP``).
:func:`message_to_json` applies it to any API message; tests/e2e/test_json_output.py
checks it over every command that has ``-o json``.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from collections.abc import Sequence
from typing import Any

import betterproto2

from fwd.api.gen.fwd import v1 as pb
from fwd.api.statswire import StatsRow


class Failed(Exception):
    """A command failed; the message is printed after "fwd: "."""


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    # Column by column (100,000-row tables print in a fraction of a second).
    columns = [[str(h), *(str(row[i]) for row in rows)] for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(type(row[i]) is int for row in rows)
               for i in range(len(headers))]  # fmt: skip
    padded = [
        [c.rjust(w) if num else c.ljust(w) for c in col]
        for col, num in zip(columns, numeric, strict=True)
        for w in (max(map(len, col)),)
    ]
    return "\n".join("  ".join(line).rstrip() for line in zip(*padded)) + "\n"


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def dumps_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A JSON array of flat objects, one a line: what ``dumps`` writes for small data,
    but through the C encoder (``indent`` forces the pure-Python one: seconds at 100,000)."""
    if not rows:
        return "[]\n"
    encode = json.JSONEncoder(sort_keys=True).encode
    return "[\n" + ",\n".join(map(encode, rows)) + "\n]\n"


def enum_name(value: Any) -> str:
    """An enum member as lower-case text ("native"); an unknown value as its number."""
    name = getattr(value, "name", None)
    if not name or name.startswith("~"):
        return str(int(value))
    return str(name).lower()


def message_to_json(message: betterproto2.Message) -> dict[str, Any]:
    """An API message as JSON data in the CLI's convention, every field present (with its
    default when unset; an absent message is null)."""
    fields = dataclasses.fields(message)  # type: ignore[arg-type]  # generated dataclasses
    return {f.name: _json_value(getattr(message, f.name)) for f in fields}


def _json_value(value: Any) -> Any:
    if isinstance(value, betterproto2.Message):
        return message_to_json(value)
    if isinstance(value, enum.Enum):
        word = enum_name(value)
        return int(word) if word.lstrip("-").isdigit() else word
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def interface_to_json(iface: pb.Interface) -> dict[str, Any]:
    return {
        "name": iface.name,
        "ifindex": iface.ifindex,
        "state": enum_name(iface.state),
        "mode": enum_name(iface.mode),
        "prog_id": iface.prog_id,
        "link_id": iface.link_id,
        "error": iface.error,
        "adopted": iface.adopted,
    }


_ACTION_NAMES = {int(a): enum_name(a) for a in pb.Action}


def rule_stats_to_json(stats: pb.RuleStats | StatsRow) -> dict[str, Any]:
    action = int(stats.action)
    return {
        "rule_id": stats.rule_id,
        "action": _ACTION_NAMES.get(action) or str(action),
        "packets": stats.packets,
        "bytes": stats.bytes,
        "would_drop_packets": stats.would_drop_packets,
        "would_drop_bytes": stats.would_drop_bytes,
    }


def summary(rule: dict[str, Any]) -> str:
    parts = [f"{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
             for k, v in rule.items() if k not in ("id", "action")]
    return " ".join(parts) or "any"
