"""The ClusterAdmin actor: the API's reads and writes of etcd in cluster mode.

The Api sends it ``ClusterAdminCommand``s (fwd/messages/) and awaits the reply,
as it does with the Datapath; this actor alone holds the etcd connection the
API uses (the ClusterSync actor has its own, so a slow admin call never holds
up a watch). Each command runs in its own task: etcd serves them concurrently
and a ``fwd cluster wait`` poll must not queue behind a policy write. What each
command does is ``fwd.cluster.commands.ClusterCommands``.
"""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from fwd.cluster.commands import ClusterCommands
from fwd.messages import ClusterAdminCommand


class ClusterAdmin(ClusterCommands):
    """Serves the Api's cluster commands against etcd, keys placed by ``layout``."""

    async def run(
        self,
        commands: MemoryObjectReceiveStream[ClusterAdminCommand],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve commands until the channel closes; each in its own task."""
        async with anyio.create_task_group() as tg, commands:
            task_status.started()
            async for command in commands:
                tg.start_soon(self.serve, command)
