"""fwd.core.netlink decodes pyroute2 ifinfmsgs; messages here are encoded then decoded like the kernel's."""

from __future__ import annotations

import socket
from typing import Any

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from fwd.messages import LinkChange, LinkInfo
from fwd.core.netlink import (
    RTM_DELLINK,
    RTM_NEWLINK,
    link_event_from_msg,
    link_info_from_msg,
    resync_event,
)


def make_msg(
    index: int,
    name: str,
    *,
    flags: int = 0,
    kind: str | None = None,
    prog_id: int | None = None,
    msg_type: int = RTM_NEWLINK,
    family: int = socket.AF_UNSPEC,
) -> Any:
    msg = ifinfmsg()
    msg["header"]["type"] = msg_type
    msg["family"] = family
    msg["index"] = index
    msg["flags"] = flags
    msg["change"] = 0
    attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", name)]
    if kind is not None:
        attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}))
    if prog_id is not None:
        attrs.append(
            ("IFLA_XDP", {"attrs": [("IFLA_XDP_ATTACHED", 1), ("IFLA_XDP_PROG_ID", prog_id)]})
        )
    msg["attrs"] = attrs
    msg.encode()
    decoded = ifinfmsg(msg.data)
    decoded.decode()
    return decoded


def test_full_message() -> None:
    msg = make_msg(7, "veth0", flags=0x1 | 0x40, kind="veth", prog_id=42)
    assert link_info_from_msg(msg) == LinkInfo(7, "veth0", True, "veth", 42)


def test_down_physical_link_without_xdp() -> None:
    info = link_info_from_msg(make_msg(2, "eth0", flags=0x1000))  # IFF_MULTICAST only
    assert info == LinkInfo(2, "eth0", up=False, kind="", xdp_prog_id=0)


def test_linkinfo_without_kind_and_xdp_without_prog() -> None:
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["index"], msg["flags"], msg["family"], msg["change"] = 3, 1, 0, 0
    msg["attrs"] = [
        ("IFLA_IFNAME", "x"),
        ("IFLA_LINKINFO", {"attrs": []}),
        ("IFLA_XDP", {"attrs": [("IFLA_XDP_ATTACHED", 0)]}),
    ]
    msg.encode()
    decoded = ifinfmsg(msg.data)
    decoded.decode()
    assert link_info_from_msg(decoded) == LinkInfo(3, "x", True, "", 0)


def test_events_by_type() -> None:
    added = link_event_from_msg(make_msg(5, "a", msg_type=RTM_NEWLINK))
    removed = link_event_from_msg(make_msg(5, "a", msg_type=RTM_DELLINK))
    assert added is not None and added.change is LinkChange.ADDED
    assert removed is not None and removed.change is LinkChange.REMOVED
    assert removed.link == LinkInfo(5, "a", False)


def test_bridge_port_messages_are_not_link_events() -> None:
    # A port leaving a bridge sends RTM_DELLINK with family AF_BRIDGE: the device stays.
    msg = make_msg(5, "a", msg_type=RTM_DELLINK, family=socket.AF_BRIDGE)
    assert link_event_from_msg(msg) is None


def test_resync_sorted_and_filtered() -> None:
    event = resync_event(
        [
            make_msg(9, "b"),
            make_msg(1, "lo", flags=1),
            make_msg(9, "b", family=socket.AF_BRIDGE),
        ]
    )
    assert event.change is LinkChange.RESYNC
    assert [link.ifindex for link in event.links] == [1, 9]
    assert event.link is None
