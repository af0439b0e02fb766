"""How the CLI prints: aligned tables, JSON, enum names; the error a command fails with."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fwd.api.gen.fwd import v1 as pb


class Failed(Exception):
    """A command failed; the message is printed after "fwd: "."""


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    lines = []
    for line in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(line, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def enum_name(value: Any) -> str:
    """An enum member as lower-case text ("native"); an unknown value as its number."""
    name = getattr(value, "name", None)
    if not name or name.startswith("~"):
        return str(int(value))
    return str(name).lower()


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


def rule_stats_to_json(stats: pb.RuleStats) -> dict[str, Any]:
    return {
        "rule_id": stats.rule_id,
        "action": enum_name(stats.action),
        "packets": stats.packets,
        "bytes": stats.bytes,
        "would_drop_packets": stats.would_drop_packets,
        "would_drop_bytes": stats.would_drop_bytes,
    }


def summary(rule: dict[str, Any]) -> str:
    parts = [f"{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
             for k, v in rule.items() if k not in ("id", "action")]
    return " ".join(parts) or "any"
