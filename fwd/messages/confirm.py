"""Api -> Confirmer: commit-confirm deadlines."""

from __future__ import annotations

from dataclasses import dataclass

from anyio.streams.memory import MemoryObjectSendStream

from fwd.messages.reply import Reply


@dataclass(frozen=True)
class PendingConfirm:
    """Revision ``revision`` rolls back to ``previous`` at ``deadline`` (unix time)."""

    revision: int
    previous: int
    deadline: float


@dataclass(frozen=True)
class ArmConfirm:
    """``revision`` was just applied with a confirm deadline; roll back unless confirmed."""

    pending: PendingConfirm
    reply: MemoryObjectSendStream[Reply[PendingConfirm]]


@dataclass(frozen=True)
class ConfirmRevision:
    """Keep ``revision`` (None: whatever is pending). Fails if nothing such is pending."""

    revision: int | None
    reply: MemoryObjectSendStream[Reply[PendingConfirm]]


@dataclass(frozen=True)
class Superseded:
    """A later apply replaced ``revision``: a pending rollback for an older one is moot."""

    revision: int


ConfirmCommand = ArmConfirm | ConfirmRevision | Superseded
