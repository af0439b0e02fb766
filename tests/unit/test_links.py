"""The Links actor with a fake attacher: state by ifindex, globs, failures, shutdown."""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import pytest

from fwd.actors.links import AttachedLink, Links, is_managed
from fwd.messages import (
    AttachMode,
    InterfaceStatus,
    LinkChange,
    LinkEvent,
    LinkInfo,
    LinkState,
    ListInterfaces,
    Reply,
)


class FakeLink:
    def __init__(self, ifindex: int, link_id: int) -> None:
        self.ifindex = ifindex
        self.id = link_id
        self.prog_id = 77
        self.pinned_at: str | None = None
        self.closed = False
        self.detached = False

    def pin(self, path: str) -> None:
        Path(path).write_text("pin")
        self.pinned_at = path

    def unpin(self) -> None:
        assert self.pinned_at is not None
        Path(self.pinned_at).unlink()
        self.pinned_at = None

    def close(self) -> None:
        self.closed = True


class FakeAttacher:
    def __init__(self, fail: set[int] | None = None) -> None:
        self.fail = fail or set()
        self.links: dict[int, FakeLink] = {}  # currently attached, by ifindex
        self.calls: list[tuple[str, int]] = []

    def attach(self, prog_fd: int, ifindex: int) -> tuple[FakeLink, AttachMode]:
        self.calls.append(("attach", ifindex))
        if ifindex in self.fail:
            raise OSError(16, "Device or resource busy")
        assert ifindex not in self.links, "attached twice"
        link = self.links[ifindex] = FakeLink(ifindex, 100 + ifindex)
        return link, AttachMode.NATIVE

    def adopt(self, prog_fd: int, path: Path) -> tuple[FakeLink, AttachMode]:
        raise OSError(2, "no link pinned here is ours (a fake never adopts)")

    def detach(self, link: AttachedLink) -> None:
        assert isinstance(link, FakeLink)
        self.calls.append(("detach", link.ifindex))
        link.detached = True
        del self.links[link.ifindex]


def added(ifindex: int, name: str) -> LinkEvent:
    return LinkEvent(LinkChange.ADDED, link=LinkInfo(ifindex, name, up=False))


def removed(ifindex: int, name: str) -> LinkEvent:
    return LinkEvent(LinkChange.REMOVED, link=LinkInfo(ifindex, name, up=False))


def test_is_managed() -> None:
    assert is_managed("veth0", ("*",), ())
    assert not is_managed("lo", ("*",), ())
    assert not is_managed("lo", ("l*",), ())
    assert is_managed("lo", ("lo",), ())
    assert not is_managed("eth0", ("veth*",), ())
    assert not is_managed("veth9", ("veth*",), ("veth9",))


def test_added_attaches_and_pins(tmp_path: Path) -> None:
    fake = FakeAttacher()
    links = Links(5, include=("v*",), pin_dir=tmp_path, attacher=fake)
    links.handle(added(1, "lo"))
    links.handle(added(3, "v1"))
    links.handle(added(4, "x1"))
    assert links.interfaces() == (
        InterfaceStatus("lo", 1, LinkState.EXCLUDED),
        InterfaceStatus("v1", 3, LinkState.ATTACHED, AttachMode.NATIVE, 77, 103),
        InterfaceStatus("x1", 4, LinkState.EXCLUDED),
    )
    assert (tmp_path / "links" / "3").exists()
    # A second RTM_NEWLINK (e.g. the link goes up) does not attach again.
    links.handle(LinkEvent(LinkChange.ADDED, link=LinkInfo(3, "v1", up=True)))
    assert fake.calls == [("attach", 3)]


def test_rename_out_of_and_into_management(tmp_path: Path) -> None:
    fake = FakeAttacher()
    links = Links(5, include=("v*",), pin_dir=tmp_path, attacher=fake)
    links.handle(added(3, "v1"))
    links.handle(added(3, "x1"))  # renamed: no longer managed
    assert fake.calls == [("attach", 3), ("detach", 3)]
    assert links.interfaces()[0].state is LinkState.EXCLUDED
    assert not (tmp_path / "links" / "3").exists()
    links.handle(added(3, "v2"))
    assert links.interfaces()[0] == InterfaceStatus(
        "v2", 3, LinkState.ATTACHED, AttachMode.NATIVE, 77, 103
    )


def test_removed_unpins_without_detach(tmp_path: Path) -> None:
    fake = FakeAttacher()
    links = Links(5, pin_dir=tmp_path, attacher=fake)
    links.handle(added(3, "v1"))
    link = fake.links[3]
    links.handle(removed(3, "v1"))
    assert links.interfaces() == ()
    assert link.closed and not link.detached
    assert not (tmp_path / "links" / "3").exists()
    links.handle(removed(3, "v1"))  # a duplicate is harmless


