"""Api (and ClusterSync) -> Datapath: policy, rule and set commands and their answers.

Each command that needs an answer carries a one-shot ``reply`` send stream;
the requester awaits the other end with a deadline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from anyio.streams.memory import MemoryObjectSendStream

from fwd.core.counters import SlotCounters
from fwd.messages.links import LinkEvent
from fwd.messages.reply import Reply
from fwd.policy.model import Policy, Rule, SetType


@dataclass(frozen=True)
class Applied:
    """The revision the data plane enforces after an apply (or at start)."""

    revision: int
    policy: Policy
    adoption: Adoption | None = None  # GetPolicy: what the agent found at start
    # The change changed nothing (an identical policy, elements already there or
    # already absent): no revision was made, ``revision`` is the one enforced.
    unchanged: bool = False
    # Set changes: distinct elements changed, and those already present (add) or
    # already absent (remove).
    elements_changed: int = 0
    elements_unchanged: int = 0


@dataclass(frozen=True)
class Adoption:
    """What the agent found in the kernel at start and what it did with it.

    ``maps_reused`` were taken over from the previous agent's pins (policy and
    counters kept); ``maps_created`` are new (nothing pinned, or ``notes`` say
    why a pin could not be used). ``kernel_revision`` is what the kernel
    enforced at start (0: nothing); ``entries_changed`` how many rule-map
    entries the reconcile rewrote, and ``reapplied`` whether it needed a
    generation flip at all (False: the kernel already enforced the desired policy).
    """

    maps_reused: tuple[str, ...] = ()
    maps_created: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    kernel_revision: int = 0
    entries_changed: int = 0
    reapplied: bool = False


@dataclass(frozen=True)
class ApplyPolicy:
    """Compile and atomically enforce ``policy``.

    ``expect_revision`` of None skips the check; otherwise the apply fails with
    RevisionMismatch unless it equals the revision now enforced.
    """

    policy: Policy
    expect_revision: int | None
    reply: MemoryObjectSendStream[Reply[Applied]]
    force: bool = False  # skip the anti-lockout check
    # An apply equal to the enforced policy makes no revision (the reply says
    # ``unchanged``); False for an apply that must make one (--confirm-within).
    unchanged_ok: bool = True


@dataclass(frozen=True)
class GetPolicy:
    reply: MemoryObjectSendStream[Reply[Applied]]


@dataclass(frozen=True)
class RuleStats:
    """Counters of one rule (or reserved slot), summed over CPUs."""

    rule_id: str
    action: str
    packets: int
    bytes: int
    would_drop_packets: int = 0
    would_drop_bytes: int = 0


@dataclass(frozen=True)
class GetStats:
    """Counters of the rows ``offset`` .. ``offset + limit`` (reserved slots first, then
    the rules in order; ``limit`` 0: every row). Only those slots are read."""

    reply: MemoryObjectSendStream[Reply[tuple[RuleStats, ...]]]
    offset: int = 0
    limit: int = 0


@dataclass(frozen=True)
class ApplyRevision:
    """Enforce, as a new revision, the policy stored under ``revision`` (a rollback).

    Fails with RevisionMismatch unless ``expect_revision`` (when given) is current,
    and with PolicyError (field "revision") if no such revision is stored.
    """

    revision: int
    expect_revision: int | None
    reply: MemoryObjectSendStream[Reply[Applied]]
    force: bool = False  # skip the anti-lockout check


@dataclass(frozen=True)
class HistoryEntry:
    revision: int
    applied_at: float  # unix time
    rules: int
    default_action: str
    dry_run: bool


@dataclass(frozen=True)
class GetHistory:
    """A page of the revision history, newest first."""

    offset: int
    limit: int
    reply: MemoryObjectSendStream[Reply[tuple[tuple[HistoryEntry, ...], int]]]  # (page, total)


@dataclass(frozen=True, slots=True)  # one per rule: 100,000 of them at scale
class RuleSlot:
    """One rule of the enforced policy and the counter slot its packets are counted in."""

    rule_id: str
    action: str
    slot: int


@dataclass(frozen=True)
class RuleTable:
    """The enforced policy as the metrics collector needs it: replaced whole on each
    install, so a reader on another thread sees one revision's table or the next."""

    revision: int = 0
    default_action: str = "allow"
    dry_run: bool = False
    rules: tuple[RuleSlot, ...] = ()

