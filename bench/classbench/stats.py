"""What makes a ClassBench set hard, as numbers: masks, prefix-length pairs, port classes.

Used to show that generated sets (``gen.py``) look like their seeds: the same
statistics are printed side by side (:func:`table`).

* **port class** of a range (ClassBench's own classes): ``WC`` wildcard 0-65535,
  ``HI`` 1024-65535, ``LO`` 0-1023, ``EM`` one port, ``AR`` any other range.
* **distinct masks** (the tuples a tuple-space classifier needs): the distinct
  (source length, destination length, protocol given?, source-port block length,
  destination-port block length) over every rule, a port range counting as every
  aligned power-of-two block it splits into. It does not depend on fwd's code: it
  is a property of the set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench.classbench.rules import FULL, CbRule

PORT_CLASSES = ("WC", "HI", "LO", "EM", "AR")


def port_class(r: tuple[int, int]) -> str:
    if r == FULL:
        return "WC"
    if r == (1024, 65535):
        return "HI"
    if r == (0, 1023):
        return "LO"
    if r[0] == r[1]:
        return "EM"
    return "AR"


def block_lengths(lo: int, hi: int) -> frozenset[int]:
    """Prefix lengths (0-16) of the aligned blocks ``lo``-``hi`` splits into."""
    out = set()
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while lo + size - 1 > hi:
            size >>= 1
        out.add(16 - size.bit_length() + 1)
        lo += size
    return frozenset(out)


def common_prefix(a: int, la: int, b: int, lb: int) -> int:
    """Leading bits two prefixes share (at most the shorter length)."""
    n = min(la, lb)
    x = (a ^ b) >> (32 - n) if n else 0
    return n - x.bit_length()


@dataclass(frozen=True)
class SetStats:
    name: str
    rules: int
    masks: int
    plen_pairs: int
    src_prefixes: int
    dst_prefixes: int
    protocols: Counter[str]
    port_classes: Counter[str]  # "sport/dport" class pairs
    nested: float               # share of distinct src+dst prefixes inside another (not /0)


def _nested_share(prefixes: set[tuple[int, int]]) -> tuple[int, int]:
    """(prefixes strictly inside another of the set, other than /0; all prefixes but /0)."""
    inside = 0
    for v, ln in prefixes:
        for k in range(ln - 1, 0, -1):
            if ((v >> (32 - k) << (32 - k)) if k else 0, k) in prefixes:
                inside += 1
                break
    return inside, len(prefixes - {(0, 0)})


def set_stats(name: str, rules: Sequence[CbRule]) -> SetStats:
    masks = set()
    blocks: dict[tuple[int, int], frozenset[int]] = {}
    for r in rules:
        sb = blocks.get(r.sport) or blocks.setdefault(r.sport, block_lengths(*r.sport))
        db = blocks.get(r.dport) or blocks.setdefault(r.dport, block_lengths(*r.dport))
        for a in sb:
            for b in db:
                masks.add((r.src_len, r.dst_len, r.proto is not None, a, b))
    srcs = {(r.src, r.src_len) for r in rules}
    dsts = {(r.dst, r.dst_len) for r in rules}
    si, sn = _nested_share(srcs)
    di, dn = _nested_share(dsts)
    return SetStats(
        name, len(rules), len(masks),
        len({(r.src_len, r.dst_len) for r in rules}), len(srcs), len(dsts),
        Counter("any" if r.proto is None else str(r.proto) for r in rules),
        Counter(f"{port_class(r.sport)}/{port_class(r.dport)}" for r in rules),
        (si + di) / max(1, sn + dn),
    )


def _pct(c: Counter[str], key: str, total: int) -> str:
    return f"{100 * c[key] / max(1, total):.1f}%"


def table(columns: Sequence[SetStats], top: int = 6) -> str:
    """A markdown table, one column per set, one row per statistic."""
    rows: list[tuple[str, list[str]]] = [
        ("rules", [f"{s.rules:,}" for s in columns]),
        ("distinct masks", [f"{s.masks:,}" for s in columns]),
        ("distinct prefix-length pairs", [f"{s.plen_pairs:,}" for s in columns]),
        ("distinct src / dst prefixes", [f"{s.src_prefixes:,} / {s.dst_prefixes:,}" for s in columns]),
        ("prefixes nested in another (not /0)", [f"{100 * s.nested:.1f}%" for s in columns]),
    ]
    protos: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    for s in columns:
        protos.update({k: v / s.rules for k, v in s.protocols.items()})
        classes.update({k: v / s.rules for k, v in s.port_classes.items()})
    for p, _ in protos.most_common(top):
        rows.append((f"protocol {p}", [_pct(s.protocols, p, s.rules) for s in columns]))
    for c, _ in classes.most_common(top + 2):
        rows.append((f"ports {c}", [_pct(s.port_classes, c, s.rules) for s in columns]))
    head = "| statistic | " + " | ".join(s.name for s in columns) + " |"
    sep = "| --- |" + " ---: |" * len(columns)
    return "\n".join([head, sep] + [f"| {k} | " + " | ".join(v) + " |" for k, v in rows])
