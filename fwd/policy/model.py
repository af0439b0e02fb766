"""The policy model: validated, immutable, one to one with the YAML file and the proto.

``policy_from_dict`` is the only way in from untrusted data; every error it
raises is a PolicyError naming the field (``rules[2].dst_ports[0]``).
"""

from __future__ import annotations

import abc
import enum
import fnmatch
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fwd.errors import PolicyError
from fwd.policy.fields import (
    ICMP_PROTOCOLS,
    PORT_PROTOCOLS,
    PROTOCOL_NAMES,
    PROTOCOLS,
    IPNetwork,
    PortRange,
    TcpFlags,
    parse_bool,
    parse_byte,
    parse_cidr,
    parse_list,
    parse_ports,
    parse_protocol,
    parse_tcp_flags,
)
from fwd.policy.sets import NamedSet, SetType, parse_sets, sets_to_dict

__all__ = [
    "PROTOCOLS", "PROTOCOL_NAMES", "PORT_PROTOCOLS", "ICMP_PROTOCOLS", "IPNetwork", "PortRange",
    "TcpFlags", "NamedSet", "SetType", "parse_cidr", "parse_ports", "parse_protocol",
    "Action", "Rule", "Policy", "EMPTY_POLICY", "policy_from_dict", "policy_to_dict",
    "rule_from_dict", "rule_to_dict", "check_rule_sets", "RuleSource",
]  # fmt: skip

MAX_RULES = 131072 - 16  # counter slots minus the reserved ones (bpf/fwd.h)
RULE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
IFACE_GLOB_RE = re.compile(r"^[A-Za-z0-9_.:*?\[\]!@-]{1,64}$")

POLICY_KEYS = frozenset({"default_action", "dry_run", "log_default", "sets", "rules"})
RULE_KEYS = frozenset(
    {
        "id", "action", "protocol", "src", "dst", "src_ports", "dst_ports", "interfaces",
        "log", "audit", "tcp_flags", "icmp_type", "icmp_code", "fragment",
        "src_set", "dst_set", "src_port_set", "dst_port_set",
    }
)  # fmt: skip


class Action(enum.Enum):
    ALLOW = "allow"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Rule:
    """One ordered rule. Empty tuples mean "any".

    Slotted: a policy can hold 100,000 of them, and a __dict__ per rule is
    ~60 bytes more than the 18 slots.
    """

    id: str
    action: Action
    protocol: int | None = None
    src: tuple[IPNetwork, ...] = ()
    dst: tuple[IPNetwork, ...] = ()
    src_ports: tuple[PortRange, ...] = ()
    dst_ports: tuple[PortRange, ...] = ()
    interfaces: tuple[str, ...] = ()
    log: bool = False
    audit: bool = False
    tcp_flags: TcpFlags | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    fragment: bool | None = None  # True: fragments only; False: no fragments
    src_set: str | None = None  # prefix sets
    dst_set: str | None = None
    src_port_set: str | None = None  # port sets
    dst_port_set: str | None = None

    def matches_interface(self, name: str) -> bool:
        return not self.interfaces or any(fnmatch.fnmatchcase(name, g) for g in self.interfaces)


@dataclass(frozen=True)
class Policy:
    """A whole policy: ordered rules, first match wins, else ``default_action``."""

    default_action: Action = Action.ALLOW
    dry_run: bool = False
    rules: tuple[Rule, ...] = ()
    log_default: bool = False
    sets: tuple[NamedSet, ...] = ()

    def set_named(self, name: str) -> NamedSet | None:
        for s in self.sets:
            if s.name == name:
                return s
        return None


EMPTY_POLICY = Policy()


