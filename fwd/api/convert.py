"""Conversions between the proto messages and the agent's own types.

A proto Policy is turned into the plain-data shape of the YAML file and
validated by ``policy_from_dict``: the API and policy files share one parser,
so field names in errors (``rules[0].action``) and every rule of validation
are the same whichever way a policy arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fwd import messages
from fwd.core.records import DropEvent
from fwd.api.gen.fwd import v1 as pb
from fwd.errors import PolicyError
from fwd.policy import model

if TYPE_CHECKING:
    from fwd.api.policystream import StreamedPolicy

# Proto action -> YAML spelling. UNSPECIFIED is absent on purpose: it means
# "allow" for default_action and "missing" for a rule (see below).
_ACTION_NAMES: dict[pb.Action, str] = {pb.Action.ALLOW: "allow", pb.Action.DROP: "drop"}
_ACTIONS: dict[str, pb.Action] = {v: k for k, v in _ACTION_NAMES.items()}

_MODES: dict[messages.AttachMode, pb.AttachMode] = {
    messages.AttachMode.NONE: pb.AttachMode.NONE,
    messages.AttachMode.NATIVE: pb.AttachMode.NATIVE,
    messages.AttachMode.GENERIC: pb.AttachMode.GENERIC,
    messages.AttachMode.OFFLOAD: pb.AttachMode.OFFLOAD,
}
_STATES: dict[messages.LinkState, pb.InterfaceState] = {
    messages.LinkState.ATTACHED: pb.InterfaceState.ATTACHED,
    messages.LinkState.EXCLUDED: pb.InterfaceState.EXCLUDED,
    messages.LinkState.FAILED: pb.InterfaceState.FAILED,
}


def _action_value(action: pb.Action) -> Any:
    """The YAML spelling of a known action; an unknown number is passed through
    so the model's parser rejects it with its usual message."""
    name = _ACTION_NAMES.get(action)
    return name if name is not None else int(action.value)


def rule_to_dict(rule: pb.Rule) -> dict[str, Any]:
    """One proto Rule in the YAML shape. Empty fields are left out ("any")."""
    raw: dict[str, Any] = {"id": rule.id}
    # UNSPECIFIED is left out, so validation reports "rules[i].action: is required".
    if rule.action != pb.Action.UNSPECIFIED:
        raw["action"] = _action_value(rule.action)
    if rule.protocol:
        raw["protocol"] = rule.protocol
    # An empty repeated field means "any"; the YAML parser rejects an empty
    # list (it would be ambiguous there), so an empty one is simply omitted.
    for key in ("src", "dst", "src_ports", "dst_ports", "interfaces"):
        values: list[str] = getattr(rule, key)
        if values:
            raw[key] = list(values)
    for key in ("src_ports", "dst_ports"):  # one port is a number, as in policy files
        if key in raw:
            raw[key] = [int(v) if v.isascii() and v.isdigit() else v for v in raw[key]]
    if rule.log:
        raw["log"] = True
    if rule.audit:
        raw["audit"] = True
    if rule.tcp_flags:
        raw["tcp_flags"] = rule.tcp_flags
    for key in ("icmp_type", "icmp_code", "fragment"):
        if getattr(rule, key) is not None:
            raw[key] = getattr(rule, key)
    for key in ("src_set", "dst_set", "src_port_set", "dst_port_set"):
        if getattr(rule, key):
            raw[key] = getattr(rule, key)
    return raw


_SET_TYPES = {pb.SetType.PREFIX: "prefix", pb.SetType.PORT: "port"}
_SET_TYPE_PROTOS = {v: k for k, v in _SET_TYPES.items()}