@dataclass(frozen=True)
class DatapathStatistics:
    """Datapath -> metrics: the snapshot the actor publishes after each change (immutable)."""

    applies: int = 0
    failed_applies: int = 0
    recompiles: int = 0
    rule_changes: int = 0
    set_changes: int = 0
    revision: int = 0
    entries: int = 0
    tuples: int = 0
    # The enforced policy's rule -> slot table for the metrics collector.
    table: RuleTable = field(default_factory=RuleTable)


@dataclass(frozen=True)
class AddRule:
    """Insert ``rule`` and enforce it; only its own entries change.

    Where: ``position`` (0 = first; None with no anchor = last), or right
    ``before_id`` / ``after_id`` another rule. ``expect_revision`` as for
    ApplyPolicy. The reply's policy is the whole new policy (shared, not copied).
    """

    rule: Rule
    reply: MemoryObjectSendStream[Reply[Applied]]
    position: int | None = None
    before_id: str | None = None
    after_id: str | None = None
    expect_revision: int | None = None
    force: bool = False  # skip the anti-lockout check


@dataclass(frozen=True)
class DeleteRule:
    """Remove the rule ``rule_id``; counters of every other rule are untouched."""

    rule_id: str
    reply: MemoryObjectSendStream[Reply[Applied]]
    expect_revision: int | None = None
    force: bool = False  # skip the anti-lockout check


@dataclass(frozen=True)
class RulePage:
    """Rules ``offset`` .. ``offset + len(rules) - 1`` of the policy at ``revision``."""

    revision: int
    offset: int
    total: int
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class ListRules:
    """One page of the enforced rules (``limit`` at most; never the whole table copied)."""

    offset: int
    limit: int
    reply: MemoryObjectSendStream[Reply[RulePage]]


@dataclass(frozen=True)
class SetAddElements:
    """Add ``elements`` (CIDRs or ports) to the named set, atomically, in one generation flip."""

    set_name: str
    elements: tuple[str | int, ...]
    reply: MemoryObjectSendStream[Reply[Applied]]
    expect_revision: int | None = None
    force: bool = False  # skip the anti-lockout check


@dataclass(frozen=True)
class SetRemoveElements:
    """Remove ``elements`` from the named set (absent ones are ignored), atomically."""

    set_name: str
    elements: tuple[str | int, ...]
    reply: MemoryObjectSendStream[Reply[Applied]]
    expect_revision: int | None = None
    force: bool = False  # skip the anti-lockout check


@dataclass(frozen=True)
class SetInfo:
    name: str
    type: SetType
    size: int


@dataclass(frozen=True)
class ListSets:
    reply: MemoryObjectSendStream[Reply[tuple[SetInfo, ...]]]


@dataclass(frozen=True)
class SetElementsPage:
    """Elements ``offset`` .. of the set (sorted text) at ``revision``."""

    revision: int
    set_name: str
    offset: int
    total: int
    elements: tuple[str, ...]


@dataclass(frozen=True)
class ListSetElements:
    set_name: str
    offset: int
    limit: int
    reply: MemoryObjectSendStream[Reply[SetElementsPage]]


@dataclass(frozen=True)
class LinkChanged:
    """Links -> Datapath: an interface appeared, went or was renamed (or a full resync).

    Links sends it for a new interface *before* it attaches XDP there and waits for
    the reply (the revision enforced after the recompile), so a rule naming the
    interface is compiled before its first packet. A failed recompile answers
    its error; the old entries stay.
    """

    event: LinkEvent
    reply: MemoryObjectSendStream[Reply[int]]


@dataclass(frozen=True)
class ReadCounters:
    """Metrics -> Datapath: the counters of these slots, summed over CPUs."""

    slots: tuple[int, ...]
    reply: MemoryObjectSendStream[Reply[Mapping[int, SlotCounters]]]


DatapathCommand = (
    ApplyPolicy
    | GetPolicy
    | GetStats
    | AddRule
    | DeleteRule
    | ListRules
    | SetAddElements
    | SetRemoveElements
    | ListSets
    | ListSetElements
    | ApplyRevision
    | GetHistory
    | LinkChanged
    | ReadCounters
)
