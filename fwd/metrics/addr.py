"""The metrics endpoint's address: parsed without importing the collector (the CLI
validates ``--metrics`` with it)."""

from __future__ import annotations

import ipaddress

DEFAULT_PORT = 9469


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as (host, port); raises ValueError."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"metrics address {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9469")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"metrics address {addr!r}: port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"metrics address {addr!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"metrics address {addr!r}: write an IPv6 host in brackets, [{host}]")
    return host, port
