"""The Confirmer actor: commit-confirm deadlines that survive restarts.

``fwd policy apply FILE --confirm-within 60s`` enforces at once; unless
``fwd policy confirm`` arrives in time, the Confirmer asks the Datapath to
enforce the previous revision again (as a new revision). The pending deadline
is written to ``<state_dir>/confirm.json`` (atomically, by rename) before the
apply is reported, so an agent restarted — or killed — while a confirm is
pending still rolls back, at once if the deadline passed while it was down.

At most one confirm is pending: the newest. A later apply supersedes it (the
rollback is sent with ``expect_revision`` of the pending revision anyway, so a
rollback can never overwrite a newer policy).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fwd.errors import FwdError, PreconditionFailed, RevisionMismatch
from fwd.messages import (
    Applied,
    ApplyRevision,
    ArmConfirm,
    ConfirmCommand,
    DatapathCommand,
    PendingConfirm,
    Reply,
    Superseded,
)

log = structlog.get_logger("fwd.confirm")

FILE = "confirm.json"


class NothingPending(PreconditionFailed):
    """A confirm named a revision that has no pending rollback."""


@dataclass
class ConfirmerStatistics:
    armed: int = 0
    confirmed: int = 0
    rolled_back: int = 0
    superseded: int = 0
    pending_revision: int = 0


class Confirmer:
    """Owns the pending confirm (if any) and its file; rolls back through the Datapath."""

    def __init__(self, state_dir: str | Path, clock: Any = time.time) -> None:
        self._path = Path(state_dir) / FILE
        self._clock = clock
        self._pending: PendingConfirm | None = None
        self._stats = ConfirmerStatistics()

    def statistics(self) -> ConfirmerStatistics:
        return ConfirmerStatistics(**vars(self._stats))

    @property
    def pending(self) -> PendingConfirm | None:
        return self._pending

    async def run(
        self,
        commands: MemoryObjectReceiveStream[ConfirmCommand],
        datapath: MemoryObjectSendStream[DatapathCommand],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Load a pending confirm left by a previous agent, then serve until cancelled."""
        self._pending = await anyio.to_thread.run_sync(self._load)
        if self._pending is not None:
            log.warning(
                "confirm_pending_at_start",
                revision=self._pending.revision,
                seconds_left=round(self._pending.deadline - self._clock(), 1),
            )
        task_status.started()
        async with commands, datapath:
            while True:
                deadline = self._pending.deadline if self._pending else None
                command: ConfirmCommand | None = None
                with anyio.move_on_after(
                    max(0.0, deadline - self._clock()) if deadline is not None else float("inf")
                ):
                    try:
                        command = await commands.receive()
                    except anyio.EndOfStream:
                        return
                if command is None:
                    await self._roll_back(datapath)
                else:
                    await self._handle(command)

    async def _handle(self, command: ConfirmCommand) -> None:
        if isinstance(command, Superseded):
            if self._pending is not None and command.revision > self._pending.revision:
                log.info("confirm_superseded", revision=self._pending.revision)
                self._stats.superseded += 1
                await self._set(None)
            return
        reply: Reply[PendingConfirm]
        if isinstance(command, ArmConfirm):
            await self._set(command.pending)
            self._stats.armed += 1
            log.info(
                "confirm_armed",
                revision=command.pending.revision,
                rollback_to=command.pending.previous,
                deadline=command.pending.deadline,
            )
            reply = Reply(command.pending)
        else:
            pending = self._pending
            if pending is None or command.revision not in (None, pending.revision):
                what = "no confirm is pending" if pending is None else (
                    f"revision {pending.revision} is pending, not {command.revision}"
                )
                reply = Reply(error=NothingPending(f"revision: {what}"))
            else:
                await self._set(None)
                self._stats.confirmed += 1
                log.info("policy_confirmed", revision=pending.revision)
                reply = Reply(pending)
        with command.reply:
            try:
                command.reply.send_nowait(reply)
            except (anyio.BrokenResourceError, anyio.WouldBlock):
                log.warning("reply_dropped", command=type(command).__name__)

    async def _roll_back(self, datapath: MemoryObjectSendStream[DatapathCommand]) -> None:
        pending = self._pending
        assert pending is not None
        reply_tx, reply_rx = anyio.create_memory_object_stream[Reply[Applied]](1)
        # force: restoring what was enforced before is never a lockout to refuse.
        await datapath.send(
            ApplyRevision(pending.previous, pending.revision, reply_tx, force=True)
        )
        with reply_rx:
            try:
                reply = await reply_rx.receive()
                applied = reply.unwrap()
            except RevisionMismatch as exc:
                # Someone applied after the pending revision: nothing to undo.
                log.info("confirm_superseded", revision=pending.revision, current=exc.current)
                self._stats.superseded += 1
            except (FwdError, anyio.EndOfStream) as exc:
                # Keep enforcing what is there; say so loudly. Retrying forever
                # against a broken store would not make it better.
                log.error("confirm_rollback_failed", revision=pending.revision, error=str(exc))
            else:
                self._stats.rolled_back += 1
                log.warning(
                    "policy_rolled_back",
                    revision=applied.revision,
                    unconfirmed_revision=pending.revision,
                    rollback_to=pending.previous,
                )
        await self._set(None)

    async def _set(self, pending: PendingConfirm | None) -> None:
        self._pending = pending
        self._stats.pending_revision = pending.revision if pending else 0
        await anyio.to_thread.run_sync(self._save, pending)

    def _save(self, pending: PendingConfirm | None) -> None:
        if pending is None:
            self._path.unlink(missing_ok=True)
            return
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(vars(pending), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def _load(self) -> PendingConfirm | None:
        try:
            raw = json.loads(self._path.read_text())
            return PendingConfirm(int(raw["revision"]), int(raw["previous"]), float(raw["deadline"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Written by rename, so never torn: a foreign or hand-edited file. Say so.
            log.error("confirm_file_unreadable", path=str(self._path), error=str(exc))
            return None
