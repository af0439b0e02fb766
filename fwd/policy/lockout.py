"""Anti-lockout: refuse a policy that could drop the operators' own management traffic.

The agent's settings name management prefixes (where operators connect from) and
services (protocol and port they connect to, e.g. tcp/22). A policy is refused —
unless applied with ``--force`` — if any packet of that traffic could be dropped:

* rules are walked in order; a drop rule that *could* match some management
  packet is a lockout (fields that can rule it out: protocol, source prefixes,
  destination ports; anything else — destinations, source ports, interfaces,
  fields added later — is assumed to match);
* an allow rule that matches *every* management packet (no constraint but a
  protocol equal to the service's, sources covering the prefix and destination
  ports covering the port) ends the walk: nothing after it can drop that traffic;
* reaching the end with default action drop is a lockout.

Conservative by design: it may refuse a safe policy (then use ``force``), never
accept one that drops management traffic. Dry-run policies and audit rules drop
nothing, so they pass.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from fwd.errors import PolicyError
from fwd.policy.model import PROTOCOLS, Action, IPNetwork, Policy, PortRange, Rule

# Fields an allow rule may constrain and still be known to cover the management traffic.
_COVERING_FIELDS = {
    "id", "action", "log", "audit", "protocol", "src", "dst_ports", "src_set", "dst_port_set",
}


class LockoutError(PolicyError):
    """A valid policy that could drop management traffic (refused unless forced)."""


@dataclass(frozen=True)
class Service:
    """A management service: protocol number and destination port."""

    protocol: int
    port: int

    @classmethod
    def parse(cls, text: str) -> Service:
        """``tcp/22``, ``udp/161``, ``6/22``."""
        proto, sep, port = text.partition("/")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"management service {text!r}: expected PROTO/PORT, e.g. tcp/22")
        number = PROTOCOLS.get(proto.lower(), int(proto) if proto.isdigit() else -1)
        if number not in (6, 17, 132):
            raise ValueError(f"management service {text!r}: protocol must be tcp, udp or sctp")
        return cls(number, int(port))


def _set_prefixes(policy: Policy, name: str | None) -> list[IPNetwork] | None:
    named = policy.set_named(name) if name else None
    if named is None:
        return None
    return [ipaddress.ip_network(p) for p in named.prefixes]


def _set_ports(policy: Policy, name: str | None) -> list[PortRange] | None:
    named = policy.set_named(name) if name else None
    return None if named is None else list(named.ports)


def _could_match(rule: Rule, prefix: IPNetwork, svc: Service, policy: Policy) -> bool:
    if rule.protocol is not None and rule.protocol != svc.protocol:
        return False
    if rule.src and not any(n.version == prefix.version and n.overlaps(prefix) for n in rule.src):
        return False
    if rule.dst_ports and not any(svc.port in r for r in rule.dst_ports):
        return False
    members = _set_prefixes(policy, rule.src_set)
    if members is not None and not any(
        n.version == prefix.version and n.overlaps(prefix) for n in members
    ):
        return False
    ports = _set_ports(policy, rule.dst_port_set)
    if ports is not None and not any(svc.port in r for r in ports):
        return False
    return True


def _covers(rule: Rule, prefix: IPNetwork, svc: Service, policy: Policy) -> bool:
    defaults = Rule(id=rule.id, action=rule.action)
    for f in dataclasses.fields(rule):
        if f.name not in _COVERING_FIELDS and getattr(rule, f.name) != getattr(defaults, f.name):
            return False
    if rule.protocol is not None and rule.protocol != svc.protocol:
        return False
    if rule.src and not any(
        n.version == prefix.version and prefix.subnet_of(n)  # type: ignore[arg-type]
        for n in rule.src
    ):
        return False
    if rule.dst_ports and not any(svc.port in r for r in rule.dst_ports):
        return False
    if rule.src_set is not None:
        members = _set_prefixes(policy, rule.src_set) or []
        if not any(
            n.version == prefix.version and prefix.subnet_of(n)  # type: ignore[arg-type]
            for n in members
        ):
            return False
    if rule.dst_port_set is not None:
        ports = _set_ports(policy, rule.dst_port_set) or []
        if not any(svc.port in r for r in ports):
            return False
    return True


def check_lockout(
    policy: Policy, prefixes: Sequence[IPNetwork], services: Sequence[Service]
) -> None:
    """Raise LockoutError naming the rule (or default_action) that could drop management traffic."""
    if policy.dry_run:
        return
    for prefix in prefixes:
        for svc in services:
            _check_one(policy, prefix, svc)


def _check_one(policy: Policy, prefix: IPNetwork, svc: Service) -> None:
    what = f"{_proto_name(svc.protocol)}/{svc.port} from {prefix}"
    for i, rule in enumerate(policy.rules):
        if rule.action is Action.DROP and not getattr(rule, "audit", False):
            if _could_match(rule, prefix, svc, policy):
                raise LockoutError(
                    f"rules[{i}]",
                    f"rule {rule.id!r} could drop management traffic ({what}); "
                    "apply with --force to do it anyway",
                )
        elif rule.action is Action.ALLOW and _covers(rule, prefix, svc, policy):
            return
    if policy.default_action is Action.DROP:
        raise LockoutError(
            "default_action",
            f"drop would apply to management traffic ({what}) that no rule allows; "
            "add an allow rule for it, or apply with --force",
        )


def _proto_name(number: int) -> str:
    return next((n for n, v in PROTOCOLS.items() if v == number), str(number))


def parse_prefixes(values: Sequence[str]) -> list[IPNetwork]:
    """Management prefixes from settings (errors name the value)."""
    out: list[IPNetwork] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ValueError(f"management prefix {v!r} is not a CIDR") from None
    return out
