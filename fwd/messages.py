"""Every message that travels between actors (STYLE.md practice 2).

Each channel carries one of these frozen dataclasses. Requests that need an
answer carry a one-shot ``reply`` send stream; the requester awaits the other
end with a deadline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from anyio.streams.memory import MemoryObjectSendStream

from fwd.policy.model import Policy

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


@dataclass(frozen=True)
class ApplyPolicy:
    """Compile and atomically enforce ``policy``.

    ``expect_revision`` of None skips the check; otherwise the apply fails with
    RevisionMismatch unless it equals the revision now enforced.
    """

    policy: Policy
    expect_revision: int | None
    reply: MemoryObjectSendStream[Reply[Applied]]


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


DatapathCommand = ApplyPolicy | GetPolicy | GetStats


@dataclass(frozen=True)
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
    # Serve Prometheus metrics on HOST:PORT; "" disables the endpoint.
    metrics_addr: str = "127.0.0.1:9469"
