"""ClusterSync against a real etcd, with recording datapaths in place of BPF."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from fwd.cluster.etcd import EtcdClient, RangeResult, WatchBatch
from fwd.cluster.layout import decode_status
from fwd.cluster.merge import policy_hash
from fwd.errors import CapacityError
from tests.cluster.helpers import (
    LAYOUT,
    drop_rule,
    nodes_running,
    put_labels,
    put_policy,
    wait_until,
)
from tests.etcd import EtcdServer


async def status_of(etcd: EtcdClient, node: str) -> dict[str, Any] | None:
    kv, _ = await etcd.get(LAYOUT.status_key(node))
    return None if kv is None else dict(json.loads(kv.value))


async def status_when(etcd: EtcdClient, node: str, cond: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The node's status record once ``cond`` holds for it (its put may lag its state)."""
    with anyio.fail_after(timeout):
        while True:
            status = await status_of(etcd, node)
            if status is not None and cond(status):
                return status
            await anyio.sleep(0.02)


class WritesAfterGet(EtcdClient):
    """Makes changes right after the sync's range get, before its watch starts, and
    records every watch event the sync is given."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.after_get: list[int] = []
        self.delivered: list[int] = []
        self.armed = True

    async def get_ranges(self, ranges: Sequence[tuple[str, str]]) -> RangeResult:
        result = await super().get_ranges(ranges)
        if self.armed:
            self.armed = False
            for i in range(3):
                self.after_get.append(await put_policy(self, f"p{i}", "", i, drop_rule(f"r{i}")))
            self.after_get.append((await self.delete_if(LAYOUT.policy_key("p0"), mod_revision=None)).revision)
        return result

    @asynccontextmanager
    async def watch_ranges(
        self, ranges: Sequence[tuple[str, str]], start_revision: int
    ) -> AsyncIterator[AsyncIterator[WatchBatch]]:
        async with super().watch_ranges(ranges, start_revision) as batches:

            async def recorded() -> AsyncIterator[WatchBatch]:
                async for batch in batches:
                    self.delivered += [ev.kv.mod_revision for ev in batch.events]
                    yield batch

            yield recorded()


@pytest.mark.asyncio
async def test_load_then_watch_has_no_gap_and_no_duplicate(etcd_server: EtcdServer) -> None:
    async with WritesAfterGet(etcd_server.url) as etcd, nodes_running(etcd) as start:
        node = await start("n1", {"role": "edge"})
        last = etcd.after_get[-1]
        await wait_until(lambda: node.sync.state.synced_revision >= last, what="sync to the last write")
        # Exactly the changes made after the get, each once, in order.
        assert etcd.delivered == etcd.after_get
        assert [name for name, _ in node.sync.state.policies] == ["p1", "p2"]
        assert [r.id for r in node.datapath.policy.rules] == ["p1:r1", "p2:r2"]


@pytest.mark.asyncio
async def test_selector_and_relabel_converge(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd, nodes_running(etcd) as start:
        # n3's labels were set in etcd before it started: its --label does not overwrite them.
        await put_labels(etcd, "n3", {"role": "edge"})
        edge = await start("n1", {"role": "edge"})
        core = await start("n2", {"role": "core"})
        later = await start("n3", {"role": "core"})
        rev = await put_policy(etcd, "edge-only", "role=edge", 10, drop_rule("block"))
        everyone = [edge, core, later]
        await wait_until(lambda: all(n.sync.state.synced_revision >= rev for n in everyone), what="all synced")
        assert [r.id for r in edge.datapath.policy.rules] == ["edge-only:block"]
        assert [r.id for r in later.datapath.policy.rules] == ["edge-only:block"]
        assert core.datapath.policy.rules == () and core.datapath.applied == []  # never touched
        # Relabel n2 into the selector and n1 out of it.
        before = later.sync.statistics().batches
        rev2 = await put_labels(etcd, "n2", {"role": "edge"})
        rev = await put_labels(etcd, "n1", {"role": "core"})
        await wait_until(lambda: core.sync.state.synced_revision >= rev2 and edge.sync.state.synced_revision >= rev,
                         what="relabel")  # fmt: skip
        # Each node watches only its own labels: n3 heard of neither relabel.
        await anyio.sleep(0.2)
        assert later.sync.statistics().batches == before
        assert [r.id for r in core.datapath.policy.rules] == ["edge-only:block"]
        assert edge.datapath.policy.rules == ()
        status = await status_when(etcd, "n2", lambda s: s["synced_revision"] >= rev2)
        assert status["labels"] == {"role": "edge"}
        assert status["policies"] == [["edge-only", status["policies"][0][1]]]
        assert status["policy_hash"] == policy_hash(core.datapath.policy)
        assert status["synced_revision"] >= rev2 and status["last_error"] == ""


@pytest.mark.asyncio
async def test_etcd_down_keeps_the_policy_and_converges_after_restart(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url, timeout=2.0) as etcd, nodes_running(etcd) as start:
        node = await start("n1", {"role": "edge"}, lease_ttl=30)
        rev = await put_policy(etcd, "base", "", 0, drop_rule("one"))
        await wait_until(lambda: node.sync.state.synced_revision >= rev)
        applies = len(node.datapath.applied)
        etcd_server.stop()
        await wait_until(lambda: not node.sync.state.connected, what="the sync to notice")
        assert node.sync.state.etcd_error
        await anyio.sleep(1.0)  # a few reconnect attempts
        assert len(node.datapath.applied) == applies  # nothing re-applied, nothing dropped
        assert [r.id for r in node.datapath.policy.rules] == ["base:one"]
        etcd_server.start()
        await wait_until(lambda: node.sync.state.connected, timeout=20, what="reconnect")
        rev = await put_policy(etcd, "base", "", 0, drop_rule("two"))
        await wait_until(lambda: node.sync.state.synced_revision >= rev)
        assert [r.id for r in node.datapath.policy.rules] == ["base:two"]
        await status_when(etcd, "n1", lambda s: s["synced_revision"] >= rev)


@pytest.mark.asyncio
async def test_changes_while_disconnected_are_loaded_on_reconnect(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url, timeout=2.0) as etcd, nodes_running(etcd) as start:
        node = await start("n1", lease_ttl=30)
        etcd_server.stop()
        await wait_until(lambda: not node.sync.state.connected)
        # Another writer changes etcd while this node cannot see it (a second client
        # connects once etcd is back, before the node's backoff ends).
        etcd_server.start()
        async with EtcdClient(etcd_server.url) as other:
            rev = await put_policy(other, "late", "", 0, drop_rule("x"))
        await wait_until(lambda: node.sync.state.synced_revision >= rev, timeout=20)
        assert [r.id for r in node.datapath.policy.rules] == ["late:x"]


@pytest.mark.asyncio
async def test_apply_error_keeps_the_old_policy_and_is_reported(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd, nodes_running(etcd) as start:
        node = await start("n1")
        good = await put_policy(etcd, "base", "", 0, drop_rule("one"))
        await wait_until(lambda: node.sync.state.synced_revision >= good)
        node.datapath.fail_next = CapacityError("too many rules")
        bad = await put_policy(etcd, "base", "", 0, drop_rule("two"))
        await wait_until(lambda: "too many rules" in node.sync.state.last_error)
        assert node.sync.state.synced_revision == good < bad  # not applied: not synced
        assert [r.id for r in node.datapath.policy.rules] == ["base:one"]
        status = await status_when(etcd, "n1", lambda s: bool(s["last_error"]))
        assert "too many rules" in status["last_error"] and status["synced_revision"] == good
        # The next change applies (the fake fails once) and clears the error.
        rev = await put_policy(etcd, "base", "", 0, drop_rule("three"))
        await wait_until(lambda: node.sync.state.synced_revision >= rev)
        assert node.sync.state.last_error == ""


@pytest.mark.asyncio
async def test_a_bad_value_in_etcd_keeps_the_last_valid_policy(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd, nodes_running(etcd) as start:
        node = await start("n1")
        await put_policy(etcd, "a", "", 0, drop_rule("one"))
        rev = await put_policy(etcd, "b", "", 1, drop_rule("two", "198.19.0.0/24"))
        await wait_until(lambda: node.sync.state.synced_revision >= rev)
        rev = await etcd.put(LAYOUT.policy_key("a"), b'{"policy": {"rules": [{"id": "x"}]}}')
        rev = await etcd.put(LAYOUT.policy_key("c"), b"not json")
        await wait_until(lambda: node.sync.state.synced_revision >= rev)
        assert [r.id for r in node.datapath.policy.rules] == ["a:one", "b:two"]
        error = node.sync.state.last_error
        assert "policies/a.rules[0].action" in error and "policies/c" in error


@pytest.mark.asyncio
async def test_status_lives_with_the_lease(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd, nodes_running(etcd) as start:
        node = await start("n1", lease_ttl=2)
        await wait_until(lambda: node.sync.statistics().status_puts > 0)
        kv, _ = await etcd.get(LAYOUT.status_key("n1"))
        assert kv is not None and kv.lease
        # The lease outlives its TTL while the node runs.
        await anyio.sleep(3)
        assert await etcd.lease_ttl(kv.lease) > 0
        # Someone revokes it: the node gets a new lease and writes its status again.
        await etcd.revoke_lease(kv.lease)
        await wait_until(lambda: node.sync.statistics().leases == 2, what="a new lease")
        with anyio.fail_after(10):
            while True:
                again, _ = await etcd.get(LAYOUT.status_key("n1"))
                if again is not None:
                    break
                await anyio.sleep(0.05)
        assert again.lease != kv.lease
        assert decode_status("n1", again.value).node == "n1"
        # A clean stop revokes the lease: the status goes at once.
        node.scope.cancel()
        with anyio.fail_after(5):
            while (await etcd.get(LAYOUT.status_key("n1")))[0] is not None:
                await anyio.sleep(0.05)


class NoRevoke(EtcdClient):
    """A node that dies without a word: its lease is never revoked."""

    async def revoke_lease(self, lease: int) -> None:
        return None


@pytest.mark.asyncio
async def test_a_dead_node_goes_silent_after_its_lease(etcd_server: EtcdServer) -> None:
    async with NoRevoke(etcd_server.url) as etcd, nodes_running(etcd) as start:
        node = await start("n1", lease_ttl=2)
        await status_when(etcd, "n1", lambda s: s["node"] == "n1")
        node.scope.cancel()  # keep-alives stop; the lease is left to expire
        assert (await status_of(etcd, "n1")) is not None
        with anyio.fail_after(10):
            while (await status_of(etcd, "n1")) is not None:
                await anyio.sleep(0.1)
        # Its labels stay: the node is known, and silent.
        assert (await etcd.get(LAYOUT.labels_key("n1")))[0] is not None


class CompactsAfterGet(EtcdClient):
    """Writes and compacts etcd right after the sync's first range get, so its watch
    from the get's revision + 1 finds that revision compacted away."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.armed = True
        self.last = 0

    async def get_ranges(self, ranges: Sequence[tuple[str, str]]) -> RangeResult:
        result = await super().get_ranges(ranges)
        if self.armed:
            self.armed = False
            for i in range(3):
                self.last = await put_policy(self, "p", "", 0, drop_rule(f"r{i}"))
            await anyio.run_process(["etcdctl", "--endpoints", f"http://{self.endpoint}", "compact", str(self.last)])
        return result


@pytest.mark.asyncio
async def test_a_compacted_watch_revision_means_a_full_reload(etcd_server: EtcdServer) -> None:
    async with CompactsAfterGet(etcd_server.url) as etcd, nodes_running(etcd) as start:
        node = await start("n1", backoff_min=0.01, backoff_max=0.05)
        await wait_until(lambda: node.sync.state.synced_revision >= etcd.last, what="the reload")
        stats = node.sync.statistics()
        assert stats.failures >= 1 and stats.sessions >= 2  # the watch failed, a new get followed
        assert [r.id for r in node.datapath.policy.rules] == ["p:r2"]
        # Only the final state was applied: the intermediate versions were compacted away.
        assert [[r.id for r in rec.policy.rules] for rec in node.datapath.applied] == [["p:r2"]]
