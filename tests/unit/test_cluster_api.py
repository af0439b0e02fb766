"""The cluster-mode API (ClusterService, PolicyService.ApplyPolicy to etcd) against a real etcd.

The Api and the ClusterAdmin actor run in-process; the Datapath and Links are
the fakes from fwd.testing. Status records are written straight into etcd the
way ClusterSync writes them, so these tests pin the API's side of the contract.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from anyio.streams.memory import MemoryObjectReceiveStream
from grpclib.const import Status

from fwd.api import convert
from fwd.api.gen.fwd import v1 as pb
from fwd.actors.api import Api
from fwd.actors.cluster_admin import ClusterAdmin
from fwd.cluster.etcd import EtcdClient
from fwd.cluster.layout import Layout, StatusRecord, encode_labels, encode_status
from fwd.messages import GetSyncState, SyncState
from fwd.messages import ClusterAdminCommand, DatapathCommand, ListInterfaces, Reply
from fwd.settings import Settings
from fwd.policy.model import policy_from_dict
from fwd.testing import FakeDatapath, FakeLinks, serve_api
from tests.etcd import EtcdServer, etcd_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio

DROP_UDP: dict[str, Any] = {"rules": [{"id": "no-udp", "action": "drop", "protocol": "udp", "dst_ports": [9999]}]}
LAYOUT = Layout("/fwdtest/")


def proto(raw: Mapping[str, Any]) -> pb.Policy:
    return convert.policy_to_proto(policy_from_dict(raw))


@asynccontextmanager
async def cluster_api(tmp_path: Path, url: str) -> AsyncIterator[tuple[Channel, EtcdClient]]:
    """The real Api in cluster mode with a ClusterAdmin on ``url``; yields a channel
    to it and a second etcd client for the test's own reads and writes."""
    socket_path = str(tmp_path / "fwd.sock")
    settings = Settings(socket_path=socket_path, reply_timeout=5.0, etcd_endpoints=(url,),
                        etcd_prefix=LAYOUT.prefix, node_name="self")  # fmt: skip
    dp_tx, dp_rx = anyio.create_memory_object_stream[DatapathCommand](16)
    if_tx, if_rx = anyio.create_memory_object_stream[ListInterfaces](16)
    cl_tx, cl_rx = anyio.create_memory_object_stream[ClusterAdminCommand](16)
    admin_etcd = EtcdClient(url, timeout=2.0)
    test_etcd = EtcdClient(url, timeout=2.0)
    admin = ClusterAdmin(admin_etcd, LAYOUT)
    sync_tx, sync_rx = anyio.create_memory_object_stream[GetSyncState](16)
    api = Api(datapath=dp_tx, links=if_tx, settings=settings, cluster=cl_tx, sync=sync_tx)
    async with admin_etcd, test_etcd, anyio.create_task_group() as tg:
        tg.start_soon(fake_sync, sync_rx)
        await tg.start(FakeDatapath(dp_rx).run)
        await tg.start(FakeLinks(if_rx, ()).run)
        await tg.start(admin.run, cl_rx)
        await tg.start(api.run)
        channel = Channel(path=socket_path)
        try:
            yield channel, test_etcd
        finally:
            channel.close()
            tg.cancel_scope.cancel()


ENFORCED = SyncState(node="self", synced_revision=42, policy=policy_from_dict(DROP_UDP))


async def fake_sync(commands: MemoryObjectReceiveStream[GetSyncState]) -> None:
    """Stands in for ClusterSync: answers GetSyncState with ENFORCED."""
    async with commands:
        async for command in commands:
            with command.reply:
                await command.reply.send(Reply(ENFORCED))


async def put_status(etcd: EtcdClient, node: str, synced: int, **labels: str) -> None:
    record = StatusRecord(node=node, labels=labels, synced_revision=synced, policy_hash="h",
                          version="test", updated=time.time())  # fmt: skip
    await etcd.put(LAYOUT.status_key(node), encode_status(record))