def _sets_to_dict(sets: list[pb.NamedSet]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, s in enumerate(sets):
        entry: dict[str, Any] = {"elements": list(s.elements)}
        if s.type in _SET_TYPES:
            entry["type"] = _SET_TYPES[s.type]
        elif s.type != pb.SetType.UNSPECIFIED:
            entry["type"] = int(s.type)  # the parser names it as unknown
        if s.name in out:  # a mapping would silently keep only the last one
            raise PolicyError(f"sets[{i}].name", f"duplicate set name {s.name!r}")
        out[s.name] = entry
    return out


def proto_policy_to_dict(policy: pb.Policy | StreamedPolicy | None) -> dict[str, Any]:
    """A proto Policy in the YAML shape (absent means the empty policy)."""
    if policy is None:
        return {}
    raw: dict[str, Any] = {"dry_run": policy.dry_run}
    if policy.default_action != pb.Action.UNSPECIFIED:
        raw["default_action"] = _action_value(policy.default_action)
    rules = policy.rules
    # A streamed request's rules are decoded as the validator takes them.
    raw["rules"] = rules if isinstance(rules, model.RuleSource) else [rule_to_dict(r) for r in rules]
    if policy.log_default:
        raw["log_default"] = True
    if policy.sets:
        raw["sets"] = _sets_to_dict(list(policy.sets))
    return raw


def policy_from_proto(policy: pb.Policy | StreamedPolicy | None) -> model.Policy:
    """Validate a proto Policy; raises PolicyError naming the field."""
    return model.policy_from_dict(proto_policy_to_dict(policy))


def rule_to_proto(rule: model.Rule) -> pb.Rule:
    """One model rule as the proto (normalised like policy_to_proto)."""
    return policy_to_proto(model.Policy(rules=(rule,))).rules[0]


def set_type_to_proto(kind: Any) -> pb.SetType:
    return _SET_TYPE_PROTOS[kind.value]


def policy_to_proto(policy: model.Policy) -> pb.Policy:
    """The inverse of policy_from_proto (normalised: networks, protocol names)."""
    raw = model.policy_to_dict(policy)
    rules = []
    for r in raw["rules"]:
        rules.append(
            pb.Rule(
                id=r["id"],
                action=_ACTIONS[r["action"]],
                protocol=str(r.get("protocol", "")),
                src=list(r.get("src", [])),
                dst=list(r.get("dst", [])),
                src_ports=[str(p) for p in r.get("src_ports", ())],
                dst_ports=[str(p) for p in r.get("dst_ports", ())],
                interfaces=list(r.get("interfaces", [])),
                log=bool(r.get("log", False)),
                audit=bool(r.get("audit", False)),
                tcp_flags=str(r.get("tcp_flags", "")),
                icmp_type=r.get("icmp_type"),
                icmp_code=r.get("icmp_code"),
                fragment=r.get("fragment"),
                src_set=r.get("src_set", ""),
                dst_set=r.get("dst_set", ""),
                src_port_set=r.get("src_port_set", ""),
                dst_port_set=r.get("dst_port_set", ""),
            )
        )
    return pb.Policy(
        default_action=_ACTIONS[raw["default_action"]],
        dry_run=raw["dry_run"],
        rules=rules,
        log_default=bool(raw.get("log_default", False)),
        sets=[
            pb.NamedSet(name=name, type=_SET_TYPE_PROTOS[s["type"]],
                        elements=[str(e) for e in s["elements"]])
            for name, s in raw.get("sets", {}).items()
        ],
    )


def action_to_proto(action: str) -> pb.Action:
    """"allow" / "drop" -> the proto enum."""
    return _ACTIONS[action]


def event_to_proto(event: DropEvent, interface: str) -> pb.Event:
    """A decoded kernel event as sent to subscribers."""
    return pb.Event(
        time_unix_ns=event.time_ns,
        interface=interface,
        ifindex=event.ifindex,
        rule_id=event.rule_id,
        action=_ACTIONS[event.action.value],
        dropped=event.dropped,
        dry_run=event.dry_run,
        would_drop=event.would_drop,
        default_action=event.default,
        malformed=event.malformed,
        src=str(event.src) if event.src is not None else "",
        dst=str(event.dst) if event.dst is not None else "",
        src_port=event.sport,
        dst_port=event.dport,
        protocol=event.proto,
        tcp_flags=event.tcp_flags,
        length=event.length,
    )


def interface_to_proto(status: messages.InterfaceStatus) -> pb.Interface:
    """A Links actor's InterfaceStatus as a proto Interface."""
    return pb.Interface(
        name=status.name,
        ifindex=status.ifindex,
        mode=_MODES[status.mode],
        prog_id=status.prog_id,
        link_id=status.link_id,
        state=_STATES[status.state],
        error=status.error,
        adopted=status.adopted,
    )


def adoption_to_proto(a: messages.Adoption | None) -> pb.Adoption | None:
    """What the Datapath found at start, for GetPolicyResponse.adoption."""
    if a is None:
        return None
    return pb.Adoption(
        maps_reused=list(a.maps_reused),
        maps_created=list(a.maps_created),
        notes=list(a.notes),
        kernel_revision=a.kernel_revision,
        entries_changed=a.entries_changed,
        reapplied=a.reapplied,
    )


def rule_stats_to_proto(stats: messages.RuleStats) -> pb.RuleStats:
    """A Datapath RuleStats as a proto RuleStats (an unknown action is UNSPECIFIED)."""
    return pb.RuleStats(
        rule_id=stats.rule_id,
        action=_ACTIONS.get(stats.action, pb.Action.UNSPECIFIED),
        packets=stats.packets,
        bytes=stats.bytes,
        would_drop_packets=stats.would_drop_packets,
        would_drop_bytes=stats.would_drop_bytes,
    )


def policy_to_yaml_dict(policy: pb.Policy) -> dict[str, Any]:
    """A proto Policy as the YAML file would spell it (for ``fwd policy get``).

    Goes through the model so the output is exactly what ``policy apply``
    accepts back.
    """
    return model.policy_to_dict(policy_from_proto(policy))
