"""The policy compiler: slot assignment, port blocks, tuple layout, and equivalence with the
reference classifier through a pure-Python simulation of the kernel's tuple-space search."""

from __future__ import annotations

import ctypes
import ipaddress

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from fwd.bpf import abi
from fwd.errors import CapacityError, PolicyError
from fwd.policy import compiler
from fwd.policy.compiler import CompiledPolicy, assign_slots, compile_policy, port_blocks
from fwd.policy.files import load_policy_text
from fwd.policy.model import Action, IPNetwork, Policy, PortRange, Rule
from fwd.policy.reference import PacketKind, ParsedPacket, decide
from tests.tss import simulate

# --- port blocks ---------------------------------------------------------------------


def check_blocks(lo: int, hi: int) -> None:
    blocks = port_blocks(lo, hi)
    start = lo
    for i, (value, mask) in enumerate(blocks):
        size = 0x10000 - mask  # mask is 0xffff << k within 16 bits
        assert size & (size - 1) == 0 and size > 0, "power-of-two block"
        assert (mask | (size - 1)) == 0xFFFF, "mask is a prefix"
        assert value == start and value & (size - 1) == 0, "aligned and contiguous"
        start += size
        # Minimal: two equal neighbours forming an aligned pair would have been one block.
        if i + 1 < len(blocks) and blocks[i + 1][1] == mask:
            assert value & ((size << 1) - 1) != 0, f"{blocks} is not minimal"
    assert start == hi + 1, "covers exactly lo-hi"


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_blocks_cover_ranges_exactly(a: int, b: int) -> None:
    check_blocks(min(a, b), max(a, b))


def test_port_blocks_exhaustive_on_small_ranges() -> None:
    for lo in range(64):
        for hi in range(lo, 64):
            blocks = port_blocks(lo, hi)
            covered = [p for p in range(70) if any(p & m == v for v, m in blocks)]
            assert covered == list(range(lo, hi + 1)), (lo, hi, blocks)


def test_port_blocks_known_values() -> None:
    assert port_blocks(0, 65535) == [(0, 0)]
    assert port_blocks(22, 22) == [(22, 0xFFFF)]
    assert port_blocks(1024, 65535) == [
        (1024, 0xFC00),
        (2048, 0xF800),
        (4096, 0xF000),
        (8192, 0xE000),
        (16384, 0xC000),
        (32768, 0x8000),
    ]
    assert len(port_blocks(1, 65534)) == 30  # the worst case: 2 * 16 - 2


# --- slots ----------------------------------------------------------------------------


def test_slots_are_stable_and_reuse_the_lowest_free() -> None:
    first = assign_slots({}, ["a", "b", "c"])
    assert first == {"a": 16, "b": 17, "c": 18}
    second = assign_slots(first, ["c", "x", "a", "y"])
    assert second == {"c": 18, "x": 17, "a": 16, "y": 19}
    assert list(second) == ["c", "x", "a", "y"]  # rule order kept
    assert assign_slots(second, ["y"]) == {"y": 19}


def test_slots_ignore_corrupt_previous_state() -> None:
    slots = assign_slots({"a": 3, "b": 20, "c": 20, "d": 99}, ["a", "b", "c", "d"], max_slots=40)
    assert slots["b"] == 20 and len(set(slots.values())) == 4
    assert all(abi.SLOT_FIRST_RULE <= s < 40 for s in slots.values())


def test_slots_capacity() -> None:
    ids = [f"r{i}" for i in range(4)]
    assert sorted(assign_slots({}, ids, max_slots=20).values()) == [16, 17, 18, 19]
    with pytest.raises(CapacityError, match="5 rules"):
        assign_slots({}, ids + ["r4"], max_slots=20)


@given(
    st.lists(st.sampled_from("abcdefghij"), unique=True),
    st.lists(st.sampled_from("abcdefghij"), unique=True),
)
def test_slots_property(before: list[str], after: list[str]) -> None:
    old = assign_slots({}, before)
    new = assign_slots(old, after)
    assert list(new) == after and len(set(new.values())) == len(after)
    for rule_id in after:
        if rule_id in old:
            assert new[rule_id] == old[rule_id]
    fresh = sorted(new[r] for r in after if r not in old)
    free = sorted(
        set(range(16, 16 + len(before) + len(after))) - {new[r] for r in after if r in old}
    )
    assert fresh == free[: len(fresh)], "new ids take the lowest free slots"


# --- layout ----------------------------------------------------------------------------


