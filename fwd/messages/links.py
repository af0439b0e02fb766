"""Discovery -> Links (link events) and Api -> Links (interface reads)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from anyio.streams.memory import MemoryObjectSendStream

from fwd.core.attach import AttachMode
from fwd.messages.reply import Reply


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
