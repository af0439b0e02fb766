"""The Datapath's read side, pure: the slot tables it publishes and the counters it reports."""

from __future__ import annotations

from collections.abc import Mapping

from fwd.core import abi
from fwd.core.counters import SlotCounters
from fwd.errors import PolicyError
from fwd.messages import (
    HistoryEntry,
    LinkChange,
    LinkEvent,
    Reply,
    RulePage,
    RuleSlot,
    RuleStats,
    RuleTable,
)
from fwd.policy.model import Action, Policy, Rule

RESERVED_SLOTS = {
    abi.SLOT_DEFAULT: "(default)",
    abi.SLOT_MALFORMED: "(malformed)",
    abi.SLOT_NON_IP: "(non-ip)",
    abi.SLOT_FAILSAFE: "(failsafe)",
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


def _stat_page(
    policy: Policy, offset: int, limit: int
) -> tuple[list[tuple[int, str]], tuple[Rule, ...]]:
    """Rows ``offset`` .. ``offset + limit`` (0: all): reserved slots first, then rules."""
    nres = len(RESERVED_SLOTS)
    end = nres + len(policy.rules) if limit <= 0 else offset + limit
    reserved = list(RESERVED_SLOTS.items())[offset:end]
    return reserved, policy.rules[max(offset - nres, 0) : max(end - nres, 0)]


def stat_slots(
    policy: Policy, slots: Mapping[str, int], offset: int = 0, limit: int = 0
) -> list[int]:
    """The counter slots :func:`rule_stats` reads for one page (only those are read,
    so paging through 100,000 rules stays linear)."""
    reserved, rules = _stat_page(policy, offset, limit)
    return [s for s, _ in reserved] + [slots[r.id] for r in rules]


def rule_stats(
    policy: Policy, slots: Mapping[str, int], counters: Mapping[int, SlotCounters],
    offset: int = 0, limit: int = 0,
) -> tuple[RuleStats, ...]:
    """One page of the reserved slots' and rules' counters, in policy order (GetStats)."""
    reserved, rules = _stat_page(policy, offset, limit)
    out: list[RuleStats] = []
    for slot, name in reserved:
        c = counters[slot]
        action = policy.default_action if slot == abi.SLOT_DEFAULT else None
        if slot == abi.SLOT_MALFORMED:
            action = Action.DROP
        elif slot in (abi.SLOT_NON_IP, abi.SLOT_FAILSAFE):
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
    for rule in rules:
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


def link_names(current: Mapping[str, int], event: LinkEvent) -> dict[str, int]:
    """The interface name -> ifindex table after ``event`` (what rules compile against)."""
    if event.change is LinkChange.RESYNC:
        return {li.name: li.ifindex for li in event.links}
    names = {n: i for n, i in current.items() if event.link is None or i != event.link.ifindex}
    if event.link is not None and event.change is LinkChange.ADDED:
        names[event.link.name] = event.link.ifindex
    return names
