"""Hypothesis strategies shared by the differential tests: policies and frames.

Addresses, ports and prefixes are drawn from small pools so that rules
overlap, nest and collide and packets land on, next to and outside them.
Policies use every rule field (TCP flags, ICMP, fragments, interfaces, audit,
named prefix and port sets); frames cover VLAN tags, IPv6 extension headers,
fragments, malformed headers and truncations.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import strategies as st

from tests import packets as P

V4_POOL = ["198.18.0.0", "198.18.1.0", "198.18.1.128", "198.19.0.0", "198.19.255.0"]
V6_POOL = ["2001:2::", "2001:2:0:1::", "2001:2:0:1:8000::", "2001:2:ff::"]
V4_LENS = [0, 8, 15, 16, 24, 25, 31, 32]
V6_LENS = [0, 32, 48, 64, 65, 127, 128]
PORTS = [0, 1, 22, 53, 80, 443, 1023, 1024, 8080, 65535]
FLAG_NAMES = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"]
IFNAMES = {1: "lo", 2: "eth0", 3: "eth1"}  # the ifindexes frames arrive on
IFINDEXES = {name: index for index, name in IFNAMES.items()}
GLOBS = ["lo", "eth*", "eth1", "nomatch*"]


def examples(default: int) -> int:
    """``default`` scaled by FWD_HYPOTHESIS_EXAMPLES / 1000 (bench/differential.sh raises it)."""
    scale = int(os.environ.get("FWD_HYPOTHESIS_EXAMPLES", "1000"))
    return max(1, default * scale // 1000)


@st.composite
def cidr(draw: st.DrawFn, family: int | None = None) -> str:
    fam = family or draw(st.sampled_from([4, 6]))
    if fam == 4:
        base, plen = draw(st.sampled_from(V4_POOL)), draw(st.sampled_from(V4_LENS))
        text = f"{base}/{plen}"
    else:
        base, plen = draw(st.sampled_from(V6_POOL)), draw(st.sampled_from(V6_LENS))
        text = f"{base}/{plen}"
    return str(__import__("ipaddress").ip_network(text, strict=False))


@st.composite
def address(draw: st.DrawFn, family: int) -> str:
    """An address in, at the edge of, or just outside the pools."""
    import ipaddress

    if family == 4:
        base = int(ipaddress.IPv4Address(draw(st.sampled_from(V4_POOL))))
        delta = draw(st.sampled_from([0, 1, 2, 127, 128, 129, 255, 256, 65535, -1]))
        return str(ipaddress.IPv4Address((base + delta) % (1 << 32)))
    base6 = int(ipaddress.IPv6Address(draw(st.sampled_from(V6_POOL))))
    delta = draw(st.sampled_from([0, 1, 2, 1 << 63, (1 << 64) - 1, 1 << 64, 1 << 80, -1]))
    return str(ipaddress.IPv6Address((base6 + delta) % (1 << 128)))


def port_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


@st.composite
def port_range(draw: st.DrawFn) -> str:
    a = draw(st.one_of(st.sampled_from(PORTS), st.integers(0, 65535)))
    b = draw(st.one_of(st.just(a), st.sampled_from(PORTS), st.integers(0, 65535)))
    return port_text(min(a, b), max(a, b))


@st.composite
def tcp_flags(draw: st.DrawFn) -> str:
    names = draw(st.lists(st.sampled_from(FLAG_NAMES), min_size=1, max_size=3, unique=True))
    return ",".join(("!" if draw(st.booleans()) else "") + n for n in names)


@st.composite
def named_sets(draw: st.DrawFn) -> dict[str, Any]:
    sets: dict[str, Any] = {}
    for i in range(draw(st.integers(0, 3))):
        elements = draw(st.lists(cidr(), max_size=6))
        sets[f"pfx{i}"] = {"type": "prefix", "elements": elements}
    for i in range(draw(st.integers(0, 2))):
        sets[f"ports{i}"] = {"type": "port", "elements": draw(st.lists(port_range(), max_size=3))}
    return sets


@st.composite
def rule_dict(draw: st.DrawFn, rule_id: str, sets: dict[str, Any]) -> dict[str, Any]:
    proto = draw(st.sampled_from([None, "tcp", "udp", "icmp", "icmpv6", "sctp", 47]))
    r: dict[str, Any] = {"id": rule_id, "action": draw(st.sampled_from(["allow", "drop"]))}
    if proto is not None:
        r["protocol"] = proto
    fam = draw(st.sampled_from([None, 4, 6]))
    for key in ("src", "dst"):
        if draw(st.integers(0, 2)) == 0:
            r[key] = draw(st.lists(cidr(fam), min_size=1, max_size=3))
    if "src" in r and "dst" in r:
        fams = {":" in c for c in r["src"]} & {":" in c for c in r["dst"]}
        if not fams:
            del r["dst"]
    prefix_sets = [n for n, s in sets.items() if s["type"] == "prefix"]
    port_sets = [n for n, s in sets.items() if s["type"] == "port"]
    for key in ("src_set", "dst_set"):
        if prefix_sets and draw(st.integers(0, 2)) == 0:
            r[key] = draw(st.sampled_from(prefix_sets))
    if proto in ("tcp", "udp", "sctp"):
        for key in ("src", "dst"):
            choice = draw(st.integers(0, 3))
            if choice == 0:
                r[f"{key}_ports"] = draw(st.lists(port_range(), min_size=1, max_size=3))
            elif choice == 1 and port_sets:
                r[f"{key}_port_set"] = draw(st.sampled_from(port_sets))
    if proto == "tcp" and draw(st.booleans()):
        r["tcp_flags"] = draw(tcp_flags())
    if proto in ("icmp", "icmpv6"):
        if draw(st.booleans()):
            r["icmp_type"] = draw(st.sampled_from([0, 3, 8, 128, 129, 255]))
        if draw(st.booleans()):
            r["icmp_code"] = draw(st.sampled_from([0, 1, 4]))
    if draw(st.integers(0, 4)) == 0:
        r["fragment"] = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        r["interfaces"] = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2))
    if draw(st.integers(0, 5)) == 0:
        r["audit"] = True
    if draw(st.integers(0, 5)) == 0:
        r["log"] = True
    return r


@st.composite
def policy_dict(draw: st.DrawFn, max_rules: int = 30) -> dict[str, Any]:
    sets = draw(named_sets())
    n = draw(st.integers(0, max_rules))
    return {
        "default_action": draw(st.sampled_from(["allow", "drop"])),
        "dry_run": draw(st.integers(0, 9)) == 0,
        "log_default": draw(st.booleans()),
        "sets": sets,
        "rules": [draw(rule_dict(f"r{i}", sets)) for i in range(n)],
    }


@st.composite
def frame(draw: st.DrawFn) -> tuple[int, bytes]:
    """(ingress ifindex, frame): matching, near-miss, fragmented, tagged, malformed."""
    ifindex = draw(st.sampled_from(sorted(IFNAMES)))
    fam = draw(st.sampled_from([4, 6]))
    src, dst = draw(address(fam)), draw(address(fam))
    proto = draw(st.sampled_from([P.TCP, P.UDP, P.SCTP, P.ICMP, P.ICMPV6, 47]))
    sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    if proto == P.TCP:
        l4 = P.tcp(sport, dport, draw(st.integers(0, 255)))
    elif proto == P.UDP:
        l4 = P.udp(sport, dport, b"x" * draw(st.integers(0, 4)))
    elif proto == P.SCTP:
        l4 = P.sctp(sport, dport)
    elif proto in (P.ICMP, P.ICMPV6):
        t, c = draw(st.sampled_from([0, 3, 8, 128, 129, 255])), draw(st.sampled_from([0, 1, 4]))
        l4 = P.icmp(t, c) if proto == P.ICMP else P.icmpv6(t, c)
    else:
        l4 = b"\0" * 8
    frag = draw(st.sampled_from(["none"] * 6 + ["first", "later"]))
    if fam == 4:
        ip = P.ipv4(src, dst, proto, l4, ihl=draw(st.sampled_from([5] * 5 + [6])),
                    mf=frag == "first", frag_offset=64 if frag == "later" else 0)  # fmt: skip
        ethertype = P.ETH_P_IP
    else:
        ext = draw(st.lists(st.sampled_from(["hbh", "dst", "rt", "ah"]), max_size=2))
        exts = [{"hbh": P.hop_by_hop, "dst": P.dstopts, "rt": P.routing, "ah": P.ah}[e]() for e in ext]
        if frag != "none":
            exts.append(P.fragment(100 if frag == "later" else 0, m=frag == "first"))
        ip = P.ipv6(src, dst, proto, l4, exts)
        ethertype = P.ETH_P_IPV6
    vlans = draw(st.lists(st.sampled_from([10, 20]), max_size=3)) if draw(st.integers(0, 4)) == 0 else []
    whole = P.eth(ip, ethertype, vlans=vlans)
    mangle = draw(st.integers(0, 9))
    if mangle == 0:  # cut somewhere (still an Ethernet header)
        whole = whole[: draw(st.integers(14, len(whole)))]
    elif mangle == 1:  # break the version / ihl byte
        off = 14 + 4 * len(vlans)
        if off < len(whole):
            b = bytearray(whole)
            b[off] = draw(st.sampled_from([0x44, 0x40, 0x65, 0x55, 0x0F]))
            whole = bytes(b)
    return ifindex, whole


def sets_dict(policy: Any) -> dict[str, Any]:
    """A policy's sets as policy-file data (to validate new rules against them)."""
    from fwd.policy.sets import sets_to_dict

    return sets_to_dict(policy.sets)
