"""What grpcurl does, against the real agent's socket, knowing nothing of fwd's generated code.

grpcurl (README "The API") lists services by server reflection, fetches their file
descriptors, builds request and reply types at run time and prints JSON; health checks
go through grpc.health.v1. This test does each step the same way with protobuf's
descriptor pool, so a generic gRPC tool keeps working against the agent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory  # type: ignore[import-untyped]
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest
from grpclib.reflection.v1alpha import reflection_grpc as alpha_grpc
from grpclib.reflection.v1alpha import reflection_pb2 as alpha_pb2

from tests.e2e.agentproc import AgentProcess, stop_lab
from tests.netns import Netns

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    net = Netns(prefix="fwdg")
    proc: AgentProcess | None = None
    try:
        ns = net.make_netns()
        proc = AgentProcess(ns, tmp_path_factory.mktemp("agent"), net.pin_dir(), "--metrics", "")
        proc.start()
        yield proc
    finally:
        stop_lab(proc, net)


async def _reflect(channel: Channel, *requests: ServerReflectionRequest) -> list[object]:
    replies: list[object] = []
    async with ServerReflectionStub(channel).ServerReflectionInfo.open(timeout=10) as stream:
        for i, req in enumerate(requests):
            await stream.send_message(req, end=i == len(requests) - 1)
            replies.append(await stream.recv_message())
    return replies


def test_health_like_grpcurl(agent: AgentProcess) -> None:
    """grpcurl -plaintext -unix /run/fwd/fwd.sock grpc.health.v1.Health/Check"""

    async def go() -> list[int]:
        channel = Channel(path=agent.socket)
        try:
            stub = HealthStub(channel)
            return [
                (await stub.Check(HealthCheckRequest(service=s), timeout=10)).status
                for s in ("", "fwd.v1.PolicyService")
            ]
        finally:
            channel.close()

    assert anyio.run(go) == [HealthCheckResponse.SERVING, HealthCheckResponse.SERVING]


def test_list_describe_and_call_like_grpcurl(agent: AgentProcess) -> None:
    """grpcurl ... list; describe fwd.v1.PolicyService; fwd.v1.PolicyService/GetPolicy"""

    async def go() -> tuple[set[str], dict[str, object]]:
        channel = Channel(path=agent.socket)
        try:
            listed, described = await _reflect(
                channel,
                ServerReflectionRequest(list_services=""),
                ServerReflectionRequest(file_containing_symbol="fwd.v1.PolicyService"),
            )
            services = {s.name for s in listed.list_services_response.service}  # type: ignore[attr-defined]
            # Build the types from what the server sent, as grpcurl does.
            pool = descriptor_pool.DescriptorPool()
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in described.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
            ]
            pending = {f.name: f for f in files}
            while pending:  # dependencies first (google/protobuf/* come along when used)
                for name, f in list(pending.items()):
                    if all(d not in pending for d in f.dependency):
                        pool.Add(f)
                        del pending[name]
            method = pool.FindServiceByName("fwd.v1.PolicyService").methods_by_name["GetPolicy"]
            request_t = message_factory.GetMessageClass(method.input_type)
            reply_t = message_factory.GetMessageClass(method.output_type)
            async with channel.request(
                "/fwd.v1.PolicyService/GetPolicy", Cardinality.UNARY_UNARY, request_t, reply_t,
                timeout=10,
            ) as stream:
                await stream.send_message(request_t(), end=True)
                reply = await stream.recv_message()
            return services, json.loads(json_format.MessageToJson(reply))
        finally:
            channel.close()

    services, reply = anyio.run(go)
    assert {"fwd.v1.PolicyService", "fwd.v1.EventService", "grpc.health.v1.Health"} <= services
    # A fresh agent enforces revision 0 (grpcurl omits zero fields: no "revision" key).
    assert int(str(reply.get("revision", 0))) == 0 and "policy" in reply, reply


def test_reflection_v1alpha_for_older_grpcurl(agent: AgentProcess) -> None:
    """grpcurl before 1.9 asks grpc.reflection.v1alpha only."""

    async def go() -> set[str]:
        channel = Channel(path=agent.socket)
        try:
            stub = alpha_grpc.ServerReflectionStub(channel)
            async with stub.ServerReflectionInfo.open(timeout=10) as stream:
                await stream.send_message(alpha_pb2.ServerReflectionRequest(list_services=""), end=True)
                reply = await stream.recv_message()
            assert reply is not None
            return {s.name for s in reply.list_services_response.service}
        finally:
            channel.close()

    assert "fwd.v1.PolicyService" in anyio.run(go)
