"""The rule sets and frames every engine is measured with (pure: no kernel, no I/O).

One family of rules, written for each engine in its own language:

* **fwd** rule ``i`` (0-based) of ``n``: ``src 198.18.0.0/15``'s /24 number
  ``i % 512`` AND ``protocol udp`` AND ``dst_ports [1024 + i // 512]``. The
  first ``n - 1`` rules allow, the last one drops, the default action drops
  (an allow-list with one block rule at its end). Every (prefix, port) pair is
  distinct, so no rule shadows another.
* **nftables**: the same ``n`` rules as ``n`` chain rules (``accept`` ... and a
  final ``counter drop``), or as one rule with a verdict map of ``n``
  ``prefix . port`` elements (a concatenated interval set).
* **xdp-filter** matches one field per lookup and has no CIDRs, so it gets
  ``n`` source addresses (entry ``i`` is host ``7 + i // 512`` of /24 number
  ``i % 512``, inside fwd rule ``i``'s prefix) plus :data:`XDP_FILTER_PORTS`
  destination ports that no frame uses.

Two frames, the same bytes for every engine:

* ``match``: source = xdp-filter entry ``n - 1`` (inside fwd rule ``n - 1``'s
  /24), UDP to port ``1024 + (n - 1) // 512``: it matches fwd's LAST rule, the
  last nftables rule, and xdp-filter's last address. Every engine drops it.
* ``miss``: the same /24 (host 250, never an xdp-filter entry), UDP to port
  1023, which no rule names: a near miss that every rule must reject (fwd:
  default drop; xdp-filter: passes after all its lookups).

All addresses are from 198.18.0.0/15 (RFC 2544 benchmarking range).
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, for tests/

from tests import packets as P  # noqa: E402

BASE = int(ipaddress.IPv4Address("198.18.0.0"))
PREFIXES = 512  # /24s in 198.18.0.0/15
FIRST_PORT = 1024
MISS_PORT = 1023
MISS_HOST = 250
XDP_FILTER_PORTS = tuple(range(2000, 2016))  # "some ports": loaded, never hit
DST = "198.19.255.254"  # the receiving side; nothing routes it, XDP sees it first
SPORT = 40000


def _prefix(i: int) -> int:
    """The network address (as an int) of rule ``i``'s /24."""
    return BASE + (i % PREFIXES) * 256


def rule_prefix(i: int) -> str:
    return f"{ipaddress.IPv4Address(_prefix(i))}/24"


def rule_port(i: int) -> int:
    return FIRST_PORT + i // PREFIXES


def filter_address(i: int) -> str:
    """xdp-filter entry ``i``: a host inside fwd rule ``i``'s prefix."""
    return str(ipaddress.IPv4Address(_prefix(i) + 7 + i // PREFIXES))


def fwd_policy(n: int) -> dict[str, Any]:
    """The fwd policy of ``n`` rules, as a policy file would hold it."""
    rules = [
        {
            "id": f"r{i}",
            "action": "drop" if i == n - 1 else "allow",
            "protocol": "udp",
            "src": [rule_prefix(i)],
            "dst_ports": [rule_port(i)],
        }
        for i in range(n)
    ]
    return {"default_action": "drop", "rules": rules}


def last_rule_id(n: int) -> str:
    return f"r{n - 1}"


@dataclass(frozen=True)
class Frames:
    """The two frames of a rule set of ``n`` rules."""

    n: int
    match: bytes
    miss: bytes


def frames(n: int, dst_mac: bytes = P.DST_MAC, src_mac: bytes = P.SRC_MAC) -> Frames:
    """The ``match`` and ``miss`` frames for ``n`` rules (64-byte UDP/IPv4 frames)."""
    last = n - 1
    payload = b"\0" * 18  # 14 + 20 + 8 + 18 = 60 bytes: a minimum-size frame without FCS
    match_src = filter_address(last)
    miss_src = str(ipaddress.IPv4Address(_prefix(last) + MISS_HOST))

    def frame(src: str, dport: int) -> bytes:
        ip = P.ipv4(src, DST, P.UDP, P.udp(SPORT, dport, payload))
        return P.eth(ip, P.ETH_P_IP, src=src_mac, dst=dst_mac)

    return Frames(n, frame(match_src, rule_port(last)), frame(miss_src, MISS_PORT))


def nft_chain(n: int, table: str, dev: str) -> str:
    """An nft script: ``n`` rules in one netdev ingress chain (policy drop)."""
    lines = [
        f"table netdev {table} {{",
        "  chain ingress {",
        f'    type filter hook ingress device "{dev}" priority 0; policy drop;',
    ]
    for i in range(n):
        verdict = "counter drop" if i == n - 1 else "accept"
        lines.append(f"    ip saddr {rule_prefix(i)} udp dport {rule_port(i)} {verdict}")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def nft_set(n: int, table: str, dev: str) -> str:
    """An nft script: one rule whose verdict map holds the ``n`` rules as elements."""
    elements = ",\n      ".join(
        f"{rule_prefix(i)} . {rule_port(i)} : {'drop' if i == n - 1 else 'accept'}"
        for i in range(n)
    )
    return (
        f"table netdev {table} {{\n"
        "  map rules {\n"
        "    type ipv4_addr . inet_service : verdict; flags interval;\n"
        f"    elements = {{\n      {elements}\n    }}\n"
        "  }\n"
        "  chain ingress {\n"
        f'    type filter hook ingress device "{dev}" priority 0; policy drop;\n'
        "    meta l4proto udp counter ip saddr . udp dport vmap @rules\n"
        "  }\n"
        "}\n"
    )


def filter_addresses(n: int) -> Iterator[str]:
    """xdp-filter's ``n`` source addresses (deny entries)."""
    return (filter_address(i) for i in range(n))
