"""ClassBench-like rule sets of any size, drawn from the statistics of a seed set.

In the spirit of ClassBench's ``db_generator`` (Taylor and Turner), written from
its paper's description, not its code. From a seed (a shared set, by default the
8k one of the family) :class:`Model` takes:

* the protocol mix;
* per protocol, the (source port class, destination port class) pairs
  (``stats.port_class``: WC / HI / LO / EM / AR), and the seed's exact ports and
  arbitrary ranges, drawn by their frequency;
* per (protocol, port-class pair), the (source length, destination length)
  pairs: this is what decides how many masks a classifier needs;
* per address field, the structure of the prefixes: for each length, how many
  rules share a prefix (distinct prefixes per rule), and how deep a new prefix
  nests: the length of its longest proper ancestor in the seed (0: none).

:func:`generate` draws every rule's protocol, ports and prefix lengths, then
builds each address field's distinct prefixes shortest first, each new one by
extending an existing prefix of the drawn ancestor length with random bits
(nesting / overlap as in the seed), and hands them to the rules, every prefix at
least once, the rest by preferential attachment (popular prefixes stay popular).
Duplicate rules are dropped; the rules are ordered most specific first (as the
seeds are, roughly: longer prefixes, then narrower ports); the seed's catch-all
last rule, if it has one, ends the set. Everything is drawn from one ``random.Random(seed)``: same seed, same set.

:func:`trace` writes a header inside every rule (the first of a few draws that
the rule itself decides, by the reference, else the last draw) plus random headers.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from bench.classbench.rules import FULL, CbRule, translate
from bench.classbench.stats import port_class
from bench.classbench.trace import Expect, Header, frame

Proto = int | None
ClassPair = tuple[str, str]
FIXED_RANGES = {"WC": FULL, "HI": (1024, 65535), "LO": (0, 1023)}


class Weighted:
    """Draws keys of a Counter by their counts (deterministic order: sorted keys)."""

    def __init__(self, counts: Counter[object]) -> None:
        items = sorted(counts.items(), key=lambda kv: repr(kv[0]))
        self.keys = [k for k, _ in items]
        self.cum = list(accumulate(v for _, v in items))

    def __bool__(self) -> bool:
        return bool(self.keys)

    def draw(self, rng: random.Random) -> object:
        return self.keys[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]


def _ancestor_len(v: int, ln: int, prefixes: set[tuple[int, int]]) -> int:
    for k in range(ln - 1, 0, -1):
        if (v >> (32 - k) << (32 - k), k) in prefixes:
            return k
    return 0


@dataclass
class FieldModel:
    """One address field: distinct prefixes per rule and ancestor depth, by length."""

    share: dict[int, float] = field(default_factory=dict)          # distinct / rules at L
    ancestor: dict[int, Weighted] = field(default_factory=dict)    # L -> ancestor length

    @classmethod
    def of(cls, prefixes: Sequence[tuple[int, int]]) -> FieldModel:
        uses = Counter(ln for _, ln in prefixes)
        distinct = set(prefixes)
        by_len = Counter(ln for _, ln in distinct)
        anc: dict[int, Counter[object]] = defaultdict(Counter)
        for v, ln in distinct:
            anc[ln][_ancestor_len(v, ln, distinct)] += 1
        return cls({ln: by_len[ln] / uses[ln] for ln in uses},
                   {ln: Weighted(c) for ln, c in anc.items()})


@dataclass
class Model:
    """The statistics of a seed set that :func:`generate` draws from."""

    name: str
    protocols: Weighted
    classes: dict[Proto, Weighted]
    lengths: dict[tuple[Proto, ClassPair], Weighted]
    exact: dict[str, Weighted]           # "s" / "d" -> port
    ranges: dict[str, Weighted]          # "s" / "d" -> (lo, hi), class AR
    src: FieldModel
    dst: FieldModel
    catch_all: CbRule | None

    @classmethod
    def of(cls, name: str, seed: Sequence[CbRule]) -> Model:
        protos: Counter[object] = Counter()
        classes: dict[Proto, Counter[object]] = defaultdict(Counter)
        lengths: dict[tuple[Proto, ClassPair], Counter[object]] = defaultdict(Counter)
        exact: dict[str, Counter[object]] = {"s": Counter(), "d": Counter()}
        ranges: dict[str, Counter[object]] = {"s": Counter(), "d": Counter()}
        last = seed[-1] if seed else None
        body = seed[:-1] if last and (last.src_len, last.dst_len) == (0, 0) \
            and last.sport == last.dport == FULL else seed
        for r in body:
            cp = (port_class(r.sport), port_class(r.dport))
            protos[r.proto] += 1
            classes[r.proto][cp] += 1
            lengths[(r.proto, cp)][(r.src_len, r.dst_len)] += 1
            for side, rng, c in (("s", r.sport, cp[0]), ("d", r.dport, cp[1])):
                if c == "EM":
                    exact[side][rng[0]] += 1
                elif c == "AR":
                    ranges[side][rng] += 1
        return cls(
            name, Weighted(protos), {p: Weighted(c) for p, c in classes.items()},
            {k: Weighted(c) for k, c in lengths.items()},
            {k: Weighted(c) for k, c in exact.items()}, {k: Weighted(c) for k, c in ranges.items()},
            FieldModel.of([(r.src, r.src_len) for r in body]),
            FieldModel.of([(r.dst, r.dst_len) for r in body]),
            None if body is seed else last,
        )


def _port(model: Model, side: str, cls: str, rng: random.Random) -> tuple[int, int]:
    if cls in FIXED_RANGES:
        return FIXED_RANGES[cls]
    if cls == "EM":
        p = model.exact[side].draw(rng) if model.exact[side] else rng.randrange(65536)
        assert isinstance(p, int)
        return (p, p)
    r = model.ranges[side].draw(rng) if model.ranges[side] else None
    if isinstance(r, tuple):
        return r
    lo = rng.randrange(65535)
    return (lo, rng.randrange(lo + 1, 65536))


def _extend(v: int, frm: int, to: int, rng: random.Random) -> int:
    """``v``'s first ``frm`` bits followed by random bits up to ``to`` (host bits zero)."""
    keep = v >> (32 - frm) << (32 - frm) if frm else 0
    bits = rng.getrandbits(to - frm) << (32 - to) if to > frm else 0
    return keep | bits


