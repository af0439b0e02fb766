"""Label selectors in the string form Kubernetes uses, parsed and matched (pure).

A selector is comma-separated requirements that must all hold::

    role=edge          role==edge        zone!=b
    tier in (a,b)      tier notin (a,b)  gpu        !gpu

``k!=v`` and ``k notin (...)`` also hold when the node has no label ``k`` (as in
Kubernetes). The empty selector selects every node. Parse errors are
``SelectorError`` naming the selector and the requirement that is wrong.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from fwd.errors import PolicyError

# Label keys: an optional DNS-style prefix and "/", then a name (Kubernetes-like,
# a little looser on length). Values may be empty.
LABEL_KEY_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
MAX_SELECTOR_CHARS = 4096

_SET_RE = re.compile(r"^(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_CMP_RE = re.compile(r"^(?P<key>[^\s!=()]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^\s!=(),]*)$")
_EXISTS_RE = re.compile(r"^(?P<neg>!)?\s*(?P<key>[^\s!=(),]+)$")


class SelectorError(PolicyError):
    """A selector that does not parse; the message names the selector and the bad part."""

    def __init__(self, selector: str, message: str) -> None:
        super().__init__("selector", f"{selector!r}: {message}")
        self.selector = selector


class Op(enum.Enum):
    EQ = "="
    NE = "!="
    IN = "in"
    NOTIN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!exists"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op is Op.EXISTS:
            return present
        if self.op is Op.NOT_EXISTS:
            return not present
        if self.op in (Op.EQ, Op.IN):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # NE, NOTIN

    def __str__(self) -> str:
        if self.op is Op.EXISTS:
            return self.key
        if self.op is Op.NOT_EXISTS:
            return f"!{self.key}"
        if self.op in (Op.EQ, Op.NE):
            (value,) = self.values
            return f"{self.key}{self.op.value}{value}"
        return f"{self.key} {self.op.value} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class Selector:
    """All of ``requirements`` must hold; none means every node."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


EVERYTHING = Selector()


def _split(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def check_key(key: str, where: str, selector: str) -> None:
    if not LABEL_KEY_RE.match(key):
        raise SelectorError(selector, f"{where}: invalid label key {key!r}")


def check_value(value: str, where: str, selector: str) -> None:
    if not LABEL_VALUE_RE.match(value):
        raise SelectorError(selector, f"{where}: invalid label value {value!r}")


def _requirement(part: str, index: int, selector: str) -> Requirement:
    where = f"requirement {index + 1} {part!r}"
    if not part:
        raise SelectorError(selector, f"requirement {index + 1} is empty")
    if m := _SET_RE.match(part):
        key = m["key"]
        check_key(key, where, selector)
        values = [v.strip() for v in m["values"].split(",")]
        if values == [""]:
            raise SelectorError(selector, f"{where}: empty value list")
        for v in values:
            check_value(v, where, selector)
        return Requirement(key, Op.IN if m["op"] == "in" else Op.NOTIN, frozenset(values))
    if m := _CMP_RE.match(part):
        key, value = m["key"], m["value"]
        check_key(key, where, selector)
        check_value(value, where, selector)
        return Requirement(key, Op.NE if m["op"] == "!=" else Op.EQ, frozenset({value}))
    if m := _EXISTS_RE.match(part):
        check_key(m["key"], where, selector)
        return Requirement(m["key"], Op.NOT_EXISTS if m["neg"] else Op.EXISTS)
    raise SelectorError(
        selector, f"{where}: not one of k=v, k==v, k!=v, k in (a,b), k notin (a,b), k, !k"
    )


def parse_selector(text: str) -> Selector:
    """Parse the string form; raise SelectorError naming the bad requirement."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise SelectorError(text[:32] + "...", f"longer than {MAX_SELECTOR_CHARS} characters")
    if not text.strip():
        return EVERYTHING
    if text.count("(") != text.count(")"):
        raise SelectorError(text, "unbalanced parentheses")
    parts = [p.strip() for p in _split(text)]
    return Selector(tuple(_requirement(p, i, text) for i, p in enumerate(parts)))


def parse_labels(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["role=edge", "zone=a"]`` (the CLI's ``--label``) as a dict; errors name the item."""
    labels: dict[str, str] = {}
    for i, item in enumerate(items):
        key, sep, value = item.partition("=")
        if not sep:
            raise PolicyError(f"labels[{i}]", f"{item!r} is not key=value")
        key, value = key.strip(), value.strip()
        if not LABEL_KEY_RE.match(key):
            raise PolicyError(f"labels[{i}]", f"invalid label key {key!r}")
        if not LABEL_VALUE_RE.match(value):
            raise PolicyError(f"labels[{i}]", f"invalid label value {value!r}")
        labels[key] = value
    return labels
