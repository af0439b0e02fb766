"""The Confirmer actor against the fake Datapath: deadlines, confirms, restarts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from fwd.actors.confirm import Confirmer, NothingPending
from fwd.messages import (
    ApplyPolicy,
    ArmConfirm,
    ConfirmCommand,
    ConfirmRevision,
    DatapathCommand,
    PendingConfirm,
    Reply,
    Superseded,
)
from fwd.policy.model import policy_from_dict
from fwd.testing import FakeDatapath

P1 = policy_from_dict({"rules": [{"id": "one", "action": "drop", "protocol": "udp"}]})
P2 = policy_from_dict({"default_action": "drop"})


@asynccontextmanager
async def running(state: Path) -> AsyncIterator[tuple[FakeDatapath, anyio.abc.ObjectSendStream[ConfirmCommand], Confirmer]]:
    dp_tx, dp_rx = anyio.create_memory_object_stream[DatapathCommand](16)
    cf_tx, cf_rx = anyio.create_memory_object_stream[ConfirmCommand](16)
    datapath = FakeDatapath(dp_rx)
    confirmer = Confirmer(state)
    async with anyio.create_task_group() as tg:
        await tg.start(datapath.run)
        await tg.start(confirmer.run, cf_rx, dp_tx.clone())
        try:
            yield datapath, cf_tx, confirmer
        finally:
            tg.cancel_scope.cancel()


async def apply(datapath: FakeDatapath, policy: object) -> int:
    tx, rx = anyio.create_memory_object_stream[Reply](1)  # type: ignore[type-arg]
    reply = datapath.apply(ApplyPolicy(policy, None, tx))  # type: ignore[arg-type]
    return reply.unwrap().revision


async def ask(cf: anyio.abc.ObjectSendStream[ConfirmCommand], make: object) -> Reply[PendingConfirm]:
    tx, rx = anyio.create_memory_object_stream[Reply[PendingConfirm]](1)
    await cf.send(make(tx))  # type: ignore[operator]
    with anyio.fail_after(5):
        return await rx.receive()


@pytest.mark.asyncio
async def test_unconfirmed_rolls_back(tmp_path: Path) -> None:
    async with running(tmp_path) as (dp, cf, confirmer):
        await apply(dp, P1)
        rev = await apply(dp, P2)
        pending = PendingConfirm(rev, rev - 1, time.time() + 0.3)
        assert (await ask(cf, lambda r: ArmConfirm(pending, r))).unwrap() == pending
        assert (tmp_path / "confirm.json").exists()
        with anyio.fail_after(5):
            while dp.revision == rev:
                await anyio.sleep(0.02)
        assert dp.revision == rev + 1 and dp.policy == P1  # the previous policy, again
        assert confirmer.statistics().rolled_back == 1
        assert not (tmp_path / "confirm.json").exists()


@pytest.mark.asyncio
async def test_confirmed_stays(tmp_path: Path) -> None:
    async with running(tmp_path) as (dp, cf, confirmer):
        await apply(dp, P1)
        rev = await apply(dp, P2)
        await ask(cf, lambda r: ArmConfirm(PendingConfirm(rev, rev - 1, time.time() + 0.3), r))
        with pytest.raises(NothingPending):
            (await ask(cf, lambda r: ConfirmRevision(rev + 7, r))).unwrap()
        assert (await ask(cf, lambda r: ConfirmRevision(rev, r))).unwrap().revision == rev
        await anyio.sleep(0.5)
        assert dp.revision == rev and dp.policy == P2
        with pytest.raises(NothingPending):
            (await ask(cf, lambda r: ConfirmRevision(None, r))).unwrap()


@pytest.mark.asyncio
async def test_a_later_apply_supersedes(tmp_path: Path) -> None:
    async with running(tmp_path) as (dp, cf, confirmer):
        await apply(dp, P1)
        rev = await apply(dp, P2)
        await ask(cf, lambda r: ArmConfirm(PendingConfirm(rev, rev - 1, time.time() + 0.3), r))
        newer = await apply(dp, P1)
        await cf.send(Superseded(newer))
        await anyio.sleep(0.5)
        assert dp.revision == newer  # no rollback of the older revision
        assert confirmer.statistics().superseded == 1


@pytest.mark.asyncio
async def test_deadline_survives_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as (dp, cf, _):
        await apply(dp, P1)
        rev = await apply(dp, P2)
        await ask(cf, lambda r: ArmConfirm(PendingConfirm(rev, rev - 1, time.time() + 0.2), r))
    # The agent was down past the deadline: the new Confirmer rolls back at once.
    await anyio.sleep(0.3)
    dp_tx, dp_rx = anyio.create_memory_object_stream[DatapathCommand](16)
    cf_tx, cf_rx = anyio.create_memory_object_stream[ConfirmCommand](16)
    datapath = FakeDatapath(dp_rx, policy=P2, revision=rev)
    datapath.history[rev - 1] = P1
    async with anyio.create_task_group() as tg:
        await tg.start(datapath.run)
        await tg.start(Confirmer(tmp_path).run, cf_rx, dp_tx)
        with anyio.fail_after(5):
            while datapath.revision == rev:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert datapath.policy == P1
