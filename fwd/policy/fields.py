"""Field parsers shared by rules and sets: protocols, CIDRs, ports, TCP flags.

Every parser takes the untrusted value and the field path it came from, and
raises PolicyError naming that path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fwd.errors import PolicyError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS: dict[str, int] = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOLS.items()}
PORT_PROTOCOLS = frozenset({6, 17, 132})
ICMP_PROTOCOLS = frozenset({1, 58})
TCP_FLAGS: dict[str, int] = {
    "fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08,
    "ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80,
}  # fmt: skip
_DIGITS_RE = re.compile(r"^[0-9]{1,10}$")


@dataclass(frozen=True, order=True, slots=True)
class PortRange:
    """An inclusive port range; a single port has first == last."""

    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


@dataclass(frozen=True, slots=True)
class TcpFlags:
    """TCP flags a packet must have set (``value``) and clear (``mask & ~value``)."""

    mask: int
    value: int

    def __str__(self) -> str:
        return ",".join(
            ("" if self.value & bit else "!") + name
            for name, bit in TCP_FLAGS.items()
            if self.mask & bit
        )

    def matches(self, flags: int) -> bool:
        return flags & self.mask == self.value


def parse_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(field, f"must be true or false, not {value!r}")
    return value


def parse_list(value: Any, field: str) -> Sequence[Any]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]  # a lone value is a list of one
    if not isinstance(value, (list, tuple)):
        raise PolicyError(field, f"must be a list, not {type(value).__name__}")
    if not value:
        raise PolicyError(field, "must not be empty (leave the field out to match any)")
    return value


def parse_protocol(value: Any, field: str = "protocol") -> int:
    if isinstance(value, bool):
        raise PolicyError(field, f"invalid protocol {value!r}")
    if isinstance(value, str):
        name = value.strip().lower()
        if name in PROTOCOLS:
            return PROTOCOLS[name]
        if _DIGITS_RE.match(name):
            value = int(name)
        else:
            names = " | ".join(PROTOCOLS)
            raise PolicyError(field, f"unknown protocol {value!r} ({names} | 0-255)")
    if isinstance(value, int) and 0 <= value <= 255:
        return value
    raise PolicyError(field, f"invalid protocol {value!r} (must be a name or 0-255)")


def parse_cidr(value: Any, field: str) -> IPNetwork:
    if not isinstance(value, str):
        raise PolicyError(field, f"must be a CIDR or address string, not {value!r}")
    try:
        net = ipaddress.ip_network(value.strip())
    except ValueError:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise PolicyError(field, f"invalid CIDR or address {value!r}") from None
        # 198.18.5.7/24 is either a typo of the address or of the network: say which
        # two it could be rather than guess (it used to become 198.18.5.0/24 silently).
        address = value.strip().partition("/")[0]
        raise PolicyError(
            field,
            f"{value!r} has host bits set: write the network {str(loose)!r} "
            f"or the address {address!r}",
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.scope_id:
        # The data plane matches addresses only; a zone (fe80::1%eth0) would be ignored.
        raise PolicyError(field, f"zone index not allowed in {value!r} (use interfaces)")
    return net


def _port(text: str, value: Any, field: str) -> int:
    # ASCII digits only and bounded length: str.isdigit() accepts "²" and int() refuses
    # strings past 4300 digits, both of which escaped as ValueError.
    if not _DIGITS_RE.match(text.strip()):
        raise PolicyError(field, f"invalid port {value!r}")
    port = int(text)
    if not 0 <= port <= 65535:
        raise PolicyError(field, f"port {port} out of range 0-65535")
    return port


def parse_ports(value: Any, field: str) -> PortRange:
    if isinstance(value, bool):
        raise PolicyError(field, f"invalid port {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise PolicyError(field, f"port {value} out of range 0-65535")
        return PortRange(value, value)
    if not isinstance(value, str):
        raise PolicyError(field, f"invalid port {value!r}")
    first, sep, last = value.partition("-")
    lo = _port(first, value, field)
    hi = _port(last, value, field) if sep else lo
    if lo > hi:
        raise PolicyError(field, f"empty port range {value!r} (first > last)")
    return PortRange(lo, hi)


def parse_tcp_flags(value: Any, field: str) -> TcpFlags:
    """``"syn,!ack"``: names that must be set, ``!name`` must be clear."""
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(field, f"must be a string like 'syn,!ack', not {value!r}")
    mask = flags = 0
    for part in value.split(","):
        name = part.strip().lower()
        clear = name.startswith("!")
        name = name.removeprefix("!").strip()
        bit = TCP_FLAGS.get(name)
        if bit is None:
            raise PolicyError(field, f"unknown TCP flag {part.strip()!r} ({' '.join(TCP_FLAGS)})")
        if mask & bit:
            raise PolicyError(field, f"TCP flag {name!r} named twice")
        mask |= bit
        flags |= 0 if clear else bit
    return TcpFlags(mask, flags)


def parse_byte(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise PolicyError(field, f"must be an integer 0-255, not {value!r}")
    return value