def _prefixes(fm: FieldModel, lengths: Sequence[int], rng: random.Random) -> list[int]:
    """One prefix value per entry of ``lengths`` (the rules' lengths), see the module doc."""
    need = Counter(lengths)
    by_len: dict[int, list[int]] = {}
    for ln in sorted(need):
        share = fm.share.get(ln, 1.0)
        want = max(1, min(need[ln], round(need[ln] * share), 1 << ln))
        made: set[int] = set()
        out: list[int] = []
        for _ in range(want * 4):  # bounded: a crowded length may yield fewer distinct
            if len(out) == want:
                break
            k = fm.ancestor[ln].draw(rng) if ln in fm.ancestor else 0
            assert isinstance(k, int)
            shorter = [x for x in by_len if 0 < x <= k] if k else []
            if shorter:
                parent_len = max(shorter)
                v = _extend(rng.choice(by_len[parent_len]), parent_len, ln, rng)
            else:
                v = _extend(0, 0, ln, rng)
            if v not in made:
                made.add(v)
                out.append(v)
        by_len[ln] = out
    # Hand them out: each distinct prefix once, the rest by preferential attachment.
    pools = {ln: list(vs) for ln, vs in by_len.items()}
    fresh = {ln: list(vs) for ln, vs in by_len.items()}
    for vs in fresh.values():
        rng.shuffle(vs)
    values = []
    for ln in lengths:
        v = fresh[ln].pop() if fresh[ln] and rng.random() < len(fresh[ln]) / max(1, need[ln]) \
            else rng.choice(pools[ln])
        need[ln] -= 1
        pools[ln].append(v)
        values.append(v)
    return values


