"""The answer every request carries back: a value or the error explaining why not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

T = TypeVar("T")
C = TypeVar("C")


@dataclass(frozen=True)
class Reply(Generic[T]):
    """What an actor sends back: a value, or the error that explains why not."""

    value: T | None = None
    error: Exception | None = None

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


async def request(
    channel: MemoryObjectSendStream[C],
    make: Callable[[MemoryObjectSendStream[Reply[T]]], C],
    *,
    timeout: float,
) -> T:
    """Send ``make(reply)`` on ``channel`` and return the answer (or raise its error).

    Waits at most ``timeout`` seconds in all (TimeoutError), for room in the
    actor's inbox as much as for the answer. The reply stream holds one answer:
    an actor's ``send_nowait`` of it never blocks.
    """
    reply_tx, reply_rx = anyio.create_memory_object_stream[Reply[T]](1)
    with reply_rx:
        with anyio.fail_after(timeout):
            try:
                await channel.send(make(reply_tx))
            except BaseException:
                reply_tx.close()
                raise
            answer = await reply_rx.receive()
    return answer.unwrap()
