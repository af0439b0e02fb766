"""The ClassBench loader (bench/classbench): parsing, translation into fwd's semantics,
and the expected first-match verdicts computed through the reference classifier."""

from __future__ import annotations

import random

import pytest

from bench.classbench import rules as cb
from bench.classbench.trace import Expect, Header, expected, frame, load_trace, parse_trace
from fwd.policy import reference
from fwd.policy.model import Action, policy_from_dict

SHARED_PRESENT = all((cb.SHARED / f"{n}.rules").exists() for n in cb.SHARED_SETS)
needs_shared = pytest.mark.skipif(not SHARED_PRESENT, reason="no ClassBench data in ../shared")

# Hand-checked: the first rule of each shared 1k set, as its file spells it.
FIRST_RULES = {
    "fw1_1k": {
        "id": "cb0", "action": "allow", "protocol": "udp",
        "src": ["73.195.227.48/29"], "dst": ["40.135.147.88/29"],
        "src_ports": ["123"], "dst_ports": ["123"],
    },
}


@needs_shared
@pytest.mark.parametrize("name", cb.SHARED_SETS)
def test_shared_set_loads_through_the_model(name: str) -> None:
    with open(cb.SHARED / f"{name}.rules") as f:
        lines = [line for line in f if line.strip()]
    t = cb.load_set(name)
    assert t.cb_rules == len(lines)
    assert t.rules == t.cb_rules + t.split - len(t.dropped)
    policy = t.policy()
    assert len(policy.rules) == t.rules
    assert [r.id for r in policy.rules][:1] == ["cb0"]
    # Every rule keeps its file order: origin is non-decreasing and names the line.
    assert t.origin == sorted(t.origin)
    # The catch-all last line of every shared set is translated to a rule without fields.
    last = policy.rules[-1]
    assert (last.src, last.dst, last.src_ports, last.dst_ports) == ((), (), (), ())

    headers = load_trace(name)
    assert len(headers) > 0.9 * t.cb_rules
    parsed = cb.load_rules(name)
    # The parser agrees with the trace generator: each header lies inside its FILTER rule.
    assert all(parsed[h.filter].contains(h.src, h.dst, h.sport, h.dport, h.proto) for h in headers)

    ex = expected(policy, headers)
    assert len(ex.decisions) == len(headers)
    # Pruned first match == the reference over every rule, on a sample of the trace.
    full = Expect(policy)
    for i in random.Random(name).sample(range(len(headers)), 40):
        assert ex.decisions[i] == full.decide_full(ex.frames[i]), headers[i]
    # The deciding rule really contains the header, and the first match is never later
    # than the rule the header was drawn from (when that rule was kept).
    kept = set(t.origin)
    origin = {r.id: n for r, n in zip(policy.rules, t.origin)}
    for h, d in zip(headers, ex.decisions):
        assert d.rule_id is not None
        n = origin[d.rule_id]
        assert parsed[n].contains(h.src, h.dst, h.sport, h.dport, h.proto)
        if h.filter in kept:
            assert n <= h.filter
    assert sum(ex.histogram().values()) == len(headers)


@needs_shared
def test_hand_checked_first_rules() -> None:
    for name, want in FIRST_RULES.items():
        assert cb.load_set(name).raw["rules"][0] == want


def _line(src: str, dst: str, sp: str, dp: str, proto: str) -> str:
    return f"@{src}\t{dst}\t{sp}\t{dp}\t{proto}\t0x0000/0x0000\t"


def test_translation_of_each_protocol_case() -> None:
    lines = [
        _line("10.0.0.0/8", "0.0.0.0/0", "0 : 65535", "80 : 90", "0x00/0x00"),   # any + ports
        _line("10.1.0.0/16", "192.0.2.0/24", "0 : 65535", "0 : 65535", "0x00/0x00"),  # any
        _line("0.0.0.0/0", "0.0.0.0/0", "0 : 65535", "53 : 53", "0x01/0xFF"),    # icmp + ports
        _line("0.0.0.0/0", "198.51.100.7/32", "0 : 65535", "0 : 65535", "0x2f/0xFF"),  # gre
        _line("0.0.0.0/0", "0.0.0.0/0", "1024 : 65535", "0 : 65535", "0x06/0xFF"),  # tcp
    ]
    t = cb.translate(cb.parse_rules(lines), "hand")
    assert t.raw["rules"] == [
        {"id": "cb0-tcp", "action": "allow", "protocol": "tcp", "src": ["10.0.0.0/8"],
         "dst_ports": ["80-90"]},
        {"id": "cb0-udp", "action": "allow", "protocol": "udp", "src": ["10.0.0.0/8"],
         "dst_ports": ["80-90"]},
        {"id": "cb1", "action": "drop", "src": ["10.1.0.0/16"], "dst": ["192.0.2.0/24"]},
        {"id": "cb3", "action": "drop", "protocol": 47, "dst": ["198.51.100.7/32"]},
        {"id": "cb4", "action": "allow", "protocol": "tcp", "src_ports": ["1024-65535"]},
    ]
    assert (t.split, t.dropped, t.origin) == (1, [2], [0, 0, 1, 3, 4])
    assert "1 left out" in t.summary()
    policy = t.policy()
    assert policy.rules[3].protocol == 47 and policy.rules[2].action is Action.DROP


