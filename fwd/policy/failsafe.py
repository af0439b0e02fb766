"""The failsafe: traffic no policy may drop, unless the operator changes ``--failsafe``.

As Calico's failsafe ports: inbound TCP 22 (and, in cluster mode, the replies
of the etcd endpoints, and the agent's own ``--listen`` port) passes even when
the policy would drop it, so a wrong policy cannot cut the operator off the
node or the node off its control plane. It is enforced in the kernel, ahead
of the verdict (``failsafe_match`` in bpf/fwd.bpf.c): a drop of failsafe
traffic becomes a pass, counted in the ``(failsafe)`` slot, and the policy
itself is enforced unchanged for everything else. ``--failsafe ''`` turns it
off; the apply-time lock-out check (fwd/policy/lockout.py) then protects
tcp/22 instead, refusing a policy that could drop it unless applied with
``--force``.

An entry is ``PROTO/PORT`` (traffic to this port: a service of this node) or
``PROTO/sport:PORT@ADDRESS`` (traffic from that port of that address: replies
of a server this node connects to, such as etcd). XDP sees only inbound
packets, so these are inbound rules; they match whatever the destination (on
a gateway, tcp/22 to the hosts behind it passes too).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from fwd.core import abi
from fwd.policy.lockout import LockoutError, Service, check_lockout, parse_prefixes
from fwd.policy.model import PROTOCOLS, Action, Policy, Rule

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# With the failsafe off and no --mgmt-prefix, the lock-out check guards the
# management services from anywhere.
ANYWHERE = ("0.0.0.0/0", "::/0")

DEFAULT = ("tcp/22",)
_PORT_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


class FailsafeError(ValueError):
    """A --failsafe entry that cannot be parsed (the message names it)."""


@dataclass(frozen=True)
class Entry:
    """One kind of traffic the failsafe keeps."""

    protocol: int
    port: int
    source_port: bool = False  # match the source port (replies), not the destination
    address: IPAddress | None = None  # with source_port: only from this address

    def __str__(self) -> str:
        proto = _PORT_PROTOCOLS.get(self.protocol, str(self.protocol))
        if not self.source_port:
            return f"{proto}/{self.port}"
        at = f"@{self.address}" if self.address is not None else ""
        return f"{proto}/sport:{self.port}{at}"

    @classmethod
    def parse(cls, text: str) -> Entry:
        """``tcp/22``, ``udp/53``, ``tcp/sport:2379@192.0.2.10``."""
        proto, sep, rest = text.strip().partition("/")
        number = PROTOCOLS.get(proto.lower(), int(proto) if proto.isdigit() else -1)
        if not sep or number not in _PORT_PROTOCOLS:
            raise FailsafeError(
                f"--failsafe entry {text!r}: expected PROTO/PORT or PROTO/sport:PORT@ADDRESS "
                "with PROTO tcp, udp or sctp (e.g. tcp/22)"
            )
        source = rest.startswith("sport:")
        port_text, at, addr_text = rest.removeprefix("sport:").partition("@")
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise FailsafeError(f"--failsafe entry {text!r}: port must be 1-65535")
        address: IPAddress | None = None
        if at:
            if not source:
                raise FailsafeError(f"--failsafe entry {text!r}: @ADDRESS goes with sport:")
            try:
                address = ipaddress.ip_address(addr_text.strip("[]"))
            except ValueError:
                raise FailsafeError(
                    f"--failsafe entry {text!r}: {addr_text!r} is not an IP address"
                ) from None
        return cls(number, int(port_text), source, address)

    def matches(self, protocol: int, sport: int, dport: int, src: IPAddress) -> bool:
        """The kernel's check, for the reference and tests."""
        if protocol != self.protocol or (sport if self.source_port else dport) != self.port:
            return False
        return self.address is None or self.address == src


def parse(text: str) -> tuple[Entry, ...]:
    """A ``--failsafe`` value: entries separated by commas; empty (or blank) is none."""
    return tuple(Entry.parse(part) for part in text.split(",") if part.strip())


class _Settings(Protocol):
    @property
    def failsafe(self) -> tuple[str, ...]: ...
    @property
    def etcd_endpoints(self) -> tuple[str, ...]: ...
    @property
    def listen(self) -> str: ...
    @property
    def mgmt_prefixes(self) -> tuple[str, ...]: ...
    @property
    def mgmt_services(self) -> tuple[str, ...]: ...


