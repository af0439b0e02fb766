"""Bad input never hurts: arbitrary bytes and adversarial policies against the real agent.

Only clean gRPC errors come back (never UNKNOWN or INTERNAL), the agent keeps
running, and a refused request leaves the applied revision as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwd.api.gen.fwd import v1 as pb
from tests.e2e.agentproc import AgentProcess
from tests.netns import Netns

pytestmark = pytest.mark.root

EXAMPLES = int(os.environ.get("FWD_FUZZ_EXAMPLES", "1000"))
CLEAN = {Status.INVALID_ARGUMENT, Status.FAILED_PRECONDITION, Status.RESOURCE_EXHAUSTED}
METHODS = [
    "/fwd.v1.PolicyService/ApplyPolicy",
    "/fwd.v1.PolicyService/GetPolicy",
    "/fwd.v1.InterfaceService/ListInterfaces",
    "/fwd.v1.StatsService/ListRuleStats",
]


class RawCodec(CodecBase):
    """Send and receive message bodies as bytes, unparsed."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    net = Netns(prefix="fwdfz")
    proc: AgentProcess | None = None
    try:
        ns = net.make_netns()
        net.veth_pair(ns, "v0", ns, "v1")
        proc = AgentProcess(ns, tmp_path_factory.mktemp("fuzz"), net.pin_dir())
        proc.start()
        yield proc
    finally:
        if proc is not None and proc.proc is not None:
            assert proc.stop() == 0, proc.log()[-3000:]
        assert not net.cleanup()


async def _raw(agent: AgentProcess, method: str, body: bytes) -> bytes:
    channel = Channel(path=agent.socket, codec=RawCodec())
    try:
        async with channel.request(method, Cardinality.UNARY_UNARY, bytes, bytes, timeout=20) as s:
            await s.send_message(body, end=True)
            reply = await s.recv_message()
            assert reply is not None
            return reply
    finally:
        channel.close()


def _revision(agent: AgentProcess) -> int:
    reply = anyio.run(_raw, agent, METHODS[1], b"")
    return pb.GetPolicyResponse.parse(reply).revision


def _outcome(agent: AgentProcess, method: str, body: bytes) -> Status:
    return _answer(agent, method, body)[0]


def _answer(agent: AgentProcess, method: str, body: bytes) -> tuple[Status, bytes]:
    try:
        reply = anyio.run(_raw, agent, method, body)
    except GRPCError as exc:
        assert exc.status in CLEAN, f"{method}: {exc.status.name}: {exc.message}"
        return exc.status, b""
    return Status.OK, reply


def _made_revision(method: str, status: Status, reply: bytes) -> bool:
    """An accepted apply makes a revision unless it says the policy was unchanged."""
    if status is not Status.OK or not method.endswith("Apply" + "Policy"):
        return False
    return not pb.ApplyPolicyResponse.parse(reply).unchanged


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), body=st.binary(max_size=512))
def test_arbitrary_bytes(agent: AgentProcess, method: str, body: bytes) -> None:
    before = _revision(agent)
    status, reply = _answer(agent, method, body)
    after = _revision(agent)
    assert after == before + _made_revision(method, status, reply)


TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["198.18.0.0/15", "2001:2::/48", "::", "0.0.0.0/0", "1.2.3.4/33", "tcp",
                     "udp", "70000", "1-0", "0-65535", "*", "eth*", "a" * 300, "\x00", "-1"]),
)
RULES = st.builds(
    pb.Rule,
    id=TEXT, action=st.sampled_from(list(pb.Action)), protocol=TEXT,
    src=st.lists(TEXT, max_size=4), dst=st.lists(TEXT, max_size=4),
    src_ports=st.lists(TEXT, max_size=3), dst_ports=st.lists(TEXT, max_size=3),
    interfaces=st.lists(TEXT, max_size=2), log=st.booleans(),
)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    policy=st.builds(pb.Policy, default_action=st.sampled_from(list(pb.Action)),
                     dry_run=st.booleans(), rules=st.lists(RULES, max_size=6)),
    expect=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
)
def test_adversarial_policies(agent: AgentProcess, policy: pb.Policy, expect: int | None) -> None:
    before = _revision(agent)
    body = bytes(pb.ApplyPolicyRequest(policy=policy, expect_revision=expect))
    status, reply = _answer(agent, METHODS[0], body)
    assert _revision(agent) == before + _made_revision(METHODS[0], status, reply)


def test_oversized_request_is_refused_without_reading_it(agent: AgentProcess) -> None:
    before = _revision(agent)
    huge = b"\x0a" + b"\xff" * 4 + b"x" * (65 * 1024 * 1024)
    assert _outcome(agent, METHODS[0], huge) is Status.RESOURCE_EXHAUSTED
    assert _revision(agent) == before
    rss_kb = int(Path(f"/proc/{agent.proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])  # type: ignore[union-attr]
    assert rss_kb < 200_000, f"agent RSS {rss_kb} kB after an oversized request"
