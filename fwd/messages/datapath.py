"""Every message that travels between actors (STYLE.md practice 2).

Each channel carries one of these frozen dataclasses. Requests that need an
answer carry a one-shot ``reply`` send stream; the requester awaits the other
end with a deadline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd.core.records import DropEvent, EventFilter
from fwd.policy.model import Policy, Rule, SetType

T = TypeVar("T")


@dataclass(frozen=True)
class Reply(Generic[T]):
    """What an actor sends back: a value, or the error that explains why not."""

    value: T | None = None
    error: Exception | None = None

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


# --- Discovery -> Links --------------------------------------------------


class LinkChange(enum.Enum):
    ADDED = "added"  # RTM_NEWLINK for an ifindex we had not seen, or a change
    REMOVED = "removed"  # RTM_DELLINK
    RESYNC = "resync"  # full scan follows; links absent from it are gone


@dataclass(frozen=True)
class LinkInfo:
    """A kernel link as netlink reported it."""

    ifindex: int
    name: str
    up: bool
    kind: str = ""  # IFLA_INFO_KIND: "veth", "bridge", "" for physical
    xdp_prog_id: int = 0  # program attached according to IFLA_XDP


@dataclass(frozen=True)
class LinkEvent:
    """One change of the kernel's link table.

    A RESYNC event carries the complete list of links in ``links``; ADDED and
    REMOVED carry the one link in ``link``.
    """

    change: LinkChange
    link: LinkInfo | None = None
    links: tuple[LinkInfo, ...] = ()


# --- Links state ------------------------------------------------------------


class AttachMode(enum.Enum):
    NONE = "none"
    OFFLOAD = "offload"
    NATIVE = "native"
    GENERIC = "generic"


class LinkState(enum.Enum):
    ATTACHED = "attached"
    EXCLUDED = "excluded"  # not managed: include/exclude patterns
    FAILED = "failed"  # managed but attaching failed; see InterfaceStatus.error


@dataclass(frozen=True)
class InterfaceStatus:
    name: str
    ifindex: int
    state: LinkState
    mode: AttachMode = AttachMode.NONE
    prog_id: int = 0
    link_id: int = 0
    error: str = ""
    adopted: bool = False  # the link was taken over from a previous agent's pin


@dataclass(frozen=True)
class ListInterfaces:
    """Api -> Links: report every known interface."""

    reply: MemoryObjectSendStream[Reply[tuple[InterfaceStatus, ...]]]


# --- Api -> Datapath ----------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """The revision the data plane enforces after an apply (or at start)."""

    revision: int
    policy: Policy
    adoption: Adoption | None = None  # GetPolicy: what the agent found at start


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
    reply: MemoryObjectSendStream[Reply[tuple[RuleStats, ...]]]


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




# --- Api -> Confirmer ---------------------------------------------------------


@dataclass(frozen=True)
class PendingConfirm:
    """Revision ``revision`` rolls back to ``previous`` at ``deadline`` (unix time)."""

    revision: int
    previous: int
    deadline: float


@dataclass(frozen=True)
class ArmConfirm:
    """``revision`` was just applied with a confirm deadline; roll back unless confirmed."""

    pending: PendingConfirm
    reply: MemoryObjectSendStream[Reply[PendingConfirm]]


@dataclass(frozen=True)
class ConfirmRevision:
    """Keep ``revision`` (None: whatever is pending). Fails if nothing such is pending."""

    revision: int | None
    reply: MemoryObjectSendStream[Reply[PendingConfirm]]


@dataclass(frozen=True)
class Superseded:
    """A later apply replaced ``revision``: a pending rollback for an older one is moot."""

    revision: int


ConfirmCommand = ArmConfirm | ConfirmRevision | Superseded


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
)


@dataclass(frozen=True)
class Settings:
    """Agent settings fixed at start (passed to actors, never mutated)."""

    socket_path: str = "/run/fwd/fwd.sock"
    state_dir: str = "/var/lib/fwd"
    bpffs_dir: str = "/sys/fs/bpf/fwd"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    reply_timeout: float = 10.0
    # On a clean exit, keep XDP attached (pinned links keep enforcing the last
    # policy, and the next agent adopts them) or detach everything.
    detach_on_exit: bool = False
    # TCP listener "HOST:PORT" (empty: unix socket only); runs only with mutual TLS.
    listen: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Anti-lockout: traffic from these prefixes to these services ("tcp/22") may
    # not be dropped by any policy unless the apply says force.
    mgmt_prefixes: tuple[str, ...] = ()
    mgmt_services: tuple[str, ...] = ("tcp/22",)
    # Largest request message the API reads (a 100,000-rule policy is ~6 MB).
    max_request_bytes: int = 64 * 1024 * 1024
    # fwd agent --dry-run: every policy is enforced in dry-run (nothing is dropped).
    force_dry_run: bool = False
    # Serve Prometheus metrics on HOST:PORT; "" disables the endpoint.
    metrics_addr: str = "127.0.0.1:9469"
    # The kernel's event budget, per CPU: records per second and bucket depth
    # (what it suppresses is counted). Defaults: bpf/fwd.h FWD_EVENT_RATE / _BURST.
    event_rate: int = 100_000
    event_burst: int = 10_000
    # Cluster mode (issue 6): policies come from etcd at these endpoints
    # ("http://HOST:PORT"); empty means local mode (SQLite, the default).
    etcd_endpoints: tuple[str, ...] = ()
    node_name: str = ""  # this node's name in etcd (default: the host name)
    node_labels: tuple[tuple[str, str], ...] = ()  # written once, if the node has none
    etcd_prefix: str = "/fwd/"
    lease_ttl: int = 10  # seconds: the status record vanishes this long after a crash

    @property
    def cluster(self) -> bool:
        """Whether the agent runs in cluster mode (policies from etcd)."""
        return bool(self.etcd_endpoints)


# --- Events (issue 4) -----------------------------------------------------------


@dataclass(frozen=True)
class SlotNames:
    """Datapath -> Events: the counter slot -> rule id table of the enforced policy.

    Sent whenever the table changes (after every apply, and once at start), so
    the Events actor names rules without sharing the Datapath's state. Reserved
    slots may be included (e.g. ``(default)``).
    """

    revision: int
    names: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class EventBatch:
    """Events -> one subscriber: decoded events, and how many it lost before them.

    ``lost`` counts events that matched this subscriber's filter but were
    dropped because its stream was full, since the previous batch it received.
    """

    events: tuple[DropEvent, ...]
    lost: int = 0


@dataclass(frozen=True)
class Subscribe:
    """Api -> Events: start a subscription; the reply carries its receive stream.

    ``buffer`` bounds the subscriber's stream in batches (each at most the
    actor's per-wake-up budget of events). Unsubscribe by closing the stream.
    """

    filter: EventFilter
    reply: MemoryObjectSendStream[Reply[MemoryObjectReceiveStream[EventBatch]]]
    buffer: int = 64


EventsCommand = Subscribe


# --- Api -> ClusterAdmin (cluster mode, issue 6) ----------------------------------

Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs: hashable, immutable


@dataclass(frozen=True)
class ClusterPolicyInfo:
    """One policy stored in etcd under ``<prefix>policies/<name>``."""

    name: str
    selector: str
    priority: int
    mod_revision: int
    policy: Policy


@dataclass(frozen=True)
class PutClusterPolicy:
    """Write a policy to etcd; the reply is the etcd revision of the write.

    ``expect_revision``: None writes unconditionally, 0 only if the key does not
    exist, N only if N is the key's mod revision (else RevisionMismatch).
    """

    info: ClusterPolicyInfo  # mod_revision is ignored
    expect_revision: int | None
    reply: MemoryObjectSendStream[Reply[int]]


@dataclass(frozen=True)
class DeleteClusterPolicy:
    name: str
    expect_revision: int | None
    reply: MemoryObjectSendStream[Reply[int]]


@dataclass(frozen=True)
class ListClusterPolicies:
    """Every stored policy in merge order, and the etcd revision they were read at."""

    reply: MemoryObjectSendStream[Reply[tuple[int, tuple[ClusterPolicyInfo, ...]]]]


@dataclass(frozen=True)
class NodeView:
    """One node as etcd describes it: its labels and (while its lease lives) its status."""

    node: str
    labels: Labels
    live: bool
    synced_revision: int = 0
    lag: int = 0
    policy_hash: str = ""
    policies: tuple[tuple[str, int], ...] = ()
    applied_revision: int = 0
    interfaces: tuple[tuple[str, str], ...] = ()  # (name, attach mode)
    last_error: str = ""
    version: str = ""
    updated: float = 0.0  # unix time


@dataclass(frozen=True)
class ClusterView:
    """Every node known to etcd at ``revision``, ordered by name."""

    revision: int
    nodes: tuple[NodeView, ...]


@dataclass(frozen=True)
class ReadClusterStatus:
    reply: MemoryObjectSendStream[Reply[ClusterView]]


@dataclass(frozen=True)
class SetNodeLabels:
    """Set and remove labels of ``node``; the reply is (revision, labels after)."""

    node: str
    set: Labels
    remove: tuple[str, ...]
    reply: MemoryObjectSendStream[Reply[tuple[int, Labels]]]


ClusterAdminCommand = (
    PutClusterPolicy | DeleteClusterPolicy | ListClusterPolicies | ReadClusterStatus | SetNodeLabels
)