def entries(settings: _Settings) -> tuple[Entry, ...]:
    """The failsafe an agent enforces: its ``--failsafe`` list and, unless that is
    empty, the replies of each etcd endpoint and the ``--listen`` port."""
    given = tuple(e for text in settings.failsafe for e in parse(text))
    if not given:
        return ()
    auto: list[Entry] = []
    for url in settings.etcd_endpoints:
        auto += _etcd_entries(url)
    if settings.listen:
        port = settings.listen.rpartition(":")[2]
        if port.isdigit():
            auto.append(Entry(6, int(port)))
    out: list[Entry] = []
    for e in (*given, *auto):
        if e not in out:
            out.append(e)
    if len(out) > abi.MAX_FAILSAFE:
        raise FailsafeError(
            f"--failsafe: {len(out)} entries (with the etcd and --listen ones); "
            f"at most {abi.MAX_FAILSAFE}"
        )
    return tuple(out)


def _etcd_entries(url: str) -> list[Entry]:
    """Replies from one etcd endpoint: TCP from its port, from each of its addresses."""
    parts = urlsplit(url if "//" in url else f"http://{url}")
    host, port = parts.hostname, parts.port or 2379
    if not host:
        return []
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except OSError:
            return [Entry(6, port, True)]  # unresolvable now: from any address
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return [Entry(6, port, True, a) for a in sorted(addresses, key=str)]


def config(failsafe: Sequence[Entry]) -> abi.FailsafeConfig:
    """The kernel's struct fwd_failsafe_config for ``failsafe``."""
    cfg = abi.FailsafeConfig(count=len(failsafe))
    for i, e in enumerate(failsafe):
        slot = cfg.entries[i]
        slot.proto, slot.port = e.protocol, e.port
        slot.flags = abi.FAILSAFE_SPORT if e.source_port else 0
        if e.address is not None:
            slot.flags |= abi.FAILSAFE_ADDR
            slot.v6 = e.address.version == 6
            raw = (
                e.address.packed
                if e.address.version == 6
                else ipaddress.IPv6Address(f"::ffff:{e.address}").packed
            )
            slot.addr[:] = list(raw)
    return cfg


class _Configurable(Protocol):
    def set_initial_value(self, map_name: str, data: bytes) -> None: ...


def configure(obj: _Configurable, failsafe: Sequence[Entry]) -> None:
    """Give the XDP object its failsafe; before load."""
    obj.set_initial_value(abi.FAILSAFE_CONFIG_MAP, bytes(config(failsafe)))


def describe(failsafe: Iterable[Entry]) -> str:
    """The list as ``--failsafe`` takes it."""
    return ",".join(map(str, failsafe))


def shadowed(policy: Policy, failsafe: Sequence[Entry]) -> tuple[int, Rule, Entry] | None:
    """A drop rule aimed exactly at failsafe traffic (its protocol, and that one
    destination port), which the failsafe would silently overrule; or None."""
    if policy.dry_run:
        return None
    for i, rule in enumerate(policy.rules):
        if rule.action is not Action.DROP or rule.audit or rule.protocol is None:
            continue
        for e in failsafe:
            if e.source_port or rule.protocol != e.protocol:
                continue
            if any(r.first == r.last == e.port for r in rule.dst_ports):
                return i, rule, e
    return None


def check_shadowed(policy: Policy, failsafe: Sequence[Entry]) -> None:
    """Refuse a drop rule the failsafe would silently overrule (unless forced)."""
    found = shadowed(policy, failsafe)
    if found is not None:
        i, rule, e = found
        raise LockoutError(
            f"rules[{i}]",
            f"rule {rule.id!r} drops {e}, which the failsafe lets through ahead of every "
            f"rule (fwd agent --failsafe {describe(failsafe)!r}), so it would not drop it: "
            f"to drop {e}, start the agent with a --failsafe list without it; "
            "apply with --force to keep the rule for the rest of its traffic",
        )


def guard(settings: _Settings, failsafe: Sequence[Entry]) -> Callable[[Policy], None] | None:
    """The Datapath's apply-time check (skipped for a forced change), or None.

    With the failsafe on: refuse drop rules it would overrule, and, with
    ``--mgmt-prefix``, policies that could drop a management service the
    failsafe does not keep. With it off: refuse policies that could drop a
    management service (default tcp/22) from the management prefixes (default:
    anywhere). Parsed at start: a bad value stops the agent with a message.
    """
    covered = {(e.protocol, e.port) for e in failsafe if not e.source_port}
    services = [Service.parse(s) for s in settings.mgmt_services]
    services = [s for s in services if (s.protocol, s.port) not in covered]
    prefixes = parse_prefixes(settings.mgmt_prefixes or (() if failsafe else ANYWHERE))
    checks: list[Callable[[Policy], None]] = []
    if failsafe:
        checks.append(functools.partial(check_shadowed, failsafe=tuple(failsafe)))
    if prefixes and services:
        checks.append(functools.partial(check_lockout, prefixes=prefixes, services=services))
    if not checks:
        return None

    def check(policy: Policy) -> None:
        for one in checks:
            one(policy)

    return check