async def test_apply_writes_etcd_with_compare_and_swap(tmp_path: Path, etcd_server: EtcdServer) -> None:
    async with cluster_api(tmp_path, etcd_server.url) as (channel, etcd):
        policies = pb.PolicyServiceStub(channel, timeout=10)
        cluster = pb.ClusterServiceStub(channel, timeout=10)
        first = await policies.apply_policy(pb.ApplyPolicyRequest(
            policy=proto(DROP_UDP), name="edge", selector="role=edge", priority=10,
            expect_revision=0))  # fmt: skip
        kv, _ = await etcd.get(LAYOUT.policy_key("edge"))
        assert kv is not None and kv.mod_revision == first.revision

        # expect_revision 0 = "must not exist": a second create loses.
        with pytest.raises(GRPCError) as err:
            await policies.apply_policy(pb.ApplyPolicyRequest(
                policy=proto({}), name="edge", expect_revision=0))  # fmt: skip
        assert err.value.status is Status.FAILED_PRECONDITION
        assert f"already exists (mod revision {first.revision})" in (err.value.message or "")
        # A stale mod revision loses too; the current one wins.
        with pytest.raises(GRPCError) as err:
            await policies.apply_policy(pb.ApplyPolicyRequest(
                policy=proto({}), name="edge", expect_revision=first.revision - 1))  # fmt: skip
        assert err.value.status is Status.FAILED_PRECONDITION
        second = await policies.apply_policy(pb.ApplyPolicyRequest(
            policy=proto(DROP_UDP), name="edge", selector="role=edge", priority=10,
            expect_revision=first.revision))  # fmt: skip
        assert second.revision > first.revision
        # No name, no check: the "default" policy, priority 100, every node.
        third = await policies.apply_policy(pb.ApplyPolicyRequest(policy=proto({})))

        listed = await cluster.list_policies(pb.ListPoliciesRequest())
        assert [(p.name, p.selector, p.priority, p.mod_revision) for p in listed.policies] == [
            ("edge", "role=edge", 10, second.revision),
            ("default", "", 100, third.revision),
        ]
        assert listed.policies[0].policy is not None
        assert listed.policies[0].policy.rules[0].id == "no-udp"

        # GetPolicy: the merged policy enforced here, at the synced etcd revision.
        got = await policies.get_policy(pb.GetPolicyRequest())
        assert got.revision == 42 and got.policy is not None
        assert got.policy.rules[0].id == "no-udp"


async def test_apply_refuses_bad_requests(tmp_path: Path, etcd_server: EtcdServer) -> None:
    async with cluster_api(tmp_path, etcd_server.url) as (channel, etcd):
        policies = pb.PolicyServiceStub(channel, timeout=10)
        cases = [
            (pb.ApplyPolicyRequest(policy=proto({}), selector="role in (a"), Status.INVALID_ARGUMENT, "selector"),
            (pb.ApplyPolicyRequest(policy=proto({}), name="no/slash"), Status.INVALID_ARGUMENT, "name"),
            # Valid alone, too long once merged as "<policy>:<id>" (ids are at most 128).
            (pb.ApplyPolicyRequest(policy=proto({"rules": [{"id": "r" * 128, "action": "drop"}]}), name="web"),
             Status.INVALID_ARGUMENT, "rules[0]"),
            (pb.ApplyPolicyRequest(policy=proto({}), confirm_within_seconds=60), Status.FAILED_PRECONDITION, "confirm_within_seconds"),
        ]  # fmt: skip
        for request, status, field in cases:
            with pytest.raises(GRPCError) as err:
                await policies.apply_policy(request)
            assert err.value.status is status
            assert field in (err.value.message or "")
        listed = await etcd.get_prefix(LAYOUT.policies)
        assert listed.kvs == ()  # nothing was written


async def test_local_changes_refused_in_cluster_mode(tmp_path: Path, etcd_server: EtcdServer) -> None:
    async with cluster_api(tmp_path, etcd_server.url) as (channel, _):
        rule = pb.Rule(id="r", action=pb.Action.DROP)
        calls = [
            pb.RuleServiceStub(channel).add_rule(pb.AddRuleRequest(rule=rule)),
            pb.RuleServiceStub(channel).delete_rule(pb.DeleteRuleRequest(rule_id="r")),
            pb.SetServiceStub(channel).add_elements(pb.SetElementsRequest(set="s", elements=["198.18.0.1"])),
            pb.PolicyServiceStub(channel).rollback_policy(pb.RollbackPolicyRequest(revision=1)),
            pb.PolicyServiceStub(channel).confirm_policy(pb.ConfirmPolicyRequest()),
        ]  # fmt: skip
        for call in calls:
            with pytest.raises(GRPCError) as err:
                await call
            assert err.value.status is Status.FAILED_PRECONDITION
            assert "cluster mode" in (err.value.message or "")
            assert "etcd" in (err.value.message or "")