def test_resync_reconciles_by_ifindex(tmp_path: Path) -> None:
    fake = FakeAttacher()
    links = Links(5, pin_dir=tmp_path, attacher=fake)
    links.handle(added(3, "v1"))
    links.handle(added(4, "v2"))
    # 3 vanished, 4 stays (not re-attached), 6 is new; list order is irrelevant.
    links.handle(LinkEvent(LinkChange.RESYNC, links=(
        LinkInfo(6, "v6", True), LinkInfo(1, "lo", True), LinkInfo(4, "v2", True),
    )))
    assert [(s.ifindex, s.state) for s in links.interfaces()] == [
        (1, LinkState.EXCLUDED), (4, LinkState.ATTACHED), (6, LinkState.ATTACHED),
    ]
    assert fake.calls == [("attach", 3), ("attach", 4), ("attach", 6)]
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == ["4", "6"]


def test_attach_failure_is_reported_and_retried(tmp_path: Path) -> None:
    fake = FakeAttacher(fail={3})
    links = Links(5, pin_dir=tmp_path, attacher=fake)
    links.handle(added(3, "v1"))
    links.handle(added(4, "v2"))
    status = links.interfaces()[0]
    assert status.state is LinkState.FAILED and "busy" in status.error
    assert links.statistics().attach_failures == 1
    fake.fail.clear()
    links.handle(added(3, "v1"))
    assert links.interfaces()[0].state is LinkState.ATTACHED


def test_stale_pin_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "3").write_text("old")
    links = Links(5, pin_dir=tmp_path, attacher=FakeAttacher())
    links.handle(added(3, "v1"))
    assert (tmp_path / "links" / "3").read_text() == "pin"


async def _run_and_stop(links: Links) -> tuple[InterfaceStatus, ...]:
    ev_tx, ev_rx = anyio.create_memory_object_stream[LinkEvent](math.inf)
    rq_tx, rq_rx = anyio.create_memory_object_stream[ListInterfaces](1)
    async with ev_tx, rq_tx, anyio.create_task_group() as tg:
        await tg.start(links.run, ev_rx, rq_rx)
        await ev_tx.send(LinkEvent(LinkChange.RESYNC, links=(LinkInfo(1, "lo", True),)))
        await ev_tx.send(added(3, "v1"))
        # Attaching runs in the interface's own task (and a worker thread): ask
        # until it is done.
        with anyio.fail_after(1):
            while True:
                reply_tx, reply_rx = anyio.create_memory_object_stream[
                    Reply[tuple[InterfaceStatus, ...]]
                ](1)
                with reply_rx:
                    await rq_tx.send(ListInterfaces(reply=reply_tx))
                    answer = (await reply_rx.receive()).unwrap()
                if len(answer) == 2 and answer[1].state is LinkState.ATTACHED:
                    break
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    return answer


@pytest.mark.asyncio
async def test_actor_keeps_pins_on_exit(tmp_path: Path) -> None:
    fake = FakeAttacher()
    answer = await _run_and_stop(Links(5, pin_dir=tmp_path, attacher=fake))
    assert [s.name for s in answer] == ["lo", "v1"]
    assert (tmp_path / "links" / "3").exists()
    assert fake.links[3].closed and not fake.links[3].detached


@pytest.mark.asyncio
async def test_actor_detaches_on_exit_when_asked(tmp_path: Path) -> None:
    fake = FakeAttacher()
    answer = await _run_and_stop(Links(5, pin_dir=tmp_path, attacher=fake, detach_on_exit=True))
    assert answer[1].state is LinkState.ATTACHED
    assert fake.links == {} and ("detach", 3) in fake.calls
    assert list((tmp_path / "links").iterdir()) == []


@pytest.mark.asyncio
async def test_actor_returns_when_events_close(tmp_path: Path) -> None:
    ev_tx, ev_rx = anyio.create_memory_object_stream[LinkEvent](math.inf)
    rq_tx, rq_rx = anyio.create_memory_object_stream[ListInterfaces](1)
    links = Links(5, attacher=FakeAttacher())
    await ev_tx.send(added(3, "v1"))
    ev_tx.close()
    with anyio.fail_after(1):
        await links.run(ev_rx, rq_rx)
    assert links.statistics().attaches == 1
    reply_tx, reply_rx = anyio.create_memory_object_stream[Reply[tuple[InterfaceStatus, ...]]](1)
    with rq_tx, reply_tx, reply_rx, pytest.raises(anyio.BrokenResourceError):
        rq_tx.send_nowait(ListInterfaces(reply=reply_tx))
