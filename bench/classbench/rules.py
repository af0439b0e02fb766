"""ClassBench filter sets: parse them and translate them into fwd policies.

A ClassBench rule line (``db_generator`` output, priority order, line 1 first)::

    @SRC/LEN <tab> DST/LEN <tab> SLO : SHI <tab> DLO : DHI <tab> PROTO/MASK <tab> FLAGS/MASK

fwd's semantics differ in one place: ports exist only for TCP, UDP and SCTP, and
a rule naming ports never matches a packet without them. The translation
(``/work/shared/classbench/README.md``) is therefore:

* protocol ``0x00/0x00`` (any) with full port ranges: one rule, no protocol;
* protocol any with a port range other than ``0 : 65535``: two rules, ``tcp`` then
  ``udp`` (ids ``cb<n>-tcp`` / ``cb<n>-udp``), consecutive so first match holds;
* TCP / UDP / SCTP: one rule with its ports (full ranges left out);
* another protocol with full ports: one rule with that protocol;
* another protocol with a port range: it can never match in fwd and is left out
  (counted in :class:`Translation`, never silently).

Rule ``n`` (0-based line number, the trace's FILTER column) becomes ``cb<n>``.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fwd.policy.model import Policy, policy_from_dict

SHARED = Path("/work/shared/classbench")
SHARED_SETS = ("acl1_1k", "acl1_8k", "fw1_1k", "fw1_8k", "ipc1_1k", "ipc1_8k")
TCP, UDP, SCTP = 6, 17, 132
PORT_PROTOCOLS = frozenset({TCP, UDP, SCTP})
FULL = (0, 65535)

_LINE = re.compile(
    r"^@(\d+\.\d+\.\d+\.\d+)/(\d+)\s+(\d+\.\d+\.\d+\.\d+)/(\d+)\s+"
    r"(\d+)\s*:\s*(\d+)\s+(\d+)\s*:\s*(\d+)\s+"
    r"0x([0-9a-fA-F]+)/0x([0-9a-fA-F]+)(?:\s+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+)?\s*$"
)


class ClassBenchError(ValueError):
    """A malformed rule or trace file; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class CbRule:
    """One ClassBench rule. Addresses are 32-bit ints (the network, host bits zero).

    ``proto`` is None for ``0x00/0x00`` (any protocol).
    """

    src: int
    src_len: int
    dst: int
    dst_len: int
    sport: tuple[int, int]
    dport: tuple[int, int]
    proto: int | None

    def line(self) -> str:
        """The rule in ClassBench's file format (what :func:`parse_rules` reads)."""
        proto = "0x00/0x00" if self.proto is None else f"0x{self.proto:02x}/0xFF"
        return (
            f"@{ipaddress.IPv4Address(self.src)}/{self.src_len}\t"
            f"{ipaddress.IPv4Address(self.dst)}/{self.dst_len}\t"
            f"{self.sport[0]} : {self.sport[1]}\t{self.dport[0]} : {self.dport[1]}\t"
            f"{proto}\t0x0000/0x0000\t"
        )

    def contains(self, src: int, dst: int, sport: int, dport: int, proto: int) -> bool:
        """ClassBench's own match (ports compared whatever the protocol)."""
        return (
            (src ^ self.src) >> (32 - self.src_len) == 0 if self.src_len else True
        ) and (
            (dst ^ self.dst) >> (32 - self.dst_len) == 0 if self.dst_len else True
        ) and (
            self.sport[0] <= sport <= self.sport[1]
            and self.dport[0] <= dport <= self.dport[1]
            and (self.proto is None or self.proto == proto)
        )


def _mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


def parse_rule(text: str, where: str = "rule") -> CbRule:
    """One rule line; raises :class:`ClassBenchError` naming ``where`` if it is malformed."""
    m = _LINE.match(text.strip())
    if m is None:
        raise ClassBenchError(f"{where}: not a ClassBench rule: {text.strip()[:80]!r}")
    src_s, sl_s, dst_s, dl_s, slo, shi, dlo, dhi, pv, pm = m.groups()
    sl, dl = int(sl_s), int(dl_s)
    if sl > 32 or dl > 32:
        raise ClassBenchError(f"{where}: prefix length over 32")
    sport, dport = (int(slo), int(shi)), (int(dlo), int(dhi))
    for lo, hi in (sport, dport):
        if not 0 <= lo <= hi <= 65535:
            raise ClassBenchError(f"{where}: bad port range {lo} : {hi}")
    value, mask = int(pv, 16), int(pm, 16)
    if mask not in (0, 0xFF) or value > 0xFF:
        raise ClassBenchError(f"{where}: protocol 0x{value:x}/0x{mask:x} (only /0xFF or 0x00/0x00)")
    src, dst = int(ipaddress.IPv4Address(src_s)), int(ipaddress.IPv4Address(dst_s))
    return CbRule(src & _mask(sl), sl, dst & _mask(dl), dl, sport, dport,
                  None if mask == 0 else value)


