"""ClassBench traces: headers, the frames the kernel sees, and the expected first match.

A trace line is ``SRC DST SPORT DPORT PROTO X FILTER`` (addresses as 32-bit ints;
FILTER is the 0-based rule the header was drawn from, not necessarily the rule
that decides it). Every header becomes one Ethernet/IPv4 frame (TCP, UDP and SCTP
carry the ports; ICMP is an echo request; other protocols get 8 bytes of
payload), padded to 60 bytes.

The expected verdict is fwd's reference classifier (``fwd.policy.reference``)
applied to the frame as the kernel parses it. Scanning 100,000 rules per packet
in Python would take hours, so :class:`Expect` first prunes the rules that cannot
match by address: rules are grouped by their (source length, destination length)
pair and hashed on the prefixes, so the rules whose both prefixes contain the
packet's addresses come out of one dictionary lookup per pair. Pruning by address
is sound (a rule whose prefix misses the address never matches), and the
remaining candidates, in policy order, go through ``reference.decide`` itself:
the first match, and every other field, is the reference's decision.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.classbench.rules import SHARED, ClassBenchError
from fwd.policy import reference
from fwd.policy.model import Policy, Rule

ETH = bytes.fromhex("020000000002" "020000000001") + b"\x08\x00"
TCP, UDP, SCTP, ICMP = 6, 17, 132, 1
FRAME_MIN = 60


@dataclass(frozen=True, slots=True)
class Header:
    """One trace header; ``filter`` is the rule it was generated from (-1: random)."""

    src: int
    dst: int
    sport: int
    dport: int
    proto: int
    filter: int = -1

    def line(self) -> str:
        return f"{self.src}\t{self.dst}\t{self.sport}\t{self.dport}\t{self.proto}\t0\t{self.filter}"


def parse_trace(lines: Iterable[str], name: str = "trace") -> list[Header]:
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        f = line.split()
        try:
            h = Header(int(f[0]), int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[6]))
        except (IndexError, ValueError):
            raise ClassBenchError(f"{name}:{i}: not a trace line: {line.strip()[:80]!r}") from None
        if not (h.src >> 32 == 0 and h.dst >> 32 == 0 and h.sport >> 16 == 0
                and h.dport >> 16 == 0 and h.proto >> 8 == 0):
            raise ClassBenchError(f"{name}:{i}: field out of range: {line.strip()[:80]!r}")
        out.append(h)
    return out


def load_trace(path: Path | str) -> list[Header]:
    """A trace file (or the name of a shared set: ``fw1_1k``)."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        p = SHARED / f"{p}.trace"
    with open(p) as f:
        return parse_trace(f, p.name)


def frame(h: Header) -> bytes:
    """The Ethernet/IPv4 frame for ``h`` (no checksums: XDP does not check them)."""
    if h.proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", h.sport, h.dport, 1, 0, 5 << 4, 0x10, 512, 0, 0)
    elif h.proto == UDP:
        l4 = struct.pack("!HHHH", h.sport, h.dport, 8, 0)
    elif h.proto == SCTP:
        l4 = struct.pack("!HHII", h.sport, h.dport, 0, 0)
    elif h.proto == ICMP:
        l4 = struct.pack("!BBHHH", 8, 0, 0, 1, 1)
    else:
        l4 = bytes(8)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, h.proto, 0,
                     h.src.to_bytes(4, "big"), h.dst.to_bytes(4, "big"))
    f = ETH + ip + l4
    return f + bytes(max(0, FRAME_MIN - len(f)))


def _ipv4_prefixes(nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
                   ) -> list[tuple[int, int]] | None:
    """(value, length) of each IPv4 network; None when the rule needs the slow path."""
    if not nets:
        return [(0, 0)]
    out = []
    for n in nets:
        if n.version != 4:
            return None  # an IPv6 prefix may cover ::ffff:0:0/96 (IPv4-mapped): never pruned
        out.append((int(n.network_address), n.prefixlen))
    return out


class Expect:
    """The reference's decision for a packet under ``policy``, with address pruning."""

    def __init__(self, policy: Policy, slots: Mapping[str, int] | None = None) -> None:
        self.policy = policy
        self.rules = policy.rules
        self.slots = slots if slots is not None else {r.id: i for i, r in enumerate(self.rules)}
        groups: dict[tuple[int, int], dict[tuple[int, int], list[int]]] = {}
        self.always: list[int] = []  # rules never pruned (sets, IPv6 prefixes)
        for i, r in enumerate(self.rules):
            srcs, dsts = _ipv4_prefixes(r.src), _ipv4_prefixes(r.dst)
            if srcs is None or dsts is None or r.src_set or r.dst_set:
                self.always.append(i)
                continue
            for sv, sl in srcs:
                for dv, dl in dsts:
                    table = groups.setdefault((sl, dl), {})
                    table.setdefault((sv >> (32 - sl) if sl else 0,
                                      dv >> (32 - dl) if dl else 0), []).append(i)
        self.groups = [(32 - sl, 32 - dl, sl == 0, dl == 0, t) for (sl, dl), t in groups.items()]

    def candidates(self, src: int, dst: int) -> list[Rule]:
        """The rules whose prefixes contain ``src`` and ``dst``, in policy order."""
        found: set[int] = set(self.always)
        for ss, ds, s_any, d_any, table in self.groups:
            hit = table.get((0 if s_any else src >> ss, 0 if d_any else dst >> ds))
            if hit:
                found.update(hit)
        return [self.rules[i] for i in sorted(found)]

    def decide(self, fr: bytes, ifindex: int = 1) -> reference.Decision:
        """The reference decision for frame ``fr`` (parsed by the reference parser)."""
        packet = reference.parse_packet(fr, ifindex)
        rules: Sequence[Rule] = ()
        if packet.kind is reference.PacketKind.IP and packet.src is not None \
                and packet.dst is not None:
            if packet.src.version == 4 and packet.dst.version == 4:
                rules = self.candidates(int(packet.src), int(packet.dst))
            else:
                rules = self.rules
        pruned = Policy(self.policy.default_action, self.policy.dry_run, tuple(rules),
                        self.policy.log_default, self.policy.sets)
        return reference.decide(pruned, packet, ifnames={}, slots=self.slots)

    def decide_full(self, fr: bytes, ifindex: int = 1) -> reference.Decision:
        """The reference over every rule (no pruning): slow, for checking :meth:`decide`."""
        return reference.classify(self.policy, fr, ifindex=ifindex, slots=self.slots)


@dataclass
class Expected:
    """A trace's frames with the reference's decision for each."""

    frames: list[bytes]
    decisions: list[reference.Decision]

    def histogram(self) -> Counter[str | None]:
        """Packets per deciding rule id (None: the default action)."""
        return Counter(d.rule_id for d in self.decisions)


def expected(policy: Policy, headers: Sequence[Header],
             slots: Mapping[str, int] | None = None) -> Expected:
    """Frames and reference decisions for every header of a trace."""
    ex = Expect(policy, slots)
    frames = [frame(h) for h in headers]
    return Expected(frames, [ex.decide(f) for f in frames])