def compile_text(
    text: str,
    gen: int = 0,
    revision: int = 0,
    max_tuples: int = abi.MAX_TUPLES,
    max_entries: int = compiler.DEFAULT_MAX_ENTRIES,
) -> CompiledPolicy:
    policy = load_policy_text(text)
    slots = assign_slots({}, [r.id for r in policy.rules])
    return compile_policy(
        policy,
        gen=gen,
        slots=slots,
        ifindexes={"eth0": 4, "eth1": 5, "lo": 1},
        revision=revision,
        max_tuples=max_tuples,
        max_entries=max_entries,
    )


def test_struct_packers_match_ctypes() -> None:
    assert compiler.KEY_SIZE == ctypes.sizeof(abi.Key)
    assert compiler.VERDICT_SIZE == ctypes.sizeof(abi.Verdict)
    c = compile_text(
        "rules: [{id: a, action: drop, protocol: tcp, src: [198.18.1.0/24], dst: [198.19.0.1],"
        " src_ports: [7], dst_ports: [22], interfaces: [eth1], log: true}]",
        gen=1,
    )
    [(key, verdict)] = list(c.entries())
    assert (key.tuple, key.ifindex, key.sport, key.dport, key.proto, key.l4, key.pad) == (
        256,
        5,
        7,
        22,
        6,
        abi.L4_PORTS,  # an IPv4 rule: the IPv6 bit must be clear
        0,
    )
    assert bytes(key.src) == ipaddress.ip_address("::ffff:198.18.1.0").packed
    assert bytes(key.dst) == ipaddress.ip_address("::ffff:198.19.0.1").packed
    assert (verdict.prio, verdict.slot, verdict.action, verdict.flags) == (
        0,
        16,
        abi.ACT_DROP,
        abi.RULE_LOG,
    )
    [t] = c.tuples
    assert bytes(t.src_mask) == compiler.ADDR_MASKS[96 + 24]
    assert bytes(t.dst_mask) == b"\xff" * 16
    assert (t.ifindex_mask, t.sport_mask, t.dport_mask, t.proto_mask, t.l4_mask, t.min_prio) == (
        0xFFFFFFFF,
        0xFFFF,
        0xFFFF,
        0xFF,
        abi.L4_PORTS | abi.L4_IPV6,
        0,
    )
    assert t.tcp_flags_mask == 0
    assert len(c.keys) == 48 and len(c.values) == 12 and c.count == 1


def test_config() -> None:
    c = compile_text("default_action: drop\ndry_run: true\nrules: []", gen=1, revision=42)
    assert (c.config.ntuples, c.config.default_action, c.config.flags, c.config.revision) == (
        0,
        abi.ACT_DROP,
        abi.GEN_DRY_RUN,
        42,
    )
    assert c.count == 0 and c.keys == b"" and c.tuples == []
    c = compile_text("rules: []")
    assert (c.config.default_action, c.config.flags) == (abi.ACT_ALLOW, 0)


def test_tuples_sorted_by_min_prio_and_keys_carry_gen() -> None:
    c = compile_text(
        """
rules:
  - {id: a, action: drop, src: [10.0.0.0/8]}
  - {id: b, action: drop, protocol: udp, dst_ports: [53]}
  - {id: c, action: drop, src: [10.1.0.0/16]}
  - {id: d, action: drop, src: [10.2.0.0/8]}
  - {id: e, action: allow, protocol: udp, dst_ports: ["1024-2047"]}
""",
        gen=1,
    )
    prios = [t.min_prio for t in c.tuples]
    assert prios == sorted(prios) == [0, 1, 2, 4]
    for key, verdict in c.entries():
        assert 256 <= key.tuple < 256 + len(c.tuples)
        assert c.tuples[key.tuple - 256].min_prio <= verdict.prio
    # a and d share the /8 tuple; d's 10.2.0.0/8 is 10.0.0.0/8: a identical key, a wins.
    assert c.count == 4
    assert [v.prio for _, v in c.entries()] == [0, 1, 2, 4]


def test_first_rule_wins_on_identical_keys() -> None:
    c = compile_text(
        """
rules:
  - {id: allow-ssh, action: allow, protocol: tcp, dst_ports: [22]}
  - {id: drop-ssh, action: drop, protocol: tcp, dst_ports: ["22"]}
"""
    )
    [(_, verdict)] = list(c.entries())
    assert (verdict.prio, verdict.slot, verdict.action) == (0, 16, abi.ACT_ALLOW)