def parse_rules(lines: Iterable[str], name: str = "rules") -> list[CbRule]:
    """Every non-empty line of a rule file, in order."""
    return [parse_rule(line, f"{name}:{i}") for i, line in enumerate(lines, 1) if line.strip()]


def load_rules(path: Path | str) -> list[CbRule]:
    """A ClassBench rule file (``acl1_1k.rules``, or a name in :data:`SHARED`)."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        p = SHARED / f"{p}.rules"
    with open(p) as f:
        return parse_rules(f, p.name)


# --- translation into fwd ------------------------------------------------------


Actions = Callable[[int], str]


def alternate(n: int) -> str:
    """The default action scheme: odd rule numbers drop, even ones allow (both verdicts occur)."""
    return "drop" if n % 2 else "allow"


def all_drop(n: int) -> str:
    return "drop"


@dataclass
class Translation:
    """A ClassBench set translated into fwd: the policy file's dict and what it took.

    ``origin[i]`` is the ClassBench rule number of fwd rule ``i``; ``dropped`` the
    rule numbers left out (a non-port protocol with a port range).
    """

    name: str
    cb_rules: int
    raw: dict[str, Any]
    origin: list[int]
    split: int = 0
    dropped: list[int] = field(default_factory=list)
    by_protocol: Counter[str] = field(default_factory=Counter)

    @property
    def rules(self) -> int:
        return len(self.origin)

    def policy(self) -> Policy:
        """The policy through fwd's model (``policy_from_dict``: every rule validated)."""
        return policy_from_dict(self.raw)

    def summary(self) -> str:
        protos = ", ".join(f"{k} {v}" for k, v in sorted(self.by_protocol.items()))
        return (
            f"{self.name}: {self.cb_rules:,} ClassBench rules -> {self.rules:,} fwd rules "
            f"({self.split} any-protocol rules with ports split into tcp + udp, "
            f"{len(self.dropped)} left out: a port range on a protocol without ports; {protos})"
        )


def _cidr(value: int, length: int) -> str:
    return f"{ipaddress.IPv4Address(value)}/{length}"


def _ports(r: tuple[int, int]) -> list[str] | None:
    if r == FULL:
        return None
    return [str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"]


def fwd_rule(rule: CbRule, rule_id: str, action: str, protocol: int | None) -> dict[str, Any]:
    """One fwd rule (policy-file dict) for ``rule`` restricted to ``protocol``."""
    d: dict[str, Any] = {"id": rule_id, "action": action}
    if protocol is not None:
        d["protocol"] = {TCP: "tcp", UDP: "udp", SCTP: "sctp"}.get(protocol, protocol)
    if rule.src_len:
        d["src"] = [_cidr(rule.src, rule.src_len)]
    if rule.dst_len:
        d["dst"] = [_cidr(rule.dst, rule.dst_len)]
    if protocol in PORT_PROTOCOLS:
        sp, dp = _ports(rule.sport), _ports(rule.dport)
        if sp:
            d["src_ports"] = sp
        if dp:
            d["dst_ports"] = dp
    return d


def translate(
    rules: Sequence[CbRule],
    name: str = "set",
    *,
    actions: Actions = alternate,
    default_action: str = "allow",
) -> Translation:
    """``rules`` as a fwd policy, with the conventions of this module's docstring."""
    out: list[dict[str, Any]] = []
    t = Translation(name, len(rules), {}, [])
    for n, r in enumerate(rules):
        has_ports = r.sport != FULL or r.dport != FULL
        action = actions(n)
        if r.proto is None and has_ports:
            t.split += 1
            for proto, suffix in ((TCP, "tcp"), (UDP, "udp")):
                out.append(fwd_rule(r, f"cb{n}-{suffix}", action, proto))
                t.origin.append(n)
                t.by_protocol[suffix] += 1
        elif r.proto is not None and r.proto not in PORT_PROTOCOLS and has_ports:
            t.dropped.append(n)
        else:
            out.append(fwd_rule(r, f"cb{n}", action, r.proto))
            t.origin.append(n)
            label = "any" if r.proto is None else {TCP: "tcp", UDP: "udp", SCTP: "sctp"}.get(
                r.proto, f"proto {r.proto}")
            t.by_protocol[label] += 1
    t.raw = {"default_action": default_action, "rules": out}
    return t


def load_set(name: str, **kw: Any) -> Translation:
    """A shared set by name (``fw1_1k``), translated."""
    return translate(load_rules(name), name, **kw)
