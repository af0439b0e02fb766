"""The policy model: validated, immutable, one to one with the YAML file and the proto.

``policy_from_dict`` is the only way in from untrusted data; every error it
raises is a PolicyError naming the field (``rules[2].dst_ports[0]``).
"""

from __future__ import annotations

import enum
import fnmatch
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fwd.errors import PolicyError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS: dict[str, int] = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOLS.items()}
PORT_PROTOCOLS = frozenset({6, 17, 132})

MAX_RULES = 131072 - 16  # counter slots minus the reserved ones (bpf/fwd.h)
RULE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
IFACE_GLOB_RE = re.compile(r"^[A-Za-z0-9_.:*?\[\]!@-]{1,64}$")
_DIGITS_RE = re.compile(r"^[0-9]{1,10}$")

POLICY_KEYS = frozenset({"default_action", "dry_run", "rules"})
RULE_KEYS = frozenset(
    {"id", "action", "protocol", "src", "dst", "src_ports", "dst_ports", "interfaces", "log"}
)


class Action(enum.Enum):
    ALLOW = "allow"
    DROP = "drop"


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive port range; a single port has first == last."""

    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


@dataclass(frozen=True)
class Rule:
    """One ordered rule. Empty tuples mean "any"."""

    id: str
    action: Action
    protocol: int | None = None
    src: tuple[IPNetwork, ...] = ()
    dst: tuple[IPNetwork, ...] = ()
    src_ports: tuple[PortRange, ...] = ()
    dst_ports: tuple[PortRange, ...] = ()
    interfaces: tuple[str, ...] = ()
    log: bool = False

    def matches_interface(self, name: str) -> bool:
        return not self.interfaces or any(fnmatch.fnmatchcase(name, g) for g in self.interfaces)


@dataclass(frozen=True)
class Policy:
    """A whole policy: ordered rules, first match wins, else ``default_action``."""

    default_action: Action = Action.ALLOW
    dry_run: bool = False
    rules: tuple[Rule, ...] = ()


EMPTY_POLICY = Policy()


# --- parsing -------------------------------------------------------------


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(field, f"must be true or false, not {value!r}")
    return value


def _action(value: Any, field: str) -> Action:
    try:
        return Action(value)
    except ValueError:
        raise PolicyError(field, f"unknown action {value!r} (allow | drop)") from None


def _list(value: Any, field: str) -> Sequence[Any]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]  # a lone value is a list of one
    if not isinstance(value, (list, tuple)):
        raise PolicyError(field, f"must be a list, not {type(value).__name__}")
    if not value:
        raise PolicyError(field, "must not be empty (leave the field out to match any)")
    return value


def parse_protocol(value: Any, field: str = "protocol") -> int:
    if isinstance(value, bool):
        raise PolicyError(field, f"invalid protocol {value!r}")
    if isinstance(value, str):
        name = value.strip().lower()
        if name in PROTOCOLS:
            return PROTOCOLS[name]
        if _DIGITS_RE.match(name):
            value = int(name)
        else:
            names = " | ".join(PROTOCOLS)
            raise PolicyError(field, f"unknown protocol {value!r} ({names} | 0-255)")
    if isinstance(value, int) and 0 <= value <= 255:
        return value
    raise PolicyError(field, f"invalid protocol {value!r} (must be a name or 0-255)")


def parse_cidr(value: Any, field: str) -> IPNetwork:
    if not isinstance(value, str):
        raise PolicyError(field, f"must be a CIDR or address string, not {value!r}")
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise PolicyError(field, f"invalid CIDR or address {value!r}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.scope_id:
        # The data plane matches addresses only; a zone (fe80::1%eth0) would be ignored.
        raise PolicyError(field, f"zone index not allowed in {value!r} (use interfaces)")
    return net


def _port(text: str, value: Any, field: str) -> int:
    # ASCII digits only and bounded length: str.isdigit() accepts "²" and int() refuses
    # strings past 4300 digits, both of which escaped as ValueError.
    if not _DIGITS_RE.match(text.strip()):
        raise PolicyError(field, f"invalid port {value!r}")
    port = int(text)
    if not 0 <= port <= 65535:
        raise PolicyError(field, f"port {port} out of range 0-65535")
    return port


def parse_ports(value: Any, field: str) -> PortRange:
    if isinstance(value, bool):
        raise PolicyError(field, f"invalid port {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise PolicyError(field, f"port {value} out of range 0-65535")
        return PortRange(value, value)
    if not isinstance(value, str):
        raise PolicyError(field, f"invalid port {value!r}")
    first, sep, last = value.partition("-")
    lo = _port(first, value, field)
    hi = _port(last, value, field) if sep else lo
    if lo > hi:
        raise PolicyError(field, f"empty port range {value!r} (first > last)")
    return PortRange(lo, hi)


def _rule(raw: Any, field: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise PolicyError(field, f"must be a mapping, not {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - RULE_KEYS)
    if unknown:
        raise PolicyError(f"{field}.{unknown[0]}", "unknown field")
    if "id" not in raw:
        raise PolicyError(f"{field}.id", "is required")
    rule_id = raw["id"]
    if not isinstance(rule_id, str) or not RULE_ID_RE.match(rule_id):
        raise PolicyError(
            f"{field}.id",
            f"invalid rule id {rule_id!r} (1-128 characters: letters, digits, _ . : -)",
        )
    if "action" not in raw:
        raise PolicyError(f"{field}.action", "is required")
    action = _action(raw["action"], f"{field}.action")
    protocol = None
    if raw.get("protocol") is not None:
        protocol = parse_protocol(raw["protocol"], f"{field}.protocol")

    def cidrs(key: str) -> tuple[IPNetwork, ...]:
        if raw.get(key) is None:
            return ()
        items = _list(raw[key], f"{field}.{key}")
        return tuple(parse_cidr(v, f"{field}.{key}[{i}]") for i, v in enumerate(items))

    def ports(key: str) -> tuple[PortRange, ...]:
        if raw.get(key) is None:
            return ()
        items = _list(raw[key], f"{field}.{key}")
        parsed = tuple(parse_ports(v, f"{field}.{key}[{i}]") for i, v in enumerate(items))
        if protocol not in PORT_PROTOCOLS:
            raise PolicyError(f"{field}.{key}", "ports need protocol tcp, udp or sctp")
        return parsed

    src, dst = cidrs("src"), cidrs("dst")
    if src and dst and not {n.version for n in src} & {n.version for n in dst}:
        raise PolicyError(f"{field}.dst", "no address family in common with src")
    interfaces: tuple[str, ...] = ()
    if raw.get("interfaces") is not None:
        items = _list(raw["interfaces"], f"{field}.interfaces")
        for i, glob in enumerate(items):
            if not isinstance(glob, str) or not IFACE_GLOB_RE.match(glob):
                raise PolicyError(f"{field}.interfaces[{i}]", f"invalid interface glob {glob!r}")
        interfaces = tuple(items)
    log = _bool(raw["log"], f"{field}.log") if "log" in raw else False
    return Rule(
        id=rule_id,
        action=action,
        protocol=protocol,
        src=src,
        dst=dst,
        src_ports=ports("src_ports"),
        dst_ports=ports("dst_ports"),
        interfaces=interfaces,
        log=log,
    )


def policy_from_dict(raw: Any) -> Policy:
    """Validate untrusted data (parsed YAML/JSON) into a Policy."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise PolicyError("", f"a policy must be a mapping, not {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - POLICY_KEYS)
    if unknown:
        raise PolicyError(unknown[0], "unknown field")
    default = _action(raw.get("default_action", "allow"), "default_action")
    dry_run = _bool(raw.get("dry_run", False), "dry_run")
    raw_rules = raw.get("rules")
    if raw_rules is None:  # "rules:" with nothing after it, or left out
        raw_rules = []
    if not isinstance(raw_rules, list):
        raise PolicyError("rules", f"must be a list, not {type(raw_rules).__name__}")
    if len(raw_rules) > MAX_RULES:
        raise PolicyError("rules", f"{len(raw_rules)} rules exceed the limit of {MAX_RULES}")
    rules = tuple(_rule(r, f"rules[{i}]") for i, r in enumerate(raw_rules))
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.id in seen:
            raise PolicyError(
                f"rules[{i}].id", f"duplicate rule id {rule.id!r} (also rules[{seen[rule.id]}])"
            )
        seen[rule.id] = i
    return Policy(default_action=default, dry_run=dry_run, rules=rules)


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The inverse of policy_from_dict: plain data, fields left out when "any"."""
    rules = []
    for r in policy.rules:
        d: dict[str, Any] = {"id": r.id, "action": r.action.value}
        if r.protocol is not None:
            d["protocol"] = PROTOCOL_NAMES.get(r.protocol, r.protocol)
        if r.src:
            d["src"] = [str(n) for n in r.src]
        if r.dst:
            d["dst"] = [str(n) for n in r.dst]
        if r.src_ports:
            d["src_ports"] = [str(p) for p in r.src_ports]
        if r.dst_ports:
            d["dst_ports"] = [str(p) for p in r.dst_ports]
        if r.interfaces:
            d["interfaces"] = list(r.interfaces)
        if r.log:
            d["log"] = True
        rules.append(d)
    return {
        "default_action": policy.default_action.value,
        "dry_run": policy.dry_run,
        "rules": rules,
    }
