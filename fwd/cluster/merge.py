"""The policies that select a node, merged into the one Policy it enforces (pure).

Merge (docs/cluster.md):

- The policies whose selector matches the node's labels, sorted by
  (priority ascending, name).
- Rules concatenated in that order; rule ``id`` becomes ``<policy>:<id>`` so ids
  stay unique across policies and stable across merges (counters follow them).
- Set ``s`` of policy ``p`` becomes ``p.s``; the rules' set references follow.
- ``default_action`` and ``log_default`` come from the first policy. The result
  is never dry-run as a whole: a ``dry_run`` policy contributes its drop rules
  with ``audit: true``, and if it is the first one its default drop is not
  enforced (default allow), so a dry-run policy never drops anything.
- No policy selects the node: the empty policy (default allow, no rules).

The result goes through ``policy_from_dict``, the validation policy files get.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import replace

from fwd.cluster.layout import PolicyRecord
from fwd.errors import PolicyError
from fwd.policy.model import (
    EMPTY_POLICY,
    RULE_ID_RE,
    Action,
    Policy,
    Rule,
    policy_from_dict,
    policy_to_dict,
)
from fwd.policy.sets import SET_NAME_RE, NamedSet

SET_FIELDS = ("src_set", "dst_set", "src_port_set", "dst_port_set")


def select(records: Iterable[PolicyRecord], labels: Mapping[str, str]) -> list[PolicyRecord]:
    """The records whose selector matches ``labels``, in merge order."""
    chosen = [r for r in records if r.selector.matches(labels)]
    chosen.sort(key=lambda r: (r.priority, r.name))
    return chosen


def _rule(record: PolicyRecord, index: int, rule: Rule) -> Rule:
    where = f"policies/{record.name}.rules[{index}]"
    rule_id = f"{record.name}:{rule.id}"
    if not RULE_ID_RE.match(rule_id):
        raise PolicyError(f"{where}.id", f"merged rule id {rule_id!r} is too long (128 at most)")
    changes: dict[str, object] = {"id": rule_id}
    for key in SET_FIELDS:
        name = getattr(rule, key)
        if name is not None:
            changes[key] = f"{record.name}.{name}"
    if record.policy.dry_run and rule.action is Action.DROP:
        changes["audit"] = True
    return replace(rule, **changes)  # type: ignore[arg-type]


def _set(record: PolicyRecord, s: NamedSet) -> NamedSet:
    name = f"{record.name}.{s.name}"
    if not SET_NAME_RE.match(name):
        raise PolicyError(
            f"policies/{record.name}.sets.{s.name}",
            f"merged set name {name!r} is invalid (a letter first, 64 characters at most)",
        )
    return replace(s, name=name)


def merge(ordered: list[PolicyRecord]) -> Policy:
    """Merge records already in merge order (see ``select``); raise PolicyError if the
    result is not a valid policy (the field names the policy it came from)."""
    if not ordered:
        return EMPTY_POLICY
    first = ordered[0].policy
    default = first.default_action
    if first.dry_run and default is Action.DROP:
        default = Action.ALLOW  # a dry-run policy never drops, not even by default
    rules: list[Rule] = []
    sets: list[NamedSet] = []
    for record in ordered:
        rules.extend(_rule(record, i, r) for i, r in enumerate(record.policy.rules))
        sets.extend(_set(record, s) for s in record.policy.sets)
    merged = Policy(
        default_action=default,
        dry_run=False,
        rules=tuple(rules),
        log_default=first.log_default,
        sets=tuple(sets),
    )
    # The same validation as a policy file: limits, duplicate ids, set references.
    return policy_from_dict(policy_to_dict(merged))


def canonical_json(policy: Policy) -> str:
    return json.dumps(policy_to_dict(policy), sort_keys=True, separators=(",", ":"))


def policy_hash(policy: Policy) -> str:
    """sha256 (hex) of the policy's canonical JSON: equal policies, equal hashes."""
    return hashlib.sha256(canonical_json(policy).encode()).hexdigest()


def merged_for(
    records: Iterable[PolicyRecord], labels: Mapping[str, str]
) -> tuple[Policy, tuple[tuple[str, int], ...]]:
    """The merged policy for a node with ``labels`` and the (name, mod_revision) it used."""
    ordered = select(records, labels)
    return merge(ordered), tuple((r.name, r.mod_revision) for r in ordered)


def check_mergeable(record: PolicyRecord) -> None:
    """Raise PolicyError if ``record`` cannot take part in a merge (renamed ids or set
    names out of bounds): writers call this before storing it, so agents never see it."""
    merge([record])
