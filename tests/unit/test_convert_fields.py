"""Every policy field survives the trip through the proto, and proto-only mistakes are named."""

from __future__ import annotations

import pytest

from fwd.api import convert
from fwd.api.gen.fwd import v1 as pb
from fwd.errors import PolicyError
from fwd.policy.files import load_policy_text

FULL = """
default_action: drop
dry_run: true
log_default: true
sets:
  bl: {type: prefix, elements: [198.51.100.0/24, "2001:db8::/32"]}
  web: {type: port, elements: [80, "443-444"]}
rules:
  - {id: a, action: drop, src_set: bl, log: true}
  - {id: b, action: allow, protocol: tcp, dst_port_set: web, tcp_flags: "syn,!ack"}
  - {id: c, action: drop, protocol: icmp, icmp_type: 8, icmp_code: 0, fragment: false, audit: true}
  - {id: d, action: allow, protocol: udp, src: [198.18.0.0/15], dst: [198.19.0.1],
     src_ports: ["1024-65535"], dst_ports: [53], interfaces: ["eth*"]}
"""


def test_full_policy_round_trip() -> None:
    policy = load_policy_text(FULL)
    proto = convert.policy_to_proto(policy)
    assert convert.policy_from_proto(pb.Policy.parse(bytes(proto))) == policy
    assert proto.rules[1].tcp_flags and proto.rules[2].icmp_type == 8
    assert proto.rules[2].fragment is False and proto.log_default
    assert {s.name: s.type for s in proto.sets} == {"bl": pb.SetType.PREFIX, "web": pb.SetType.PORT}


def test_duplicate_set_names_are_named() -> None:
    sets = [pb.NamedSet(name="x", type=pb.SetType.PORT, elements=["1"])] * 2
    with pytest.raises(PolicyError) as info:
        convert.policy_from_proto(pb.Policy(sets=sets))
    assert info.value.field == "sets[1].name"
