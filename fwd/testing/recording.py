"""A recording Datapath for ClusterSync tests and the cluster benchmark.

It answers ApplyPolicy and GetPolicy like the real actor (the revision goes up
by one per apply) and records the wall-clock time of each apply, so a benchmark
can tell when each of many simulated nodes started enforcing a policy. It is
cheap enough to run a thousand in one process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from fwd.errors import FwdError
from fwd.messages import Applied, ApplyPolicy, DatapathCommand, GetPolicy, Reply
from fwd.policy.model import EMPTY_POLICY, Policy


@dataclass(frozen=True)
class Recorded:
    """One apply the fake took: when (unix time), the local revision, the policy."""

    at: float
    revision: int
    policy: Policy


class RecordingDatapath:
    """Serves ApplyPolicy / GetPolicy from memory and records every apply.

    ``fail_next`` (an error) fails the next apply once; other commands are
    closed unanswered (the requester sees "closed unanswered").
    """

    def __init__(self, commands: MemoryObjectReceiveStream[DatapathCommand], policy: Policy = EMPTY_POLICY) -> None:
        self._commands = commands
        self.policy = policy
        self.revision = 0
        self.applied: list[Recorded] = []
        self.fail_next: FwdError | None = None
        self.changed = anyio.Event()  # set (and replaced) after every apply

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self._commands:
            task_status.started()
            async for command in self._commands:
                with command.reply:
                    if isinstance(command, ApplyPolicy):
                        answer = self._apply(command.policy)
                    elif isinstance(command, GetPolicy):
                        answer = Reply(value=Applied(self.revision, self.policy))
                    else:
                        continue
                    try:
                        await command.reply.send(answer)
                    except anyio.BrokenResourceError:
                        pass

    def _apply(self, policy: Policy) -> Reply[Applied]:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            return Reply(error=error)
        self.revision += 1
        self.policy = policy
        self.applied.append(Recorded(time.time(), self.revision, policy))
        self.changed.set()
        self.changed = anyio.Event()
        return Reply(value=Applied(self.revision, policy))