def _draft(model: Model, count: int, rng: random.Random) -> list[CbRule]:
    drafts = []
    for _ in range(count):
        proto = model.protocols.draw(rng)
        assert proto is None or isinstance(proto, int)
        cp = model.classes[proto].draw(rng)
        assert isinstance(cp, tuple)
        lens = model.lengths[(proto, cp)].draw(rng)
        assert isinstance(lens, tuple)
        drafts.append((proto, _port(model, "s", cp[0], rng), _port(model, "d", cp[1], rng), lens))
    srcs = _prefixes(model.src, [d[3][0] for d in drafts], rng)
    dsts = _prefixes(model.dst, [d[3][1] for d in drafts], rng)
    return [CbRule(s, sl, d, dl, sp, dp, proto)
            for (proto, sp, dp, (sl, dl)), s, d in zip(drafts, srcs, dsts)]


def specificity(r: CbRule) -> tuple[int, int, bool]:
    """Sort key: the seeds list specific rules first (longer prefixes, narrower ports, a
    protocol), so that a header drawn inside a rule is mostly decided by that rule."""
    return (-(r.src_len + r.dst_len), (r.sport[1] - r.sport[0]) + (r.dport[1] - r.dport[0]),
            r.proto is None)


def generate(model: Model, size: int, seed: int = 1) -> list[CbRule]:
    """``size`` distinct rules like ``model``'s (the seed's catch-all, if any, last)."""
    rng = random.Random(seed)
    body = size - (1 if model.catch_all else 0)
    out: list[CbRule] = []
    for margin in (1.03, 1.25, 2.0):  # duplicates are dropped: draw a few percent more
        seen: set[CbRule] = set()
        out = []
        for r in _draft(model, int(body * margin) + 8, rng):
            if r not in seen and r != model.catch_all:
                seen.add(r)
                out.append(r)
                if len(out) == body:
                    break
        if len(out) == body:
            break
    else:
        raise ValueError(f"{model.name}: could not draw {body:,} distinct rules")
    out.sort(key=specificity)
    if model.catch_all:
        out.append(model.catch_all)
    return out


# --- traces --------------------------------------------------------------------

OTHER_PROTOCOLS = (0, 1, 6, 17, 47, 50, 255)


def _inside(r: CbRule, rng: random.Random) -> Header:
    """A random header inside ``r`` as fwd reads it (any protocol + ports: tcp or udp)."""
    if r.proto is not None:
        proto = r.proto
    elif r.sport != FULL or r.dport != FULL:
        proto = rng.choice((6, 17))
    else:
        proto = rng.choice(OTHER_PROTOCOLS)
    return Header(
        _extend(r.src, r.src_len, 32, rng), _extend(r.dst, r.dst_len, 32, rng),
        rng.randint(*r.sport), rng.randint(*r.dport), proto,
    )


def trace(rules: Sequence[CbRule], seed: int = 1, *, random_share: float = 0.1,
          tries: int = 3) -> list[Header]:
    """A header inside every rule (``filter`` = its number), then ``random_share`` x
    len(rules) random headers (``filter`` = -1), addresses near the set's prefixes."""
    rng = random.Random(seed ^ 0x5EED)
    t = translate(rules, "trace")
    ex = Expect(t.policy())
    first_id: dict[int, set[str]] = defaultdict(set)
    for rid, n in zip((r["id"] for r in t.raw["rules"]), t.origin):
        first_id[n].add(rid)
    out = []
    for n, r in enumerate(rules):
        h = _inside(r, rng)
        for _ in range(tries - 1):
            if ex.decide(frame(h)).rule_id in first_id[n]:
                break
            h = _inside(r, rng)
        out.append(Header(h.src, h.dst, h.sport, h.dport, h.proto, n))
    for _ in range(int(len(rules) * random_share)):
        a, b = rng.choice(rules), rng.choice(rules)
        proto = rng.choice(OTHER_PROTOCOLS + (6, 6, 17))
        out.append(Header(_extend(a.src, min(a.src_len, 16), 32, rng),
                          _extend(b.dst, min(b.dst_len, 16), 32, rng),
                          rng.randrange(65536), rng.randrange(65536), proto, -1))
    return out