def test_cross_product_skips_mixed_families_and_merges_ranges() -> None:
    c = compile_text(
        "rules: [{id: a, action: drop, protocol: tcp, src: [198.18.0.0/15, '2001:2::/48'],"
        " dst: [198.19.0.1, '2001:2::1', '2001:2::2'], dst_ports: [80, 81, '82-83', 80]}]"
    )
    # (1 v4 x 1 v4 + 1 v6 x 2 v6) pairs x 1 block (80-83)
    assert c.count == 3
    assert {k.dport for k, _ in c.entries()} == {80}
    assert {t.dport_mask for t in c.tuples} == {0xFFFC}


def test_interfaces_resolve_globs_and_unmatched_globs_compile_to_nothing() -> None:
    c = compile_text(
        "rules: [{id: a, action: drop, interfaces: ['eth*', lo]},"
        " {id: b, action: drop, interfaces: ['wlan*']}]"
    )
    assert sorted(k.ifindex for k, _ in c.entries()) == [1, 4, 5]
    assert [t.ifindex_mask for t in c.tuples] == [0xFFFFFFFF]


def test_absent_fields_have_zero_masks() -> None:
    c = compile_text("rules: [{id: a, action: drop}]")
    [t] = c.tuples
    assert bytes(t.src_mask) == bytes(16) and t.ifindex_mask == t.proto_mask == t.l4_mask == 0
    [(key, _)] = list(c.entries())
    assert bytes(key) == bytes(48)


def test_tuple_capacity() -> None:
    rules = "\n".join(f"  - {{id: r{n}, action: drop, src: ['::/{n}']}}" for n in range(3))
    with pytest.raises(CapacityError, match="3 distinct masks.*limit is 2"):
        compile_text("rules:\n" + rules, max_tuples=2)
    many = "\n".join(
        f"  - {{id: r{n}-{p}, action: drop, src: ['::/{n}']{', protocol: tcp' if p else ''}}}"
        for n in range(129)
        for p in (0, 1)
    )
    with pytest.raises(CapacityError, match="258 distinct masks.*limit is 256"):
        compile_text("rules:\n" + many)


def test_entry_capacity() -> None:
    srcs = ", ".join(f"198.18.{i}.0/24" for i in range(0, 40, 2))
    with pytest.raises(CapacityError, match=r"rules\[0\].*expands to 20"):
        compile_text(f"rules: [{{id: a, action: drop, src: [{srcs}]}}]", max_entries=19)
    text = (
        "rules: [{id: a, action: drop, src: [10.0.0.0/8]}, {id: b, action: drop, src: [1.0.0.0/8]}]"
    )
    with pytest.raises(CapacityError, match=r"rules\[1\].*more than 1 map entries"):
        compile_text(text, max_entries=1)


def test_missing_slot_and_bad_arguments() -> None:
    policy = load_policy_text("rules: [{id: a, action: drop}]")
    with pytest.raises(PolicyError) as info:
        compile_policy(policy, gen=0, slots={}, ifindexes={})
    assert info.value.field == "rules[0].id"
    with pytest.raises(ValueError, match="gen"):
        compile_policy(policy, gen=2, slots={"a": 16}, ifindexes={})


# --- equivalence with the reference classifier --------------------------------------------

IFINDEXES = {"eth0": 1, "eth1": 2, "lo": 3, "veth9": 7}
IFNAMES = {v: k for k, v in IFINDEXES.items()}
NETS: list[IPNetwork] = [
    ipaddress.ip_network(n)
    for n in (
        "198.18.0.0/15",
        "198.18.0.0/24",
        "198.18.0.1/32",
        "198.19.128.0/17",
        "0.0.0.0/0",
        "2001:2::/48",
        "2001:2::/64",
        "2001:2::1/128",
        "2001:2:0:1::/64",
        "::/0",
        "::ffff:198.18.0.0/112",
    )
]
ADDRS = [
    ipaddress.ip_address(a)
    for a in (
        "198.18.0.1",
        "198.18.0.2",
        "198.18.1.1",
        "198.19.200.1",
        "10.0.0.1",
        "2001:2::1",
        "2001:2::2",
        "2001:2:0:1::5",
        "2001:3::1",
        "::ffff:198.18.0.1",
        "::1",
    )
]
PORTS = [0, 1, 21, 22, 23, 53, 1023, 1024, 5000, 65534, 65535]
GLOBS = ["eth*", "lo", "veth?", "nomatch*", "eth1"]


