"""The Api actor over a real unix socket, against the fakes in fwd.testing."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

from fwd.api import convert
from fwd.api.gen.fwd import v1 as pb
from fwd.api.paging import page_bounds
from fwd.errors import BpfError
from fwd.messages import ApplyPolicy, AttachMode, InterfaceStatus, LinkState, RuleStats
from fwd.policy.model import policy_from_dict
from fwd.testing import ApiHarness, serve_api

REPO = Path(__file__).resolve().parents[2]

POLICY = {
    "default_action": "drop",
    "dry_run": False,
    "rules": [
        {
            "id": "mgmt-ssh",
            "action": "allow",
            "protocol": "tcp",
            "src": ["198.18.0.0/15", "2001:2::/48"],
            "dst_ports": ["22", "8000-8080"],
            "interfaces": ["veth*"],
            "log": True,
        },
        {"id": "drop-net", "action": "drop", "src": ["198.19.1.0/24"]},
        {"id": "icmp", "action": "allow", "protocol": "icmp"},
    ],
}


def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "fwd.sock")


@asynccontextmanager
async def api(tmp_path: Path, **kwargs: Any) -> AsyncIterator[tuple[ApiHarness, Channel]]:
    async with serve_api(sock_path(tmp_path), **kwargs) as harness:
        channel = Channel(path=harness.socket_path)
        try:
            yield harness, channel
        finally:
            channel.close()


def proto_policy() -> pb.Policy:
    return convert.policy_to_proto(policy_from_dict(POLICY))


# --- convert (pure) ------------------------------------------------------------


def test_convert_round_trip() -> None:
    model = policy_from_dict(POLICY)
    message = convert.policy_to_proto(model)
    assert message.default_action == pb.Action.DROP
    assert message.rules[0].protocol == "tcp"
    assert message.rules[0].dst_ports == ["22", "8000-8080"]
    assert message.rules[1].protocol == ""  # any
    # Through the wire format and back: the same model.
    assert convert.policy_from_proto(pb.Policy.parse(bytes(message))) == model


def test_convert_defaults_and_numbers() -> None:
    # UNSPECIFIED default action means allow; a numeric protocol is accepted as a string.
    message = pb.Policy(rules=[pb.Rule(id="gre", action=pb.Action.DROP, protocol="47")])
    model = convert.policy_from_proto(message)
    assert model.default_action.value == "allow"
    assert model.rules[0].protocol == 47
    assert convert.policy_to_proto(model).rules[0].protocol == "47"
    assert convert.policy_from_proto(None) == policy_from_dict({})


def test_page_bounds() -> None:
    assert page_bounds(0, "", 2500) == (0, 1000, "1000")
    assert page_bounds(0, "2000", 2500) == (2000, 2500, "")
    assert page_bounds(50000, "", 20000) == (0, 10000, "10000")  # clamped to the maximum
    assert page_bounds(10, "99", 5) == (5, 5, "")  # the table shrank: empty last page


# --- policy ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_apply_get_round_trip(tmp_path: Path) -> None:
    async with api(tmp_path) as (harness, channel):
        stub = pb.PolicyServiceStub(channel, timeout=5)
        before = await stub.get_policy()
        assert before.revision == 0
        assert convert.policy_from_proto(before.policy) == policy_from_dict({})

        applied = await stub.apply_policy(pb.ApplyPolicyRequest(policy=proto_policy()))
        assert applied.revision == 1

        after = await stub.get_policy()
        assert after.revision == 1
        assert convert.policy_from_proto(after.policy) == policy_from_dict(POLICY)
        assert harness.datapath.policy == policy_from_dict(POLICY)


@pytest.mark.asyncio
async def test_stale_expect_revision_is_failed_precondition(tmp_path: Path) -> None:
    async with api(tmp_path) as (harness, channel):
        stub = pb.PolicyServiceStub(channel, timeout=5)
        first = await stub.apply_policy(
            pb.ApplyPolicyRequest(policy=proto_policy(), expect_revision=0)
        )
        assert first.revision == 1
        with pytest.raises(GRPCError) as info:
            await stub.apply_policy(pb.ApplyPolicyRequest(policy=pb.Policy(), expect_revision=0))
        assert info.value.status == Status.FAILED_PRECONDITION
        assert "expect_revision" in (info.value.message or "")
        assert harness.datapath.policy == policy_from_dict(POLICY)  # not overwritten
        second = await stub.apply_policy(
            pb.ApplyPolicyRequest(policy=pb.Policy(), expect_revision=1)
        )
        assert second.revision == 2


def _rule(**fields: Any) -> pb.Rule:
    base: dict[str, Any] = {"id": "r", "action": pb.Action.DROP}
    base.update(fields)
    return pb.Rule(**base)


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (pb.Policy(rules=[_rule(src=["198.18.0.300/24"])]), "rules[0].src[0]"),
        (pb.Policy(rules=[_rule(protocol="tcp", dst_ports=["70000"])]), "rules[0].dst_ports[0]"),
        (pb.Policy(rules=[_rule(action=pb.Action(7))]), "rules[0].action"),
        (pb.Policy(rules=[_rule(action=pb.Action.UNSPECIFIED)]), "rules[0].action"),
        (pb.Policy(rules=[_rule(), _rule()]), "rules[1].id"),
        (pb.Policy(default_action=pb.Action(9)), "default_action"),
        (pb.Policy(rules=[_rule(dst_ports=["22"])]), "rules[0].dst_ports"),
    ],
    ids=["cidr", "port", "unknown-action", "no-action", "duplicate-id", "default", "no-proto"],
)
@pytest.mark.asyncio
async def test_invalid_policy_is_invalid_argument(
    tmp_path: Path, policy: pb.Policy, field: str
) -> None:
    async with api(tmp_path) as (harness, channel):
        stub = pb.PolicyServiceStub(channel, timeout=5)
        await stub.apply_policy(pb.ApplyPolicyRequest(policy=proto_policy()))
        with pytest.raises(GRPCError) as info:
            await stub.apply_policy(pb.ApplyPolicyRequest(policy=policy))
        assert info.value.status == Status.INVALID_ARGUMENT
        assert (info.value.message or "").startswith(f"{field}: ")
        current = await stub.get_policy()
        assert current.revision == 1  # unchanged
        assert convert.policy_from_proto(current.policy) == policy_from_dict(POLICY)
        assert harness.datapath.applies == 1
        # Rejected by the Api itself: the datapath never saw the bad policy.
        assert sum(isinstance(c, ApplyPolicy) for c in harness.datapath.received) == 1


@pytest.mark.asyncio
async def test_datapath_errors_map_to_status_codes(tmp_path: Path) -> None:
    async with api(tmp_path, max_rules=2, reply_timeout=0.3) as (harness, channel):
        stub = pb.PolicyServiceStub(channel, timeout=5)
        with pytest.raises(GRPCError) as info:
            await stub.apply_policy(pb.ApplyPolicyRequest(policy=proto_policy()))  # 3 rules
        assert info.value.status == Status.RESOURCE_EXHAUSTED

        harness.datapath.fail_next = BpfError("bpf_map_update_batch: Cannot allocate memory", 12)
        with pytest.raises(GRPCError) as info:
            await stub.apply_policy(pb.ApplyPolicyRequest(policy=pb.Policy()))
        assert info.value.status == Status.INTERNAL
        assert "Cannot allocate memory" in (info.value.message or "")

        harness.datapath.silent = True
        with pytest.raises(GRPCError) as info:
            await stub.get_policy()
        assert info.value.status == Status.UNAVAILABLE
        assert info.value.message == "datapath did not answer within 0.3s"


# --- interfaces and stats ------------------------------------------------------------

INTERFACES = (
    InterfaceStatus("veth1", 7, LinkState.FAILED, error="EBUSY: another program"),
    InterfaceStatus("lo", 1, LinkState.EXCLUDED),
    InterfaceStatus("veth0", 5, LinkState.ATTACHED, AttachMode.NATIVE, prog_id=42, link_id=3),
)


@pytest.mark.asyncio
async def test_list_interfaces(tmp_path: Path) -> None:
    async with api(tmp_path, interfaces=INTERFACES) as (_, channel):
        response = await pb.InterfaceServiceStub(channel, timeout=5).list_interfaces()
    assert [i.name for i in response.interfaces] == ["lo", "veth0", "veth1"]  # by ifindex
    lo, veth0, veth1 = response.interfaces
    assert lo.state == pb.InterfaceState.EXCLUDED and lo.mode == pb.AttachMode.NONE
    assert (veth0.state, veth0.mode, veth0.prog_id, veth0.link_id) == (
        pb.InterfaceState.ATTACHED,
        pb.AttachMode.NATIVE,
        42,
        3,
    )
    assert veth1.state == pb.InterfaceState.FAILED and veth1.error == "EBUSY: another program"


@pytest.mark.asyncio
async def test_rule_stats_paging(tmp_path: Path) -> None:
    table = tuple(RuleStats(f"r{i}", "drop", i, 100 * i, i % 3, i % 5) for i in range(2500))
    async with api(tmp_path) as (harness, channel):
        harness.datapath.stats = table
        stub = pb.StatsServiceStub(channel, timeout=5)

        first = await stub.list_rule_stats(pb.ListRuleStatsRequest())
        assert len(first.stats) == 1000 and first.next_page_token  # the default page size

        seen: list[pb.RuleStats] = []
        token, pages = "", 0
        while True:
            page = await stub.list_rule_stats(
                pb.ListRuleStatsRequest(page_size=700, page_token=token)
            )
            assert len(page.stats) <= 700
            seen.extend(page.stats)
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert pages == 4
        assert [s.rule_id for s in seen] == [s.rule_id for s in table]
        assert seen[7].packets == 7 and seen[7].bytes == 700
        assert (seen[7].would_drop_packets, seen[7].would_drop_bytes) == (1, 2)
        assert seen[7].action == pb.Action.DROP

        whole = await stub.list_rule_stats(pb.ListRuleStatsRequest(page_size=4_000_000))
        assert len(whole.stats) == 2500 and whole.next_page_token == ""

        for bad in ("abc", "-1", "1e3", "²"):
            with pytest.raises(GRPCError) as info:
                await stub.list_rule_stats(pb.ListRuleStatsRequest(page_token=bad))
            assert info.value.status == Status.INVALID_ARGUMENT
            assert (info.value.message or "").startswith("page_token: ")


# --- health, reflection, socket ----------------------------------------------------------


@pytest.mark.asyncio
async def test_health_serving(tmp_path: Path) -> None:
    async with api(tmp_path) as (_, channel):
        health = HealthStub(channel)
        for service in ("", "fwd.v1.PolicyService", "fwd.v1.StatsService"):
            response = await health.Check(HealthCheckRequest(service=service), timeout=5)
            assert response.status == HealthCheckResponse.SERVING
        with pytest.raises(GRPCError) as info:
            await health.Check(HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert info.value.status == Status.NOT_FOUND


@pytest.mark.asyncio
async def test_reflection_describes_our_services(tmp_path: Path) -> None:
    async with api(tmp_path) as (_, channel):
        stub = ServerReflectionStub(channel)
        async with stub.ServerReflectionInfo.open(timeout=5) as stream:
            await stream.send_message(ServerReflectionRequest(list_services=""))
            listed = await stream.recv_message()
            await stream.send_message(
                ServerReflectionRequest(file_containing_symbol="fwd.v1.PolicyService"),
                end=True,
            )
            described = await stream.recv_message()
    assert listed is not None and described is not None
    names = {s.name for s in listed.list_services_response.service}
    assert {"fwd.v1.PolicyService", "fwd.v1.InterfaceService", "fwd.v1.StatsService"} <= names
    assert "grpc.health.v1.Health" in names
    assert described.file_descriptor_response.file_descriptor_proto  # found, not an error


@pytest.mark.asyncio
async def test_socket_mode_stale_file_and_cleanup(tmp_path: Path) -> None:
    path = Path(sock_path(tmp_path))
    path.parent.mkdir()
    # A leftover socket of a dead agent: bound, then closed without unlinking.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    assert stat.S_ISSOCK(path.lstat().st_mode)
    async with api(tmp_path) as (_, channel):
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        assert (await pb.PolicyServiceStub(channel, timeout=5).get_policy()).revision == 0
        assert os.listdir(path.parent) == ["fwd.sock"]  # no temporary name left behind
    assert not path.exists()


@pytest.mark.asyncio
async def test_refuses_to_replace_a_live_socket_or_a_file(tmp_path: Path) -> None:
    async with api(tmp_path):
        with pytest.raises(ExceptionGroup) as info:  # from serve_api's task group
            async with serve_api(sock_path(tmp_path)):
                pass
        assert info.group_contains(OSError, match="another process is serving")
    Path(sock_path(tmp_path)).write_text("not a socket")
    with pytest.raises(ExceptionGroup) as info:
        async with serve_api(sock_path(tmp_path)):
            pass
    assert info.group_contains(FileExistsError, match="is not a socket")
    assert Path(sock_path(tmp_path)).read_text() == "not a socket"


# --- any gRPC client: grpcio stubs generated from proto/ at test time ------------------------


@pytest.fixture(scope="module")
def grpcio_stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ...]]:
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    out = tmp_path_factory.mktemp("grpcio")
    # Compile from the file's own directory: generated modules are then top-level
    # (fwd_pb2) instead of a "fwd" package that would shadow ours.
    shutil.copy(REPO / "proto/fwd/v1/fwd.proto", out / "fwd_v1_wire.proto")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{out}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "fwd_v1_wire.proto",
        ],
        check=True,
        cwd=out,
    )
    sys.path.insert(0, str(out))
    try:
        yield (
            importlib.import_module("fwd_v1_wire_pb2"),
            importlib.import_module("fwd_v1_wire_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


@pytest.mark.asyncio
async def test_grpcio_client(tmp_path: Path, grpcio_stubs: tuple[ModuleType, ...]) -> None:
    import grpc

    pb2, pb2_grpc = grpcio_stubs

    def talk(path: str) -> tuple[Any, Any, Any, Any]:
        with grpc.insecure_channel(f"unix:{path}") as channel:
            stub = pb2_grpc.PolicyServiceStub(channel)
            rule = pb2.Rule(
                id="web",
                action=pb2.ACTION_ALLOW,
                protocol="tcp",
                dst=["198.18.0.1"],
                dst_ports=["80", "443"],
            )
            applied = stub.ApplyPolicy(
                pb2.ApplyPolicyRequest(
                    policy=pb2.Policy(default_action=pb2.ACTION_DROP, rules=[rule]),
                    expect_revision=0,
                ),
                timeout=5,
            )
            got = stub.GetPolicy(pb2.GetPolicyRequest(), timeout=5)
            try:
                stub.ApplyPolicy(
                    pb2.ApplyPolicyRequest(policy=pb2.Policy(), expect_revision=0), timeout=5
                )
            except grpc.RpcError as exc:
                stale = exc
            try:
                stub.ApplyPolicy(
                    pb2.ApplyPolicyRequest(
                        policy=pb2.Policy(
                            rules=[pb2.Rule(id="x", action=pb2.ACTION_DROP, src=["not-an-address"])]
                        )
                    ),
                    timeout=5,
                )
            except grpc.RpcError as exc:
                invalid = exc
            return applied, got, stale, invalid

    async with api(tmp_path) as (harness, _):
        applied, got, stale, invalid = await anyio.to_thread.run_sync(talk, harness.socket_path)
    assert applied.revision == 1
    assert got.revision == 1
    assert got.policy.default_action == pb2.ACTION_DROP
    assert [r.id for r in got.policy.rules] == ["web"]
    assert list(got.policy.rules[0].dst) == ["198.18.0.1/32"]  # normalised to a network
    assert list(got.policy.rules[0].dst_ports) == ["80", "443"]
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.details().startswith("rules[0].src[0]: ")


@pytest.mark.asyncio
async def test_shutdown_answers_requests_in_flight(tmp_path: Path) -> None:
    """Stopping the Api answers pending calls UNAVAILABLE at once (not at their
    deadline) and removes the socket."""
    outcome: list[BaseException] = []

    async def call(channel: Channel) -> None:
        try:
            await pb.PolicyServiceStub(channel, timeout=30).get_policy()
        except (GRPCError, StreamTerminatedError) as exc:
            outcome.append(exc)

    channel: Channel | None = None
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg, serve_api(sock_path(tmp_path)) as harness:
                harness.datapath.silent = True
                channel = Channel(path=harness.socket_path)
                tg.start_soon(call, channel)
                tg.start_soon(call, channel)
                while len(harness.datapath.received) < 2:
                    await anyio.sleep(0.01)
    finally:
        if channel is not None:
            channel.close()
    assert len(outcome) == 2
    for exc in outcome:
        assert isinstance(exc, GRPCError)
        assert (exc.status, exc.message) == (Status.UNAVAILABLE, "the agent is shutting down")
    assert not Path(sock_path(tmp_path)).exists()
