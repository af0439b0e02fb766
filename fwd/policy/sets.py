"""Named sets: prefixes or ports that many rules refer to by name.

Prefix sets can be large (a 1,000,000-prefix blocklist), so their elements are
kept as a frozenset of canonical CIDR strings: about 100 bytes each instead of
the ~300 an ``ipaddress`` network object and its cached fields cost, and set
differences between two versions are plain frozenset operations. The data
plane stores them in an LPM trie and never expands them into rule entries.
Port sets are small and are expanded into each referring rule's port ranges.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fwd.errors import PolicyError
from fwd.policy.fields import IPNetwork, PortRange, parse_cidr, parse_list, parse_ports

SET_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
MAX_PREFIX_SETS = 16  # one bit each in the packet key (bpf/fwd.h FWD_MAX_SETS)
MAX_PORT_SETS = 256
MAX_SET_ELEMENTS = 4_000_000


class SetType(enum.Enum):
    PREFIX = "prefix"
    PORT = "port"


@dataclass(frozen=True)
class NamedSet:
    """A set of prefixes (``prefixes``: canonical CIDR strings) or of port ranges."""

    name: str
    type: SetType
    prefixes: frozenset[str] = frozenset()
    ports: tuple[PortRange, ...] = ()

    def __len__(self) -> int:
        return len(self.prefixes) if self.type is SetType.PREFIX else len(self.ports)

    def elements(self) -> list[str]:
        """Every element as text, in a stable order (sorted)."""
        if self.type is SetType.PORT:
            return [str(p) for p in self.ports]
        return sorted(self.prefixes)

    def networks(self) -> list[IPNetwork]:
        """The prefixes parsed (for the reference classifier and small sets)."""
        return [parse_cidr(p, self.name) for p in self.prefixes]

    def count_change(self, values: Iterable[str | int], adding: bool) -> tuple[int, int]:
        """How many distinct ``values`` adding (or removing) would change, and how many
        are already present (or already absent): "0 added, 1 already present"."""
        field = f"sets.{self.name}.elements"
        have: frozenset[object]
        wanted: set[object]
        if self.type is SetType.PREFIX:
            have, wanted = self.prefixes, set(canonical_prefixes(values, field))
        else:
            have, wanted = frozenset(self.ports), {parse_ports(v, field) for v in values}
        present = len(wanted & have)
        return (len(wanted) - present, present) if adding else (present, len(wanted) - present)

    def with_elements(self, add: Iterable[str | int] = (), remove: Iterable[str | int] = ()) -> NamedSet:
        """A copy with ``add`` added and ``remove`` removed (validated; field = set name)."""
        field = f"sets.{self.name}.elements"
        if self.type is SetType.PREFIX:
            plus = canonical_prefixes(add, field)
            minus = canonical_prefixes(remove, field)
            prefixes = (self.prefixes - minus) | plus
            if len(prefixes) > MAX_SET_ELEMENTS:
                raise PolicyError(field, f"more than {MAX_SET_ELEMENTS} elements")
            return NamedSet(self.name, self.type, prefixes=frozenset(prefixes))
        drop = {parse_ports(v, field) for v in remove}
        kept = [p for p in self.ports if p not in drop]
        new = [parse_ports(v, field) for v in add]
        return NamedSet(self.name, self.type, ports=tuple(sorted(set(kept) | set(new))))


def canonical_prefix(value: Any, field: str) -> str:
    """``value`` validated as a CIDR or address, in canonical text (host bits cleared)."""
    return str(parse_cidr(value, field))


def canonical_prefixes(values: Iterable[Any], field: str) -> frozenset[str]:
    out = set()
    for i, v in enumerate(values):
        out.add(canonical_prefix(v, f"{field}[{i}]"))
    return frozenset(out)


def parse_set(name: Any, raw: Any, field: str) -> NamedSet:
    if not isinstance(name, str) or not SET_NAME_RE.match(name):
        raise PolicyError(field, f"invalid set name {name!r} (a letter, then letters, digits, _ . -)")
    if not isinstance(raw, Mapping):
        raise PolicyError(field, f"must be a mapping, not {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - {"type", "elements"})
    if unknown:
        raise PolicyError(f"{field}.{unknown[0]}", "unknown field")
    try:
        kind = SetType(raw.get("type"))
    except ValueError:
        raise PolicyError(f"{field}.type", f"unknown set type {raw.get('type')!r} (prefix | port)") from None
    elements = raw.get("elements")
    items = [] if elements is None or elements == [] else parse_list(elements, f"{field}.elements")
    if len(items) > MAX_SET_ELEMENTS:
        raise PolicyError(f"{field}.elements", f"more than {MAX_SET_ELEMENTS} elements")
    if kind is SetType.PREFIX:
        return NamedSet(name, kind, prefixes=canonical_prefixes(items, f"{field}.elements"))
    ports = {parse_ports(v, f"{field}.elements[{i}]") for i, v in enumerate(items)}
    return NamedSet(name, kind, ports=tuple(sorted(ports)))


def parse_sets(raw: Any) -> tuple[NamedSet, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise PolicyError("sets", f"must be a mapping of name to set, not {type(raw).__name__}")
    sets = tuple(parse_set(name, body, f"sets.{name}") for name, body in raw.items())
    if sum(1 for s in sets if s.type is SetType.PREFIX) > MAX_PREFIX_SETS:
        raise PolicyError("sets", f"more than {MAX_PREFIX_SETS} prefix sets")
    if sum(1 for s in sets if s.type is SetType.PORT) > MAX_PORT_SETS:
        raise PolicyError("sets", f"more than {MAX_PORT_SETS} port sets")
    return sets


def sets_to_dict(sets: Iterable[NamedSet]) -> dict[str, Any]:
    return {
        s.name: {
            "type": s.type.value,
            # Ports as numbers (one port) or "first-last", as in rules.
            "elements": s.elements() if s.type is SetType.PREFIX
            else [p.first if p.first == p.last else str(p) for p in s.ports],
        }
        for s in sets
    }