@st.composite
def port_ranges(draw: st.DrawFn) -> PortRange:
    a = draw(st.one_of(st.sampled_from(PORTS), st.integers(0, 65535)))
    b = draw(st.one_of(st.sampled_from(PORTS), st.just(a), st.integers(0, 65535)))
    return PortRange(min(a, b), max(a, b))


@st.composite
def random_rule(draw: st.DrawFn, index: int) -> Rule:
    protocol = draw(st.sampled_from([None, 1, 6, 17, 58, 132, 47]))
    ports = draw(st.booleans()) and (protocol in (6, 17, 132) or draw(st.booleans()))
    return Rule(
        id=f"r{index}",
        action=draw(st.sampled_from(Action)),
        protocol=protocol,
        src=tuple(draw(st.lists(st.sampled_from(NETS), max_size=2))),
        dst=tuple(draw(st.lists(st.sampled_from(NETS), max_size=2))),
        src_ports=tuple(draw(st.lists(port_ranges(), max_size=2))) if ports else (),
        dst_ports=tuple(draw(st.lists(port_ranges(), max_size=2))) if ports else (),
        interfaces=tuple(draw(st.lists(st.sampled_from(GLOBS), max_size=2))),
        log=draw(st.booleans()),
    )


@st.composite
def random_policy(draw: st.DrawFn) -> Policy:
    n = draw(st.integers(0, 6))
    return Policy(
        default_action=draw(st.sampled_from(Action)),
        dry_run=draw(st.booleans()),
        rules=tuple(draw(random_rule(i)) for i in range(n)),
    )


@st.composite
def random_packet(draw: st.DrawFn) -> ParsedPacket:
    kind = draw(st.sampled_from([PacketKind.IP] * 8 + [PacketKind.MALFORMED, PacketKind.NON_IP]))
    ifindex = draw(st.sampled_from([1, 2, 3, 7, 9]))
    if kind is not PacketKind.IP:
        return ParsedPacket(kind, ifindex=ifindex)
    src = draw(st.sampled_from(ADDRS))
    dst = draw(st.sampled_from([a for a in ADDRS if a.version == src.version]))
    proto = draw(st.sampled_from([1, 6, 17, 58, 132, 47]))
    later = draw(st.booleans()) and draw(st.booleans())
    fragment = later or draw(st.booleans())
    ports = proto in (6, 17, 132) and not later
    icmp = proto in (1, 58) and not later
    return ParsedPacket(
        PacketKind.IP,
        ifindex=ifindex,
        family=src.version,
        src=src,
        dst=dst,
        proto=proto,
        sport=draw(st.sampled_from(PORTS)) if ports else 0,
        dport=draw(st.sampled_from(PORTS)) if ports else 0,
        tcp_flags=draw(st.integers(0, 255)) if proto == 6 and not later else 0,
        has_ports=ports,
        is_icmp=icmp,
        icmp_type=draw(st.integers(0, 255)) if icmp else 0,
        icmp_code=draw(st.integers(0, 255)) if icmp else 0,
        fragment=fragment,
        later_fragment=later,
    )


@settings(max_examples=max(500, settings().max_examples))
@given(random_policy(), st.lists(random_packet(), min_size=1, max_size=8), st.integers(0, 1))
def test_compiled_tuple_space_agrees_with_reference(
    policy: Policy, pkts: list[ParsedPacket], gen: int
) -> None:
    slots = assign_slots({"r3": 40}, [r.id for r in policy.rules])
    try:
        c = compile_policy(policy, gen=gen, slots=slots, ifindexes=IFINDEXES)
    except CapacityError:
        assume(False)
        raise
    for p in pkts:
        expected = decide(policy, p, ifnames=IFNAMES, slots=slots)
        event("rule matched" if expected.rule_id else "no rule matched")
        assert simulate(c, policy, p) == expected, p


def test_large_blocklist_compiles_to_two_tuples() -> None:
    # Not a timing assertion (shared VM); guards the shape of the large case.
    rules = tuple(
        Rule(
            id=f"r{i}",
            action=Action.DROP,
            protocol=6,
            src=(ipaddress.ip_network((0xC6120000 + i * 256, 24 if i % 2 else 32)),),
            dst_ports=(PortRange(i % 1000, i % 1000),),
        )
        for i in range(20000)
    )
    policy = Policy(rules=rules)
    c = compile_policy(policy, gen=0, slots=assign_slots({}, [r.id for r in rules]), ifindexes={})
    assert c.count == 20000 and len(c.tuples) == 2
    assert len(c.keys) == 48 * c.count and len(c.values) == 12 * c.count
