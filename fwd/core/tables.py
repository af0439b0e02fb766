"""The Datapath's read side, pure: the slot tables it publishes and the counters it reports."""

from __future__ import annotations

from collections.abc import Mapping

from fwd.core import abi
from fwd.core.counters import SlotCounters
from fwd.errors import PolicyError
from fwd.messages import HistoryEntry, Reply, RulePage, RuleSlot, RuleStats, RuleTable
from fwd.policy.model import Action, Policy, Rule

RESERVED_SLOTS = {
    abi.SLOT_DEFAULT: "(default)",
    abi.SLOT_MALFORMED: "(malformed)",
    abi.SLOT_NON_IP: "(non-ip)",
}
MAX_PAGE = 10_000


def rule_table(policy: Policy, revision: int, slots: dict[str, int]) -> RuleTable:
    """The slot of every rule of ``policy`` (built once per change, read at scrape time)."""
    return RuleTable(
        revision=revision,
        default_action=policy.default_action.value,
        dry_run=policy.dry_run,
        rules=tuple(RuleSlot(r.id, r.action.value, slots[r.id]) for r in policy.rules),
    )


def slot_names(slots: Mapping[str, int]) -> tuple[tuple[int, str], ...]:
    """The slot -> rule id table the Events actor names events with (reserved slots too)."""
    return (*RESERVED_SLOTS.items(), *((s, rid) for rid, s in slots.items()))


def stat_slots(policy: Policy, slots: Mapping[str, int]) -> list[int]:
    """The counter slots :func:`rule_stats` reads: the reserved ones, then every rule's."""
    return list(RESERVED_SLOTS) + [slots[r.id] for r in policy.rules]


def rule_stats(
    policy: Policy, slots: Mapping[str, int], counters: Mapping[int, SlotCounters]
) -> tuple[RuleStats, ...]:
    """Every reserved slot's and rule's counters, in policy order (GetStats)."""
    out: list[RuleStats] = []
    for slot, name in RESERVED_SLOTS.items():
        c = counters[slot]
        action = policy.default_action if slot == abi.SLOT_DEFAULT else None
        if slot == abi.SLOT_MALFORMED:
            action = Action.DROP
        elif slot == abi.SLOT_NON_IP:
            action = Action.ALLOW
        out.append(
            RuleStats(
                name,
                action.value if action else "",
                c.packets,
                c.bytes,
                c.would_drop_packets,
                c.would_drop_bytes,
            )
        )
    for rule in policy.rules:
        c = counters[slots[rule.id]]
        out.append(
            RuleStats(
                rule.id,
                rule.action.value,
                c.packets,
                c.bytes,
                c.would_drop_packets,
                c.would_drop_bytes,
            )
        )
    return tuple(out)


def check_page(offset: int, limit: int) -> PolicyError | None:
    """The error of a bad page request, if it is one."""
    if offset < 0 or not 0 < limit <= MAX_PAGE:
        return PolicyError("limit", f"offset >= 0 and limit 1-{MAX_PAGE}")
    return None


def rule_page(revision: int, rules: tuple[Rule, ...], offset: int, limit: int) -> Reply[RulePage]:
    """One page of the enforced rules (ListRules)."""
    if (bad := check_page(offset, limit)) is not None:
        return Reply(error=bad)
    return Reply(RulePage(revision, offset, len(rules), rules[offset : offset + limit]))


def history_entry(revision: int, applied_at: float, policy: Policy) -> HistoryEntry:
    """A stored revision as the history lists it (GetHistory)."""
    return HistoryEntry(
        revision, applied_at, len(policy.rules), policy.default_action.value, policy.dry_run
    )
