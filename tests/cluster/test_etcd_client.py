"""The etcd seam against a real etcd: CAS, ranges, watch batches, leases, compaction."""

from __future__ import annotations

import anyio
import pytest

from fwd.cluster.etcd import (
    Compacted,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    LeaseExpired,
    parse_urls,
)
from tests.etcd import EtcdServer


def test_parse_urls() -> None:
    assert parse_urls("http://127.0.0.1:2379, 198.18.0.1:3000") == [("127.0.0.1", 2379), ("198.18.0.1", 3000)]
    assert parse_urls("https://a:1") == [("a", 1)]
    with pytest.raises(EtcdError, match="expected https://"):
        parse_urls("ftp://a:1")
    with pytest.raises(EtcdError, match="no etcd URL"):
        parse_urls(" , ")


@pytest.mark.asyncio
async def test_cas_put_and_delete(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd:
        created = await etcd.put_if("/t/a", b"1", mod_revision=0)
        assert created.succeeded
        again = await etcd.put_if("/t/a", b"2", mod_revision=0)  # must not exist: it does
        assert not again.succeeded
        assert again.current is not None and again.current.value == b"1"
        assert again.current.mod_revision == created.revision
        stale = await etcd.put_if("/t/a", b"3", mod_revision=created.revision - 1)
        assert not stale.succeeded
        fresh = await etcd.put_if("/t/a", b"4", mod_revision=created.revision)
        assert fresh.succeeded and fresh.revision > created.revision
        unchecked = await etcd.put_if("/t/a", b"5", mod_revision=None)
        assert unchecked.succeeded
        kv, _ = await etcd.get("/t/a")
        assert kv is not None and kv.value == b"5" and kv.mod_revision == unchecked.revision
        assert not (await etcd.delete_if("/t/a", mod_revision=fresh.revision)).succeeded
        assert (await etcd.delete_if("/t/a", mod_revision=unchecked.revision)).succeeded
        assert (await etcd.get("/t/a"))[0] is None


@pytest.mark.asyncio
async def test_watch_from_a_revision_sees_every_later_change_once(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd:
        await etcd.put("/t/k0", b"x")
        snapshot = await etcd.get_prefix("/t/")
        assert [kv.key for kv in snapshot.kvs] == ["/t/k0"]
        # Changes after the get and before the watch starts.
        revs = [await etcd.put(f"/t/k{i}", b"y") for i in range(1, 4)]
        await etcd.put("/u/outside", b"z")
        seen: list[tuple[str, int, bool]] = []
        async with etcd.watch("/t/", "/t0", snapshot.revision + 1) as batches:
            revs.append((await etcd.delete_if("/t/k1", mod_revision=None)).revision)
            with anyio.fail_after(10):
                async for batch in batches:
                    assert all(ev.kv.mod_revision <= batch.revision for ev in batch.events)
                    seen += [(ev.kv.key, ev.kv.mod_revision, ev.deleted) for ev in batch.events]
                    if len(seen) >= 4:
                        break
        assert seen == [
            ("/t/k1", revs[0], False), ("/t/k2", revs[1], False), ("/t/k3", revs[2], False),
            ("/t/k1", revs[3], True),
        ]  # fmt: skip


@pytest.mark.asyncio
async def test_watch_from_a_compacted_revision_says_so(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd:
        for i in range(5):
            last = await etcd.put("/t/k", str(i).encode())
        await anyio.run_process(["etcdctl", "--endpoints", etcd_server.url, "compact", str(last)])
        with pytest.raises(Compacted):
            async with etcd.watch("/t/", "/t0", 2) as batches:
                with anyio.fail_after(10):
                    async for _ in batches:
                        pass


@pytest.mark.asyncio
async def test_lease_keys_go_with_the_lease(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url) as etcd:
        lease = await etcd.grant_lease(1)
        await etcd.put("/t/status", b"alive", lease=lease)
        assert await etcd.lease_ttl(lease) > 0
        # Kept alive past its TTL, the key stays.
        with anyio.move_on_after(2.5):
            await etcd.keep_alive(lease, 1)
        assert (await etcd.get("/t/status"))[0] is not None
        # Not kept alive, it expires and the key is deleted with it.
        with anyio.fail_after(10):
            while (await etcd.get("/t/status"))[0] is not None:
                await anyio.sleep(0.1)
        assert await etcd.lease_ttl(lease) == -1
        with pytest.raises(LeaseExpired):
            await etcd.keep_alive(lease, 1)


@pytest.mark.asyncio
async def test_unreachable_etcd_is_unavailable(etcd_server: EtcdServer) -> None:
    async with EtcdClient(etcd_server.url, timeout=2.0) as etcd:
        await etcd.put("/t/a", b"1")
        etcd_server.stop()
        with pytest.raises(EtcdUnavailable):
            await etcd.get("/t/a")
        etcd_server.start()
        with anyio.fail_after(15):
            while True:
                try:
                    kv, _ = await etcd.get("/t/a")
                    break
                except EtcdUnavailable:
                    await anyio.sleep(0.1)
        assert kv is not None and kv.value == b"1"  # same data dir, same data


@pytest.mark.asyncio
async def test_failover_moves_to_the_next_url(etcd_server: EtcdServer) -> None:
    from tests.etcd import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient([dead, etcd_server.url], timeout=2.0) as etcd:
        with pytest.raises(EtcdUnavailable):
            await etcd.get("/t/a")
        await etcd.failover(etcd.generation)
        await etcd.failover(etcd.generation - 1)  # someone else already moved: no-op
        assert etcd.endpoint == etcd_server.url.removeprefix("http://")
        assert (await etcd.get("/t/a"))[0] is None


@pytest.mark.root
def test_etcd_server_inside_a_namespace() -> None:
    from tests.etcd import need_etcd
    from tests.netns import Netns, default_prefix

    need_etcd()
    netns = Netns(prefix=default_prefix())
    try:
        ns = netns.make_netns()
        with EtcdServer(netns=ns) as server:
            assert server.healthy()  # probed inside the namespace
            host_side = EtcdServer.__new__(EtcdServer)
            host_side.__dict__.update(server.__dict__, netns=None)
            assert not host_side.healthy()  # the host's loopback is another one
            server.restart()
            assert server.healthy()
    finally:
        assert netns.cleanup() == []
