"""The ClassBench-like generator (bench/classbench/gen.py) and its traces."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from bench.classbench import gen, rules, sets, stats
from bench.classbench.trace import Expect, expected, frame, load_trace
from fwd.policy import reference

pytestmark = pytest.mark.skipif(
    not all((rules.SHARED / f"{n}.rules").exists() for n in rules.SHARED_SETS),
    reason="no ClassBench data in ../shared",
)


@pytest.fixture(scope="module", params=sorted(sets.FAMILIES))
def seeded(request: pytest.FixtureRequest) -> tuple[list[rules.CbRule], gen.Model]:
    seed = rules.load_rules(sets.FAMILIES[request.param])
    return seed, gen.Model.of(sets.FAMILIES[request.param], seed)


def test_same_seed_same_set(seeded: tuple[list[rules.CbRule], gen.Model]) -> None:
    _, model = seeded
    a, b, c = (gen.generate(model, 1500, s) for s in (5, 5, 6))
    assert a == b and a != c
    assert len(a) == 1500 and len(set(a)) == 1500
    assert a[-1] == model.catch_all  # every seed ends with a catch-all; so does the copy


def test_generated_set_has_the_seeds_shape(seeded: tuple[list[rules.CbRule], gen.Model]) -> None:
    seed, model = seeded
    drawn = gen.generate(model, len(seed), 3)
    s, g = stats.set_stats("seed", seed), stats.set_stats("gen", drawn)
    for proto, count in s.protocols.items():
        assert abs(g.protocols[proto] / g.rules - count / s.rules) < 0.02, proto
    for cls, count in s.port_classes.items():
        assert abs(g.port_classes[cls] / g.rules - count / s.rules) < 0.02, cls
    # Prefix-length pairs come only from the seed, and nearly all of them occur.
    assert {(r.src_len, r.dst_len) for r in drawn} <= {(r.src_len, r.dst_len) for r in seed}
    assert g.plen_pairs >= 0.85 * s.plen_pairs
    assert 0.8 * s.masks <= g.masks <= 1.2 * s.masks
    for mine, theirs in ((g.src_prefixes, s.src_prefixes), (g.dst_prefixes, s.dst_prefixes)):
        assert 0.8 * theirs <= mine <= 1.25 * theirs
    assert g.nested >= 0.95 * s.nested  # new prefixes nest inside existing ones, as the seed's


def test_trace_hits_every_rule(seeded: tuple[list[rules.CbRule], gen.Model]) -> None:
    _, model = seeded
    drawn = gen.generate(model, 1200, 9)
    headers = gen.trace(drawn, 9)
    assert len(headers) == 1200 + 120
    assert [h.filter for h in headers[:1200]] == list(range(1200))
    assert all(h.filter == -1 for h in headers[1200:])
    t = rules.translate(drawn, "gen")
    policy = t.policy()
    fwd_rules = defaultdict(list)
    for r, n in zip(policy.rules, t.origin):
        fwd_rules[n].append(r)
    ex = expected(policy, headers)
    own = 0
    for h, d in zip(headers[:1200], ex.decisions):
        packet = reference.parse_packet(frame(h), 1)
        # The header lies inside (one of) the fwd rule(s) of the rule it was drawn for.
        assert any(reference.rule_matches(r, packet, None, policy) for r in fwd_rules[h.filter])
        own += d.rule_id in {r.id for r in fwd_rules[h.filter]}
    # Nearly every rule decides its own header, as in the shared traces (96-99 %): rules
    # are ordered most specific first, and the few shadowed ones lose to earlier rules.
    assert own >= 0.9 * 1200
    full = Expect(policy)
    for i in random.Random(1).sample(range(len(headers)), 40):
        assert ex.decisions[i] == full.decide_full(ex.frames[i])


def test_generated_files_round_trip(tmp_path: Path) -> None:
    rp, tp = sets.generated("ipc", 700, 2, tmp_path)
    again = sets.generated("ipc", 700, 2, tmp_path)  # cached: the same files
    assert again == (rp, tp)
    model = gen.Model.of("ipc1_8k", rules.load_rules("ipc1_8k"))
    assert rules.load_rules(rp) == gen.generate(model, 700, 2)
    headers = load_trace(tp)
    assert headers == gen.trace(rules.load_rules(rp), 2)
    loaded = sets.load("ipc_700", 2, tmp_path)
    assert (loaded.rules, loaded.trace) == (rules.load_rules(rp), headers)
    with pytest.raises(ValueError, match="unknown set"):
        sets.load("nope_1k")


def test_veth_set_moved_into_the_benchmark_range() -> None:
    from bench.classbench import veth

    model = gen.Model.of("fw1_8k", rules.load_rules("fw1_8k"))
    drawn = gen.generate(model, 800, 4)
    headers = gen.trace(drawn, 4)
    picked = veth.pick_frame(drawn, headers)
    moved, h = picked.rules, picked.header
    assert (h.src >> 17, h.dst >> 17) == (0xC612 >> 1, 0xC613 >> 1)  # both in 198.18.0.0/15
    assert [(r.src_len, r.dst_len, r.sport, r.dport, r.proto) for r in moved] == [
        (r.src_len, r.dst_len, r.sport, r.dport, r.proto) for r in drawn]
    # XOR keeps every decision: each header moved the same way is decided by the same rule.
    before = expected(rules.translate(drawn, "a").policy(), headers)
    shifted = [replace(x, src=x.src ^ picked.c_src, dst=x.dst ^ picked.c_dst) for x in headers]
    after = expected(rules.translate(moved, "b").policy(), shifted)
    assert [d.rule_id for d in before.decisions] == [d.rule_id for d in after.decisions]
    assert after.decisions[shifted.index(h)].rule_id == picked.rule_id
    chain = veth.nft_chain(rules.translate(moved, "c", actions=rules.all_drop).raw, "t", "r0")
    assert chain.count("counter drop") == len(moved)