class RuleSource(abc.ABC):
    """A policy's ``rules`` produced one at a time (each a plain-data rule), accepted by
    ``policy_from_dict`` like a list: a large request is validated as it is decoded
    (fwd.api.policystream) instead of first becoming a list of 100,000 dicts."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Any]: ...


# --- parsing -------------------------------------------------------------


def _action(value: Any, field: str) -> Action:
    try:
        return Action(value)
    except ValueError:
        raise PolicyError(field, f"unknown action {value!r} (allow | drop)") from None


def _rule(raw: Any, field: str, memo: dict[Any, Any] | None = None) -> Rule:
    # ``memo`` shares equal values between the rules of one policy (the same
    # network, port or list in many rules is one object): a 100,000-rule policy
    # stays resident for as long as it is enforced.
    if memo is None:
        memo = {}
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

    def given(key: str) -> bool:
        return raw.get(key) is not None

    def cidrs(key: str) -> tuple[IPNetwork, ...]:
        if not given(key):
            return ()
        items = parse_list(raw[key], f"{field}.{key}")
        nets = []
        for i, v in enumerate(items):
            net = memo.get(("cidr", v)) if isinstance(v, str) else None
            if net is None:
                net = parse_cidr(v, f"{field}.{key}[{i}]")
                if isinstance(v, str):
                    memo[("cidr", v)] = net
            nets.append(net)
        found = tuple(nets)
        return memo.setdefault(("cidrs", found), found)  # type: ignore[no-any-return]

    def need_port_protocol(key: str) -> None:
        if protocol not in PORT_PROTOCOLS:
            raise PolicyError(f"{field}.{key}", "ports need protocol tcp, udp or sctp")

    def ports(key: str) -> tuple[PortRange, ...]:
        if not given(key):
            return ()
        items = parse_list(raw[key], f"{field}.{key}")
        ranges = []
        for i, v in enumerate(items):
            # The type is part of the key: True == 1 but is not a port.
            known = memo.get(("port", type(v), v)) if isinstance(v, (int, str)) else None
            if known is None:
                known = parse_ports(v, f"{field}.{key}[{i}]")
                memo[("port", type(v), v)] = known
            ranges.append(known)
        parsed = tuple(ranges)
        need_port_protocol(key)
        return memo.setdefault(("ports", parsed), parsed)  # type: ignore[no-any-return]

    def set_name(key: str) -> str | None:
        if not given(key):
            return None
        name = raw[key]
        if not isinstance(name, str) or not name:
            raise PolicyError(f"{field}.{key}", f"must be a set name, not {name!r}")
        return name

    src, dst = cidrs("src"), cidrs("dst")
    if src and dst and not {n.version for n in src} & {n.version for n in dst}:
        raise PolicyError(f"{field}.dst", "no address family in common with src")
    interfaces: tuple[str, ...] = ()
    if given("interfaces"):
        items = parse_list(raw["interfaces"], f"{field}.interfaces")
        for i, glob in enumerate(items):
            if not isinstance(glob, str) or not IFACE_GLOB_RE.match(glob):
                raise PolicyError(f"{field}.interfaces[{i}]", f"invalid interface glob {glob!r}")
        interfaces = tuple(items)
    tcp_flags = None
    if given("tcp_flags"):
        tcp_flags = parse_tcp_flags(raw["tcp_flags"], f"{field}.tcp_flags")
        if protocol != PROTOCOLS["tcp"]:
            raise PolicyError(f"{field}.tcp_flags", "TCP flags need protocol tcp")
    icmp: dict[str, int | None] = {}
    for key in ("icmp_type", "icmp_code"):
        icmp[key] = parse_byte(raw[key], f"{field}.{key}") if given(key) else None
        if given(key) and protocol not in ICMP_PROTOCOLS:
            raise PolicyError(f"{field}.{key}", "ICMP type and code need protocol icmp or icmpv6")
    src_port_set, dst_port_set = set_name("src_port_set"), set_name("dst_port_set")
    for key, named, listed in (
        ("src_port_set", src_port_set, given("src_ports")),
        ("dst_port_set", dst_port_set, given("dst_ports")),
    ):
        if named is not None:
            need_port_protocol(key)
            if listed:
                raise PolicyError(f"{field}.{key}", f"use either {key[:8]}s or {key}, not both")
    return Rule(
        id=rule_id,
        action=action,
        protocol=protocol,
        src=src,
        dst=dst,
        src_ports=ports("src_ports"),
        dst_ports=ports("dst_ports"),
        interfaces=interfaces,
        log=parse_bool(raw["log"], f"{field}.log") if "log" in raw else False,
        audit=parse_bool(raw["audit"], f"{field}.audit") if "audit" in raw else False,
        tcp_flags=tcp_flags,
        icmp_type=icmp["icmp_type"],
        icmp_code=icmp["icmp_code"],
        fragment=parse_bool(raw["fragment"], f"{field}.fragment") if given("fragment") else None,
        src_set=set_name("src_set"),
        dst_set=set_name("dst_set"),
        src_port_set=src_port_set,
        dst_port_set=dst_port_set,
    )


def parse_rule(raw: Any, field: str = "rule") -> Rule:
    """Validate one untrusted rule on its own (set references are checked where the
    sets are known: by the Datapath's engine against the enforced policy)."""
    return _rule(raw, field)


def rule_from_dict(raw: Any, sets: tuple[NamedSet, ...] = (), field: str = "rule") -> Rule:
    """Validate one untrusted rule; its set references must name sets of ``sets``."""
    rule = _rule(raw, field)
    check_rule_sets(rule, {s.name: s for s in sets}, field)
    return rule


def check_rule_sets(rule: Rule, sets: Mapping[str, NamedSet], field: str) -> None:
    """Raise PolicyError unless every set ``rule`` names exists and has the right type."""
    for key, kind in (
        ("src_set", SetType.PREFIX),
        ("dst_set", SetType.PREFIX),
        ("src_port_set", SetType.PORT),
        ("dst_port_set", SetType.PORT),
    ):
        name = getattr(rule, key)
        if name is None:
            continue
        found = sets.get(name)
        if found is None:
            raise PolicyError(f"{field}.{key}", f"no set named {name!r}")
        if found.type is not kind:
            raise PolicyError(f"{field}.{key}", f"set {name!r} is a {found.type.value} set")


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
    dry_run = parse_bool(raw.get("dry_run", False), "dry_run")
    log_default = parse_bool(raw.get("log_default", False), "log_default")
    sets = parse_sets(raw.get("sets"))
    raw_rules = raw.get("rules")
    if raw_rules is None:  # "rules:" with nothing after it, or left out
        raw_rules = []
    if not isinstance(raw_rules, (list, RuleSource)):
        raise PolicyError("rules", f"must be a list, not {type(raw_rules).__name__}")
    if len(raw_rules) > MAX_RULES:
        raise PolicyError("rules", f"{len(raw_rules)} rules exceed the limit of {MAX_RULES}")
    memo: dict[Any, Any] = {}
    rules = tuple(_rule(r, f"rules[{i}]", memo) for i, r in enumerate(raw_rules))
    del memo
    seen: dict[str, int] = {}
    by_name = {s.name: s for s in sets}
    for i, rule in enumerate(rules):
        if rule.id in seen:
            raise PolicyError(
                f"rules[{i}].id", f"duplicate rule id {rule.id!r} (also rules[{seen[rule.id]}])"
            )
        seen[rule.id] = i
        check_rule_sets(rule, by_name, f"rules[{i}]")
    return Policy(
        default_action=default, dry_run=dry_run, rules=rules, log_default=log_default, sets=sets
    )


def _net_str(net: IPNetwork) -> str:
    """``str(net)``; IPv4 through inet_ntoa, 10x faster than ipaddress's own (it
    is most of the time spent saving a 100,000-rule snapshot)."""
    if net.version == 4:
        return f"{socket.inet_ntoa(net.network_address.packed)}/{net.prefixlen}"
    return str(net)



def rule_to_dict(r: Rule) -> dict[str, Any]:
    """One rule as plain data, fields left out when "any"."""
    d: dict[str, Any] = {"id": r.id, "action": r.action.value}
    if r.protocol is not None:
        d["protocol"] = PROTOCOL_NAMES.get(r.protocol, r.protocol)
    if r.src:
        d["src"] = [_net_str(n) for n in r.src]
    if r.dst:
        d["dst"] = [_net_str(n) for n in r.dst]
    # A port is a number, a range "first-last" (as written in policy files).
    if r.src_ports:
        d["src_ports"] = [p.first if p.first == p.last else str(p) for p in r.src_ports]
    if r.dst_ports:
        d["dst_ports"] = [p.first if p.first == p.last else str(p) for p in r.dst_ports]
    if r.interfaces:
        d["interfaces"] = list(r.interfaces)
    if r.log:
        d["log"] = True
    if r.audit:
        d["audit"] = True
    if r.tcp_flags is not None:
        d["tcp_flags"] = str(r.tcp_flags)
    for key in ("icmp_type", "icmp_code", "fragment", "src_set", "dst_set", "src_port_set",
                "dst_port_set"):  # fmt: skip
        if getattr(r, key) is not None:
            d[key] = getattr(r, key)
    return d


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The inverse of policy_from_dict: plain data, fields left out when "any"."""
    out: dict[str, Any] = {
        "default_action": policy.default_action.value,
        "dry_run": policy.dry_run,
    }
    if policy.log_default:
        out["log_default"] = True
    if policy.sets:
        out["sets"] = sets_to_dict(policy.sets)
    out["rules"] = [rule_to_dict(r) for r in policy.rules]
    return out
