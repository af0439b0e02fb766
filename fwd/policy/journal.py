"""Replaying journaled incremental changes onto a stored policy (pure).

A whole-policy apply stores a snapshot; AddRule, DeleteRule and set element
changes store one small record each (``Pending.change``), because writing
100,000 rules per AddRule would take longer than the change itself. Loading
the desired state is the newest snapshot plus the records after it, replayed
here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from fwd.errors import PolicyError
from fwd.policy.model import Policy, rule_from_dict


def replay(
    policy: Policy, slots: Mapping[str, int], change: Mapping[str, Any]
) -> tuple[Policy, dict[str, int]]:
    """``policy`` and its counter ``slots`` after one journaled change."""
    out = dict(slots)
    op = change.get("op")
    if op == "add_rule":
        rule = rule_from_dict(change["rule"], policy.sets)
        index = int(change["index"])
        out[rule.id] = int(change["slot"])
        return replace(policy, rules=policy.rules[:index] + (rule,) + policy.rules[index:]), out
    if op == "delete_rule":
        rule_id = str(change["id"])
        out.pop(rule_id, None)
        return replace(policy, rules=tuple(r for r in policy.rules if r.id != rule_id)), out
    if op == "set":
        name = str(change["name"])
        named = policy.set_named(name)
        if named is None:
            raise PolicyError("set", f"journal names unknown set {name!r}")
        changed = named.with_elements(change.get("add", ()), change.get("remove", ()))
        sets = tuple(changed if s.name == name else s for s in policy.sets)
        return replace(policy, sets=sets), out
    raise PolicyError("op", f"unknown journal record {op!r}")
