"""ApplyPolicyRequest decoded rule by rule must mean what betterproto2's decoding means."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwd.api import convert, wire
from fwd.api.gen.fwd import v1 as pb
from fwd.api.policystream import ApplyPolicyRequest
from fwd.errors import PolicyError
from tests import strategies as S

TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["198.18.0.0/15", "2001:2::/48", "10.0.0.1", "tcp", "udp", "icmp", "80",
                     "1000-2000", "syn,!ack", "eth*", "bl", "web", "1.2.3.4/33", "70000"]),
)  # fmt: skip
RULES = st.builds(
    pb.Rule,
    id=st.one_of(st.sampled_from(["a", "b", "c", "r-1"]), TEXT),
    action=st.sampled_from(list(pb.Action)), protocol=TEXT,
    src=st.lists(TEXT, max_size=3), dst=st.lists(TEXT, max_size=3),
    src_ports=st.lists(TEXT, max_size=2), dst_ports=st.lists(TEXT, max_size=2),
    interfaces=st.lists(TEXT, max_size=2), log=st.booleans(), audit=st.booleans(),
    tcp_flags=TEXT, icmp_type=st.none() | st.integers(0, 300),
    icmp_code=st.none() | st.integers(0, 300), fragment=st.none() | st.booleans(),
    src_set=st.sampled_from(["", "bl", "web"]), dst_port_set=st.sampled_from(["", "bl", "web"]),
)  # fmt: skip
SETS = st.lists(
    st.builds(pb.NamedSet, name=st.sampled_from(["bl", "web"]),
              type=st.sampled_from(list(pb.SetType)), elements=st.lists(TEXT, max_size=3)),
    max_size=2,
)  # fmt: skip
POLICIES = st.builds(
    pb.Policy, default_action=st.sampled_from(list(pb.Action)), dry_run=st.booleans(),
    rules=st.lists(RULES, max_size=5), log_default=st.booleans(), sets=SETS,
)  # fmt: skip


def outcome_betterproto(body: bytes) -> tuple[str, Any]:
    try:
        request = pb.ApplyPolicyRequest.parse(body)
        wire.check_types(request)
    except Exception:
        return ("undecodable", None)
    head = (request.expect_revision, request.force, request.confirm_within_seconds)
    try:
        return ("ok", (head, convert.policy_from_proto(request.policy)))
    except PolicyError as e:
        return ("invalid", (head, str(e)))


def outcome_streamed(body: bytes) -> tuple[str, Any]:
    try:
        request = ApplyPolicyRequest.FromString(body)
    except Exception:
        return ("undecodable", None)
    head = (request.expect_revision, request.force, request.confirm_within_seconds)
    try:
        return ("ok", (head, convert.policy_from_proto(request.policy)))
    except PolicyError as e:
        return ("invalid", (head, str(e)))


@settings(max_examples=S.examples(300), deadline=None)
@given(policy=st.none() | POLICIES, expect=st.none() | st.integers(0, 2**64 - 1),
       force=st.booleans(), confirm=st.integers(0, 1000))  # fmt: skip
def test_same_policy_or_same_error(
    policy: pb.Policy | None, expect: int | None, force: bool, confirm: int
) -> None:
    body = bytes(pb.ApplyPolicyRequest(
        policy=policy, expect_revision=expect, force=force, confirm_within_seconds=confirm
    ))  # fmt: skip
    assert outcome_streamed(body) == outcome_betterproto(body)


@settings(max_examples=S.examples(300), deadline=None)
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_never_accepted_differently(body: bytes) -> None:
    """Whatever the bytes, the streamed decoder accepts nothing betterproto2 would not,
    and accepts it as the same policy. It may refuse more garbage as undecodable
    (field number 0, truncated fields: betterproto2 ignores some of those)."""
    streamed, reference = outcome_streamed(body), outcome_betterproto(body)
    if streamed[0] != "undecodable":
        assert streamed == reference


def test_a_malformed_rule_names_its_index() -> None:
    good = bytes(pb.Rule(id="a", action=pb.Action.DROP))
    policy = b"\x1a" + bytes([len(good)]) + good + b"\x1a\x02\x08\xff"  # rules[1]: bad varint
    body = b"\x0a" + bytes([len(policy)]) + policy
    request = ApplyPolicyRequest.FromString(body)
    with pytest.raises(PolicyError, match=r"rules\[1\]"):
        convert.policy_from_proto(request.policy)


def test_truncated_request_is_undecodable() -> None:
    body = bytes(pb.ApplyPolicyRequest(policy=pb.Policy(rules=[pb.Rule(id="a")])))
    with pytest.raises(ValueError):
        ApplyPolicyRequest.FromString(body[:-1])


def test_a_valid_policy_decodes_the_same() -> None:
    policy = pb.Policy(
        default_action=pb.Action.DROP, dry_run=True, log_default=True,
        sets=[pb.NamedSet(name="bl", type=pb.SetType.PREFIX, elements=["198.51.100.0/24"]),
              pb.NamedSet(name="web", type=pb.SetType.PORT, elements=["80", "8000-8080"])],
        rules=[pb.Rule(id="a", action=pb.Action.DROP, src_set="bl"),
               pb.Rule(id="b", action=pb.Action.ALLOW, protocol="tcp", src=["198.18.0.0/15"],
                       dst_port_set="web", tcp_flags="syn,!ack", log=True, fragment=False),
               pb.Rule(id="c", action=pb.Action.DROP, protocol="icmp", icmp_type=8, icmp_code=0)],
    )  # fmt: skip
    body = bytes(pb.ApplyPolicyRequest(policy=policy, expect_revision=7, force=True))
    streamed = outcome_streamed(body)
    assert streamed[0] == "ok" and len(streamed[1][1].rules) == 3
    assert streamed == outcome_betterproto(body)