async def test_label_status_and_wait(tmp_path: Path, etcd_server: EtcdServer) -> None:
    async with cluster_api(tmp_path, etcd_server.url) as (channel, etcd):
        cluster = pb.ClusterServiceStub(channel, timeout=10)
        labelled = await cluster.label(pb.LabelRequest(node="a", set={"role": "edge", "zone": "x"}))
        assert labelled.labels == {"role": "edge", "zone": "x"} and labelled.revision > 0
        labelled = await cluster.label(pb.LabelRequest(node="a", remove=["zone"]))
        assert labelled.labels == {"role": "edge"}
        # Nothing to change: no write.
        assert (await cluster.label(pb.LabelRequest(node="a", remove=["zone"]))).revision == 0
        await etcd.put(LAYOUT.labels_key("b"), encode_labels({"role": "edge"}))
        await etcd.put(LAYOUT.labels_key("c"), encode_labels({"role": "core"}))
        await etcd.put(LAYOUT.labels_key("gone"), encode_labels({"role": "edge"}))

        target = await etcd.put(LAYOUT.policy_key("p"), b'{"selector":"","priority":1,"policy":{}}')
        await put_status(etcd, "a", target, role="edge")
        await put_status(etcd, "b", target - 1, role="edge")
        await put_status(etcd, "c", 1, role="core")

        status = await cluster.status(pb.ClusterStatusRequest())
        nodes = {n.node: n for n in status.nodes}
        assert sorted(nodes) == ["a", "b", "c", "gone"]
        assert [n.live for n in status.nodes] == [True, True, True, False]
        assert nodes["a"].labels == {"role": "edge"} and nodes["a"].version == "test"
        # Lag counts from the newest change under labels/ and policies/ (the policy p),
        # not from the status writes after it.
        assert status.policy_revision == target < status.revision
        assert [nodes[n].lag for n in "abc"] == [0, 1, target - 1]
        edge = await cluster.status(pb.ClusterStatusRequest(selector="role=edge"))
        assert [n.node for n in edge.nodes] == ["a", "b", "gone"]

        # b is behind: the wait names it (and only it), after the timeout.
        with pytest.raises(GRPCError) as err:
            await cluster.wait(pb.ClusterWaitRequest(revision=target, selector="role=edge",
                                                     timeout_seconds=0.3))  # fmt: skip
        assert err.value.status is Status.DEADLINE_EXCEEDED
        message = err.value.message or ""
        assert f"b (synced {target - 1})" in message and "a (" not in message
        # c is far behind but not selected; b catches up while we wait.
        async with anyio.create_task_group() as tg:
            async def catch_up() -> None:
                await anyio.sleep(0.2)
                await put_status(etcd, "b", target, role="edge")

            tg.start_soon(catch_up)
            done = await cluster.wait(pb.ClusterWaitRequest(revision=target, selector="role=edge",
                                                            timeout_seconds=20))  # fmt: skip
        assert done.nodes == ["a", "b"] and done.silent == ["gone"]

        with pytest.raises(GRPCError) as err:
            await cluster.label(pb.LabelRequest(node="a", set={"bad key": "x"}))
        assert err.value.status is Status.INVALID_ARGUMENT


async def test_delete_policy(tmp_path: Path, etcd_server: EtcdServer) -> None:
    async with cluster_api(tmp_path, etcd_server.url) as (channel, etcd):
        cluster = pb.ClusterServiceStub(channel, timeout=10)
        with pytest.raises(GRPCError) as err:
            await cluster.delete_policy(pb.DeletePolicyRequest(name="nope"))
        assert err.value.status is Status.NOT_FOUND
        written = await etcd.put(LAYOUT.policy_key("p"), b'{"selector":"","priority":1,"policy":{}}')
        with pytest.raises(GRPCError) as err:
            await cluster.delete_policy(pb.DeletePolicyRequest(name="p", expect_revision=written + 5))
        assert err.value.status is Status.FAILED_PRECONDITION
        deleted = await cluster.delete_policy(pb.DeletePolicyRequest(name="p", expect_revision=written))
        assert deleted.revision > written
        kv, _ = await etcd.get(LAYOUT.policy_key("p"))
        assert kv is None


async def test_etcd_down_is_unavailable(tmp_path: Path, etcd_server: EtcdServer) -> None:
    async with cluster_api(tmp_path, etcd_server.url) as (channel, _):
        cluster = pb.ClusterServiceStub(channel, timeout=20)
        await cluster.status(pb.ClusterStatusRequest())
        etcd_server.stop()
        with pytest.raises(GRPCError) as err:
            await cluster.status(pb.ClusterStatusRequest())
        assert err.value.status is Status.UNAVAILABLE
        assert "etcd" in (err.value.message or "")
        # A wait keeps trying until its deadline, then says why it could not know.
        with pytest.raises(GRPCError) as err:
            await cluster.wait(pb.ClusterWaitRequest(revision=1, timeout_seconds=0.5))
        assert err.value.status is Status.UNAVAILABLE
        etcd_server.start()
        with anyio.fail_after(15):
            while True:  # grpc reconnects by itself (backoff capped at 5 s)
                try:
                    await cluster.status(pb.ClusterStatusRequest())
                    break
                except GRPCError as e:
                    assert e.status is Status.UNAVAILABLE
                    await anyio.sleep(0.2)


async def test_local_mode_refuses_cluster_calls(tmp_path: Path) -> None:
    async with serve_api(str(tmp_path / "fwd.sock")) as harness:
        channel = Channel(path=harness.socket_path)
        try:
            with pytest.raises(GRPCError) as err:
                await pb.ClusterServiceStub(channel).status(pb.ClusterStatusRequest())
            assert err.value.status is Status.FAILED_PRECONDITION
            assert "--etcd" in (err.value.message or "")
            with pytest.raises(GRPCError) as err:
                await pb.PolicyServiceStub(channel).apply_policy(
                    pb.ApplyPolicyRequest(policy=proto({}), selector="role=edge"))  # fmt: skip
            assert err.value.status is Status.INVALID_ARGUMENT
            assert "selector" in (err.value.message or "")
            assert harness.datapath.applies == 0  # nothing reached the Datapath
        finally:
            channel.close()