def test_host_bits_are_cleared_and_bad_lines_named() -> None:
    r = cb.parse_rule(_line("10.1.2.3/8", "1.2.3.4/32", "5 : 6", "7 : 7", "0x11/0xFF"))
    assert (r.src, r.src_len, r.dst_len, r.sport, r.dport, r.proto) == (
        0x0A000000, 8, 32, (5, 6), (7, 7), 17)
    assert cb.parse_rules([r.line()]) == [r]  # the writer and the reader agree
    with pytest.raises(cb.ClassBenchError, match="x.rules:2"):
        cb.parse_rules([r.line(), "@1.2.3.4/33\t0.0.0.0/0\t0 : 1\t0 : 1\t0x06/0xFF"], "x.rules")
    with pytest.raises(cb.ClassBenchError, match="bad port range"):
        cb.parse_rule(_line("1.0.0.0/8", "0.0.0.0/0", "9 : 1", "0 : 1", "0x06/0xFF"))
    with pytest.raises(cb.ClassBenchError, match="t:1"):
        parse_trace(["1 2 3"], "t")


def test_first_match_beats_the_generating_rule() -> None:
    # Rule 1 generated the header, but rule 0 (wider) comes first and decides it.
    lines = [
        _line("10.0.0.0/8", "0.0.0.0/0", "0 : 65535", "0 : 65535", "0x06/0xFF"),
        _line("10.1.2.0/24", "192.0.2.0/24", "0 : 65535", "22 : 22", "0x06/0xFF"),
        _line("0.0.0.0/0", "0.0.0.0/0", "0 : 65535", "0 : 65535", "0x11/0xFF"),
    ]
    t = cb.translate(cb.parse_rules(lines), "hand", default_action="drop")
    policy = t.policy()
    hs = [
        Header(0x0A010203, 0xC0000201, 1000, 22, 6, 1),     # tcp: rule 0
        Header(0x0B010203, 0xC0000201, 1000, 22, 6, 1),     # tcp outside 10/8: default
        Header(0x0B010203, 0xC0000201, 1000, 22, 17, 2),    # udp: rule 2
        Header(0x0A010203, 0xC0000201, 0, 0, 1, -1),        # icmp: default
    ]
    ex = expected(policy, hs)
    assert [d.rule_id for d in ex.decisions] == ["cb0", None, "cb2", None]
    assert [d.xdp_action for d in ex.decisions] == [
        reference.XDP_PASS, reference.XDP_DROP, reference.XDP_PASS, reference.XDP_DROP]
    # The frame parses back to the header's fields.
    p = reference.parse_packet(frame(hs[0]), 1)
    assert (int(p.src or 0), int(p.dst or 0), p.sport, p.dport, p.proto) == (
        0x0A010203, 0xC0000201, 1000, 22, 6)
    assert len(frame(hs[3])) == 60
    # Rules with IPv6 prefixes are never pruned (left to the reference), IPv4 ones are.
    mixed = policy_from_dict({"rules": [
        {"id": "all6", "action": "drop", "src": ["::/0"]},
        {"id": "ten", "action": "drop", "src": ["10.0.0.0/8"]},
    ]})
    e = Expect(mixed)
    assert [r.id for r in e.candidates(0x0A010203, 0)] == ["all6", "ten"]
    assert [r.id for r in e.candidates(0x0B010203, 0)] == ["all6"]
    for h in hs:
        assert e.decide(frame(h)) == e.decide_full(frame(h))


def test_benchmark_check_catches_every_kind_of_mismatch() -> None:
    from bench.classbench.measure import check

    hist = {"a": 2, None: 1}
    ok = check([1, 2, 1], [1, 2, 1], hist, 10, {"a": 20, "b": 0, None: 10})
    assert ok.ok
    bad = check([1, 2, 1], [1, 1, 1], hist, 10, {"a": 19, "b": 1, None: 10})
    assert bad.verdict_mismatches == [(1, 2, 1)]
    assert bad.counter_mismatches == [("a", 20, 19), ("b", 0, 1)]
    assert not check([1], [], {}, 1, {}).ok  # a missing verdict is a mismatch too
