"""Pure decoding of rtnetlink link messages into fwd messages (STYLE.md practice 4).

Nothing here opens a socket: the Discovery actor hands pyroute2 ``ifinfmsg``
objects to these functions, and the unit tests hand them messages they built.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol

from fwd.messages import LinkChange, LinkEvent, LinkInfo

# include/uapi/linux/rtnetlink.h
RTM_NEWLINK = 16
RTM_DELLINK = 17
# include/uapi/linux/if.h
IFF_UP = 0x1


class NlaLike(Protocol):
    """What we use of a pyroute2 netlink message or nested attribute."""

    def get_attr(self, attr: str, default: Any = None) -> Any: ...

    def __getitem__(self, key: str) -> Any: ...


def _nested(msg: NlaLike, outer: str, inner: str, default: Any) -> Any:
    nla = msg.get_attr(outer)
    if nla is None:
        return default
    value = nla.get_attr(inner)
    return default if value is None else value


def link_info_from_msg(msg: NlaLike) -> LinkInfo:
    """Decode one ifinfmsg (RTM_NEWLINK, RTM_DELLINK or a dump reply) into a LinkInfo."""
    name = msg.get_attr("IFLA_IFNAME")
    return LinkInfo(
        ifindex=int(msg["index"]),
        name=str(name) if name is not None else "",
        up=bool(int(msg["flags"]) & IFF_UP),
        kind=str(_nested(msg, "IFLA_LINKINFO", "IFLA_INFO_KIND", "")),
        xdp_prog_id=int(_nested(msg, "IFLA_XDP", "IFLA_XDP_PROG_ID", 0)),
    )


def is_link_msg(msg: NlaLike) -> bool:
    """True for messages that describe a device of this namespace.

    The RTMGRP_LINK group also carries AF_BRIDGE ifinfmsgs about bridge *ports*:
    an RTM_DELLINK with family AF_BRIDGE means "left the bridge", not "device
    gone", so those must never become REMOVED events.
    """
    return int(msg["family"]) != socket.AF_BRIDGE


def link_event_from_msg(msg: NlaLike) -> LinkEvent | None:
    """Translate one broadcast message into a LinkEvent, or None if it is not about a link."""
    if not is_link_msg(msg):
        return None
    msg_type = int(msg["header"]["type"])
    if msg_type == RTM_NEWLINK:
        return LinkEvent(LinkChange.ADDED, link=link_info_from_msg(msg))
    if msg_type == RTM_DELLINK:
        return LinkEvent(LinkChange.REMOVED, link=link_info_from_msg(msg))
    return None


def resync_event(msgs: list[NlaLike]) -> LinkEvent:
    """A RESYNC event from the replies of a full link dump, sorted by ifindex."""
    links = {
        info.ifindex: info
        for info in (link_info_from_msg(m) for m in msgs if is_link_msg(m))
    }
    return LinkEvent(
        LinkChange.RESYNC, links=tuple(links[i] for i in sorted(links))
    )
